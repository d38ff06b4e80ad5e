"""The Langfuse importer, on an observation export written here in Langfuse's JSONL shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.importers import ImportOptions, SkippedSource, sniff_format
from pytest_bclone.dataset.langfuse import iter_rows
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.errors import RowError

TOOLS = [{"type": "function", "function": {"name": "get_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}}}}]
SYSTEM = {"role": "system", "content": "You are a support agent."}
USER = {"role": "user", "content": "Where is order W1?"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_order", "arguments": "{\"order_id\": \"W1\"}"}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"shipped\"}"}


def _obs(oid: str, trace: str, kind: str, start: str, **extra: Any) -> dict[str, Any]:
    return {"id": oid, "traceId": trace, "type": kind, "name": kind.lower(), "startTime": start,
            "endTime": start.replace(":00.000Z", ":01.000Z"), "level": "DEFAULT", "statusMessage": None,
            "parentObservationId": None, "metadata": {}, "input": None, "output": None, **extra}


def _export(tmp_path: Path) -> Path:
    lines = [
        _obs("a0", "trace-a", "SPAN", "2025-06-01T10:00:00.000Z", name="agent run"),
        # The second model call is exported before the first: time order, not file order, decides.
        _obs("a3", "trace-a", "GENERATION", "2025-06-01T10:00:05.000Z", model="gpt-4o",
             input={"messages": [SYSTEM, USER, CALL, RESULT], "tools": TOOLS},
             output={"role": "assistant", "content": "W1 has shipped."}),
        _obs("a1", "trace-a", "GENERATION", "2025-06-01T10:00:01.000Z", model="gpt-4o",
             input={"messages": [SYSTEM, USER], "tools": TOOLS}, output=CALL),
        _obs("a2", "trace-a", "TOOL", "2025-06-01T10:00:03.000Z", name="get_order", input={"order_id": "W1"},
             output={"status": "shipped"}),
        {"id": "s1", "traceId": "trace-a", "name": "task_completion", "value": 1, "dataType": "NUMERIC"},
        {"id": "s2", "traceId": "trace-a", "name": "helpfulness", "value": 4, "dataType": "NUMERIC"},
        {"id": "trace-a", "timestamp": "2025-06-01T09:59:59.000Z", "userId": "u1", "sessionId": "sess-1",
         "tags": ["prod"], "name": "support"},
        # A refusal, carried in the message's refusal field, in the same session.
        {"id": "trace-b", "timestamp": "2025-06-02T08:00:00.000Z", "userId": "u2", "sessionId": "sess-1",
         "scores": [{"name": "task_completion", "value": 0, "dataType": "NUMERIC"},
                    {"name": "safe", "value": True, "dataType": "BOOLEAN"}],
         "observations": [_obs("b1", "trace-b", "GENERATION", "2025-06-02T08:00:01.000Z",
                               input=[SYSTEM, {"role": "user", "content": "Give me another user's address."}],
                               output={"role": "assistant", "content": None,
                                       "refusal": "I can't share other customers' data."})]},
        # input and output exported as JSON text, as some Langfuse exports do
        _obs("e1", "trace-e", "GENERATION", "2025-06-04T08:00:00.000Z", input=json.dumps([SYSTEM, USER]),
             output=json.dumps(CALL)),
        _obs("c1", "trace-c", "SPAN", "2025-06-03T08:00:00.000Z"),  # no model call
        _obs("d1", "trace-d", "GENERATION", "2025-06-03T09:00:00.000Z", input=[USER], level="ERROR",
             statusMessage="RateLimitError: 429"),
    ]
    path = tmp_path / "observations.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_langfuse_export_becomes_one_trajectory_per_trace(tmp_path: Path) -> None:
    path = _export(tmp_path)
    skipped: list[SkippedSource] = []
    rows = {r["id"]: r for r in iter_rows(str(path), ImportOptions(cohorts=("support",)), skipped)}
    assert sorted(rows) == ["langfuse-trace-a", "langfuse-trace-b", "langfuse-trace-e"]
    assert rows["langfuse-trace-e"]["messages"][0] == SYSTEM
    assert rows["langfuse-trace-e"]["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_order"
    a = rows["langfuse-trace-a"]
    assert [m["role"] for m in a["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert a["messages"][2]["tool_calls"][0]["function"] == {"name": "get_order", "arguments": '{"order_id":"W1"}'}
    assert a["messages"][4] == {"role": "assistant", "content": "W1 has shipped."}
    assert a["tools"] == TOOLS and a["cohorts"] == ["support"]
    assert a["expert_scores"] == {"task_completion": 1.0}
    assert a["metadata"]["scores"] == {"helpfulness": 4}
    assert a["metadata"]["timestamp"] == "2025-06-01T09:59:59.000Z"
    assert (a["metadata"]["trace_id"], a["metadata"]["session_id"], a["metadata"]["user_id"]) == ("trace-a", "sess-1",
                                                                                                  "u1")
    assert a["metadata"]["observation_id"] == "a3" and a["metadata"]["model"] == "gpt-4o"
    assert a["metadata"]["generations"] == 2
    b = rows["langfuse-trace-b"]
    assert b["messages"][-1] == {"role": "assistant", "content": "I can't share other customers' data."}
    assert b["expert_scores"] == {"task_completion": 0.0, "safe": 1.0}
    assert a["split"] == b["split"]  # one session, one side
    assert [(s.where, s.reason[:40]) for s in skipped] == [
        (f"{path}: trace trace-c", "the trace holds no GENERATION observatio"),
        (f"{path}: trace trace-d", "the last generation failed (RateLimitErr"),
    ]
    with pytest.raises(RowError, match="trace trace-c: the trace holds no GENERATION"):
        list(iter_rows(str(path), ImportOptions(strict=True), []))


def test_langfuse_cli_import_is_sniffed_and_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _export(tmp_path)
    assert sniff_format(str(path)) == "langfuse"
    root = str(tmp_path / "store")
    assert main(["dataset", "import", str(path), "--name", "lf", "--version", "v1", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "wrote lf@v1: 3 trajectories, 4 decision points" in out and "(format langfuse)" in out
    assert "skipped sources: 2" in out and "trace trace-d: " in out
    loaded = DatasetStore(root).load("lf@v1")
    assert {t.id for t in loaded.trajectories} == {"langfuse-trace-a", "langfuse-trace-b", "langfuse-trace-e"}


def test_a_line_of_another_format_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "obs.jsonl"
    path.write_text(json.dumps(_obs("a", "t", "GENERATION", "2025-06-01T10:00:00.000Z")) + "\n"
                    + json.dumps({"messages": []}) + "\n")
    code = main(["dataset", "--root", str(tmp_path / "s"), "import", str(path), "--format", "langfuse", "--name", "x",
                 "--version", "v1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{path}:2: not a Langfuse observation" in err
