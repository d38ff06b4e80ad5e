"""Recorded tau-bench runs and tau2-bench results files, written here in their published formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.importers import ImportOptions, SkippedSource, sniff_format
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.dataset.tau_bench import iter_rows
from pytest_bclone.errors import RowError

RETAIL_POLICY = "# Retail agent policy\nAs a retail agent, you can help users cancel or modify pending orders."
AIRLINE_POLICY = "# Airline Agent Policy\nThe current time is 2024-05-15 15:00:00 EST."


def _call(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    # As litellm returns it: extra keys (index) the importer must drop.
    return {"id": cid, "type": "function", "index": 0, "function": {"name": name, "arguments": json.dumps(args)}}


def _tau_bench_run(task_id: int, trial: int, reward: float, policy: str, actions: list[tuple[str, dict[str, Any]]],
                   *, outputs: list[str] | None = None) -> dict[str, Any]:
    """One EnvRunResult.model_dump() as tau-bench's run.py writes it: {task_id, reward, info, traj, trial}."""
    traj: list[dict[str, Any]] = [{"role": "system", "content": policy},
                                  {"role": "user", "content": f"Hi, I need help with task {task_id}."}]
    for k, (name, args) in enumerate(actions):
        traj.append({"role": "assistant", "content": None, "tool_calls": [_call(f"call_{k}", name, args)],
                     "function_call": None, "refusal": None})
        traj.append({"role": "tool", "tool_call_id": f"call_{k}", "name": name, "content": "{\"ok\": true}"})
    traj.append({"role": "assistant", "content": "Done. Anything else?"})
    gold = [{"name": n, "kwargs": a} for n, a in actions]
    return {
        "task_id": task_id, "reward": reward, "trial": trial, "traj": traj,
        "info": {
            "task": {"user_id": f"user_{task_id}", "actions": gold, "instruction": "You want to cancel.",
                     "outputs": outputs or []},
            "source": "user", "user_cost": 0.0123,
            "reward_info": {"reward": reward, "info": {"r_actions": reward, "gt_data_hash": "abc"}, "actions": gold},
        },
    }


CANCEL = [("find_user_id_by_email", {"email": "a@b.c"}), ("cancel_pending_order",
                                                          {"order_id": "#W1", "reason": "no longer needed"})]
BOOK = [("get_user_details", {"user_id": "mia_1"}), ("book_reservation", {"user_id": "mia_1", "origin": "JFK"})]


@pytest.fixture
def runs_file(tmp_path: Path) -> Path:
    runs = [
        _tau_bench_run(3, 0, 1.0, RETAIL_POLICY, CANCEL),
        _tau_bench_run(3, 1, 0.0, RETAIL_POLICY, CANCEL),
        _tau_bench_run(7, 0, 1.0, AIRLINE_POLICY, BOOK, outputs=["327"]),
        _tau_bench_run(8, 0, 0.0, AIRLINE_POLICY, []),
        # A run that crashed: tau-bench writes reward 0, the error, and an empty traj.
        {"task_id": 9, "reward": 0.0, "trial": 0, "traj": [], "info": {"error": "RateLimitError", "traceback": "..."}},
        # A run with no assistant turn at all.
        {"task_id": 10, "reward": 0.0, "trial": 0, "info": {"task": {"actions": []}},
         "traj": [{"role": "system", "content": RETAIL_POLICY}, {"role": "user", "content": "hello?"}]},
    ]
    path = tmp_path / "tool-calling-gpt-4o-0.0_range_0--1_user-gpt-4o-llm_0101.json"
    path.write_text(json.dumps(runs, indent=2))
    return path


def test_tau_bench_runs_import_rewards_gold_actions_and_skips(runs_file: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    code = main(["dataset", "import", str(runs_file), "--name", "runs", "--version", "v1", "--root", root])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "wrote runs@v1: 4 trajectories" in out and "(format tau-bench)" in out
    assert "skipped sources: 2" in out
    assert "[run 4] (task 9, trial 0): " in out and "the run failed (RateLimitError)" in out
    assert "[run 5] (task 10, trial 0): " in out and "no assistant turn" in out
    assert "tools.json" not in out + err

    rows = {t.id: t for t in DatasetStore(root).load("runs@v1").trajectories}
    assert sorted(rows) == ["tau-airline-7-t0", "tau-airline-8-t0", "tau-retail-3-t0", "tau-retail-3-t1"]
    won, lost = rows["tau-retail-3-t0"], rows["tau-retail-3-t1"]
    assert won.expert_scores == {"task_completion": 1.0, "r_actions": 1.0}
    assert lost.expert_scores["task_completion"] == 0.0
    assert [(a.name, dict(a.arguments or {})) for a in won.expected.actions] == [(n, a) for n, a in CANCEL]
    assert won.metadata["task_id"] == "3" and won.metadata["trial"] == 0 and won.metadata["domain"] == "retail"
    assert won.metadata["user_id"] == "user_3" and won.metadata["user_cost"] == 0.0123
    assert won.split == lost.split  # the two trials of one task are never on both sides
    airline = rows["tau-airline-7-t0"]
    assert airline.metadata["domain"] == "airline" and list(airline.expected.outputs) == ["327"]
    assert [m["role"] for m in airline.messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                      "assistant"]
    call = airline.messages[2]["tool_calls"][0]
    assert call == {"id": "call_0", "type": "function",
                    "function": {"name": "get_user_details", "arguments": '{"user_id":"mia_1"}'}}
    assert "function_call" not in airline.messages[2] and "refusal" not in airline.messages[2]
    assert airline.metadata["tools_inferred_from_calls"] is True
    assert sorted(airline.tool_names) == ["book_reservation", "get_user_details"]
    assert rows["tau-airline-8-t0"].expected.actions == ()


def test_tau_bench_runs_strict_fails_on_the_first_bad_run(runs_file: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "--root", str(tmp_path / "s"), "import", str(runs_file), "--format", "tau-bench",
                 "--name", "runs", "--version", "v1", "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"bclone: error: {runs_file}[run 4] (task 9, trial 0): the run failed")
    name_dir = tmp_path / "s" / "runs"
    assert not name_dir.exists() or list(name_dir.iterdir()) == []  # no version, no staging left behind


def test_runs_files_are_sniffed_as_tau_bench(runs_file: Path, tmp_path: Path) -> None:
    assert sniff_format(str(runs_file)) == "tau-bench"
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_tau2_results()))
    assert sniff_format(str(results)) == "tau-bench"


def _tau2_msg(role: str, content: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "turn_idx": None, "timestamp": "2025-06-01T10:00:00", **extra}


def _tau2_sim(i: int, task_id: str, trial: int, reward: float | None) -> dict[str, Any]:
    """One SimulationRun.model_dump() of tau2-bench (half-duplex text run)."""
    messages = [
        _tau2_msg("assistant", "Hi! How can I help you today?"),
        _tau2_msg("user", "Please check my reservation 4WQ150."),
        _tau2_msg("assistant", None, tool_calls=[{"id": f"tc{i}", "name": "get_reservation_details",
                                                  "arguments": {"reservation_id": "4WQ150"},
                                                  "requestor": "assistant"}]),
        _tau2_msg("tool", "{\"status\": \"confirmed\"}", id=f"tc{i}", requestor="assistant", error=False),
        # The user simulator's own tool (telecom style): not the agent's, dropped.
        _tau2_msg("user", None, tool_calls=[{"id": f"u{i}", "name": "toggle_airplane_mode", "arguments": {},
                                             "requestor": "user"}]),
        _tau2_msg("tool", "airplane mode off", id=f"u{i}", requestor="user", error=False),
        _tau2_msg("assistant", "Your reservation 4WQ150 is confirmed."),
        _tau2_msg("user", "###STOP###"),
    ]
    return {
        "id": f"sim-{i}", "task_id": task_id, "trial": trial, "timestamp": f"2025-06-0{i + 1}T10:00:00",
        "start_time": f"2025-06-0{i + 1}T10:00:00", "end_time": f"2025-06-0{i + 1}T10:01:00", "duration": 60.0,
        "termination_reason": "user_stop", "agent_cost": 0.02, "user_cost": 0.01,
        "reward_info": None if reward is None else {"reward": reward, "reward_breakdown": {"DB": reward},
                                                    "db_check": {"db_match": bool(reward)}},
        "messages": messages, "seed": 300,
    }


def _tau2_results() -> dict[str, Any]:
    return {
        "timestamp": "2025-06-01T09:59:00",
        "info": {
            "git_commit": "abc", "num_trials": 2, "max_steps": 100, "max_errors": 10,
            "user_info": {"implementation": "user_simulator", "llm": "gpt-4.1"},
            "agent_info": {"implementation": "llm_agent", "llm": "gpt-4.1"},
            "environment_info": {
                "domain_name": "airline", "policy": AIRLINE_POLICY,
                "tool_defs": {"get_reservation_details": {
                    "name": "get_reservation_details", "short_desc": "Get the details of a reservation.",
                    "params": {"type": "object", "properties": {"reservation_id": {"type": "string"}},
                               "required": ["reservation_id"]}}},
            },
        },
        "tasks": [{"id": "5", "user_scenario": {"instructions": {"reason_for_call": "check"}},
                   "evaluation_criteria": {"actions": [
                       {"action_id": "5_0", "name": "get_reservation_details",
                        "arguments": {"reservation_id": "4WQ150"}, "requestor": "assistant"},
                       {"action_id": "5_1", "name": "toggle_airplane_mode", "arguments": {}, "requestor": "user"}],
                       "communicate_info": ["confirmed"]}}],
        "simulations": [_tau2_sim(0, "5", 0, 1.0), _tau2_sim(1, "5", 1, 0.0), _tau2_sim(2, "5", 2, None)],
    }


def test_tau2_results_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_tau2_results()))
    skipped: list[SkippedSource] = []
    rows = list(iter_rows(str(path), ImportOptions(cohorts=("airline_runs",)), skipped))
    assert [r["id"] for r in rows] == ["tau2-airline-5-t0", "tau2-airline-5-t1"]
    assert [s.where for s in skipped] == [f"{path}[simulation 2] (task '5', trial 2)"]
    assert "no reward_info" in skipped[0].reason
    won, lost = rows
    assert won["expert_scores"] == {"task_completion": 1.0, "reward_db": 1.0}
    assert lost["expert_scores"] == {"task_completion": 0.0, "reward_db": 0.0}
    # Gold actions of the agent only (the user's own action is not the expert's to imitate).
    assert won["expected"] == {"actions": [{"name": "get_reservation_details",
                                            "arguments": {"reservation_id": "4WQ150"}}], "outputs": ["confirmed"]}
    assert won["metadata"]["timestamp"] == "2025-06-01T10:00:00" and won["metadata"]["simulation_id"] == "sim-0"
    assert won["metadata"]["task_id"] == "5" and won["metadata"]["trial"] == 0
    assert won["cohorts"] == ["airline_runs"] and won["split"] == lost["split"]
    roles = [m["role"] for m in won["messages"]]
    assert roles == ["system", "assistant", "user", "assistant", "tool", "assistant", "user"]
    assert won["messages"][0]["content"] == AIRLINE_POLICY
    assert won["messages"][4] == {"role": "tool", "tool_call_id": "tc0", "content": "{\"status\": \"confirmed\"}"}
    assert won["tools"] == [{"type": "function", "function": {
        "name": "get_reservation_details", "description": "Get the details of a reservation.",
        "parameters": {"type": "object", "properties": {"reservation_id": {"type": "string"}},
                       "required": ["reservation_id"]}}}]
    assert "tools_inferred_from_calls" not in won["metadata"]
    with pytest.raises(RowError, match=r"\[simulation 2\] .*no reward_info"):
        list(iter_rows(str(path), ImportOptions(strict=True), []))


def test_runs_file_that_is_not_json_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.json"
    path.write_text('[\n  {"task_id": 1, "traj": [}\n]\n')
    code = main(["dataset", "--root", str(tmp_path / "s"), "import", str(path), "--format", "tau-bench",
                 "--name", "r", "--version", "v1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{path}:2: not valid JSON" in err and "tools.json" not in err


def test_every_trial_of_a_task_lands_in_the_same_split(tmp_path: Path) -> None:
    runs = [_tau_bench_run(t, k, float(k % 2), RETAIL_POLICY, CANCEL) for t in range(30) for k in range(3)]
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(runs))
    rows = list(iter_rows(str(path), ImportOptions(eval_fraction=0.5), []))
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["metadata"]["task_id"], set()).add(r["split"])
    assert len(rows) == 90 and all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "eval"}


@pytest.mark.parametrize("content", ["[]", '[{"id": 1}]', '{"results": []}'])
def test_a_file_of_neither_shape_never_asks_for_tools_json(tmp_path: Path, content: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runs.json"
    path.write_text(content)
    code = main(["dataset", "--root", str(tmp_path / "s"), "import", str(path), "--format", "tau-bench",
                 "--name", "r", "--version", "v1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is neither recorded runs" in err and "tools.json" not in err
