"""The Markdown report and $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_bclone.report import ReportError, append_github_step_summary, markdown, write_markdown

from .test_report_fixtures import HOSTILE, blocked_summary, empty_summary, hostile_summary, load_summary


def test_markdown_leads_with_the_decision_routes_and_next_steps() -> None:
    md = markdown(load_summary())
    lines = md.splitlines()
    assert lines[0] == "## 🔀 bclone gate: SHIP WITH HYBRID ROUTE"
    assert "<code>BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: common_intents, safety, tool_heavy;" in lines[2]
    assert "- **Clone serves:** common_intents, safety, tool_heavy" in lines
    assert "- **Expert keeps:** long_tail, multi_turn_refunds" in lines
    assert md.index("### Next steps") < md.index("### Parity per cohort") < md.index("### Cost and latency")
    assert ("| long_tail | trajectory_score | step | 1,873 (412 traj.) | 87.4 | 83.3 | -4.1 | [-6.0, -2.3] | -3.0 "
            "| ❌ FAIL | route to expert |") in lines
    assert "❔ INCONCLUSIVE (need ~986)" in md
    for heading in ("### Tool confusions", "### Dead-tool calls", "### Distribution shift",
                    "### Drift against the baseline", "### Errors and cache", "### Divergent states",
                    "<details><summary>All scores (informational, not gated)</summary>"):
        assert heading in md, heading
    # every table row has the same number of cells as its header
    for block in md.split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("| ")]
        if table:
            widths = {line.replace("\\|", "").count(" | ") for line in table}
            assert len(widths) == 1, table


def test_markdown_escapes_untrusted_content() -> None:
    md = markdown(hostile_summary())
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;" in md
    # A pipe inside a cell must not split the table.
    assert HOSTILE not in md


def test_blocked_and_empty_runs_render() -> None:
    assert markdown(blocked_summary()).startswith("## ⛔ bclone gate: BLOCKED")
    md = markdown(empty_summary())
    assert "n/a" in md and "unpriced" in md
    assert "### Tool confusions" not in md and "### Drift" not in md
    assert markdown({}).startswith("## bclone gate: UNKNOWN")


def test_write_markdown_is_atomic(tmp_path: Path) -> None:
    path = write_markdown(load_summary(), tmp_path / "out" / "bclone.md")
    assert path.read_text(encoding="utf-8") == markdown(load_summary())
    assert os.listdir(path.parent) == ["bclone.md"]


def test_github_step_summary_is_appended_when_set(tmp_path: Path) -> None:
    target = tmp_path / "step_summary.md"
    target.write_text("# earlier step\n", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(target)}
    assert append_github_step_summary(load_summary(), env) == target
    assert append_github_step_summary(blocked_summary(), env) == target
    text = target.read_text(encoding="utf-8")
    assert text.startswith("# earlier step\n## 🔀 bclone gate: SHIP WITH HYBRID ROUTE")
    assert text.count("bclone gate:") == 2 and "## ⛔ bclone gate: BLOCKED" in text


def test_github_step_summary_is_skipped_when_unset_and_errors_name_the_variable(tmp_path: Path) -> None:
    assert append_github_step_summary(load_summary(), {}) is None
    assert append_github_step_summary(load_summary(), {"GITHUB_STEP_SUMMARY": ""}) is None
    with pytest.raises(ReportError, match=r"GITHUB_STEP_SUMMARY='.*' \(environment\): cannot append"):
        append_github_step_summary(load_summary(), {"GITHUB_STEP_SUMMARY": str(tmp_path)})


def test_markdown_syntax_in_untrusted_text_is_inert() -> None:
    summary = load_summary()
    summary["gate"]["next_steps"][0]["text"] = "use `rm -rf` and **bold** ~~gone~~ a|b [-6.0, -2.3]"
    md = markdown(summary)
    assert "1. use \\`rm -rf\\` and \\*\\*bold\\*\\* \\~\\~gone\\~\\~ a\\|b [-6.0, -2.3]" in md.splitlines()
