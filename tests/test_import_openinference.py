"""The OpenInference span importer, on tests/data/openinference_sample.jsonl and variants of it.

The sample is an OpenTelemetry JSON export (one span a line, children before their root as an
exporter writes them) of two agent traces: a sequential order lookup numbered with
``agent.trajectory.step``, and a shipping comparison with two parallel tool calls.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.openinference import read_openinference
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.errors import ImportFormatError, RowError

SAMPLE = Path(__file__).parent / "data" / "openinference_sample.jsonl"
T1 = "otel-session-sess-7f3a"  # its spans name a session: grouped by it
T2 = "otel-9c1f0e4b77aa4c3db1f2e0d9a8b7c6d5"


def _spans() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def _write_jsonl(path: Path, spans: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    return str(path)


def _otlp_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # int64 as a string, as protobuf's JSON mapping writes it
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _to_otlp(span: dict[str, Any]) -> dict[str, Any]:
    """A flat-JSON span as an OTLP JSON span (hex ids, unix-nano times, key/value attributes)."""
    from datetime import datetime

    def ns(t: str) -> str:
        return str(int(datetime.fromisoformat(t).timestamp() * 1_000_000) * 1000)

    return {"traceId": span["context"]["trace_id"][2:], "spanId": span["context"]["span_id"][2:],
            "parentSpanId": (span["parent_id"] or "0x")[2:], "name": span["name"], "kind": 1,
            "startTimeUnixNano": ns(span["start_time"]), "endTimeUnixNano": ns(span["end_time"]),
            "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in span["attributes"].items()],
            "status": {"code": 1}}


def _otlp_request(spans: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                            "value": {"stringValue": "support-agent"}}]},
                               "scopeSpans": [{"scope": {"name": "openinference.instrumentation.openai"},
                                               "spans": [_to_otlp(s) for s in spans]}]}]}


def _essence(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {r["id"]: (r["messages"], r["tools"]) for r in rows}


# -- the sample ---------------------------------------------------------------------------------
def test_one_row_per_trace_with_the_full_conversation() -> None:
    rows = {r["id"]: r for r in read_openinference(str(SAMPLE))}
    assert set(rows) == {T1, T2}
    t1 = rows[T1]
    assert [m["role"] for m in t1["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                   "assistant"]
    assert t1["messages"][-1]["content"].startswith("Your order #W1001 was shipped")
    calls = [m["tool_calls"][0] for m in t1["messages"] if m.get("tool_calls")]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("call_q1Zx", "get_order", {"order_id": "#W1001"}),
        ("call_8Hk2", "get_tracking", {"tracking_id": "1Z999AA10123456784"}),
    ]
    assert [t["function"]["name"] for t in t1["tools"]] == ["get_order", "get_tracking"]
    assert t1["tools"][0]["function"]["parameters"]["required"] == ["order_id"]
    assert t1["metadata"]["model"] == "gpt-4o-mini-2024-07-18" and t1["metadata"]["session_id"] == "sess-7f3a"
    assert len(t1["metadata"]["llm_spans"]) == 3 and t1["expected"] is None


def test_parallel_tool_calls_keep_their_arguments_and_answers() -> None:
    t2 = next(r for r in read_openinference(str(SAMPLE)) if r["id"] == T2)
    assert [m["role"] for m in t2["messages"]] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    calls = t2["messages"][2]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"order_id": "#W2002", "city": "Berlin"}, {"order_id": "#W2002", "city": "Paris"}]
    assert [c["id"] for c in calls] == [m["tool_call_id"] for m in t2["messages"][3:5]]
    assert json.loads(t2["messages"][4]["content"]) == {"price_eur": 19.5, "eta_days": 3}
    assert {t["function"]["name"] for t in t2["tools"]} == {"get_order", "get_tracking", "get_shipping_quote"}


def test_cohorts_and_split() -> None:
    rows = read_openinference(str(SAMPLE), cohorts=["support", "prod-2025-03"], split="eval")
    assert [(r["cohorts"], r["split"]) for r in rows] == [(["support", "prod-2025-03"], "eval")] * 2
    assert {r["split"] for r in read_openinference(str(SAMPLE), eval_fraction=0.0)} == {"train"}
    assert {r["split"] for r in read_openinference(str(SAMPLE), eval_fraction=1.0)} == {"eval"}


def test_line_order_does_not_matter(tmp_path: Path) -> None:
    spans = _spans()
    random.Random(3).shuffle(spans)
    assert _essence(read_openinference(_write_jsonl(tmp_path / "shuffled.jsonl", spans))) == \
        _essence(read_openinference(str(SAMPLE)))


def test_step_attribute_orders_llm_calls_over_start_time(tmp_path: Path) -> None:
    spans = _spans()
    for s in spans:  # clocks that disagree with the agent's own step numbers
        if s["attributes"].get("agent.trajectory.step") is not None:
            s["start_time"] = f"2025-03-04T09:30:0{9 - s['attributes']['agent.trajectory.step']}Z"
    rows = read_openinference(_write_jsonl(tmp_path / "skewed.jsonl", spans))
    assert _essence(rows) == _essence(read_openinference(str(SAMPLE)))


def test_otlp_json_and_otlp_jsonl(tmp_path: Path) -> None:
    spans = _spans()
    expected = _essence(read_openinference(str(SAMPLE)))
    doc = tmp_path / "traces.json"
    doc.write_text(json.dumps(_otlp_request(spans)))
    assert _essence(read_openinference(str(doc))) == expected
    # The collector's file exporter: one export request a line.
    lines = tmp_path / "collector.jsonl"
    lines.write_text("".join(json.dumps(_otlp_request(spans[k:k + 4])) + "\n" for k in range(0, len(spans), 4)))
    assert _essence(read_openinference(str(lines))) == expected
    # A plain JSON list of flat spans.
    flat = tmp_path / "spans.json"
    flat.write_text(json.dumps(spans))
    assert _essence(read_openinference(str(flat))) == expected


def test_nested_attributes(tmp_path: Path) -> None:
    """Phoenix-style nested attributes flatten to the same keys."""
    def nest(flat: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in flat.items():
            node = out
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return out

    def listify(node: Any) -> Any:  # {"0": ..., "1": ...} -> [...]
        if isinstance(node, dict):
            node = {k: listify(v) for k, v in node.items()}
            if node and all(k.isdigit() for k in node):
                return [node[str(i)] for i in range(len(node))]
        return node

    spans = _spans()
    for s in spans:
        s["attributes"] = listify(nest(s["attributes"]))
    assert _essence(read_openinference(_write_jsonl(tmp_path / "nested.jsonl", spans))) == \
        _essence(read_openinference(str(SAMPLE)))


def test_cli_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    assert main(["dataset", "--root", root, "import", str(SAMPLE), "--format", "openinference",
                 "--name", "support", "--version", "v1", "--cohort", "support"]) == 0
    assert "2 trajectories, 5 decision points" in capsys.readouterr().out
    version = DatasetStore(root).load("support@v1")
    assert {t.id for t in version.trajectories} == {T1, T2}
    assert version.manifest["lineage"]["format"] == "openinference"


# -- malformed input ----------------------------------------------------------------------------
def _line_of(spans: list[dict[str, Any]], span_id: str) -> int:
    return next(i for i, s in enumerate(spans, 1) if s["context"]["span_id"] == span_id)


def test_bad_role_names_line_and_attribute(tmp_path: Path) -> None:
    spans = _spans()
    line = _line_of(spans, "0x1a2b3c4d5e6f7083")
    spans[line - 1]["attributes"]["llm.input_messages.1.message.role"] = 42
    path = _write_jsonl(tmp_path / "bad.jsonl", spans)
    with pytest.raises(RowError) as err:
        read_openinference(path)
    assert f"bad.jsonl:{line}: span '1a2b3c4d5e6f7083', attribute 'llm.input_messages.1.message.role'" in str(err.value)


def test_tool_call_without_function_name(tmp_path: Path) -> None:
    spans = _spans()
    line = _line_of(spans, "0x2b3c4d5e6f708192")
    del spans[line - 1]["attributes"]["llm.output_messages.0.message.tool_calls.1.tool_call.function.name"]
    with pytest.raises(RowError, match=rf":{line}: .*'llm\.output_messages\.0\.message\.tool_calls\.1\.tool_call\."
                                       r"function\.name'.*needs the name"):
        read_openinference(_write_jsonl(tmp_path / "bad.jsonl", spans))


def test_tool_schema_that_is_not_json(tmp_path: Path) -> None:
    spans = _spans()
    line = _line_of(spans, "0x1a2b3c4d5e6f7085")
    spans[line - 1]["attributes"]["llm.tools.1.tool.json_schema"] = "{'type': 'function'"
    with pytest.raises(RowError, match=rf"bad\.jsonl:{line}: .*'llm\.tools\.1\.tool\.json_schema': not valid JSON"):
        read_openinference(_write_jsonl(tmp_path / "bad.jsonl", spans))


def test_message_gap(tmp_path: Path) -> None:
    spans = _spans()
    line = _line_of(spans, "0x1a2b3c4d5e6f7085")
    attrs = spans[line - 1]["attributes"]
    for k in [k for k in attrs if k.startswith("llm.input_messages.2.")]:
        del attrs[k]
    with pytest.raises(RowError, match=rf":{line}: .*'llm\.input_messages\.2': message 2 is missing"):
        read_openinference(_write_jsonl(tmp_path / "bad.jsonl", spans))


def test_trace_with_two_conversations(tmp_path: Path) -> None:
    spans = _spans()
    line = _line_of(spans, "0x1a2b3c4d5e6f7081")
    spans[line - 1]["attributes"]["llm.input_messages.1.message.content"] = "Something else entirely"
    with pytest.raises(RowError, match=rf":{line}: .*message 1 of this LLM call \(user\) is not message 1 of the "
                                       r"session sess-7f3a's last LLM call .*holds more than one conversation"):
        read_openinference(_write_jsonl(tmp_path / "bad.jsonl", spans))


def test_invalid_json_line_and_missing_trace_id(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(SAMPLE.read_text() + "{not json\n")
    with pytest.raises(RowError, match=r"bad\.jsonl:12: not valid JSON"):
        read_openinference(str(path))
    spans = _spans()
    del spans[2]["context"]
    with pytest.raises(RowError, match=r"bad\.jsonl:3: span has no trace id"):
        read_openinference(_write_jsonl(path, spans))


def test_bad_otlp_attribute(tmp_path: Path) -> None:
    doc = _otlp_request(_spans())
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][4]["attributes"][2] = {"value": {"stringValue": "x"}}
    path = tmp_path / "traces.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RowError, match=r"traces\.json:1\[span 4\]: field attributes\[2\]: an OTLP attribute"):
        read_openinference(str(path))


def test_no_llm_span(tmp_path: Path) -> None:
    spans = [s for s in _spans() if s["attributes"]["openinference.span.kind"] != "LLM"]
    with pytest.raises(ImportFormatError, match=r"none of its 6 spans is an LLM call of a known convention; tried OpenInference"):
        read_openinference(_write_jsonl(tmp_path / "tools_only.jsonl", spans))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="cannot read import file"):
        read_openinference(str(tmp_path / "nope.jsonl"))
