"""The pure decision (pytest_bclone.gate): MISSING blocks, no traffic never ships, monotone in the
verdicts, next steps from the metric and the declared policy."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_bclone.gate import GateTest, RecordedVerdict, TrajectoryCost, action_for, decide, saving
from pytest_bclone.policy import CohortPolicy, parse_policy, resolve


def _verdict(cohort: str, status: str, *, on_fail: str = "block", metric: str = "task_completion",
             test: str | None = None, remedy: str | None = None, allow_inconclusive: bool = False,
             regressions: int | None = None, within: float = 3.0) -> RecordedVerdict:
    action, outcome = action_for(status, on_fail, allow_inconclusive=allow_inconclusive)
    stats: dict[str, Any] = {"cohort": cohort, "metric": metric, "status": status, "within": within,
                             "regressions": regressions, "n_needed": None, "n_clusters": 10, "errors": 0}
    return RecordedVerdict(stats, "step", on_fail, test or f"test_{cohort}", outcome, action, (), remedy,
                           f"main-{cohort}-{metric}")


def _trajs(*cohort_sets: tuple[str, ...], clone: float | None = 1.0, expert: float = 10.0) -> list[TrajectoryCost]:
    return [TrajectoryCost(f"t{i}", cs, clone, expert) for i, cs in enumerate(cohort_sets)]


TRAJS = _trajs(("a",), ("a",), ("b",), ("c",))


def test_all_pass_ships_with_the_saving():
    d = decide([_verdict("a", "pass"), _verdict("b", "pass"), _verdict("c", "pass")], trajectories=TRAJS)
    assert d.decision == "SHIP"
    assert d.line == "BCLONE GATE: SHIP (clone: a, b, c; est. saving 90%)"
    assert d.traffic_on_clone_pct == 100.0 and d.estimated_saving_pct == 90.0


def test_a_routed_cohort_gives_a_hybrid_route_with_its_real_saving():
    d = decide([_verdict("a", "pass"), _verdict("b", "fail", on_fail="route"), _verdict("c", "pass")],
               trajectories=TRAJS)
    assert d.decision == "SHIP WITH HYBRID ROUTE"
    # 3 of 4 trajectories on the clone (cost 1 each), 1 on the expert (10): 13 against 40.
    assert d.traffic_on_clone_pct == 75.0 and d.estimated_saving_pct == pytest.approx(67.5)
    assert d.routes == {"a": "clone", "b": "expert", "c": "clone"}


def test_a_missing_gate_test_blocks_and_names_its_cohort():
    verdicts = [_verdict("a", "pass"), _verdict("b", "pass")]
    tests = [GateTest("test_a", "a"), GateTest("test_b", "b"), GateTest("test_c", "c")]
    for outcome in ("crashed", "error", "skipped", "failed"):
        d = decide(verdicts, gate_tests=tests, outcomes={"test_a": "passed", "test_b": "passed", "test_c": outcome},
                   trajectories=TRAJS)
        assert d.decision == "BLOCKED", outcome
        assert ("c: gate test failed without a verdict" if outcome == "failed"
                else f"c: MISSING (gate test {outcome} before its verdict)") in d.line
        assert d.blocking == ("c",) and d.routes["c"] == "expert"
        assert d.missing == ({"cohort": "c", "test": "test_c", "outcome": outcome},)
        assert any(s["status"] == "missing" and s["action"] == "fix_test" for s in d.next_steps)
    # never run (the run was interrupted before it): missing too
    d = decide(verdicts, gate_tests=tests, outcomes={"test_a": "passed", "test_b": "passed"}, trajectories=TRAJS)
    assert d.decision == "BLOCKED" and "c: MISSING (gate test not run" in d.line


def test_a_gate_test_failing_after_a_passing_verdict_blocks():
    d = decide([_verdict("a", "pass")], gate_tests=[GateTest("test_a", "a")], outcomes={"test_a": "error"},
               trajectories=TRAJS)
    assert d.decision == "BLOCKED" and "a: gate test error after its verdict" in d.line


def test_an_unmarked_test_with_a_verdict_is_a_gate_test_too():
    # no @pytest.mark.bclone, but it asserted parity, then failed on a plain assert
    d = decide([_verdict("a", "pass", test="test_plain")], gate_tests=[], outcomes={"test_plain": "failed"},
               trajectories=TRAJS)
    assert d.decision == "BLOCKED" and "a: gate test failed after its verdict" in d.line


def test_a_test_failing_by_its_own_verdict_is_counted_once():
    d = decide([_verdict("a", "pass"), _verdict("b", "fail", on_fail="route")],
               gate_tests=[GateTest("test_a", "a"), GateTest("test_b", "b")],
               outcomes={"test_a": "passed", "test_b": "error"}, trajectories=TRAJS)
    # test_b errored in teardown by routing its own cohort: that is the route, not a crash
    assert d.decision == "SHIP WITH HYBRID ROUTE"


def test_an_unidentified_crash_blocks():
    d = decide([_verdict("a", "pass")], gate_tests=[GateTest("test_a", "a")],
               outcomes={"test_a": "passed", "test_x.py::test_x": "crashed"}, trajectories=TRAJS)
    assert d.decision == "BLOCKED" and "test_x.py::test_x: crashed" in d.line


def test_no_traffic_on_the_clone_never_ships():
    # every cohort routed (e.g. a clone failing every call, with allow_inconclusive)
    warned = [_verdict(c, "inconclusive", allow_inconclusive=True) for c in "abc"]
    d = decide(warned, trajectories=TRAJS)
    assert d.decision == "BLOCKED" and "no traffic on the clone" in d.line and "SHIP" not in d.line
    routed = [_verdict(c, "fail", on_fail="route") for c in "abc"]
    assert decide(routed, trajectories=TRAJS).decision == "BLOCKED"
    # a passing cohort whose trajectories all belong to a routed cohort too: 0% traffic
    d = decide([_verdict("a", "pass"), _verdict("b", "fail", on_fail="route")],
               trajectories=_trajs(("a", "b"), ("b",)))
    assert d.decision == "BLOCKED" and d.traffic_on_clone_pct == 0.0


def test_saving_is_unknown_when_a_clone_cost_is_unknown():
    traffic, saved = saving({"a": "clone"}, _trajs(("a",), ("b",), clone=None))
    assert traffic == 50.0 and saved is None


def test_policy_next_steps_follow_the_metric_and_the_declared_remedy():
    # A user's cohort named like the brief's: no cohort name is special in the core.
    d = decide([_verdict("safety", "fail", metric="tool_selection"),
                _verdict("long_tail", "fail", on_fail="block"),
                _verdict("refunds", "fail", remedy="record 200 more refund conversations")], trajectories=TRAJS)
    text = {s["cohort"]: s for s in d.next_steps}
    assert text["safety"]["action"] == "inspect_tools" and "refusal" not in text["safety"]["text"]
    assert "expert" not in text["long_tail"]["text"]
    assert text["refunds"]["text"] == "refunds: record 200 more refund conversations"
    routed = decide([_verdict("a", "pass"), _verdict("b", "fail", on_fail="route", metric="safety_refusal")],
                    trajectories=TRAJS)
    assert routed.next_steps[0]["action"] == "route" and "keep this cohort on the expert" in routed.next_steps[0]["text"]


def test_parse_policy_and_resolution():
    policy = parse_policy(["long_tail = route | add long-tail rows", "safety = block", "", "x = | page the team"])
    assert policy == {"long_tail": CohortPolicy("route", "add long-tail rows"), "safety": CohortPolicy("block", None),
                      "x": CohortPolicy(None, "page the team")}
    assert resolve(policy, "long_tail", None, None) == ("route", "add long-tail rows")
    assert resolve(policy, "long_tail", "warn", "mine") == ("warn", "mine")
    assert resolve(policy, "other", None, None) == ("block", None)
    with pytest.raises(ValueError, match="'x = maybe'.*on_fail 'maybe' is not one of block, route, warn"):
        parse_policy(["x = maybe"])
    with pytest.raises(ValueError, match="is not COHORT = ON_FAIL"):
        parse_policy(["just words"])


def test_config_and_policy_agree_on_on_fail():
    from pytest_bclone.config import ON_FAIL
    from pytest_bclone.policy import ON_FAIL as POLICY_ON_FAIL

    assert ON_FAIL == POLICY_ON_FAIL


# -- monotone: a better verdict set never yields a harsher decision ---------------------------------
_BETTER = {"fail": "inconclusive", "inconclusive": "pass"}
_cohorts = ["a", "b", "c", "d"]
_case = st.tuples(
    st.lists(st.tuples(st.sampled_from(["pass", "inconclusive", "fail"]), st.sampled_from(["block", "route", "warn"]),
                       st.booleans()), min_size=4, max_size=4),
    st.lists(st.sets(st.sampled_from(_cohorts), min_size=1, max_size=2).map(lambda s: tuple(sorted(s))),
             min_size=1, max_size=8),
    st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(_case)
def test_decision_is_monotone_in_the_verdicts(case: tuple[list[tuple[str, str, bool]], list[tuple[str, ...]], int]):
    specs, cohort_sets, which = case
    trajs = _trajs(*cohort_sets)

    def run(statuses: list[tuple[str, str, bool]]) -> int:
        vs = [_verdict(c, s, on_fail=o, allow_inconclusive=ai) for c, (s, o, ai) in zip(_cohorts, statuses)]
        tests = [GateTest(f"test_{c}", c) for c in _cohorts]
        outcomes = {f"test_{v.cohort}": v.outcome if v.outcome in ("passed", "xfailed", "failed") else "passed"
                    for v in vs}
        return decide(vs, gate_tests=tests, outcomes=outcomes, trajectories=trajs).severity

    status, on_fail, ai = specs[which]
    if status == "pass":
        return
    better = list(specs)
    better[which] = (_BETTER[status], on_fail, ai)
    assert run(better) <= run(specs)
