"""Import OpenTelemetry span exports of LLM agents: one trajectory row per trace (or session).

``iter_rows`` is the ``otel`` (and ``openinference``) importer of
:mod:`pytest_bclone.dataset.importers`. The file may be OTLP JSON or JSONL (hex or base64 ids),
``span.to_json()`` lines, ConsoleSpanExporter output or a Phoenix span dataframe (JSONL or Parquet):
see :mod:`.spans`. Each span is read by the first convention that knows it:

* OpenInference and traceAI (:mod:`.openinference`): indexed ``llm.input_messages.N.message.*`` /
  ``gen_ai.input.messages.N.message.*``;
* OpenLLMetry (:mod:`.openllmetry`): ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*``;
* OpenTelemetry GenAI semantic conventions (:mod:`.genai`): JSON ``gen_ai.input.messages`` /
  ``gen_ai.output.messages`` with parts, or the older message events.

Spans are grouped by trace, or by session when a span names one (``session.id``,
``gen_ai.conversation.id``). An app instrumented only at the model client, with no span around a
conversation, exports each model call as its own trace: every call then becomes a row holding the
conversation up to it; wrap each conversation in a span, or set a session id, to get one row. Memory stays bounded by the spans of the groups in flight: a first pass
notes where each group's last span is, the second emits a group as soon as its last span is read.
The LLM calls of a group are ordered by ``agent.trajectory.step`` when every one has it, else by
start time. Each call sees the conversation so far, so the **last** call's input plus its output is
the trajectory, and every earlier call's input plus output must be a prefix of it (a trace mixing
conversations, e.g. sub-agents, is skipped with the reason, never merged). Tools come from the
calls (``llm.tools``, ``gen_ai.tool.definitions``, ``llm.request.functions``) or, failing that,
from the trace's TOOL spans. Evaluation results recorded on the spans (``gen_ai.evaluation.result``
events, ``gen_ai.evaluation.name`` + ``gen_ai.evaluation.score.value`` attributes, Phoenix's
``eval.<name>.score`` columns) become ``expert_scores``.

A group that cannot be read is appended to ``skipped`` as ``trace <hex id>`` with the reason (or
raises under ``strict``); a trace with no LLM call is reported skipped too, but does not fail a
strict import (health checks and tool-only traces are common). A file where no span is an LLM call
of any known convention is an :class:`~pytest_bclone.errors.ImportFormatError` naming the
conventions tried.

Rows: id ``otel-<32 hex trace id>`` (``otel-session-<id>`` for sessions), so the id and the split
do not depend on the id encoding; metadata with the trace and span ids, start and end times,
model, provider, session and user ids and the convention.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ...errors import BcloneError, ImportFormatError, RowError
from ..importers import ImportOptions, SkippedSource, skip_or_raise
from ..openai_jsonl import _eval_split, normalise_messages
from ..schema import canonical_json, validate_row
from . import genai, openinference, openllmetry
from .calls import LLMCall, first_attr
from .spans import BadSpan, Span, normalise_id, otlp_value, parse_span, raw_spans

STEP_ATTRIBUTE = "agent.trajectory.step"
"""A span attribute numbering the agent's LLM calls; orders them when every call has it."""
SESSION_ATTRIBUTES = ("session.id", "gen_ai.conversation.id")
"""Span attributes that group several traces into one conversation."""

_OI_NAME = ("OpenInference / traceAI (openinference.span.kind, fi.span.kind or gen_ai.span.kind = LLM with "
            "llm.input_messages.N.* or gen_ai.input.messages.N.message.*)")
_GENAI_NAME = ("OpenTelemetry GenAI semantic conventions (gen_ai.input.messages / gen_ai.output.messages JSON, or "
               "gen_ai.user.message / gen_ai.choice events)")
READERS: tuple[tuple[str, Callable[[Span], LLMCall | None]], ...] = (
    (_OI_NAME, openinference.read_call),
    ("OpenLLMetry (gen_ai.prompt.N.* / gen_ai.completion.N.*)", openllmetry.read_call),
    (_GENAI_NAME, genai.read_call),
)
"""(convention, reader) in the order spans are offered to them; the names appear in errors."""


def read_llm_call(span: Span) -> LLMCall | None:
    """The LLM call a span records, in the first convention that knows it; None for other spans."""
    for _, reader in READERS:
        call = reader(span)
        if call is not None:
            return call
    return None


# --------------------------------------------------------------------------------------------
# The importer
# --------------------------------------------------------------------------------------------
def iter_rows(path: str, options: ImportOptions, skipped: list[SkippedSource]) -> Iterator[dict[str, Any]]:
    """Stream one validated row per trace (or session) of the span export ``path``."""
    last, trace_key, count = _index(path)
    if count == 0:
        raise ImportFormatError(f"{path} holds no span; export the traces first")
    groups: dict[str, list[Span]] = {}
    bad: dict[str, str] = {}
    state = {"llm": 0}
    for pos, (source, raw) in enumerate(raw_spans(path)):
        try:
            span = parse_span(raw, source, pos)
        except BadSpan as exc:
            if exc.trace_id is None or exc.trace_id not in trace_key:
                skip_or_raise(exc, source, options, skipped)
                continue
            key = trace_key[exc.trace_id]
            bad.setdefault(key, str(exc))
            groups.setdefault(key, [])
        else:
            key = trace_key[span.trace_id]
            groups.setdefault(key, []).append(span)
        if last[key] == pos:
            row = _emit(key, groups.pop(key), bad.pop(key, None), path, options, skipped, state)
            if row is not None:
                yield row
    if state["llm"] == 0:
        raise ImportFormatError(
            f"{path}: none of its {count} spans is an LLM call of a known convention; tried "
            + "; ".join(name for name, _ in READERS)
            + ". Export the spans of an instrumented LLM app with message content captured (e.g. "
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT), or use the format that matches the file"
        )


def _peek(raw: Any) -> tuple[str | None, str | None]:
    """(trace id, session id) of a raw span without reading it all: the first pass's index."""
    if not isinstance(raw, Mapping):
        return None, None
    ctx = raw.get("context")
    tid = raw.get("traceId") or raw.get("trace_id") or raw.get("context.trace_id") \
        or (ctx.get("trace_id") or ctx.get("traceId") if isinstance(ctx, Mapping) else None)
    try:
        trace_id = normalise_id(tid, 16) if tid is not None else None
    except ValueError:
        return None, None
    session = None
    attrs = raw.get("attributes")
    if isinstance(attrs, list):
        for kv in attrs:
            if isinstance(kv, Mapping) and kv.get("key") in SESSION_ATTRIBUTES:
                session = otlp_value(kv.get("value"))
                break
    elif isinstance(attrs, Mapping):
        session = first_attr(attrs, *SESSION_ATTRIBUTES)
        if session is None:  # nested: {"session": {"id": ...}}
            nested = attrs.get("session")
            session = nested.get("id") if isinstance(nested, Mapping) else None
    else:
        session = first_attr(raw, *(f"attributes.{a}" for a in SESSION_ATTRIBUTES))
    return trace_id, None if session in (None, "") else str(session)


def _index(path: str) -> tuple[dict[str, int], dict[str, str], int]:
    """First pass: each group's last position, each trace's group, the number of spans."""
    trace_last: dict[str, int] = {}
    trace_session: dict[str, str] = {}
    count = 0
    for pos, (_, raw) in enumerate(raw_spans(path)):
        count = pos + 1
        trace_id, session = _peek(raw)
        if trace_id is None:
            continue
        trace_last[trace_id] = pos
        if session is not None:
            trace_session.setdefault(trace_id, session)
    trace_key = {t: f"session {trace_session[t]}" if t in trace_session else f"trace {t}" for t in trace_last}
    last: dict[str, int] = {}
    for t, pos in trace_last.items():
        key = trace_key[t]
        last[key] = max(pos, last.get(key, -1))
    return last, trace_key, count


def _emit(key: str, spans: list[Span], bad: str | None, path: str, options: ImportOptions,
          skipped: list[SkippedSource], state: dict[str, int]) -> dict[str, Any] | None:
    calls: list[LLMCall] = []
    try:
        if bad is not None:
            raise RowError(bad)
        for span in spans:
            try:
                call = read_llm_call(span)
            except RowError:
                state["llm"] += 1  # a known convention, badly recorded: not "no known convention"
                raise
            if call is not None:
                calls.append(call)
        state["llm"] += len(calls)
        if not calls:
            names = sorted({s.name for s in spans})
            skipped.append(SkippedSource(key, f"holds no LLM call of a known convention ({len(spans)} spans: "
                                              f"{', '.join(names[:5])}{'...' if len(names) > 5 else ''})"))
            return None
        row = group_to_row(key, calls, spans, path, options)
        validate_row(row, f"{path}: {key}")
    except BcloneError as exc:
        skip_or_raise(exc, key, options, skipped)
        return None
    return row


# --------------------------------------------------------------------------------------------
# A group of spans -> a row
# --------------------------------------------------------------------------------------------
def ordered_calls(calls: Sequence[LLMCall]) -> list[LLMCall]:
    """LLM calls in call order: by ``agent.trajectory.step`` when all have it, else by start time."""
    steps = [c.span.attributes.get(STEP_ATTRIBUTE) for c in calls]
    by_step = all(isinstance(s, (int, float, str)) and not isinstance(s, bool) for s in steps)
    if by_step:
        for c, s in zip(calls, steps):
            try:
                float(s)  # type: ignore[arg-type]
            except ValueError:
                raise c.span.error(STEP_ATTRIBUTE, f"{s!r} is not a number", "number the steps 0, 1, 2...") from None
    return sorted(calls, key=lambda c: (float(c.span.attributes[STEP_ATTRIBUTE]) if by_step else 0.0,
                                        c.span.start_ns, c.span.index))


def _comparable(m: Mapping[str, Any]) -> tuple[Any, ...]:
    # Ids are left out: an instrumentation may record a call's id in one span and not the next.
    content = m.get("content")
    if isinstance(content, list):
        content = canonical_json(content)
    calls = tuple((tc["function"]["name"], tc["function"]["arguments"]) for tc in m.get("tool_calls") or ())
    return (m["role"], content or "", calls)


def _fill_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A call without an id gets one, and a result without tool_call_id answers the oldest
    # unanswered call: results stay paired to their calls.
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
            if m.get("content") is None:
                m["content"] = ""
        out.append(m)
    return out


def _iso(ns: int) -> str | None:
    if not ns:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _scores(spans: Sequence[Span]) -> dict[str, float]:
    found: list[tuple[Span, str, str, Any]] = []
    for span in spans:
        attrs = span.attributes
        if "gen_ai.evaluation.name" in attrs and "gen_ai.evaluation.score.value" in attrs:
            found.append((span, "gen_ai.evaluation.score.value", str(attrs["gen_ai.evaluation.name"]),
                          attrs["gen_ai.evaluation.score.value"]))
        for key, value in attrs.items():
            if key.startswith("eval.") and key.endswith(".score"):
                found.append((span, key, key[5:-6], value))
        for ev in span.events:
            if ev.name == "gen_ai.evaluation.result" and "gen_ai.evaluation.name" in ev.attributes:
                found.append((span, f"event {ev.name}", str(ev.attributes["gen_ai.evaluation.name"]),
                              ev.attributes.get("gen_ai.evaluation.score.value")))
    scores: dict[str, float] = {}
    for span, where, name, value in found:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise span.error(where, f"evaluation {name!r} scored {value!r}, not a number in [0, 1]",
                             "record scores in [0, 1] (expert_scores are fractions)")
        scores[name] = float(value)  # the latest span's score of a name wins
    return scores


def group_to_row(key: str, calls: Sequence[LLMCall], spans: Sequence[Span], path: str,
                 options: ImportOptions) -> dict[str, Any]:
    """One group's LLM calls as a row (validated by the caller); raises RowError naming the span."""
    ordered = ordered_calls(calls)
    conversations = [normalise_messages(c.input + c.output) for c in ordered]
    last, final = ordered[-1], conversations[-1]
    if not last.output:
        raise last.span.error("output messages", "the last LLM call of the trace recorded no output message",
                              "export spans with their output messages (the expert's last action), with message "
                              "content captured")
    wanted = [_comparable(m) for m in final]
    for call, conv in zip(ordered[:-1], conversations[:-1]):
        for k, m in enumerate(conv):
            if k >= len(wanted) or _comparable(m) != wanted[k]:
                raise call.span.error(
                    "input messages" if k < len(call.input) else "output messages",
                    f"message {k} of this LLM call ({m['role']}) is not message {k} of the {key}'s last LLM call "
                    f"({last.span.source}): {key} holds more than one conversation",
                    "export each agent's conversation as its own trace, or drop the spans not to be cloned",
                )
    for k, m in enumerate(final):
        if m["role"] == "assistant" and not m.get("content") and not m.get("tool_calls"):
            owner = next((c for c, conv in zip(ordered, conversations) if len(conv) > k), last)
            raise owner.span.error(
                "output messages", f"assistant message {k} has neither text nor tool calls (a refusal or answer the "
                "instrumentation did not record)", "capture message content, and the refusal, in the export")
    tools: dict[str, dict[str, Any]] = {}
    for call in reversed(ordered):  # the last call's tools (and definitions) first, then older extras
        for tool in call.tools:
            tools.setdefault(tool["function"]["name"], tool)
    if not tools:  # the LLM spans carry no tool list: the tools the trace ran
        for span in sorted(spans, key=lambda s: (s.start_ns, s.index)):
            ran = openinference.tool_span_definition(span)
            if ran is not None:
                tools.setdefault(ran["function"]["name"], ran)
    trace_ids = sorted({s.trace_id for s in spans}, key=lambda t: min(s.start_ns for s in spans if s.trace_id == t))
    row_id = f"otel-{trace_ids[0]}" if key.startswith("trace ") else f"otel-{key.replace(' ', '-')}"
    metadata: dict[str, Any] = {
        "source": "otel",
        "convention": last.convention,
        "file": os.path.basename(path),
        "trace_id": trace_ids[0] if len(trace_ids) == 1 else None,
        "llm_spans": [c.span.span_id for c in ordered],
    }
    if len(trace_ids) > 1:
        metadata["trace_ids"] = trace_ids
    starts = [s.start_ns for s in spans if s.start_ns]
    ends = [s.end_ns for s in spans if s.end_ns]
    if starts:
        metadata["start_time"] = _iso(min(starts))
    if ends:
        metadata["end_time"] = _iso(max(ends))
    if last.model:
        metadata["model"] = last.model
    if last.provider:
        metadata["provider"] = last.provider
    for attrs_key, meta_key in (("session.id", "session_id"), ("gen_ai.conversation.id", "conversation_id"),
                                ("user.id", "user_id")):
        value = next((s.attributes[attrs_key] for s in spans if s.attributes.get(attrs_key) not in (None, "")), None)
        if value is not None:
            metadata[meta_key] = value
    if metadata["trace_id"] is None:
        del metadata["trace_id"]
    return {
        "id": row_id,
        "cohorts": list(options.cohorts),
        "split": options.split or _eval_split(row_id, options.eval_fraction),
        "messages": _fill_ids(final),
        "tools": list(tools.values()),
        "expected": None,
        "expert_scores": _scores(spans),
        "metadata": metadata,
    }


def read_openinference(path: str, *, cohorts: Sequence[str] = (), split: str | None = None,
                       eval_fraction: float = 0.2) -> list[dict[str, Any]]:
    """All rows of a span export as a list, failing on the first unreadable trace (the former
    ``dataset.openinference`` API; new code streams :func:`iter_rows`)."""
    options = ImportOptions(cohorts=tuple(cohorts), split=split, eval_fraction=eval_fraction, strict=True)
    return list(iter_rows(path, options, []))


__all__ = ["READERS", "SESSION_ATTRIBUTES", "STEP_ATTRIBUTE", "LLMCall", "Span", "group_to_row", "iter_rows",
           "ordered_calls", "read_llm_call", "read_openinference"]
