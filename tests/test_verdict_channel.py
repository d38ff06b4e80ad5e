"""One verdict channel: a verdict asserted anywhere (test body, fixture setup, fixture teardown)
reaches the decision, serially and under pytest-xdist; a gate test that dies before its verdict
blocks; a clone failing every call never ships; the ini policy applies; pass^k uses all k repeats.

pytester projects with a real Parquet dataset and Python clones, driven the way users run them.
"""

from __future__ import annotations

import json

import pytest

from pytest_bclone.dataset.store import DatasetStore

from .conftest import make_row

CONFTEST = '''
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import Action, AgentReply, CallStats


class Clone:
    """Copies the expert, except per spec:
    - "mixed": in cohort 'bad' it answers text at step 0 of every trajectory;
    - "dead": every model call fails;
    - "flip": on repeat index 2 only, it answers text at step 0 (pass^3 must see it)."""

    def __init__(self, spec, trajectories):
        self.name = f"{spec}-clone"
        self.spec = spec
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        kind = state.trajectory_id.split("-")[0]
        if self.spec == "dead":
            return AgentReply(None, CallStats(error="HTTP 503 from the clone server after 6 retries"))
        text = AgentReply(Action(text="I cannot help with that."), CallStats(prompt_tokens=50, completion_tokens=8))
        if self.spec == "mixed" and kind == "bad" and state.step == 0:
            return text
        if self.spec == "flip" and repeat == 2 and state.step == 0:
            return text
        reply = await self.recorded.act(state, repeat=repeat)
        return AgentReply(reply.action, CallStats(prompt_tokens=50, completion_tokens=8))


def pytest_bclone_make_agent(role, spec, config):
    if spec in ("mixed", "dead", "flip"):
        from pytest_bclone.plugin import bclone_session
        return Clone(spec, bclone_session(config).dataset.trajectories)
'''

INI = """
[pytest]
bclone_dataset = support@v1
bclone_clone = mixed
bclone_bootstrap = 1000
bclone_cohort_metrics =
    good=action_match
    bad=action_match
    spare=action_match
bclone_price =
    mixed-clone=1/5
    big-expert=15/75
"""


def _rows() -> list[dict]:
    rows = []
    for kind, n in (("good", 120), ("bad", 40), ("spare", 20)):
        for i in range(n):
            row = make_row(i, cohorts=(kind,), split="eval")
            row["id"] = f"{kind}-{i:04d}"
            # what the source recorded for the expert (e.g. a tau-bench reward): 3 in 4 succeeded
            row["expert_scores"] = {"task_completion": 0.0 if i % 4 == 0 else 1.0}
            row["metadata"] = {"expert_model": "big-expert",
                               "expert_usage": {"prompt_tokens": 400, "completion_tokens": 60}}
            rows.append(row)
    return rows


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", _rows())
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def _line(result: pytest.RunResult) -> str:
    lines = [line for line in result.stdout.lines if line.startswith("BCLONE GATE:")]
    assert len(lines) == 1, result.stdout.str()[-3000:]
    return lines[0]


FIXTURES = """
import pytest
from pytest_bclone import assert_parity


@pytest.fixture
def blocked_in_setup():
    assert_parity(cohort="bad", within=3)  # on_fail="block": fails in setup (an error)
    yield


@pytest.fixture
def routed_in_teardown():
    yield
    assert_parity(cohort="bad", within=3, on_fail="route")
"""


def test_a_verdict_in_fixture_setup_blocks_the_release(gate: pytest.Pytester):
    gate.makeconftest(CONFTEST + FIXTURES)
    gate.makepyfile(test_g="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10)

        def test_uses_a_gate_fixture(blocked_in_setup):
            pass
    """)
    result = gate.runpytest("-p", "no:cacheprovider", "--bclone-report-json=r.json")
    result.assert_outcomes(passed=1, errors=1)
    assert _line(result) == "BCLONE GATE: BLOCKED (bad: action_match fail)"
    assert result.ret == 1
    report = json.loads((gate.path / "r.json").read_text())
    by_cohort = {v["cohort"]: v for v in report["verdicts"]}
    assert by_cohort["bad"]["test"] == "test_g.py::test_uses_a_gate_fixture"
    assert by_cohort["bad"]["action"] == "block" and by_cohort["good"]["action"] == "ship"


def test_a_verdict_in_fixture_teardown_routes_the_cohort(gate: pytest.Pytester):
    gate.makeconftest(CONFTEST + FIXTURES)
    gate.makepyfile(test_g="""
        from pytest_bclone import assert_parity

        def test_good(routed_in_teardown):
            assert_parity(cohort="good", within=10)
    """)
    result = gate.runpytest("-p", "no:cacheprovider", "--bclone-report-json=r.json")
    line = _line(result)
    assert line.startswith("BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: good; expert: bad; est. saving "), line
    report = json.loads((gate.path / "r.json").read_text())
    assert report["gate"]["routes"] == {"good": "clone", "bad": "expert"}
    # attributed to the test whose teardown ran it
    assert {v["cohort"]: v["test"] for v in report["verdicts"]} == {"good": "test_g.py::test_good",
                                                                    "bad": "test_g.py::test_good"}
    assert report["gate"]["estimated_saving_pct"] > 0
    assert result.ret == 0


def test_a_killed_xdist_worker_blocks_naming_the_missing_cohort(gate: pytest.Pytester):
    pytest.importorskip("xdist")
    gate.makepyfile(test_a="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10)
    """, test_b="""
        import os
        import pytest

        @pytest.mark.bclone(cohort="spare")
        def test_spare():
            os._exit(1)  # the worker dies before the verdict
    """)
    result = gate.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--bclone-report-json=r.json")
    line = _line(result)
    assert line.startswith("BCLONE GATE: BLOCKED (spare: MISSING (gate test crashed before its verdict)"), line
    assert result.ret == 1
    report = json.loads((gate.path / "r.json").read_text())
    assert report["gate"]["missing"] == [{"cohort": "spare", "test": "test_b.py::test_spare", "outcome": "crashed"}]
    assert [v["cohort"] for v in report["verdicts"]] == ["good"]


@pytest.mark.parametrize("allow_inconclusive", [False, True])
def test_a_clone_failing_every_call_never_ships(gate: pytest.Pytester, allow_inconclusive: bool):
    gate.makepyfile(test_d=f"""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10, allow_inconclusive={allow_inconclusive})

        def test_bad():
            assert_parity(cohort="bad", within=10, allow_inconclusive={allow_inconclusive})
    """)
    result = gate.runpytest("-p", "no:cacheprovider", "--bclone-clone=dead")
    line = _line(result)
    assert line.startswith("BCLONE GATE: BLOCKED ("), line
    assert "SHIP" not in line
    assert result.ret == 1


def test_the_ini_policy_sets_on_fail_and_the_remedy(gate: pytest.Pytester):
    gate.makeini(INI + """bclone_policy =
    bad = route | record 50 more refund conversations for the next clone
    spare = warn
""")
    gate.makepyfile(test_p="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10)

        def test_bad():
            assert_parity(cohort="bad", within=3)  # no on_fail: the policy's route
    """)
    result = gate.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, xfailed=1)
    assert _line(result).startswith("BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: good; expert: bad;")
    assert "  next: bad: record 50 more refund conversations for the next clone" in result.stdout.lines
    # the assertion's own on_fail wins over the policy line
    gate.makepyfile(test_p="""
        from pytest_bclone import assert_parity

        def test_bad():
            assert_parity(cohort="bad", within=3, on_fail="block")
    """)
    result = gate.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert _line(result).startswith("BCLONE GATE: BLOCKED (bad: action_match fail")


def test_a_bad_policy_line_is_a_usage_error(gate: pytest.Pytester):
    gate.makeini(INI + "bclone_policy =\n    bad = sometimes\n")
    result = gate.runpytest("-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines([("ERROR: ini key bclone_policy: invalid value *'bad = sometimes'*on_fail "
                                  "'sometimes' is not one of block, route, warn*")])


def test_pass_k_uses_every_repeat(gate: pytest.Pytester):
    """The clone differs from the expert only on its third sample (repeat index 2): pass^3 on a
    binary metric must see it; pass^2 must not."""
    gate.makepyfile(test_k="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10, on_fail="warn")
    """)
    three = gate.runpytest("-p", "no:cacheprovider", "--bclone-clone=flip", "--bclone-repeats=3",
                           "--bclone-report-json=k3.json")
    v3 = json.loads((gate.path / "k3.json").read_text())["verdicts"][0]
    # step 0 of each of the 120 trajectories fails on the third sample: half the decision points
    assert v3["clone_mean"] == pytest.approx(0.5) and v3["status"] == "fail", v3
    assert three.ret == 0 or "warn" in three.stdout.str()
    gate.runpytest("-p", "no:cacheprovider", "--bclone-clone=flip", "--bclone-repeats=2",
                   "--bclone-report-json=k2.json")
    v2 = json.loads((gate.path / "k2.json").read_text())["verdicts"][0]
    assert v2["clone_mean"] == pytest.approx(1.0) and v2["status"] == "pass", v2


def test_recorded_expert_scores_appear_in_every_report(gate: pytest.Pytester):
    gate.makepyfile(test_r="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=10)
    """)
    result = gate.runpytest("-p", "no:cacheprovider", "--bclone-report-json=r.json", "--bclone-report-md=r.md",
                            "--bclone-report-html=r.html")
    shown = "task_completion 75.0 (n 120)"  # the dataset's record, not the replayed expert's 100
    assert f"  recorded expert (dataset): good: {shown}" in result.stdout.lines
    report = json.loads((gate.path / "r.json").read_text())
    assert report["recorded_expert"] == [{"cohort": "good", "score": "task_completion", "n": 120, "mean": 0.75}]
    assert f"- good: {shown}" in (gate.path / "r.md").read_text().splitlines()
    assert f"Recorded expert (dataset): {shown}." in (gate.path / "r.html").read_text()
