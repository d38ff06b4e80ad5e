"""Read the spans of an OpenTelemetry export, whatever the file: one :class:`Span` at a time.

Accepted inputs (told apart by their first bytes, not their names):

* OTLP JSON: one export request ``{"resourceSpans": [{"scopeSpans": [{"spans": [...]}]}]}`` (what
  the collector's file exporter and ``MessageToJson`` of the protobuf request write), or JSONL with
  one request a line;
* JSONL with one span a line (``span.to_json(indent=None)``, Phoenix's span dataframe saved as
  JSON lines, or flat dicts);
* a JSON list of spans, or a single span;
* the SDK's ``ConsoleSpanExporter`` output: pretty-printed ``span.to_json()`` objects one after
  another;
* a Phoenix span dataframe saved as Parquet (read in batches with pyarrow, imported lazily).

Ids are normalised to lowercase hex whatever their encoding: hex, ``0x``-prefixed hex (the SDK's
``to_json``) or base64 (protobuf's JSON mapping of bytes). Attributes are flattened to dotted keys
from OTLP key/value lists, flat dicts or nested dicts (Phoenix). Span events keep their name and
attributes (the older GenAI conventions put messages there).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...errors import ImportFormatError, RowError
from ..importers import PARQUET_MAGIC, iter_text_lines

_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class Event:
    """A span event: its name, time and flattened attributes."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Span:
    """One exported span, ids in lowercase hex, attributes flattened to dotted keys."""

    source: str  # "file:line", "file[span k]" or "file:line[span k]": where errors point
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_ns: int
    end_ns: int
    index: int  # position in the file: the last tie-breaker of the order
    attributes: Mapping[str, Any]
    events: tuple[Event, ...] = field(default=())

    def error(self, attribute: str, problem: str, fix: str) -> RowError:
        """A RowError naming this span's place in the file and the attribute."""
        return RowError(f"{self.source}: span {self.span_id or self.name!r}, attribute {attribute!r}: {problem}; {fix}")


class BadSpan(RowError):
    """A span that cannot be read; ``trace_id`` is set when the span still named its trace."""

    def __init__(self, message: str, trace_id: str | None = None) -> None:
        super().__init__(message)
        self.trace_id = trace_id


# --------------------------------------------------------------------------------------------
# Files -> raw span objects
# --------------------------------------------------------------------------------------------
def raw_spans(path: str) -> Iterator[tuple[str, Any]]:
    """``(source, raw span object)`` of every span of ``path``, in file order, streamed where the
    format allows (JSONL, console output, Parquet); a single JSON document is parsed whole.

    A line that is not JSON yields ``(source, BadSpan)`` so the caller can skip it and go on.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except IsADirectoryError:
        raise ImportFormatError(f"{path} is a directory; give the span export file itself") from None
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {path!r}: {exc.strerror}; check the path") from None
    if head == PARQUET_MAGIC:
        yield from _parquet_spans(path)
        return
    lines = iter_text_lines(path, "OpenTelemetry spans (OTLP JSON, JSON lines or console output)")
    first = next(lines, None)
    if first is None:
        raise ImportFormatError(f"{path} is empty; export the spans first")
    lineno, text = first
    try:
        obj: Any = json.loads(text)
    except ValueError:
        obj = None
        if not text.lstrip("\ufeff \t").startswith(("{", "[")):
            raise ImportFormatError(
                f"{path}:{lineno}: not JSON ({text.strip()[:40]!r}...); expected OpenTelemetry spans as OTLP JSON, "
                "JSON lines or ConsoleSpanExporter output"
            ) from None
    if obj is not None:  # JSON lines (or a one-line JSON document)
        yield from _from_line(path, lineno, obj)
        for lineno, text in lines:
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield f"{path}:{lineno}", BadSpan(f"{path}:{lineno}: not valid JSON ({exc}); each line must be one "
                                                  "span object or one OTLP export {\"resourceSpans\": [...]}")
                continue
            yield from _from_line(path, lineno, obj)
        return
    # One pretty-printed document, or pretty objects one after another (ConsoleSpanExporter).
    yield from _pretty_objects(path, lineno, text, lines)


def _from_line(path: str, lineno: int, obj: Any) -> Iterator[tuple[str, Any]]:
    if is_otlp(obj):
        for k, raw in enumerate(otlp_spans(obj)):
            yield f"{path}:{lineno}[span {k}]", raw
    elif isinstance(obj, list):
        for k, raw in enumerate(obj):
            yield f"{path}:{lineno}[span {k}]", raw
    else:
        yield f"{path}:{lineno}", obj


def _pretty_objects(path: str, first_line: int, first_text: str, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, Any]]:
    # Accumulate lines until they parse: a console export becomes one span at a time, an OTLP
    # document is parsed once it is complete. A top-level object ends on a line starting with
    # "}" or "]", so only those lines are tried.
    decoder = json.JSONDecoder()
    buf: list[str] = [first_text]
    start, count = first_line, 0
    for lineno, text in lines:
        buf.append(text)
        if not text.startswith(("}", "]")):
            continue
        doc = "".join(buf)
        try:
            obj, end = decoder.raw_decode(doc.lstrip("\ufeff \t\r\n"))
        except ValueError:
            continue
        rest = doc.lstrip("\ufeff \t\r\n")[end:].strip()
        if rest:
            continue  # a closing brace inside a string: keep reading
        buf = []
        if is_otlp(obj) or isinstance(obj, list):
            items = otlp_spans(obj) if is_otlp(obj) else obj
            for k, raw in enumerate(items):
                yield f"{path}[span {count + k}]", raw
            count += len(items)
        else:
            yield f"{path}:{start}", obj
            count += 1
        start = lineno + 1
    if "".join(buf).strip():
        raise ImportFormatError(
            f"{path}:{start}: the JSON starting on this line does not parse (truncated or not JSON); expected OTLP "
            "JSON, JSON lines or ConsoleSpanExporter output: re-export the spans"
        )


def _parquet_spans(path: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # lazy: only Phoenix dataframes need it
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ImportFormatError(f"{path} is Parquet but pyarrow is not installed; pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a broken file)
        raise ImportFormatError(f"{path}: not a readable Parquet file ({exc}); re-export the span dataframe") from None
    names = set(pf.schema_arrow.names)
    if not names & {"context.trace_id", "trace_id", "traceId", "context"}:
        raise ImportFormatError(
            f"{path} is a Parquet file without a trace id column (context.trace_id); the otel importer reads "
            f"Phoenix span dataframes (columns seen: {', '.join(sorted(names)[:12])})"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path}[row {row}]", rec


def is_otlp(doc: Any) -> bool:
    """Whether ``doc`` is an OTLP export request."""
    return isinstance(doc, Mapping) and ("resourceSpans" in doc or "resource_spans" in doc)


def otlp_spans(doc: Mapping[str, Any]) -> list[Any]:
    """The spans of an OTLP export request, resource and scope dropped."""
    out: list[Any] = []
    for rs in doc.get("resourceSpans") or doc.get("resource_spans") or ():
        for ss in (rs.get("scopeSpans") or rs.get("scope_spans") or rs.get("instrumentationLibrarySpans") or ()):
            out.extend(ss.get("spans") or ())
    return out


# --------------------------------------------------------------------------------------------
# Raw span -> Span
# --------------------------------------------------------------------------------------------
def _first(obj: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value: Any = obj.get(key) if key in obj else obj
        if key not in obj:
            for part in key.split("/"):
                value = value.get(part) if isinstance(value, Mapping) else None
        if value not in (None, ""):
            return value
    return None


def normalise_id(value: Any, nbytes: int) -> str:
    """A trace (16 bytes) or span (8 bytes) id as lowercase hex, from hex, ``0x`` hex or base64.

    Raises ValueError for anything else, so the same trace gets the same row id (and split)
    whatever encoding the exporter used.
    """
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:0{nbytes * 2}x}"
    whole = str(value).strip()
    # A "0x" prefix only when hex follows: a base64 id may itself begin with "0x" or "0X"
    # (one span id in 1,024 does), and must then be read as base64, whole.
    text = whole[2:] if whole.lower().startswith("0x") and _HEX.match(whole[2:]) else whole
    if len(text) == nbytes * 2 and _HEX.match(text):
        return text.lower()
    try:
        raw = base64.b64decode(whole, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == nbytes:
        return raw.hex()
    if _HEX.match(text):  # a shorter or longer hex id: kept, lowercased
        return text.lower()
    raise ValueError(f"{value!r} is neither hex nor base64 of {nbytes} bytes")


def _time_ns(value: Any, source: str, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)  # 3.11+: "Z" and long fractions
    except ValueError:
        raise RowError(f"{source}: {what} {text!r} is neither nanoseconds nor an ISO 8601 time; fix the export") \
            from None
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def otlp_value(value: Any) -> Any:
    """The plain value of an OTLP ``AnyValue`` (``{"stringValue": ...}`` and friends)."""
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
        return [otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in value:
        return {kv.get("key"): otlp_value(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values") or ()}
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def flatten(key: str, value: Any, out: dict[str, Any]) -> None:
    """Nested dicts and lists of objects become dotted keys with list indexes; scalar lists stay."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if v is not None:  # a dataframe's missing struct field, not a recorded value
                flatten(f"{key}.{k}", v, out)
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, v in enumerate(value):
            flatten(f"{key}.{i}", v, out)
    else:
        out[key] = value


def _attributes(raw_attrs: Any, source: str, field_name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if raw_attrs is None:
        return attrs
    if isinstance(raw_attrs, list):
        for k, kv in enumerate(raw_attrs):
            if not isinstance(kv, Mapping) or not isinstance(kv.get("key"), str):
                raise RowError(f"{source}: field {field_name}[{k}]: an OTLP attribute must be "
                               "{\"key\": ..., \"value\": {...}}; fix the export")
            flatten(kv["key"], otlp_value(kv.get("value")), attrs)
    elif isinstance(raw_attrs, Mapping):
        for key, value in raw_attrs.items():
            flatten(str(key), value, attrs)
    else:
        raise RowError(f"{source}: field {field_name}: a JSON {type(raw_attrs).__name__}; expected OTLP key/value "
                       "pairs or an object")
    return attrs


def parse_span(raw: Any, source: str, index: int) -> Span:
    """A raw span object as a :class:`Span`; raises :class:`BadSpan` naming the source and field."""
    if isinstance(raw, BadSpan):
        raise raw
    if not isinstance(raw, Mapping):
        raise BadSpan(f"{source}: a span is a JSON {type(raw).__name__}; expected an object with a trace id and "
                      "attributes")
    trace_raw = _first(raw, "traceId", "trace_id", "context.trace_id", "context/trace_id", "context/traceId")
    if trace_raw is None:
        raise BadSpan(f"{source}: span has no trace id (traceId, trace_id or context.trace_id); spans are grouped "
                      "into trajectories by trace: export them with their context")
    try:
        trace_id = normalise_id(trace_raw, 16)
    except ValueError as exc:
        raise BadSpan(f"{source}: trace id {exc}; export ids as hex (OTLP/JSON) or base64 (protobuf JSON)") from None
    try:
        span_raw = _first(raw, "spanId", "span_id", "context.span_id", "context/span_id", "context/spanId")
        span_id = normalise_id(span_raw, 8) if span_raw is not None else ""
        parent_raw = _first(raw, "parentSpanId", "parent_span_id", "parent_id")
        parent_id = normalise_id(parent_raw, 8) if parent_raw is not None else ""
        start = _time_ns(_first(raw, "startTimeUnixNano", "start_time_unix_nano", "start_time", "startTime"),
                         source, "start time")
        end = _time_ns(_first(raw, "endTimeUnixNano", "end_time_unix_nano", "end_time", "endTime"), source,
                       "end time")
        raw_attrs = raw.get("attributes")
        if raw_attrs is None:
            # Phoenix's dataframe: one column per attribute, "attributes.llm...".
            raw_attrs = {k.removeprefix("attributes."): v for k, v in raw.items()
                         if k.startswith("attributes.") and v is not None}
        attrs = _attributes(raw_attrs, source, "attributes")
        kind = raw.get("span_kind")
        if "openinference.span.kind" not in attrs and isinstance(kind, str) and kind.upper() in _OI_KINDS:
            attrs["openinference.span.kind"] = kind  # Phoenix keeps the kind beside the attributes
        events = []
        for k, ev in enumerate(raw.get("events") or ()):
            if not isinstance(ev, Mapping):
                raise RowError(f"{source}: field events[{k}]: a JSON {type(ev).__name__}; expected an object")
            events.append(Event(str(ev.get("name", "")),
                                _time_ns(_first(ev, "timeUnixNano", "time_unix_nano", "timestamp"), source,
                                         f"events[{k}] time"),
                                _attributes(ev.get("attributes"), source, f"events[{k}].attributes")))
    except ValueError as exc:  # a span or parent id that is not an id
        raise BadSpan(f"{source}: span id {exc}; export ids as hex or base64", trace_id) from None
    except RowError as exc:
        raise BadSpan(str(exc), trace_id) from None
    return Span(source, trace_id, span_id, parent_id, str(raw.get("name") or ""), start, end, index, attrs,
                tuple(events))


_OI_KINDS = {"LLM", "TOOL", "AGENT", "CHAIN", "RETRIEVER", "EMBEDDING", "RERANKER", "GUARDRAIL", "EVALUATOR"}


__all__ = ["BadSpan", "Event", "Span", "flatten", "is_otlp", "normalise_id", "otlp_spans", "otlp_value", "parse_span",
           "raw_spans"]
