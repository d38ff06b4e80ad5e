"""One source for each figure: the same run rendered in every format shows the same decision,
traffic share, saving, per-verdict difference, interval and status, and the same call counts and
costs (terminal, Markdown, HTML, routes file, JUnit properties)."""

from __future__ import annotations

import html as html_lib
import json
import re
from typing import Any

import pytest

from pytest_bclone.gate import decide
from pytest_bclone.report import html, junit_properties, markdown, routes_config, terminal_lines
from pytest_bclone.report._common import fmt_count, fmt_interval, fmt_pct, fmt_points, fmt_usd

from .test_report_fixtures import blocked_summary, load_summary, ship_summary


def _plain_html(doc: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", doc))


def _renders(summary: dict[str, Any]) -> dict[str, str]:
    return {
        "terminal": "\n".join(terminal_lines(summary, 0)),
        "markdown": markdown(summary),
        "html": _plain_html(html(summary)),
    }


@pytest.mark.parametrize("build", [load_summary, blocked_summary, ship_summary])
def test_every_format_shows_the_same_figures(build: Any) -> None:
    summary = build()
    gate = summary["gate"]
    for name, out in _renders(summary).items():
        assert gate["decision"] in out, name
        for pct in (gate.get("traffic_on_clone_pct"), gate.get("estimated_saving_pct")):
            if pct is not None:
                assert fmt_pct(pct, 0) in out, (name, pct)
        for v in summary["verdicts"]:
            assert fmt_points(v["diff"]) in out, (name, v["cohort"], v["diff"])
            if v.get("ci_low") is not None:
                assert fmt_interval(v["ci_low"], v["ci_high"]) in out, (name, v["cohort"])
        for role in ("clone", "expert"):
            a = summary["agents"][role]
            assert fmt_count(a["calls"]) in out, (name, role, "calls")
            assert fmt_usd(a["cost_usd"], a["price_known"]) in out, (name, role, "cost")
    # The routes file and the JUnit properties carry the same routes and verdict figures.
    routes = routes_config(summary, summary["run"]["clone"], "expert-model")
    text = json.dumps(routes)
    for cohort, route in gate["routes"].items():
        assert cohort in text and route in text
    for v in summary["verdicts"]:
        props = dict(junit_properties(v))
        assert float(props["bclone_diff"]) == pytest.approx(v["diff"]) and props["bclone_status"] == v["status"]


def test_a_blocked_gate_reports_no_traffic_and_no_saving_even_when_some_cohorts_passed() -> None:
    from .test_gate import TRAJS, _verdict

    d = decide([_verdict("a", "pass"), _verdict("b", "fail"), _verdict("c", "pass")], trajectories=TRAJS)
    assert d.decision == "BLOCKED" and d.routes["a"] == "clone"  # a passed, but nothing ships
    assert d.traffic_on_clone_pct == 0.0 and d.estimated_saving_pct == 0.0
