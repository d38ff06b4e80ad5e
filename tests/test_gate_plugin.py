"""The gate as users drive it: pytester projects with a real Parquet dataset and a Python clone.

Pass, fail, xfail (route), inconclusive, zero regression, failed model calls, the messages, the
bclone_case parametrisation, lazy single replay, and equality of results under pytest-xdist.
"""

from __future__ import annotations

import json
import sys

import pytest

from pytest_bclone.dataset.store import DatasetStore

from .conftest import make_row

CONFTEST = '''
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import Action, AgentReply, CallStats

CALLS = []


class FlakyClone:
    """Copies the expert, except: in cohort 'bad' it answers text at step 0 of 3 trajectories
    in 10; in cohort 'broken' its model call fails on every 4th trajectory."""

    name = "flaky-clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        CALLS.append(state.trajectory_id)
        with open("calls.log", "a") as f:
            f.write(state.trajectory_id + "\\n")
        kind, n = state.trajectory_id.split("-")
        n = int(n)
        if kind == "bad" and n % 10 < 3 and state.step == 0:
            return AgentReply(Action(text="I cannot help with that."), CallStats(prompt_tokens=50, completion_tokens=8))
        if kind == "broken" and n % 4 == 0:
            return AgentReply(None, CallStats(error="HTTP 500 from the clone server after 4 retries"))
        reply = await self.recorded.act(state, repeat=repeat)
        return AgentReply(reply.action, CallStats(prompt_tokens=50, completion_tokens=8))


def pytest_bclone_make_agent(role, spec, config):
    if spec == "flaky":
        from pytest_bclone.plugin import bclone_session
        return FlakyClone(bclone_session(config).dataset.trajectories)
'''

INI = """
[pytest]
bclone_dataset = support@v1
bclone_clone = flaky
bclone_bootstrap = 1000
bclone_cohort_metrics =
    good=action_match
    bad=action_match
bclone_price =
    flaky-clone=1/5
    big-expert=15/75
"""


def _rows() -> list[dict]:
    rows = []
    for kind, n in (("good", 300), ("bad", 300), ("tiny", 5), ("broken", 60)):
        for i in range(n):
            row = make_row(i, cohorts=(kind,), split="eval")
            row["id"] = f"{kind}-{i:04d}"
            row["metadata"] = {"expert_model": "big-expert", "expert_usage": {"prompt_tokens": 400,
                                                                              "completion_tokens": 60}}
            rows.append(row)
    rows += [{**make_row(i, split="train"), "id": f"train-{i:04d}"} for i in range(20)]
    return rows


@pytest.fixture
def gate(pytester: pytest.Pytester) -> pytest.Pytester:
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", _rows())
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


# "good" copies the expert exactly on 300 trajectories: the score interval of no discordant pair is
# about +-1.6 points there, so 2 points is the tightest margin it can pass (1 point is inconclusive).
def test_pass_fail_and_the_failure_message(gate: pytest.Pytester):
    gate.makepyfile(test_cohorts="""
        from pytest_bclone import assert_parity

        def test_good():
            v = assert_parity(cohort="good", within=2)
            assert v.status == "pass" and v.n == 600

        def test_bad():
            assert_parity(cohort="bad", within=3)
    """)
    result = gate.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # The explicit message: cohort, metric, n, expert, clone, difference, interval, margin.
    result.stdout.re_match_lines([
        (r".*bad / action_match: n=600 \(300 trajectories\) expert=1\.000 clone=0\.850 diff=-15\.0 pts "
         r"95% CI \[-\d+\.\d, -\d+\.\d\] margin -3\.0 -> FAIL.*"),
    ])
    assert "worst divergences (trajectory, step: expert -> clone):" in out
    assert "bad-0000 step 0: get_order(order_id='W0'); get_order(order_id='W0b') -> 'I cannot help with that.'" in out
    # pytrace=False: the failure shows the built message, no traceback and no source of the test
    assert "Traceback" not in out
    assert "def test_bad():" not in out and not any(line.startswith(">") for line in result.stdout.lines)
    result.stdout.re_match_lines([r"BCLONE GATE: BLOCKED \(bad: action_match fail\)"])
    assert "bad: retrain the clone with more rows of this cohort" in out
    assert result.ret == 1


def test_route_reports_xfail_and_a_hybrid_route_with_saving(gate: pytest.Pytester):
    gate.makepyfile(test_cohorts="""
        import pytest
        from pytest_bclone import assert_parity

        pytestmark = pytest.mark.bclone(cohort="good")

        def test_good():
            assert_parity(cohort="good", within=2)

        @pytest.mark.bclone(cohort="bad")
        def test_bad():
            assert_parity(cohort="bad", within=3, on_fail="route")
    """)
    result = gate.runpytest("-rx", "--bclone-report-json=report.json", "--bclone-routes=routes.json")
    result.assert_outcomes(passed=1, xfailed=1)
    assert result.ret == 0
    result.stdout.re_match_lines([r".*XFAIL.*routed to the expert: bad / action_match: n=600.*"])
    report = json.loads((gate.path / "report.json").read_text())
    gate_ = report["gate"]
    assert gate_["decision"] == "SHIP WITH HYBRID ROUTE"
    assert gate_["routes"] == {"good": "clone", "bad": "expert"}
    # Expert: 400 in + 60 out tokens at 15/75 per M = 0.0105 per trajectory; clone: 2 calls of
    # 50 + 8 tokens at 1/5 per M = 0.00018. Half the traffic moves: saving = 0.5 * (1 - 0.00018/0.0105).
    assert gate_["traffic_on_clone_pct"] == 50.0
    assert gate_["estimated_saving_pct"] == pytest.approx(49.1, abs=0.1)
    assert gate_["line"] == ("BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: good; expert: bad; est. saving 49%)")
    routes = json.loads((gate.path / "routes.json").read_text())
    # The recorded expert is served in production by the model its dataset names.
    assert routes["routes"]["bad"] == "big-expert" and routes["routes"]["good"] == "flaky-clone"
    # Both cohorts were declared by markers: one replay served both tests (600 + 600 clone calls).
    calls = (gate.path / "calls.log").read_text().split()
    assert len(calls) == 1200 and len(set(calls)) == 600


def test_inconclusive_fails_unless_allowed(gate: pytest.Pytester):
    gate.makepyfile(test_tiny="""
        import pytest
        from pytest_bclone import assert_parity

        def test_tiny():
            assert_parity(cohort="tiny", within=3, metric="action_match")

        def test_tiny_allowed():
            with pytest.warns(Warning, match="INCONCLUSIVE"):
                v = assert_parity(cohort="tiny", within=3, metric="action_match", allow_inconclusive=True)
            assert v.status == "inconclusive"
    """)
    result = gate.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.re_match_lines([r".*tiny / action_match: n=10 \(5 trajectories\).*INCONCLUSIVE.*"])


def test_zero_regression_counts_regressions(gate: pytest.Pytester):
    gate.makepyfile(test_safety="""
        from pytest_bclone import assert_no_regression

        def test_good():
            assert_no_regression(cohort="good", metric="action_match")

        def test_bad():
            assert_no_regression(cohort="bad", metric="action_match")
    """)
    result = gate.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "bad / action_match" in out and "90 regression" in out
    result.stdout.re_match_lines([r"BCLONE GATE: BLOCKED \(bad: zero regression violated, 90 regressions\)"])


def test_failed_model_calls_are_counted_and_never_pass(gate: pytest.Pytester):
    gate.makepyfile(test_broken="""
        from pytest_bclone import assert_parity

        def test_broken():
            assert_parity(cohort="broken", within=50, metric="action_match")
    """)
    result = gate.runpytest("--bclone-report-json=r.json")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([r".*broken / action_match: n=90 .*INCONCLUSIVE: 30 of 120 items lost to failed model calls.*"])
    report = json.loads((gate.path / "r.json").read_text())
    assert report["errors"]["by_role"]["clone"] == 30  # 15 trajectories x 2 steps
    assert "HTTP 500" in report["errors"]["examples"][0]["error"]
    assert report["agents"]["clone"]["failed"] == 30
    # Even a tolerant error rate cannot turn lost items into a pass when they could be regressions.
    gate.makepyfile(test_broken="""
        from pytest_bclone import assert_parity

        def test_broken():
            v = assert_parity(cohort="broken", within=3, metric="action_match")
    """)
    result = gate.runpytest("--bclone-max-error-rate=0.5")
    result.assert_outcomes(failed=1)


def test_bclone_case_parametrises_one_test_per_trajectory(gate: pytest.Pytester):
    gate.makepyfile(test_cases="""
        import pytest

        @pytest.mark.bclone(cohort="tiny")
        def test_case(bclone_case):
            assert bclone_case.trajectory.id.startswith("tiny-")
            assert bclone_case.clone_score("action_match") == bclone_case.expert_score("action_match") == 1.0
            assert bclone_case.clone_score("trajectory_score") == 1.0
            assert [s["step"] for s in bclone_case.steps()] == [0, 1]

        def test_results(bclone):
            assert "good" in bclone.cohorts
            scores = bclone.scores("bad", "action_match")
            assert len(scores) == 600 and sum(c for _, _, c in scores) == 510
    """)
    result = gate.runpytest("-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_case[[]tiny-0000[]] PASSED*", "*test_case[[]tiny-0004[]] PASSED*"])


def test_marker_and_cohort_errors_are_clear(gate: pytest.Pytester):
    gate.makepyfile(test_err="""
        import pytest
        from pytest_bclone import assert_parity

        def test_unknown_cohort():
            assert_parity(cohort="lon_tail", within=3, metric="action_match")

        def test_unknown_metric():
            assert_parity(cohort="good", within=3, metric="politeness")

        def test_no_default_metric():
            assert_parity(cohort="tiny", within=3)
    """, test_marker="""
        import pytest

        @pytest.mark.bclone(cohort="nope")
        def test_case(bclone_case):
            pass
    """)
    result = gate.runpytest("test_err.py")
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "cohort 'lon_tail' (from assert_parity(cohort='lon_tail')) has no trajectories" in out
    assert "known cohorts: bad, broken, good, tiny" in out
    assert "politeness" in out and "register" in out
    assert "no metric for cohort 'tiny': pass metric=... to the assertion, or add a line 'tiny=task_completion'" in out
    result = gate.runpytest("test_marker.py")
    assert result.ret == 2  # a collection error
    assert "cohort 'nope' (from @pytest.mark.bclone on test_marker.py::test_case) has no trajectories" in (
        result.stdout.str())


def test_xdist_gives_the_same_verdicts_and_aggregates(gate: pytest.Pytester):
    pytest.importorskip("xdist")
    gate.makepyfile(test_a="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=2)

        def test_bad():
            assert_parity(cohort="bad", within=3, on_fail="route")
    """, test_b="""
        from pytest_bclone import assert_parity, assert_no_regression

        def test_tiny():
            assert_parity(cohort="tiny", within=3, metric="trajectory_score", allow_inconclusive=True)

        def test_bad_zero():
            assert_no_regression(cohort="bad", metric="action_match", on_fail="warn")
    """)
    plain = gate.runpytest_subprocess("--bclone-report-json=plain.json", "-p", "no:xdist")
    plain.assert_outcomes(passed=3, xfailed=1)
    dist = gate.runpytest_subprocess("-n", "2", "--bclone-report-json=dist.json")
    dist.assert_outcomes(passed=3, xfailed=1)
    a = json.loads((gate.path / "plain.json").read_text())
    b = json.loads((gate.path / "dist.json").read_text())

    def comparable(report: dict) -> dict:
        report = {k: v for k, v in report.items() if k not in ("created",)}
        report["run"] = {k: v for k, v in report["run"].items() if k not in ("wall_s", "phases_s")}
        report["verdicts"] = sorted(({k: v for k, v in r.items()} for r in report["verdicts"]),
                                    key=lambda r: r["test"])
        for role in report["agents"].values():
            role.pop("latency_p50_s"), role.pop("latency_p95_s")
        return report

    assert comparable(a) == comparable(b)
    assert a["gate"]["decision"] == "SHIP WITH HYBRID ROUTE"
    assert [line for line in dist.stdout.lines if line.startswith("BCLONE GATE:")] == [
        line for line in plain.stdout.lines if line.startswith("BCLONE GATE:")]


def _serial_then_two_workers(gate: pytest.Pytester, passed: int) -> None:
    """Run the gate serially, then under ``-n 2``: each trajectory's states are answered as often as
    serially (once: by one worker, never by two), and the JSON reports are the same."""
    plain = gate.runpytest_subprocess("--bclone-report-json=plain.json", "-p", "no:xdist")
    plain.assert_outcomes(passed=passed)
    serial_calls = sorted((gate.path / "calls.log").read_text().split())  # a trajectory id per state answered
    assert serial_calls
    (gate.path / "calls.log").unlink()
    dist = gate.runpytest_subprocess("-n", "2", "--bclone-report-json=dist.json")
    assert dist.ret == plain.ret
    dist.assert_outcomes(passed=passed)
    assert sorted((gate.path / "calls.log").read_text().split()) == serial_calls
    a = json.loads((gate.path / "plain.json").read_text())
    b = json.loads((gate.path / "dist.json").read_text())
    for report in (a, b):
        report.pop("created")
        report["run"].pop("wall_s"), report["run"].pop("phases_s")
        report["verdicts"].sort(key=lambda r: r["test"])
    assert a == b


def test_xdist_splits_cohorts_between_workers_and_replays_each_trajectory_once(gate: pytest.Pytester):
    pytest.importorskip("xdist")
    gate.makepyfile(test_split="""
        import pytest
        from pytest_bclone import assert_parity

        # cohorts vary fastest: xdist's plain load distribution would hand each worker every cohort
        @pytest.mark.parametrize("cohort", ["good", "bad", "broken"])
        @pytest.mark.parametrize("metric", ["action_match", "tool_selection"])
        def test_parity(cohort, metric):
            assert_parity(cohort, within=3, metric=metric, on_fail="warn", allow_inconclusive=True)

        def test_plain():
            pass
    """)
    _serial_then_two_workers(gate, passed=7)


def test_a_worker_that_cannot_write_its_results_file_ships_them_through_xdist(gate: pytest.Pytester):
    """The results file the controller names lies in a directory that is gone (a full disk or a
    cleaned temporary directory behaves the same): the worker falls back to xdist's channel and
    the report is the serial one."""
    pytest.importorskip("xdist")
    with open(gate.path / "conftest.py", "a") as f:
        f.write(
            "\n\nimport pytest\n\n\n@pytest.hookimpl(optionalhook=True, trylast=True)\ndef pytest_configure_node(node):\n"
            "    node.workerinput['bclone_export'] = '/nonexistent-bclone-dir/results.pickle'\n")
    gate.makepyfile(test_split="""
        import pytest
        from pytest_bclone import assert_parity

        @pytest.mark.parametrize("cohort", ["good", "bad", "broken"])
        def test_parity(cohort):
            assert_parity(cohort, within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)
    """)
    _serial_then_two_workers(gate, passed=3)


def test_a_worker_results_file_the_controller_cannot_read_blocks_the_gate(gate: pytest.Pytester):
    """A worker's results file damaged before the controller reads it: the report would lack that
    worker's results, so the gate blocks and names the file; no INTERNALERROR."""
    pytest.importorskip("xdist")
    with open(gate.path / "conftest.py", "a") as f:
        f.write(
            "\n\nimport pytest\n\n\n@pytest.hookimpl(optionalhook=True, tryfirst=True)\ndef pytest_testnodedown(node, error):\n"
            "    path = getattr(node, 'workeroutput', {}).get('bclone_file')\n"
            "    if path:\n"
            "        open(path, 'wb').write(b'not a pickle')\n")
    gate.makepyfile(test_split="""
        import pytest
        from pytest_bclone import assert_parity

        @pytest.mark.parametrize("cohort", ["good", "bad"])
        def test_parity(cohort):
            assert_parity(cohort, within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)
    """)
    dist = gate.runpytest_subprocess("-n", "2")
    out = dist.stdout.str()
    assert "INTERNALERROR" not in out + dist.stderr.str()
    line = next(x for x in out.splitlines() if x.startswith("BCLONE GATE:"))
    assert line.startswith("BCLONE GATE: BLOCKED") and "results file" in line and "UnpicklingError" in line, line
    assert dist.ret != 0


# Each cohort's tests only in the module's marker: no node id names a cohort or a trajectory. Two
# tests per cohort, so without the workers' groups xdist's scheduler may give them to two workers.
MARKER_ONLY = {
    f"test_{cohort}": f"""
        import pytest
        from pytest_bclone import assert_parity

        pytestmark = pytest.mark.bclone(cohort="{cohort}")

        def test_action_match():
            assert_parity("{cohort}", within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)

        def test_tool_selection():
            assert_parity("{cohort}", within=3, metric="tool_selection", on_fail="warn", allow_inconclusive=True)
    """
    for cohort in ("good", "bad", "broken")
}


def test_xdist_marker_only_cohorts_run_on_one_worker_and_each_state_is_answered_once(gate: pytest.Pytester):
    pytest.importorskip("xdist")
    gate.makepyfile(**MARKER_ONLY)
    # With two workers replaying one cohort, that cohort's states would be answered twice.
    _serial_then_two_workers(gate, passed=6)


def test_xdist_a_test_naming_two_cohorts_joins_their_groups(gate: pytest.Pytester):
    pytest.importorskip("xdist")
    # test_pair's marker names 'good', its parameter 'bad': both cohorts' tests go to one worker,
    # so neither cohort is replayed on two workers (test_pair asserts on both).
    gate.makepyfile(test_pair="""
        import pytest
        from pytest_bclone import assert_parity

        @pytest.mark.bclone(cohort="good")
        @pytest.mark.parametrize("cohort", ["bad"])
        def test_pair(cohort):
            assert_parity("good", within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)
            assert_parity(cohort, within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)

        @pytest.mark.bclone(cohort="good")
        def test_good():
            assert_parity("good", within=3, metric="tool_selection", on_fail="warn", allow_inconclusive=True)

        @pytest.mark.bclone(cohort="bad")
        def test_bad():
            assert_parity("bad", within=3, metric="tool_selection", on_fail="warn", allow_inconclusive=True)

        @pytest.mark.bclone(cohort="broken")
        def test_broken():
            assert_parity("broken", within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)
    """)
    _serial_then_two_workers(gate, passed=4)


def test_xdist_workers_of_a_large_gate_exit_fast_and_the_report_is_unchanged(gate: pytest.Pytester):
    """Each worker with many results (the threshold lowered here) ends through fast_exit once its
    results are shipped (the controller waits for every worker's process to end), and the run's
    report is the serial one."""
    pytest.importorskip("xdist")
    gate.makeconftest(CONFTEST + '''
import os
import pytest_bclone.plugin as plugin

plugin.FAST_EXIT_ITEMS = 1
_fast_exit = plugin.fast_exit


def fast_exit(config, code):
    # Not PYTEST_XDIST_WORKER: under an outer `pytest -n`, this run's controller inherits it.
    with open(f"fast_exit.{getattr(config, 'workerinput', {}).get('workerid', 'main')}.log", "w") as f:
        f.write(str(code))
    _fast_exit(config, code)


plugin.fast_exit = fast_exit
''')
    gate.makepyfile(test_split="""
        import pytest
        from pytest_bclone import assert_parity

        @pytest.mark.parametrize("cohort", ["good", "bad", "broken"])
        def test_parity(cohort):
            assert_parity(cohort, within=3, metric="action_match", on_fail="warn", allow_inconclusive=True)
    """)
    _serial_then_two_workers(gate, passed=3)
    assert sorted(p.name for p in gate.path.glob("fast_exit.*.log")) == [
        "fast_exit.gw0.log", "fast_exit.gw1.log", "fast_exit.main.log"]


def test_judge_metric_gates_through_litellm_and_counts_judge_failures(gate: pytest.Pytester, monkeypatch):
    """--bclone-judge: the judge is a real litellm call to a local OpenAI-compatible server.

    The stub judge scores a refusal text 0 and anything else 1, and answers garbage for states of
    orders W1 and W11 (trajectories *-0001 and *-0011 of every cohort): those judge calls fail,
    and are counted, never scored."""
    from pytest_bclone.testing import OpenAIServer, reply

    def judge(request):
        data = request["messages"][-1]["content"]
        if "W1b" in data or "W11b" in data:
            return reply("I think it is fine")  # not the strict JSON verdict: a judge failure
        score = 0.0 if "I cannot help" in data else 1.0
        return reply(json.dumps({"score": score, "reason": "stub"}))

    gate.makepyfile(test_judge="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=3, metric="toxicity", mode="step")

        def test_bad():
            assert_parity(cohort="bad", within=3, metric="toxicity", mode="step")
    """)
    with OpenAIServer(judge) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        result = gate.runpytest_subprocess("--bclone-judge=openai/stub-judge", "--bclone-report-json=j.json",
                                           "--bclone-max-error-rate=0.5")
        first_count = server.request_count
        assert first_count > 0
        rerun = gate.runpytest_subprocess("--bclone-judge=openai/stub-judge", "--bclone-max-error-rate=0.5")
        assert server.request_count == first_count  # judge calls are cached like agent calls
    result.assert_outcomes(passed=1, failed=1)
    rerun.assert_outcomes(passed=1, failed=1)
    report = json.loads((gate.path / "j.json").read_text())
    bad = next(v for v in report["verdicts"] if v["cohort"] == "bad")
    assert bad["metric"] == "toxicity" and bad["clone_mean"] < bad["expert_mean"]
    assert bad["errors"] == 4  # bad-0001 and bad-0011, 2 steps each: judge failures excluded
    good = next(v for v in report["verdicts"] if v["cohort"] == "good")
    assert good["errors"] == 4 and good["status"] == "pass"  # 4 lost of 600 cannot hide a 3-point loss
    assert any("judge toxicity" in e["error"] for e in report["errors"]["examples"])


def test_holm_correction_is_applied_across_the_runs_verdicts(gate: pytest.Pytester):
    gate.makepyfile(test_holm="""
        from pytest_bclone import assert_no_regression, assert_parity

        def test_good():
            assert_parity(cohort="good", within=2)

        def test_bad():
            assert_parity(cohort="bad", within=20, on_fail="route")

        def test_zero():
            assert_no_regression(cohort="good", metric="action_match")
    """)
    result = gate.runpytest("--bclone-holm", "--bclone-report-json=h.json")
    result.assert_outcomes(passed=3)
    report = json.loads((gate.path / "h.json").read_text())
    by_test = {v["test"].split("::")[1]: v for v in report["verdicts"]}
    # The two interval tests form the family; the exact zero-regression check is not a test.
    assert by_test["test_good"]["holm_adjusted"] and by_test["test_bad"]["holm_adjusted"]
    assert not by_test["test_zero"]["holm_adjusted"]
    for name in ("test_good", "test_bad"):
        v = by_test[name]
        assert v["p_adjusted"] >= v["p_value"] and v["status"] == "pass"
    assert report["run"]["holm"] is True


def test_sample_and_repeats_options_shape_the_replay(gate: pytest.Pytester):
    gate.makepyfile(test_s="""
        from pytest_bclone import assert_parity

        def test_good():
            v = assert_parity(cohort="good", within=1, metric="action_match", allow_inconclusive=True)
            assert v.n_clusters is not None and v.n_clusters < 300
    """)
    result = gate.runpytest("--bclone-sample=100", "--bclone-seed=3", "--bclone-repeats=2",
                            "--bclone-report-json=s.json")
    result.assert_outcomes(passed=1)
    calls = (gate.path / "calls.log").read_text().split()
    report = json.loads((gate.path / "s.json").read_text())
    good = report["verdicts"][0]
    # A seeded sample of 100 of the 665 eval trajectories; each state asked twice (repeats).
    assert len(calls) == 2 * 2 * good["n_clusters"]
    assert report["agents"]["clone"]["calls"] == len(calls)
    again = gate.runpytest("--bclone-sample=100", "--bclone-seed=3", "--bclone-report-json=s2.json")
    again.assert_outcomes(passed=1)
    assert json.loads((gate.path / "s2.json").read_text())["verdicts"][0]["n_clusters"] == good["n_clusters"]


def test_a_litellm_clone_end_to_end_with_cache_and_cache_mode_none(gate: pytest.Pytester):
    """--bclone-clone=openai/... with bclone_clone_params: the gate's real model path, over HTTP to a
    local OpenAI-compatible server that answers like the expert on every state."""
    from pytest_bclone.testing import OpenAIServer, reply

    def clone_server(request):
        last = request["messages"][-1]
        if last["role"] == "user":  # the first decision point: look both orders up
            order = last["content"].split("orders ")[1].split(" and")[0]
            return reply(tool_calls=[("get_order", {"order_id": order}), ("get_order", {"order_id": order + "b"})],
                         prompt_tokens=120, completion_tokens=20)
        order = request["messages"][1]["content"].split("orders ")[1].split(" and")[0]
        return reply(f"{order} has shipped; {order}b is pending.", prompt_tokens=150, completion_tokens=12)

    gate.makepyfile(test_llm="""
        from pytest_bclone import assert_parity

        def test_tiny():
            v = assert_parity(cohort="tiny", within=50, metric="action_match", allow_inconclusive=True)
            assert v.n == 10 and v.clone_mean == 1.0
    """)
    with OpenAIServer(clone_server) as server:
        ini = INI.replace("bclone_clone = flaky", "bclone_clone = openai/acme-clone-v8")
        ini += f'bclone_clone_params = {{"api_base": "{server.base_url}", "api_key": "sk-test"}}\n'
        gate.makeini(ini)
        args = ["--bclone-report-json=llm.json", "--bclone-price", "openai/acme-clone-v8=0.3/1.2"]
        first = gate.runpytest_subprocess(*args)
        first.assert_outcomes(passed=1)
        assert server.request_count == 10  # 5 trajectories x 2 decision points
        report = json.loads((gate.path / "llm.json").read_text())
        clone = report["agents"]["clone"]
        assert clone["name"] == "openai/acme-clone-v8" and clone["calls"] == 10
        assert (clone["prompt_tokens"], clone["completion_tokens"]) == (5 * 270, 5 * 32)
        assert clone["cost_usd"] == pytest.approx((1350 * 0.3 + 160 * 1.2) / 1e6)
        assert report["cache"] == {"hits": 0, "misses": 10}

        warm = gate.runpytest_subprocess(*args)
        warm.assert_outcomes(passed=1)
        assert server.request_count == 10  # the warm cache sent nothing
        assert json.loads((gate.path / "llm.json").read_text())["cache"] == {"hits": 10, "misses": 0}

        gate.makepyfile(test_llm="""
            from pytest_bclone import assert_parity

            def test_bad():
                assert_parity(cohort="bad", within=3, metric="action_match")
        """)
        offline = gate.runpytest_subprocess("--bclone-cache-mode=none")
        offline.assert_outcomes(failed=1)
        assert server.request_count == 10
        offline.stdout.re_match_lines([(r".*no recorded answer for trajectory 'bad-\d+' step \d.*"
                                        r"--bclone-cache-mode=new_episodes to record it.*")])


def test_a_holm_correction_that_overturns_passes_blocks_the_gate(tmp_path):
    """Two cohorts each pass alone (p = 0.02 <= 0.025) but not after Holm across both
    (adjusted 0.04): the session-level decision blocks, and says why."""
    from dataclasses import replace

    from pytest_bclone.config import build_config
    from pytest_bclone.parity import parity_verdict
    from pytest_bclone.session import BcloneSession

    DatasetStore(str(tmp_path)).write_version("support", "v1", [make_row(1)])
    cfg = build_config({"holm": True}, {}, str(tmp_path))
    session = BcloneSession(cfg, DatasetStore(str(tmp_path)).load("v1"))
    base = parity_verdict("c", "m", [1.0] * 50, [1.0] * 50, within=3)
    for cohort in ("common_intents", "tool_heavy"):
        v = replace(base, cohort=cohort, status="pass", p_value=0.02, reason="within the margin")
        session.record(v, mode="step", on_fail="block", test=f"test_{cohort}", worst=[])
    summary = session.summary()
    assert summary["gate"]["decision"] == "BLOCKED"
    assert summary["gate"]["line"].startswith("BCLONE GATE: BLOCKED (common_intents: m fail; tool_heavy: m fail")
    for v in summary["verdicts"]:
        assert v["holm_adjusted"] and v["p_adjusted"] == pytest.approx(0.04)
        assert v["status"] == "fail" and "Holm" in v["reason"] and v["outcome"] == "failed"


def test_a_large_gate_exits_fast_with_its_exit_code_reports_and_exit_work(gate: pytest.Pytester):
    """A gate with many results ends through fast_exit (the threshold lowered here): the exit code,
    the terminal summary, the JUnit and JSON reports, pytest's cleanups and atexit functions are
    all as in an ordinary exit."""
    gate.makeconftest(CONFTEST + '''
import atexit
import pytest_bclone.plugin as plugin

plugin.FAST_EXIT_ITEMS = 1
_fast_exit = plugin.fast_exit


def fast_exit(config, code):
    with open("fast_exit.log", "w") as f:
        f.write(str(code))
    _fast_exit(config, code)


plugin.fast_exit = fast_exit
atexit.register(lambda: open("atexit.log", "w").write("ran"))


def pytest_configure(config):
    config.add_cleanup(lambda: open("cleanup.log", "w").write("ran"))
''')
    gate.makepyfile(test_cohorts="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=2)

        def test_bad():
            assert_parity(cohort="bad", within=3)
    """)
    result = gate.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "--junitxml=junit.xml",
                                       "--bclone-report-json=report.json")
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    assert (gate.path / "fast_exit.log").read_text() == "1"  # the fast path was taken
    result.stdout.re_match_lines([r"BCLONE GATE: BLOCKED \(bad: action_match fail\)"])
    assert 'failures="1"' in (gate.path / "junit.xml").read_text()
    assert json.loads((gate.path / "report.json").read_text())["gate"]["decision"] == "BLOCKED"
    assert (gate.path / "cleanup.log").read_text() == "ran"
    assert (gate.path / "atexit.log").read_text() == "ran"
    # pytest.main() from a program that goes on never exits under it
    gate.makepyfile(run_main="""
        import sys
        import pytest

        code = pytest.main(["-p", "no:cacheprovider", "-p", "no:xdist", "-q", "test_cohorts.py"])
        print("still running after pytest.main:", int(code))
    """)
    (gate.path / "fast_exit.log").unlink()
    after = gate.run(sys.executable, "run_main.py")
    assert "still running after pytest.main: 1" in after.stdout.str()
    assert not (gate.path / "fast_exit.log").exists()
