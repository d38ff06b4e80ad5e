"""The otel importer on real traces: an OpenAI Agents SDK agent under five instrumentation libraries.

``tests/otel_agents.py`` runs the agent (four conversations: parallel tool calls, two tool-calling
user turns, a tool error, a refusal) against the local OpenAI-compatible server, once per
instrumentor in its own process, and writes the OpenTelemetry SDK's spans as OTLP JSON with base64
ids, OTLP JSON with hex ids, ``span.to_json()`` lines and ConsoleSpanExporter output, beside the
ground truth (what the server last saw of each conversation, plus its answer). Each import must
give back those conversations: messages, tool calls with arguments, results paired to their calls,
refusals, and the tool list where the convention carries it; with one row id per trace whatever
the id encoding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.dataset.importers import ImportOptions, SkippedSource
from pytest_bclone.dataset.otel import iter_rows
from pytest_bclone.dataset.schema import validate_row

from .otel_agents import CONVERSATIONS, INSTRUMENTORS, REFUSAL

ROOT = Path(__file__).resolve().parents[1]
ENCODINGS = ("otlp_b64.json", "otlp_hex.json", "spans.jsonl", "console.txt")
# What each convention records of the tool list: all offered tools (llm.tools, gen_ai.tool.definitions),
# only the tools a trace ran (TOOL spans: with their schema, or names only), or nothing.
TOOLS_CARRIED = {"openinference-openai": "offered", "openllmetry": "offered", "openinference-agents": "ran+schema",
                 "traceai-agents": "ran", "otel-openai-v2": "none"}
CONVENTION = {"openinference-openai": "openinference", "openinference-agents": "openinference",
              "traceai-agents": "traceai", "openllmetry": "genai", "otel-openai-v2": "genai"}


@pytest.fixture(scope="session")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each instrumentor's export directory (run concurrently, each in its own process).

    ``BCLONE_OTEL_TRACES=DIR`` reuses the exports ``python tests/otel_agents.py NAME DIR/NAME`` wrote
    (for iterating on the importer without re-running the agents)."""
    reuse = os.environ.get("BCLONE_OTEL_TRACES")
    if reuse and all((Path(reuse) / name / "conversations.json").is_file() for name in INSTRUMENTORS):
        return {name: Path(reuse) / name for name in INSTRUMENTORS}
    out = tmp_path_factory.mktemp("otel_traces")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-fake-not-a-key"}
    env.pop("OPENAI_BASE_URL", None)
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / "tests" / "otel_agents.py"), name, str(out / name)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name in INSTRUMENTORS}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {output.decode(errors='replace')[-3000:]}"
    return {name: out / name for name in INSTRUMENTORS}


def _import(path: Path, **options: Any) -> tuple[list[dict[str, Any]], list[SkippedSource]]:
    skipped: list[SkippedSource] = []
    rows = list(iter_rows(str(path), ImportOptions(**options), skipped))
    for row in rows:
        validate_row(row, str(path))
    return rows, skipped


def essence(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Role, text (a refusal counts as text), tool calls with parsed arguments, and for a tool
    result the (message, position) of the call it answers: what a trajectory must keep."""
    calls: dict[str, tuple[int, int]] = {}
    out = []
    for i, m in enumerate(messages):
        for j, tc in enumerate(m.get("tool_calls") or ()):
            calls[tc["id"]] = (i, j)
        answers = calls.get(m.get("tool_call_id", "")) if m["role"] == "tool" else None
        out.append((m["role"], m.get("content") or m.get("refusal") or None,
                    [(tc["function"]["name"], json.loads(tc["function"]["arguments"]))
                     for tc in m.get("tool_calls") or ()], answers))
    return out


def _by_conversation(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for row in rows:
        first_user = next(m["content"] for m in row["messages"] if m["role"] == "user")
        key = next(k for k, turns in CONVERSATIONS.items() if turns[0] == first_user)
        assert key not in out, f"two rows for conversation {key}"
        out[key] = row
    return out


@pytest.mark.parametrize("encoding", ENCODINGS[:3])
@pytest.mark.parametrize("instrumentor", INSTRUMENTORS)
def test_import_gives_back_the_conversations_the_agent_had(traces: dict[str, Path], instrumentor: str,
                                                          encoding: str) -> None:
    truth = json.loads((traces[instrumentor] / "conversations.json").read_text())
    assert set(truth) == set(CONVERSATIONS)
    rows, skipped = _import(traces[instrumentor] / encoding, cohorts=("support",))
    got = _by_conversation(rows)
    expected = set(CONVERSATIONS)
    if instrumentor == "otel-openai-v2":
        # The official instrumentation records a refusal as an assistant message with no parts:
        # the refusal is lost at the source, so that trace is reported, never imported empty.
        expected.discard("refusal")
        assert len(skipped) == 1 and skipped[0].where.startswith("trace ")
        assert "assistant message 2 has neither text nor tool calls" in skipped[0].reason
    else:
        assert skipped == []
    assert set(got) == expected
    for key in expected:
        row, want = got[key], truth[key]
        assert essence(row["messages"]) == essence(want["messages"]), key
        assert row["cohorts"] == ["support"] and row["metadata"]["convention"] == CONVENTION[instrumentor]
        assert row["metadata"]["trace_id"] == row["id"].removeprefix("otel-") and len(row["id"]) == 5 + 32
        assert row["metadata"]["start_time"] < row["metadata"]["end_time"]
        offered = {t["function"]["name"]: t["function"] for t in want["tools"]}
        ran = {tc["function"]["name"] for m in want["messages"] for tc in m.get("tool_calls") or ()}
        tools = {t["function"]["name"]: t["function"] for t in row["tools"]}
        carried = TOOLS_CARRIED[instrumentor]
        if carried == "offered":
            assert set(tools) == set(offered)
            assert all(tools[n]["parameters"] == offered[n]["parameters"] for n in tools)
        elif carried.startswith("ran"):
            assert set(tools) == ran
            if carried == "ran+schema":
                assert all(tools[n]["parameters"] == offered[n]["parameters"] for n in tools)
        else:
            assert tools == {}
    if "refusal" in got:
        assert got["refusal"]["messages"][-1] == {"role": "assistant", "content": REFUSAL}
    assert "gpt-4o-mini" in got["parallel"]["metadata"]["model"]


def test_the_conversations_cover_what_the_issue_asks(traces: dict[str, Path]) -> None:
    truth = json.loads((traces["openinference-openai"] / "conversations.json").read_text())
    assert len(truth) == 4
    parallel = [m for m in truth["parallel"]["messages"] if len(m.get("tool_calls") or ()) == 2]
    assert len(parallel) == 1
    assert sum(1 for m in truth["two_turns"]["messages"] if m.get("tool_calls")) == 2
    assert sum(1 for m in truth["two_turns"]["messages"] if m["role"] == "user") == 2
    assert any("Error: order W1003 has already shipped" in (m.get("content") or "")
               for m in truth["tool_error"]["messages"] if m["role"] == "tool")
    assert truth["refusal"]["messages"][-1]["refusal"] == REFUSAL
    # The Agents SDK instrumentors number tool calls across messages: a message with tool_calls.1
    # and no tool_calls.0 is really in the files (and imported above).
    for name in ("traceai-agents", "openinference-agents"):
        text = (traces[name] / "spans.jsonl").read_text()
        assert "messages.6.message.tool_calls.1.tool_call.function.name" in text
        assert "messages.6.message.tool_calls.0.tool_call" not in text


@pytest.mark.parametrize("instrumentor", INSTRUMENTORS)
def test_same_row_ids_and_splits_whatever_the_encoding(traces: dict[str, Path], instrumentor: str) -> None:
    results = [_import(traces[instrumentor] / enc, eval_fraction=0.5)[0] for enc in ENCODINGS]
    first = {r["id"]: (r["split"], essence(r["messages"]), r["tools"]) for r in results[0]}
    assert len(first) >= 3
    for enc, rows in zip(ENCODINGS[1:], results[1:]):
        assert {r["id"]: (r["split"], essence(r["messages"]), r["tools"]) for r in rows} == first, enc
    b64 = json.loads((traces[instrumentor] / "otlp_b64.json").read_text())
    raw_id = b64["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
    assert len(raw_id) == 24 and raw_id.endswith("==")  # really base64 in that file


def test_forced_split_and_strict(traces: dict[str, Path]) -> None:
    rows, _ = _import(traces["openllmetry"] / "otlp_hex.json", split="eval")
    assert {r["split"] for r in rows} == {"eval"}
    from pytest_bclone.errors import RowError

    with pytest.raises(RowError, match=r"assistant message 2 has neither text nor tool calls"):
        _import(traces["otel-openai-v2"] / "spans.jsonl", strict=True)


# -- a gate on imported traces ------------------------------------------------------------------
CLONES = '''
import json
from otel_agents import responder


def copycat(state):
    """Answers as the scripted expert did."""
    return responder({"messages": [dict(m) for m in state.messages]})["choices"][0]["message"]


def lazy(state):
    """Never calls a tool."""
    return {"role": "assistant", "content": "Please contact support."}
'''


def test_a_gate_runs_on_imported_traces(traces: dict[str, Path], pytester: pytest.Pytester) -> None:
    from pytest_bclone.dataset.store import DatasetStore

    rows: list[dict[str, Any]] = []
    for name in INSTRUMENTORS:
        rows += _import(traces[name] / "otlp_b64.json", cohorts=("support",), split="eval")[0]
    assert len(rows) == 19
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("traces", "v1", rows)
    pytester.makepyfile(clones=CLONES)
    (pytester.path / "otel_agents.py").write_text((ROOT / "tests" / "otel_agents.py").read_text())
    pytester.makeini("[pytest]\npythonpath = .\nbclone_dataset = traces@v1\n")
    pytester.makepyfile(test_gate="""
        from pytest_bclone import assert_parity

        def test_support():
            assert_parity(cohort="support", within=40, metric="action_match")
    """, test_gate_strict="""
        from pytest_bclone import assert_parity

        def test_support_strict():
            assert_parity(cohort="support", within=10, metric="action_match")
    """)
    good = pytester.runpytest("test_gate.py", "--bclone-clone=python:clones:copycat", "-p", "no:cacheprovider")
    good.assert_outcomes(passed=1)
    good.stdout.re_match_lines([r".*support\s+action_match \(step\)\s+44 \(19\)\s+100.0\s+100.0\s+0.0 .*PASS.*"])
    assert "Traceback" not in good.stdout.str()
    bad = pytester.runpytest("test_gate_strict.py", "--bclone-clone=python:clones:lazy", "-p", "no:cacheprovider")
    bad.assert_outcomes(failed=1)
    bad.stdout.re_match_lines([r".*support / action_match: n=44 \(19 trajectories\).* -> FAIL.*"])


# -- conventions without a live instrumentor here, inputs, sessions, scores ------------------------
TID = "5b8aa5a2d2c872e8321cf37308d69df2"


def _span(name: str, attributes: dict[str, Any], *, trace: str = TID, span: str = "1a2b3c4d5e6f7081",
          start: str = "2026-03-04T09:30:00Z", events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "context": {"trace_id": f"0x{trace}", "span_id": f"0x{span}"}, "parent_id": None,
            "start_time": start, "end_time": start.replace(":00Z", ":01Z"), "attributes": attributes,
            "events": events or []}


def _write(path: Path, spans: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    return path


def test_openllmetry_prompt_and_completion_attributes(tmp_path: Path) -> None:
    first = _span("openai.chat", {
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Where is W7?",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.id": "c1", "gen_ai.completion.0.tool_calls.0.name": "get_order",
        "gen_ai.completion.0.tool_calls.0.arguments": "{\"order_id\": \"W7\"}",
        "llm.request.functions.0.name": "get_order", "llm.request.functions.0.description": "Look up",
        "llm.request.functions.0.parameters": "{\"type\": \"object\", \"properties\": {\"order_id\": {}}}",
    })
    second = _span("openai.chat", {
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.response.model": "gpt-4o-2024",
        "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Where is W7?",
        "gen_ai.prompt.2.role": "assistant", "gen_ai.prompt.2.tool_calls.0.id": "c1",
        "gen_ai.prompt.2.tool_calls.0.name": "get_order", "gen_ai.prompt.2.tool_calls.0.arguments": "{\"order_id\": \"W7\"}",
        "gen_ai.prompt.3.role": "tool", "gen_ai.prompt.3.tool_call_id": "c1", "gen_ai.prompt.3.content": "shipped",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.refusal": "I won't say more.",
    }, span="1a2b3c4d5e6f7082", start="2026-03-04T09:30:05Z")
    rows, skipped = _import(_write(tmp_path / "llmetry.jsonl", [second, first]))
    assert skipped == [] and len(rows) == 1
    row = rows[0]
    assert essence(row["messages"]) == [
        ("system", "Be brief.", [], None), ("user", "Where is W7?", [], None),
        ("assistant", None, [("get_order", {"order_id": "W7"})], None), ("tool", "shipped", [], (2, 0)),
        ("assistant", "I won't say more.", [], None)]
    assert row["tools"] == [{"type": "function", "function": {
        "name": "get_order", "description": "Look up", "parameters": {"type": "object", "properties": {"order_id": {}}}}}]
    assert row["metadata"]["convention"] == "openllmetry" and row["metadata"]["provider"] == "openai"
    assert row["id"] == f"otel-{TID}"


def test_genai_message_events_and_evaluation_scores(tmp_path: Path) -> None:
    events = [
        {"name": "gen_ai.system.message", "attributes": {"content": "Be brief."}},
        {"name": "gen_ai.user.message", "attributes": {"content": "Cancel W9"}},
        {"name": "gen_ai.assistant.message", "attributes": {"tool_calls": json.dumps(
            [{"id": "k1", "type": "function", "function": {"name": "cancel_order", "arguments": {"order_id": "W9"}}}])}},
        {"name": "gen_ai.tool.message", "attributes": {"id": "k1", "content": "error: already shipped"}},
        {"name": "gen_ai.choice", "attributes": {"index": 0, "finish_reason": "stop",
                                                 "message": json.dumps({"content": "It has shipped."})}},
        {"name": "gen_ai.evaluation.result", "attributes": {"gen_ai.evaluation.name": "task_completion",
                                                            "gen_ai.evaluation.score.value": 0.75}},
    ]
    span = _span("chat gpt-4o", {"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
                                 "gen_ai.request.model": "gpt-4o", "session.id": "s-42"}, events=events)
    rows, skipped = _import(_write(tmp_path / "events.jsonl", [span]))
    assert skipped == []
    (row,) = rows
    assert essence(row["messages"]) == [
        ("system", "Be brief.", [], None), ("user", "Cancel W9", [], None),
        ("assistant", None, [("cancel_order", {"order_id": "W9"})], None),
        ("tool", "error: already shipped", [], (2, 0)), ("assistant", "It has shipped.", [], None)]
    assert row["expert_scores"] == {"task_completion": 0.75}
    assert row["metadata"]["convention"] == "genai-events" and row["metadata"]["session_id"] == "s-42"
    assert row["id"] == "otel-session-s-42"
    events[-1]["attributes"]["gen_ai.evaluation.score.value"] = 7
    rows, skipped = _import(_write(tmp_path / "events.jsonl", [span]))
    assert rows == [] and "evaluation 'task_completion' scored 7, not a number in [0, 1]" in skipped[0].reason


def test_a_session_joins_its_traces(traces: dict[str, Path], tmp_path: Path) -> None:
    spans = [json.loads(line) for line in (traces["openinference-openai"] / "spans.jsonl").read_text().splitlines()]
    two_turns = {s["context"]["trace_id"] for s in spans if s["name"] == "conversation two_turns"}
    llm = sorted([s for s in spans if s["context"]["trace_id"] in two_turns and s["name"] == "ChatCompletion"],
                 key=lambda s: s["start_time"])
    # The two user turns as two traces of one session, the later one first in the file.
    for k, s in enumerate(llm):
        s["context"]["trace_id"] = "0x" + ("a" if k < 2 else "b") * 32
        s["attributes"]["session.id"] = "chat-17"
    rows, skipped = _import(_write(tmp_path / "session.jsonl", llm[2:] + llm[:2]))
    assert skipped == [] and [r["id"] for r in rows] == ["otel-session-chat-17"]
    assert rows[0]["metadata"]["trace_ids"] == ["a" * 32, "b" * 32]
    truth = json.loads((traces["openinference-openai"] / "conversations.json").read_text())["two_turns"]
    assert essence(rows[0]["messages"]) == essence(truth["messages"])


def _phoenix_rows(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spans as Phoenix's span dataframe: context columns, span_kind, and one ``attributes.*``
    column per top-level attribute path, message lists nested as Phoenix stores them."""
    from pytest_bclone.dataset.otel.calls import unflatten

    out = []
    for s in spans:
        attrs = s["attributes"]
        row: dict[str, Any] = {"name": s["name"], "span_kind": attrs.get("openinference.span.kind", "UNKNOWN"),
                               "context.trace_id": s["context"]["trace_id"][2:],
                               "context.span_id": s["context"]["span_id"][2:], "parent_id": s["parent_id"],
                               "start_time": s["start_time"], "end_time": s["end_time"]}
        for group in ("llm.input_messages", "llm.output_messages"):
            value = unflatten(attrs, group)
            if value is not None:
                # Phoenix keys a message's fields "message.role", "message.tool_calls" (a list)...
                msgs = []
                for m in value:
                    msg = {f"message.{k}": v for k, v in m["message"].items() if k != "tool_calls"}
                    calls = m["message"].get("tool_calls")
                    if calls:
                        calls = calls if isinstance(calls, list) else [calls[k] for k in sorted(calls, key=int)]
                        msg["message.tool_calls"] = [
                            {"tool_call.id": c["tool_call"].get("id"),
                             "tool_call.function.name": c["tool_call"]["function"]["name"],
                             "tool_call.function.arguments": c["tool_call"]["function"]["arguments"]} for c in calls]
                    msgs.append(msg)
                row[f"attributes.{group}"] = msgs
        for key, value in attrs.items():
            if not key.startswith(("llm.input_messages.", "llm.output_messages.")):
                row[f"attributes.{key}"] = value
        out.append(row)
    columns = sorted({k for row in out for k in row})  # a dataframe: every row has every column
    return [{k: row.get(k) for k in columns} for row in out]


def test_phoenix_span_dataframe_as_jsonl_and_parquet(traces: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = traces["openinference-agents"] / "spans.jsonl"
    want, _ = _import(source)
    spans = [json.loads(line) for line in source.read_text().splitlines()]
    frame = _phoenix_rows(spans)
    as_jsonl = _write(tmp_path / "phoenix.jsonl", frame)
    pq.write_table(pa.Table.from_pylist(frame), tmp_path / "phoenix.parquet")
    for path in (as_jsonl, tmp_path / "phoenix.parquet"):
        rows, skipped = _import(path)
        assert skipped == [], path
        assert {r["id"]: (essence(r["messages"]), r["tools"]) for r in rows} == \
            {r["id"]: (essence(r["messages"]), r["tools"]) for r in want}, path


# -- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_name_the_file_line_and_fix(traces: dict[str, Path], tmp_path: Path) -> None:
    from pytest_bclone.errors import ImportFormatError, RowError

    good = (traces["openllmetry"] / "spans.jsonl").read_text().splitlines(keepends=True)
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes("".join(good[:2]).encode() + b'{"name": "caf\xe9"}\n')
    with pytest.raises(ImportFormatError, match=r"latin1\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 14\).*UTF-8"):
        _import(latin)
    binary = tmp_path / "dump.bin"
    binary.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(ImportFormatError, match=r"dump\.bin:1: binary data .*is this the right file"):
        _import(binary)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": ["hi"]}), tmp_path / "rows.parquet")
    with pytest.raises(ImportFormatError, match=r"rows\.parquet is a Parquet file without a trace id column"):
        _import(tmp_path / "rows.parquet")
    unknown = _write(tmp_path / "http.jsonl", [_span("GET /health", {"http.method": "GET", "http.status_code": 200})])
    with pytest.raises(ImportFormatError) as err:
        _import(unknown)
    message = str(err.value)
    assert message.startswith(f"{unknown}: none of its 1 spans is an LLM call of a known convention; tried ")
    assert all(name in message for name in ("OpenInference", "traceAI", "OpenLLMetry", "GenAI"))
    # A trace whose model never answered: skipped with the span and the fix, the rest imports.
    no_answer = _span("ChatCompletion", {"openinference.span.kind": "LLM", "llm.input_messages.0.message.role": "user",
                                         "llm.input_messages.0.message.content": "hello?"}, trace="f" * 32)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(good) + json.dumps(no_answer) + "\n" + "{not json\n")
    rows, skipped = _import(mixed)
    assert len(rows) == 4
    assert [s.where for s in skipped] == ["trace " + "f" * 32, f"{mixed}:{len(good) + 2}"]
    assert "recorded no output message; export spans with their output messages" in skipped[0].reason
    assert "not valid JSON" in skipped[1].reason
    with pytest.raises(RowError, match=r"mixed\.jsonl:\d+: span '1a2b3c4d5e6f7081', .*recorded no output message"):
        _import(mixed, strict=True)


def test_cli_imports_traces_and_reports_bad_ones(traces: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_bclone.cli import main
    from pytest_bclone.dataset.store import DatasetStore

    root = str(tmp_path / "store")
    assert main(["dataset", "--root", root, "import", str(traces["otel-openai-v2"] / "console.txt"),
                 "--name", "traces", "--version", "v1", "--cohort", "support"]) == 0
    out = capsys.readouterr()
    assert "trace " in out.out + out.err and "neither text nor tool calls" in out.out + out.err
    assert len(DatasetStore(root).load("traces@v1").trajectories) == 3
    assert main(["dataset", "--root", root, "import", str(traces["otel-openai-v2"] / "spans.jsonl"), "--strict",
                 "--name", "traces", "--version", "v3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bclone: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "spans.jsonl:" in err and "neither text nor tool calls" in err and "capture message content" in err
    binary = tmp_path / "trace.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["dataset", "--root", root, "import", str(binary), "--format", "otel", "--name", "traces",
                 "--version", "v2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bclone: error: ") and str(binary) in err and "Traceback" not in err


def test_memory_is_bounded_by_the_traces_in_flight(traces: dict[str, Path], tmp_path: Path) -> None:
    """Streaming: importing a JSONL export holds the spans of the traces being read (plus a small
    index entry per trace), never the file or the rows already yielded."""
    import tracemalloc

    lines = [json.loads(line) for line in (traces["openllmetry"] / "spans.jsonl").read_text().splitlines()]
    path = tmp_path / "many.jsonl"
    with path.open("w") as f:
        for k in range(60):  # 60 copies of the 4 conversations, each copy its own traces
            for s in lines:
                f.write(json.dumps({**s, "context": {**s["context"],
                                                     "trace_id": f"0x{k:08x}" + s["context"]["trace_id"][10:]}}) + "\n")
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_rows(str(path), ImportOptions(), []))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 240
    assert peak < 0.25 * path.stat().st_size, (peak, path.stat().st_size)


def test_traceai_fi_span_kind_and_trajectory_steps(traces: dict[str, Path], tmp_path: Path) -> None:
    """traceAI's other kind key, and agent.trajectory.step ordering calls whose clocks disagree."""
    source = traces["traceai-agents"] / "spans.jsonl"
    want, _ = _import(source)
    spans = [json.loads(line) for line in source.read_text().splitlines()]
    steps: dict[str, int] = {}
    for s in sorted(spans, key=lambda s: s["start_time"]):
        attrs = s["attributes"]
        if "gen_ai.span.kind" in attrs:
            attrs["fi.span.kind"] = attrs.pop("gen_ai.span.kind")
        if attrs.get("fi.span.kind") == "LLM":
            tid = s["context"]["trace_id"]
            attrs["agent.trajectory.step"] = steps[tid] = steps.get(tid, -1) + 1
            s["start_time"] = f"2026-01-01T00:00:{59 - attrs['agent.trajectory.step']:02d}Z"  # clocks backwards
    rows, skipped = _import(_write(tmp_path / "fi.jsonl", spans))
    assert skipped == []
    assert {r["id"]: essence(r["messages"]) for r in rows} == {r["id"]: essence(r["messages"]) for r in want}
    assert {r["metadata"]["convention"] for r in rows} == {"traceai"}


def test_genai_json_attributes_stored_as_nested_objects(traces: dict[str, Path], tmp_path: Path) -> None:
    """Exporters that decode JSON attributes (Phoenix and others) give the same rows."""
    source = traces["openllmetry"] / "spans.jsonl"
    want, _ = _import(source)
    spans = [json.loads(line) for line in source.read_text().splitlines()]
    for s in spans:
        for key in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.definitions"):
            if key in s["attributes"]:
                s["attributes"][key] = json.loads(s["attributes"][key])
    rows, skipped = _import(_write(tmp_path / "nested.jsonl", spans))
    assert skipped == []
    assert {r["id"]: (essence(r["messages"]), r["tools"]) for r in rows} == \
        {r["id"]: (essence(r["messages"]), r["tools"]) for r in want}


@pytest.mark.parametrize("span_id", ["0XZ8RwHRBAw=", "0xZ8RwHRBAw=", "0xAAAAAAAAA="])
def test_a_base64_id_that_begins_like_a_hex_prefix_is_read_as_base64(span_id: str) -> None:
    """One random span id in about a thousand has a base64 text beginning "0x" or "0X": the prefix
    is hex's only when hex follows (this failed an import of real traces once)."""
    import base64

    from pytest_bclone.dataset.otel.spans import normalise_id

    assert normalise_id(span_id, 8) == base64.b64decode(span_id).hex()
    assert normalise_id("0x00F067AA0BA902B7", 8) == "00f067aa0ba902b7"  # a real 0x prefix still works
