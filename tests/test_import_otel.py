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
    """Each instrumentor's export directory (run concurrently, each in its own process)."""
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
