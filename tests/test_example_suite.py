"""The main job: `pytest example_suite --bclone-dataset=v8` ends with a BCLONE GATE decision that
emerges from the real expert, the trained clone and the real evaluators, and is the same under
pytest-xdist. Runs the suite the way a newcomer does: a subprocess in the repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / f"report{len(list(tmp_path.iterdir()))}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "example_suite", "--bclone-dataset=v8", "-p", "no:cacheprovider",
         f"--bclone-report-json={report}", f"--bclone-cache-dir={tmp_path / 'cache'}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    return proc, json.loads(report.read_text())


def _gate_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("BCLONE GATE:")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def test_example_gate_decides_and_xdist_agrees(tmp_path: Path):
    pytest.importorskip("xdist")
    plain, report = _run(tmp_path)
    line = _gate_line(plain.stdout)
    assert line == report["gate"]["line"]
    # The v7 clone gated on v8: the retired refund tool shows up as dead-tool calls.
    dead = {row["tool"]: row["count"] for row in report["dead_tools"]}
    assert dead.get("issue_refund_legacy", 0) > 0
    assert "issue_refund_legacy" in plain.stdout
    # Every cohort of the release table was gated, with the table's metric.
    gated = {(v["cohort"], v["metric"]) for v in report["verdicts"]}
    assert {("common_intents", "task_completion"), ("long_tail", "trajectory_score"),
            ("safety", "safety_refusal"), ("tool_heavy", "tool_selection"),
            ("multi_turn_refunds", "task_completion"), ("multi_turn_refunds", "step_count")} <= gated
    # The exit status follows the decision.
    assert (plain.returncode == 0) == (report["gate"]["decision"] != "BLOCKED")
    # Pinned: the v7 clone on v8 is blocked, by its own verdicts, and exits 1. Statuses by the
    # interval's position (CI-based non-inferiority); actions by the suite's bclone_policy.
    assert line == (
        "BCLONE GATE: BLOCKED (common_intents: task_completion inconclusive; multi_turn_refunds: step_count fail; "
        "multi_turn_refunds: task_completion fail; safety: zero regression violated, 6 regressions; "
        "tool_heavy: tool_selection inconclusive)")
    assert plain.returncode == 1
    table = [(v["cohort"], v["metric"], v["mode"], v["status"], v["action"], round(v["diff"], 1), v["n"])
             for v in report["verdicts"]]
    assert table == [
        ("common_intents", "task_completion", "step", "inconclusive", "block", -1.5, 203),
        ("long_tail", "trajectory_score", "step", "inconclusive", "route to expert", -4.9, 109),
        ("multi_turn_refunds", "step_count", "rollout", "fail", "block", -14.9, 81),
        ("multi_turn_refunds", "task_completion", "rollout", "fail", "block", -77.8, 81),
        ("safety", "safety_refusal", "step", "fail", "block", -1.5, 399),
        ("tool_heavy", "tool_selection", "step", "inconclusive", "block", -2.8, 459),
    ]
    # Next steps come from the suite's policy (its release table), not from cohort names in the core.
    assert "  next: safety: block the deploy: the clone regressed on safety/refusal states" in plain.stdout
    assert "  next: multi_turn_refunds: sample more multi-turn refund rows for the next clone" in plain.stdout
    # Rollouts are answered by the scripted customer (the suite's pytest_bclone_make_user), and the
    # report says so, with the recorded expert's own outcome beside it.
    user = report["rollouts"]["user"]
    assert (user["mode"], user["clone_episode"], user["expert_episode"]) == (
        "scripted-customer", "simulated", "its recording")
    assert "rollout user: scripted-customer (answers what the agent asks; clone episodes simulated; the expert's " \
           "episodes are its recordings); expert's recorded task_completion 100.0 over 81" in plain.stdout

    dist, dist_report = _run(tmp_path, "-n", "2")
    assert _gate_line(dist.stdout) == line
    key = lambda v: (v["cohort"], v["metric"], v["mode"])
    strip = lambda v: {k: v[k] for k in v if k != "test"}
    assert sorted(map(strip, report["verdicts"]), key=key) == sorted(map(strip, dist_report["verdicts"]), key=key)
    assert dist_report["scores"] == report["scores"]
    assert dist_report["rollouts"]["user"] == report["rollouts"]["user"]
    assert dist_report["dead_tools"] == report["dead_tools"]
