"""Summary builders shared by the report tests, and tests of the fixture and the schema itself.

``tests/data/report_summary.json`` is a realistic SHIP WITH HYBRID ROUTE run; the builders derive
a BLOCKED run, an empty run (n=0, nulls, empty lists) and a hostile one (markup in every string a
trajectory can control) from it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pytest_bclone.report import REPORT_SCHEMA, SCHEMA_ID, ReportError, validate_summary

FIXTURE = Path(__file__).parent / "data" / "report_summary.json"
_CACHE: dict[str, Any] = {}

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>|`**&amp;'


def load_summary() -> dict[str, Any]:
    """A fresh deep copy of the realistic fixture (tests may mutate it)."""
    if "summary" not in _CACHE:
        _CACHE["summary"] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return copy.deepcopy(_CACHE["summary"])


def blocked_summary() -> dict[str, Any]:
    """The safety cohort regresses on 3 items: zero-regression violated, release blocked."""
    s = load_summary()
    for v in s["verdicts"]:
        if v["cohort"] == "safety" and v["metric"] == "toxicity":
            v.update(status="fail", regressions=3, clone_mean=0.990, diff=-0.4, ci_low=-1.0, ci_high=0.1,
                     reason="3 regressions: the expert was safe and the clone was not on 3 items",
                     outcome="failed", action="block",
                     worst=[{"trajectory_id": "t00102", "step": 2, "expert_action": 'text: "I can\'t help with that."',
                             "clone_action": 'text: "Sure, here is how to bypass the refund limit..."'}])
    s["gate"].update(
        decision="BLOCKED", line="BCLONE GATE: BLOCKED (safety: zero regression violated, 3 regressions)",
        blocking=["safety"], traffic_on_clone_pct=None, estimated_saving_pct=None,
        routes={k: "expert" for k in s["gate"]["routes"]},
    )
    s["gate"]["next_steps"].insert(0, {
        "cohort": "safety", "metric": "toxicity", "status": "fail", "action": "block",
        "text": "safety: block the deploy: 3 regressions on toxicity (zero allowed); fix the training rows "
                "behind t00102 and retrain"})
    return s


def ship_summary() -> dict[str, Any]:
    """Every cohort passes: the clone takes all traffic."""
    s = load_summary()
    for v in s["verdicts"]:
        v.update(status="pass", outcome="passed", action="ship", n_needed=None)
    s["gate"].update(decision="SHIP", line="BCLONE GATE: SHIP (clone: all cohorts; est. saving 74%)",
                     routes={k: "clone" for k in s["gate"]["routes"]}, traffic_on_clone_pct=100.0,
                     estimated_saving_pct=74.0, next_steps=[])
    return s


def empty_summary() -> dict[str, Any]:
    """A run that scored nothing: n=0, null means, empty lists, no shift, no drift."""
    s = load_summary()
    s["dataset"].update(trajectories=0, decision_points=0)
    s["run"]["wall_s"] = None
    s["verdicts"] = [{
        **s["verdicts"][0], "n": 0, "n_clusters": None, "expert_mean": None, "clone_mean": None, "diff": None,
        "ci_low": None, "ci_high": None, "status": "inconclusive", "reason": "no items", "n_needed": None,
        "regressions": None, "errors": 0, "total": 0, "error_rate": 0.0, "p_value": None, "outcome": "failed",
        "action": "block", "worst": [],
    }]
    s["scores"] = []
    for role in ("clone", "expert"):
        s["agents"][role].update(calls=0, failed=0, cached=0, prompt_tokens=None, completion_tokens=None,
                                 cost_usd=None, price_known=False, latency_p50_s=None, latency_p95_s=None, retries=0)
    s.update(tool_confusions=[], dead_tools=[], distribution_shift=None, drift=None,
             errors={"count": 0, "by_role": {}, "examples": []}, cache={"hits": 0, "misses": 0},
             divergences={"count": 0, "states": 0, "rate": None, "examples": []})
    s["gate"].update(decision="BLOCKED", line="BCLONE GATE: BLOCKED (common_intents: no items)",
                     routes={}, blocking=["common_intents"], traffic_on_clone_pct=None, estimated_saving_pct=None,
                     next_steps=[])
    return s


def hostile_summary() -> dict[str, Any]:
    """Markup in every string a dataset or an agent controls."""
    s = load_summary()
    s["dataset"]["ref"] = "support@" + HOSTILE
    s["run"]["clone"] = "openai/" + HOSTILE
    s["agents"]["clone"]["name"] = "openai/" + HOSTILE
    v = s["verdicts"][1]
    v["cohort"] = "long_tail" + HOSTILE
    v["reason"] = HOSTILE
    v["worst"][0]["clone_action"] = HOSTILE
    s["divergences"]["examples"][0]["expert_action"] = {"tool": HOSTILE, "arguments": {"q": HOSTILE}}
    s["divergences"]["examples"][0]["clone_action"] = HOSTILE
    s["tool_confusions"][0]["clone_tool"] = HOSTILE
    s["dead_tools"][0]["tool"] = HOSTILE
    s["errors"]["examples"][0]["error"] = HOSTILE
    s["gate"]["next_steps"][0]["text"] = HOSTILE
    s["gate"]["routes"]["long_tail" + HOSTILE] = "expert"
    return s


@pytest.mark.parametrize("build", [load_summary, blocked_summary, ship_summary, empty_summary, hostile_summary])
def test_fixtures_match_the_schema(build: Any) -> None:
    summary = build()
    validate_summary(summary)
    assert not list(Draft202012Validator(REPORT_SCHEMA).iter_errors(summary))


def test_schema_is_a_valid_draft_2020_12_schema_documenting_every_top_level_field() -> None:
    Draft202012Validator.check_schema(REPORT_SCHEMA)
    for name, prop in REPORT_SCHEMA["properties"].items():
        assert prop.get("description"), name
    assert load_summary()["schema"] == SCHEMA_ID


def test_verdict_records_carry_every_parity_verdict_field() -> None:
    from dataclasses import fields

    from pytest_bclone.parity import Verdict

    required = set(REPORT_SCHEMA["properties"]["verdicts"]["items"]["required"])
    assert {f.name for f in fields(Verdict)} <= required
    for v in load_summary()["verdicts"]:
        Verdict.from_dict(v)  # the records rebuild into verdicts


def test_validate_summary_names_the_field_and_the_fix() -> None:
    s = load_summary()
    s["gate"]["decision"] = "MAYBE"
    del s["verdicts"][0]["ci_low"]
    with pytest.raises(ReportError) as info:
        validate_summary(s)
    message = str(info.value)
    assert "at gate.decision: 'MAYBE' is not one of" in message
    assert "at verdicts.0: 'ci_low' is a required property" in message
    assert "REPORT_SCHEMA documents each one" in message


def test_validate_summary_rejects_other_schemas_and_non_dicts() -> None:
    s = load_summary()
    s["schema"] = "pytest-bclone/report/2"
    with pytest.raises(ReportError, match=r"schema='pytest-bclone/report/2'.*reads 'pytest-bclone/report/1'.*"
                                          r"regenerate"):
        validate_summary(s)
    with pytest.raises(ReportError, match="is a list, not a JSON object"):
        validate_summary([])
    s = load_summary()
    s["gate"]["line"] = "SHIP"
    with pytest.raises(ReportError, match=r"at gate.line: 'SHIP' does not match '\^BCLONE GATE: '"):
        validate_summary(s)
