"""``--bclone-sequential`` through the plugin: the same decision as the full gate with fewer model
calls, both on a synthetic suite (calls counted by the clone) and on the example suite with its
behaviour-cloned clone served over HTTP through litellm (requests counted by the server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.sequential_gate import round_size, seeded_order
from pytest_bclone.testing import OpenAIServer, Reply, reply

from .conftest import make_row

REPO = Path(__file__).resolve().parents[1]
STEP_FILES = [f"example_suite/test_{name}.py" for name in ("common_intents", "long_tail", "safety", "tool_heavy")]

CONFTEST = '''
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import Action, AgentReply, CallStats


class Clone:
    """Copies the expert; in cohort 'bad' it answers text at step 0 of 4 trajectories in 10; in
    cohort 'broken' every 5th call fails. Every call is logged (the test counts them)."""

    name = "clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        with open("calls.log", "a") as f:
            f.write(state.trajectory_id + "\\n")
        kind, n = state.trajectory_id.split("-")
        n = int(n)
        if kind == "bad" and n % 10 < 4 and state.step == 0:
            return AgentReply(Action(text="Sorry, I cannot."), CallStats(prompt_tokens=40, completion_tokens=5))
        if kind == "broken" and n % 5 == 0:
            return AgentReply(None, CallStats(error="HTTP 500 after retries"))
        answer = await self.recorded.act(state, repeat=repeat)
        return AgentReply(answer.action, CallStats(prompt_tokens=40, completion_tokens=5))


def pytest_bclone_make_agent(role, spec, config):
    if spec == "clone":
        from pytest_bclone.plugin import bclone_session
        return Clone(bclone_session(config).dataset.trajectories)
'''

TESTS = '''
from pytest_bclone import assert_parity, assert_no_regression

def test_good():
    assert_parity("good", within=5, metric="action_match")

def test_bad():
    assert_parity("bad", within=5, metric="action_match", on_fail="route")

def test_good_zero_regression():
    assert_no_regression("good", metric="action_match")

def test_broken():
    assert_parity("broken", within=5, metric="action_match", on_fail="route")
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    rows = []
    for kind, n in (("good", 400), ("bad", 400), ("broken", 60)):
        for i in range(n):
            row = make_row(i, cohorts=(kind,), split="eval")
            row["id"] = f"{kind}-{i:04d}"
            rows.append(row)
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", rows)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate=TESTS)
    pytester.makeini("[pytest]\nbclone_dataset = support@v1\nbclone_clone = clone\nbclone_price =\n"
                     "    clone=1/5\n")
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, Any], int]:
    log = pytester.path / "calls.log"
    log.unlink(missing_ok=True)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bclone-report-json=report.json", *args)
    report = json.loads((pytester.path / "report.json").read_text())
    calls = len(log.read_text().splitlines()) if log.exists() else 0
    assert result.ret in (0, 1), result.stdout.str()
    return report, calls


def test_sequential_reaches_the_full_gates_decision_with_fewer_calls(suite: pytest.Pytester) -> None:
    full, full_calls = _run(suite)
    seq, seq_calls = _run(suite, "--bclone-sequential")
    assert seq["gate"]["decision"] == full["gate"]["decision"]
    assert [(v["cohort"], v["within"], v["status"]) for v in seq["verdicts"]] == \
        [(v["cohort"], v["within"], v["status"]) for v in full["verdicts"]]
    assert seq_calls < full_calls * 0.7, (seq_calls, full_calls)
    good, bad, good_zero, broken = seq["sequential"]["cohorts"]  # in the order the tests ran
    assert good["stopped"] == "pass" and good["replayed"] < 400  # settled early
    assert bad["stopped"] == "fail" and bad["replayed"] <= 400 // 5
    # Zero regression passes only on every trajectory; failed calls never let a cohort pass early.
    assert good_zero["stopped"] == "full" and good_zero["replayed"] == 400
    # 60 trajectories cannot show a 5-point margin even for an identical clone (92 are needed):
    # known before the replay, so the cohort stops after half of it, inconclusive as in full.
    assert broken["stopped"] == "too small" and broken["replayed"] == 3 * round_size(60) == 30
    assert "about 92 are needed" in broken["reason"]
    saved = seq["sequential"]
    assert saved["saved_trajectories"] > 0 and saved["saved_calls"] > 0 and saved["saved_usd"] > 0
    # The saving is what the clone did not have to answer.
    assert saved["saved_calls"] == full_calls - seq_calls


def test_zero_regression_stops_at_the_first_regression(pytester: pytest.Pytester) -> None:
    rows = []
    for i in range(300):
        row = make_row(i, cohorts=("bad",), split="eval")
        row["id"] = f"bad-{i:04d}"
        rows.append(row)
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", rows)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_gate='''
from pytest_bclone import assert_no_regression

def test_bad():
    assert_no_regression("bad", metric="action_match")
''')
    pytester.makeini("[pytest]\nbclone_dataset = support@v1\nbclone_clone = clone\n")
    report, calls = _run(pytester, "--bclone-sequential")
    run = report["sequential"]["cohorts"][0]
    assert run["stopped"] == "fail" and run["rounds"] == 1 and run["replayed"] == round_size(300)
    assert report["verdicts"][0]["status"] == "fail" and report["gate"]["decision"] == "BLOCKED"
    assert calls == round_size(300) * 2  # two decision points per trajectory, one round


def test_rounds_follow_a_seeded_order() -> None:
    from pytest_bclone.records import Trajectory

    ts = [Trajectory(f"t{i}", ("c",), "eval", [], []) for i in range(50)]
    a = [t.id for t in seeded_order(ts, 0, "c")]
    assert a == [t.id for t in seeded_order(list(reversed(ts)), 0, "c")]  # not the storage order
    assert a != [t.id for t in seeded_order(ts, 1, "c")] and sorted(a) == sorted(t.id for t in ts)


# -- the example suite, its clone served over HTTP through litellm -------------------------------------
@pytest.fixture(scope="module")
def bc_server() -> Iterator[OpenAIServer]:
    sys.path.insert(0, str(REPO))
    try:
        from example_suite.retail.clone import train_clone
    finally:
        sys.path.remove(str(REPO))
    version = DatasetStore(str(REPO / "example_suite" / "bclone_datasets")).load("retail@v7")
    clone = train_clone(version.select("train"), "bc-clone@v7")

    def answer(request: dict[str, Any]) -> Reply:
        action = clone.predict(request["messages"])
        return reply(action.text, [(c.name, c.raw_arguments or json.dumps(c.arguments)) for c in action.tool_calls])

    with OpenAIServer(answer) as server:
        yield server


def _example(tmp: Path, server: OpenAIServer, *args: str) -> tuple[dict[str, Any], int]:
    work = tmp / "example"
    if not work.exists():
        shutil.copytree(REPO / "example_suite", work / "example_suite",
                        ignore=shutil.ignore_patterns("__pycache__", ".bclone", ".pytest_cache"))
    params = json.dumps({"api_base": server.base_url, "api_key": "sk-sequential-test"})
    before = server.request_count
    proc = subprocess.run(
        # The step-mode cohorts (rollouts through HTTP would triple the time without showing more).
        [sys.executable, "-m", "pytest", *STEP_FILES, "--bclone-dataset=v8", "-p", "no:cacheprovider",
         "--bclone-clone=openai/bc-clone", "-o", f"bclone_clone_params={params}", "--bclone-cache-mode=off",
         "--bclone-concurrency=32", f"--bclone-report-json={tmp / 'report.json'}", *args],
        cwd=work, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode in (0, 1), proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((tmp / "report.json").read_text()), server.request_count - before


def test_the_example_gate_decides_the_same_with_fewer_requests(bc_server: OpenAIServer, tmp_path: Path) -> None:
    full, full_requests = _example(tmp_path, bc_server)
    seq, seq_requests = _example(tmp_path, bc_server, "--bclone-sequential")
    assert seq["gate"]["decision"] == full["gate"]["decision"]
    assert {(v["cohort"], v["metric"]): v["status"] for v in seq["verdicts"]} == \
        {(v["cohort"], v["metric"]): v["status"] for v in full["verdicts"]}
    assert 0 < seq_requests < full_requests, (seq_requests, full_requests)
    assert any(r["stopped"] != "full" for r in seq["sequential"]["cohorts"])
