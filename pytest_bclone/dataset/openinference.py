"""Import OpenTelemetry span exports of OpenInference-instrumented LLM calls: one row per trace.

Accepted files:

* JSONL, one object a line, each either one span or one OTLP export request
  (``{"resourceSpans": [...]}``, what the collector's file exporter writes);
* JSON: a list of spans, one OTLP request (``{"resourceSpans": [{"scopeSpans": [{"spans":
  [...]}]}]}``), or a single span.

A span's attributes are either OTLP's ``[{"key": ..., "value": {"stringValue" | "intValue" |
"doubleValue" | "boolValue" | "arrayValue" | "kvlistValue": ...}}]`` or a dict, flat
(``"llm.input_messages.0.message.role"``) or nested (``{"llm": {"input_messages": [...]}}``,
Phoenix's style); all are flattened to dotted keys. Trace and span ids come from ``traceId`` /
``trace_id`` / ``context.trace_id`` (an ``0x`` prefix is dropped), start times from
``startTimeUnixNano`` / ``start_time`` (nanoseconds or ISO 8601).

Spans are grouped by trace id. The LLM spans (``openinference.span.kind`` == ``LLM``) of a trace
are ordered by ``agent.trajectory.step`` when every one has it, else by start time. Each LLM call
sees the whole conversation so far, so the **last** span's ``llm.input_messages`` plus its
``llm.output_messages`` are the trajectory; every earlier span's input + output must be a prefix
of it (a trace mixing conversations, e.g. sub-agents, is a :class:`RowError`, never a silent
merge). Tools are the union of the spans' ``llm.tools.{i}.tool.json_schema`` by name. Traces
without an LLM span (health checks, pure tool traces) give no row.

Messages are read from ``message.role``, ``message.content`` (or the ``message.contents.{j}``
parts), ``message.name``, ``message.tool_call_id`` and ``message.tool_calls.{j}.tool_call.id`` /
``.function.name`` / ``.function.arguments``. Roles ``model``/``ai`` become ``assistant`` and
``human`` becomes ``user``. A tool call without an id gets ``call_<message>_<j>``, and a tool
message without ``tool_call_id`` answers the oldest unanswered call, so the row stays valid.

Rows: id ``otel-<trace id>``; cohorts from the caller; split forced by ``split`` or the stable id
hash of the OpenAI JSONL importer (``eval_fraction`` in ``eval``); metadata with the trace id,
the model, the session/user ids when recorded.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import ImportFormatError, RowError
from .openai_jsonl import _eval_split, normalise_messages
from .schema import canonical_json, validate_row

_MSG_RE = re.compile(r"^llm\.(input|output)_messages\.(\d+)\.message\.(.+)$")
_TOOL_RE = re.compile(r"^llm\.tools\.(\d+)\.tool\.json_schema$")
_CALL_RE = re.compile(r"^tool_calls\.(\d+)\.tool_call\.(.+)$")
_PART_RE = re.compile(r"^contents\.(\d+)\.message_content\.(.+)$")
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_ROLE_ALIASES = {"model": "assistant", "ai": "assistant", "human": "user", "function": "tool"}
STEP_ATTRIBUTE = "agent.trajectory.step"
"""A span attribute numbering the agent's LLM calls; orders them when every span has it."""


@dataclass(frozen=True)
class Span:
    """One exported span, its attributes flattened to dotted keys."""

    source: str  # "file:line" or "file[span k]": where errors point
    trace_id: str
    span_id: str
    name: str
    start_ns: int
    index: int  # position in the file: the last tie-breaker of the order
    attributes: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.attributes.get("openinference.span.kind") or "").upper()

    def error(self, attribute: str, problem: str, fix: str) -> RowError:
        """A RowError naming this span's place in the file and the attribute."""
        return RowError(f"{self.source}: span {self.span_id or self.name!r}, attribute {attribute!r}: {problem}; {fix}")


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def read_openinference(
    path: str,
    *,
    cohorts: Sequence[str] = (),
    split: str | None = None,
    eval_fraction: float = 0.2,
) -> list[dict[str, Any]]:
    """Read an OpenInference span export; returns one validated row per trace with LLM spans.

    Raises :class:`ImportFormatError` for a file that cannot be read or holds no LLM span, and
    :class:`RowError` (naming the line or span and the attribute) for a malformed span.
    """
    traces: dict[str, list[Span]] = {}
    for span in read_spans(path):
        traces.setdefault(span.trace_id, []).append(span)
    rows = []
    for trace_id, spans in traces.items():
        llm = [s for s in spans if s.kind == "LLM"]
        if not llm:
            continue
        row = trace_to_row(trace_id, llm, path, cohorts=cohorts, split=split, eval_fraction=eval_fraction)
        validate_row(row, f"{_last(llm).source} (trace {trace_id})")
        rows.append(row)
    if not rows:
        raise ImportFormatError(
            f"{path} holds no OpenInference LLM span (attribute openinference.span.kind = \"LLM\") among "
            f"{sum(len(v) for v in traces.values())} spans; export the traces of an OpenInference-instrumented app"
        )
    return rows


def read_spans(path: str) -> Iterator[Span]:
    """Every span of the file, in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {path!r}: {exc.strerror}; check the path") from None
    for index, (source, raw) in enumerate(_raw_spans(path, text)):
        yield _parse_span(raw, source, index)


def _raw_spans(path: str, text: str) -> Iterator[tuple[str, Any]]:
    doc: Any = None
    if not path.endswith((".jsonl", ".ndjson")):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None  # not one JSON document: read it as JSONL below
    if doc is not None:
        items = doc if isinstance(doc, list) else _otlp_spans(doc) if _is_otlp(doc) else [doc]
        for k, raw in enumerate(items):
            yield f"{path}[span {k}]", raw
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise RowError(f"{path}:{lineno}: not valid JSON ({exc}); each line must be one span object or one "
                           "OTLP export {\"resourceSpans\": [...]}") from None
        if _is_otlp(obj):
            for k, raw in enumerate(_otlp_spans(obj)):
                yield f"{path}:{lineno}[span {k}]", raw
        else:
            yield f"{path}:{lineno}", obj


def _is_otlp(doc: Any) -> bool:
    return isinstance(doc, Mapping) and ("resourceSpans" in doc or "resource_spans" in doc)


def _otlp_spans(doc: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ():
        for ss in (rs.get("scopeSpans") or rs.get("scope_spans") or rs.get("instrumentationLibrarySpans") or ()):
            out.extend(ss.get("spans") or ())
    return out


# --------------------------------------------------------------------------------------------
# Spans and attributes
# --------------------------------------------------------------------------------------------
def _first(obj: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value: Any = obj
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value not in (None, ""):
            return value
    return None


def _hex_id(value: Any) -> str:
    text = str(value)
    return text[2:] if text.lower().startswith("0x") else text


def _time_ns(value: Any, span_source: str, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)  # 3.11+: "Z" and ns digits
    except ValueError:
        raise RowError(f"{span_source}: field {field}: {text!r} is neither nanoseconds nor an ISO 8601 time; fix "
                       "the export") from None
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _parse_span(raw: Any, source: str, index: int) -> Span:
    if not isinstance(raw, Mapping):
        raise RowError(f"{source}: a span is a JSON {type(raw).__name__}; expected an object with a trace id and "
                       "attributes")
    trace_id = _first(raw, "traceId", "trace_id", "context/trace_id", "context.trace_id", "context/traceId")
    if trace_id is None:
        raise RowError(f"{source}: span has no trace id (traceId, trace_id or context.trace_id); spans are grouped "
                       "into trajectories by trace: export them with their context")
    span_id = _first(raw, "spanId", "span_id", "context/span_id", "context.span_id", "context/spanId")
    start = _first(raw, "startTimeUnixNano", "start_time_unix_nano", "start_time", "startTime")
    raw_attrs = raw.get("attributes")
    if raw_attrs is None:
        # Phoenix's dataframe export: one top-level key per attribute, "attributes.llm...".
        raw_attrs = {k.removeprefix("attributes."): v for k, v in raw.items() if k.startswith("attributes.")}
    attrs: dict[str, Any] = {}
    if isinstance(raw_attrs, list):
        for k, kv in enumerate(raw_attrs):
            if not isinstance(kv, Mapping) or not isinstance(kv.get("key"), str):
                raise RowError(f"{source}: field attributes[{k}]: an OTLP attribute must be "
                               "{\"key\": ..., \"value\": {...}}; fix the export")
            _flatten(kv["key"], _otlp_value(kv.get("value")), attrs)
    elif isinstance(raw_attrs, Mapping):
        for key, value in raw_attrs.items():
            _flatten(str(key), value, attrs)
    else:
        raise RowError(f"{source}: field attributes: a JSON {type(raw_attrs).__name__}; expected OTLP key/value "
                       "pairs or an object")
    if "openinference.span.kind" not in attrs and raw.get("span_kind"):
        attrs["openinference.span.kind"] = raw["span_kind"]  # Phoenix keeps the kind beside the attributes
    return Span(source, _hex_id(trace_id), _hex_id(span_id) if span_id is not None else "", str(raw.get("name", "")),
                _time_ns(start, source, "start time"), index, attrs)


def _otlp_value(value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # int64 travels as a JSON string in OTLP JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in value:
        return {kv.get("key"): _otlp_value(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values") or ()}
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _flatten(key: str, value: Any, out: dict[str, Any]) -> None:
    # Nested dicts, and lists of objects (message lists), become dotted keys with list indexes;
    # a list of scalars (tag.tags) stays a list.
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{key}.{k}", v, out)
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{key}.{i}", v, out)
    else:
        out[key] = value


# --------------------------------------------------------------------------------------------
# Messages and tools of one LLM span
# --------------------------------------------------------------------------------------------
def span_messages(span: Span, direction: str) -> list[dict[str, Any]]:
    """The ``input`` or ``output`` messages of an LLM span as OpenAI messages (ids not filled)."""
    fields: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        m = _MSG_RE.match(key)
        if m and m.group(1) == direction:
            fields.setdefault(int(m.group(2)), {})[m.group(3)] = (key, value)
    prefix = f"llm.{direction}_messages"
    for i in range(len(fields)):
        if i not in fields:
            raise span.error(f"{prefix}.{i}", f"message {i} is missing but message {max(fields)} exists",
                             "the message list must be numbered 0, 1, 2... without gaps")
    return [_message(span, f"{prefix}.{i}.message", fields[i]) for i in range(len(fields))]


def _message(span: Span, prefix: str, fields: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    role_key, role = fields.get("role", (f"{prefix}.role", None))
    if not isinstance(role, str) or not role:
        raise span.error(role_key, f"the role is {role!r}", "every message needs a role (system, user, assistant, "
                         "tool)")
    role = _ROLE_ALIASES.get(role.lower(), role.lower())
    if role not in _ROLES:
        raise span.error(role_key, f"unknown role {role!r}", f"use one of {', '.join(sorted(_ROLES))}")
    msg: dict[str, Any] = {"role": role, "content": _content(span, prefix, fields)}
    for name in ("name", "tool_call_id"):
        if name in fields:
            key, value = fields[name]
            if not isinstance(value, str):
                raise span.error(key, f"a JSON {type(value).__name__}, expected a string", "fix the export")
            msg[name] = value
    calls: dict[int, dict[str, tuple[str, Any]]] = {}
    for sub, kv in fields.items():
        m = _CALL_RE.match(sub)
        if m:
            calls.setdefault(int(m.group(1)), {})[m.group(2)] = kv
    if calls:
        msg["tool_calls"] = [_tool_call(span, f"{prefix}.tool_calls.{j}.tool_call", calls.get(j, {}))
                             for j in range(max(calls) + 1)]
    return msg


def _content(span: Span, prefix: str, fields: Mapping[str, tuple[str, Any]]) -> Any:
    if "content" in fields:
        key, value = fields["content"]
        if value is not None and not isinstance(value, str):
            raise span.error(key, f"a JSON {type(value).__name__}, expected text", "record the content as a string")
        return value
    parts: dict[int, dict[str, Any]] = {}
    for sub, (_, value) in fields.items():
        m = _PART_RE.match(sub)
        if m:
            parts.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if not parts:
        return None
    out: list[dict[str, Any]] = []
    for j in sorted(parts):
        p = parts[j]
        if p.get("type") == "image" or "image.image.url" in p:
            out.append({"type": "image_url", "image_url": {"url": p.get("image.image.url")}})
        else:
            out.append({"type": "text", "text": p.get("text") or ""})
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)  # plain text reads (and compares) simplest
    return out


def _tool_call(span: Span, prefix: str, fields: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    name_key, name = fields.get("function.name", (f"{prefix}.function.name", None))
    if not isinstance(name, str) or not name:
        raise span.error(name_key, f"the tool call's function name is {name!r}", "every tool call needs the name "
                         "of the function it calls")
    args_key, args = fields.get("function.arguments", (f"{prefix}.function.arguments", "{}"))
    if not isinstance(args, (str, Mapping)):
        raise span.error(args_key, f"a JSON {type(args).__name__}", "arguments must be a JSON object or its text")
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if "id" in fields and fields["id"][1]:
        call["id"] = str(fields["id"][1])
    return call


def span_tools(span: Span) -> list[dict[str, Any]]:
    """The tools an LLM span offered, as OpenAI function tools."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        m = _TOOL_RE.match(key)
        if not m:
            continue
        schema: Any = value
        if isinstance(value, str):
            try:
                schema = json.loads(value)
            except ValueError as exc:
                raise span.error(key, f"not valid JSON ({exc})", "record the tool's JSON schema as JSON text") from None
        found[int(m.group(1))] = _openai_tool(span, key, schema)
    return [found[i] for i in sorted(found)]


def _openai_tool(span: Span, key: str, schema: Any) -> dict[str, Any]:
    if isinstance(schema, Mapping):
        if schema.get("type") == "function" and isinstance(schema.get("function"), Mapping):
            fn = dict(schema["function"])
        elif isinstance(schema.get("name"), str):
            fn = dict(schema)
            fn.pop("type", None)
            if "input_schema" in fn:  # Anthropic's form
                fn["parameters"] = fn.pop("input_schema")
        else:
            fn = {}
        if isinstance(fn.get("name"), str) and fn["name"]:
            return {"type": "function", "function": fn}
    raise span.error(key, "no tool name in the schema", "record {\"type\": \"function\", \"function\": {\"name\": ..., "
                     "\"parameters\": ...}}")


# --------------------------------------------------------------------------------------------
# A trace -> a row
# --------------------------------------------------------------------------------------------
def _order_key(span: Span, by_step: bool) -> tuple[float, int, int]:
    step = float(span.attributes[STEP_ATTRIBUTE]) if by_step else 0.0
    return (step, span.start_ns, span.index)


def _last(spans: Sequence[Span]) -> Span:
    return ordered_llm_spans(spans)[-1]


def ordered_llm_spans(spans: Sequence[Span]) -> list[Span]:
    """LLM spans in call order: by ``agent.trajectory.step`` when all have it, else by start time."""
    by_step = all(isinstance(s.attributes.get(STEP_ATTRIBUTE), (int, float, str)) for s in spans)
    if by_step:
        for s in spans:
            try:
                float(s.attributes[STEP_ATTRIBUTE])
            except ValueError:
                raise s.error(STEP_ATTRIBUTE, f"{s.attributes[STEP_ATTRIBUTE]!r} is not a number",
                              "number the steps 0, 1, 2...") from None
    return sorted(spans, key=lambda s: _order_key(s, by_step))


def _comparable(m: Mapping[str, Any]) -> tuple[Any, ...]:
    # Ids are left out: an instrumentation may record a call's id in one span and not the next.
    content = m.get("content")
    if isinstance(content, list):
        content = canonical_json(content)
    calls = tuple((tc["function"]["name"], tc["function"]["arguments"]) for tc in m.get("tool_calls") or ())
    return (m["role"], content or "", calls)


def _fill_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pending: list[str] = []
    out = []
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for j, tc in enumerate(m["tool_calls"]):
                tc = {**tc, "id": tc.get("id") or f"call_{i}_{j}"}
                calls.append(tc)
                pending.append(tc["id"])
            m["tool_calls"] = calls
        if m["role"] == "tool":
            if not m.get("tool_call_id") and pending:
                m["tool_call_id"] = pending[0]
            if m.get("tool_call_id") in pending:
                pending.remove(m["tool_call_id"])
        out.append(m)
    return out


def trace_to_row(
    trace_id: str,
    llm_spans: Sequence[Span],
    path: str,
    *,
    cohorts: Sequence[str] = (),
    split: str | None = None,
    eval_fraction: float = 0.2,
) -> dict[str, Any]:
    """One trace's LLM spans as an (unvalidated) row; raises RowError if they hold several conversations."""
    spans = ordered_llm_spans(llm_spans)
    conversations = [normalise_messages(span_messages(s, "input") + span_messages(s, "output")) for s in spans]
    last, final = spans[-1], conversations[-1]
    if not span_messages(last, "output"):
        raise last.error("llm.output_messages.0.message.role", "the last LLM call of the trace recorded no output "
                         "message", "export spans with their output messages (the expert's last action)")
    wanted = [_comparable(m) for m in final]
    for span, conv in zip(spans[:-1], conversations[:-1]):
        for k, m in enumerate(conv):
            if k >= len(wanted) or _comparable(m) != wanted[k]:
                raise span.error(
                    f"llm.{'input' if k < len(conv) - 1 else 'output'}_messages",
                    f"message {k} of this LLM call ({m['role']}) is not message {k} of the trace's last LLM call "
                    f"({last.source}): trace {trace_id} holds more than one conversation",
                    "export each agent's conversation as its own trace, or drop the spans not to be cloned",
                )
    tools: dict[str, dict[str, Any]] = {}
    for span in reversed(spans):  # the last call's tools (and definitions) first, then older extras
        for tool in span_tools(span):
            tools.setdefault(tool["function"]["name"], tool)
    row_id = f"otel-{trace_id}"
    metadata: dict[str, Any] = {
        "source": "openinference",
        "file": os.path.basename(path),
        "trace_id": trace_id,
        "llm_spans": [s.span_id for s in spans],
    }
    for attr, key in (("llm.model_name", "model"), ("llm.provider", "provider"), ("session.id", "session_id"),
                      ("user.id", "user_id")):
        if last.attributes.get(attr) is not None:
            metadata[key] = last.attributes[attr]
    return {
        "id": row_id,
        "cohorts": list(cohorts),
        "split": split or _eval_split(row_id, eval_fraction),
        "messages": _fill_ids(final),
        "tools": list(tools.values()),
        "expected": None,
        "expert_scores": {},
        "metadata": metadata,
    }


__all__ = [
    "STEP_ATTRIBUTE",
    "Span",
    "ordered_llm_spans",
    "read_openinference",
    "read_spans",
    "span_messages",
    "span_tools",
    "trace_to_row",
]
