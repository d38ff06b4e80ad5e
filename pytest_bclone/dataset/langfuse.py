"""Import Langfuse observation exports (JSONL) as trajectories, one per trace.

A Langfuse export line is an observation::

    {"id": "obs-1", "traceId": "t-1", "type": "GENERATION", "name": "chat", "startTime": "...",
     "endTime": "...", "model": "gpt-4o", "input": [...messages...] | {"messages": [...], "tools": [...]},
     "output": {"role": "assistant", "content": ..., "tool_calls": [...]}, "metadata": {...},
     "level": "DEFAULT", "statusMessage": null, "parentObservationId": null, ...}

Other observation types (``SPAN``, ``EVENT``, ``TOOL``, ``AGENT``...) are read for their trace's
times only. The file may also hold trace lines (``{"id", "timestamp", "userId", "sessionId",
"tags", "scores": [...]}``, optionally with their ``observations`` nested) and score lines
(``{"traceId", "name", "value", "dataType"}``).

A trace becomes one row: the messages of its **last** generation's input followed by that
generation's output (an agent's last model call sees the whole conversation, tool results
included), and the tools from that input. Scores whose values lie in [0, 1] become
``expert_scores`` (other scores go to ``metadata.scores``); trace id, session, user, model,
tags and the first start time go to metadata. The split is a stable hash of the session (else
the trace), so a session is never on both sides.

Memory is bounded by the number of traces, not observations: per trace only the latest
generation so far and its scores are kept. A trace that cannot become a row (no generation,
a generation without output or with an error level, messages of an unknown shape) is skipped
and reported with its trace id, or raises under ``--strict``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BcloneError, ImportFormatError, RowError
from .importers import ImportOptions, SkippedSource, iter_text_lines, skip_or_raise
from .openai_jsonl import _eval_split, normalise_messages
from .schema import validate_row

_ROLES = {"system": "system", "developer": "developer", "user": "user", "human": "user", "assistant": "assistant",
          "ai": "assistant", "tool": "tool"}
_MSG_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


@dataclass
class _Trace:
    generation: dict[str, Any] | None = None
    gen_key: tuple[str, str, int] = ("", "", -1)
    first_start: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    generations: int = 0
    where: str = ""


def iter_rows(path: str, options: ImportOptions, skipped: list[SkippedSource]) -> Iterator[dict[str, Any]]:
    """The ``langfuse`` importer (see the module docstring)."""
    traces: dict[str, _Trace] = {}
    n = 0
    for lineno, line in iter_text_lines(path, "a Langfuse observation export (JSON lines)"):
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ImportFormatError(f"{path}:{lineno}: not valid JSON ({exc}); a Langfuse export has one observation "
                                    "object per line") from None
        if not isinstance(obj, dict):
            raise ImportFormatError(f"{path}:{lineno}: a JSON {type(obj).__name__}; expected a Langfuse observation "
                                    "object {\"traceId\", \"type\", \"input\", \"output\", ...}")
        nested = obj.get("observations")
        for o in nested if isinstance(nested, list) else ():
            if isinstance(o, dict):
                n += 1
                _add_observation(traces, {"traceId": obj.get("id"), **o}, f"{path}:{lineno}", n)
        kind = _line_kind(obj)
        if kind == "observation":
            n += 1
            _add_observation(traces, obj, f"{path}:{lineno}", n)
        elif kind == "score":
            _add_score(traces.setdefault(str(obj["traceId"]), _Trace(where=f"{path}:{lineno}")), obj)
        elif kind == "trace":
            t = traces.setdefault(str(obj["id"]), _Trace(where=f"{path}:{lineno}"))
            for key in ("userId", "sessionId", "tags", "name", "release", "environment"):
                if obj.get(key) not in (None, [], ""):
                    t.info[key] = obj[key]
            if obj.get("timestamp") and (t.first_start is None or str(obj["timestamp"]) < t.first_start):
                t.first_start = str(obj["timestamp"])
            for s in obj.get("scores") or ():
                if isinstance(s, dict):
                    _add_score(t, s)
        else:
            raise ImportFormatError(
                f"{path}:{lineno}: not a Langfuse observation (no \"traceId\" and \"type\"), trace or score; "
                "export the project's observations from Langfuse as JSONL, or choose another --format"
            )
    if not traces:
        raise ImportFormatError(f"{path} holds no Langfuse observations; expected one observation per line")
    for trace_id, t in traces.items():
        where = f"{path}: trace {trace_id}"
        try:
            row = _trace_row(trace_id, t, where, options)
            validate_row(row, where)
        except BcloneError as exc:
            skip_or_raise(exc, where, options, skipped)
            continue
        yield row


def _line_kind(obj: Mapping[str, Any]) -> str:
    if obj.get("traceId") and "type" in obj:
        return "observation"
    if obj.get("traceId") and "value" in obj and "name" in obj:
        return "score"
    if obj.get("id") and ("timestamp" in obj or "observations" in obj or "sessionId" in obj or "scores" in obj):
        return "trace"
    return "unknown"


def _add_observation(traces: dict[str, _Trace], obs: Mapping[str, Any], where: str, order: int) -> None:
    t = traces.setdefault(str(obs.get("traceId")), _Trace(where=where))
    start = str(obs.get("startTime") or "")
    if start and (t.first_start is None or start < t.first_start):
        t.first_start = start
    if obs.get("type") != "GENERATION":
        return
    t.generations += 1
    # ISO 8601 times of one export share a format, so text order is time order; the file order
    # breaks ties (and orders generations without times).
    key = (start, str(obs.get("endTime") or ""), order)
    if key >= t.gen_key:
        t.gen_key = key
        t.generation = dict(obs)


def _add_score(t: _Trace, s: Mapping[str, Any]) -> None:
    name, value = s.get("name"), s.get("value")
    if isinstance(name, str) and name:
        t.scores[name] = value


def _message(m: Any, where: str, k: int) -> dict[str, Any]:
    if isinstance(m, str):
        return {"role": "user", "content": m}
    if not isinstance(m, Mapping):
        raise RowError(f"{where}: input message {k} is a JSON {type(m).__name__}; expected a chat message")
    role = _ROLES.get(str(m.get("role") or m.get("type") or ""))
    if role is None:
        raise RowError(f"{where}: input message {k} has role {m.get('role') or m.get('type')!r}; expected system, "
                       "user, assistant or tool")
    msg = {key: m[key] for key in _MSG_KEYS if key in m and m[key] is not None}
    msg["role"] = role
    if role != "assistant":
        msg.setdefault("content", "")
    return msg


def _output_message(out: Any, where: str) -> dict[str, Any]:
    if isinstance(out, str):
        return {"role": "assistant", "content": out}
    if isinstance(out, Mapping):
        if isinstance(out.get("choices"), list) and out["choices"]:  # a raw completion response
            return _output_message((out["choices"][0] or {}).get("message"), where)
        if "content" in out or "tool_calls" in out or out.get("role") == "assistant":
            msg = {key: out[key] for key in _MSG_KEYS if key in out and out[key] is not None}
            msg["role"] = "assistant"
            if out.get("refusal") and not msg.get("content"):
                msg["content"] = out["refusal"]  # a refusal is the assistant's answer, kept as its text
            return msg
    raise RowError(f"{where}: the last generation's output is {json.dumps(out)[:80]}; expected an assistant message "
                   "or text")


def _maybe_json(value: Any) -> Any:
    """Some Langfuse exports carry input/output as JSON text: read it when it is an array or object."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _trace_row(trace_id: str, t: _Trace, where: str, options: ImportOptions) -> dict[str, Any]:
    gen = t.generation
    if gen is None:
        raise RowError(f"{where}: the trace holds no GENERATION observation, so no model call to learn from")
    if gen.get("level") == "ERROR":
        raise RowError(f"{where}: the last generation failed ({str(gen.get('statusMessage') or 'level ERROR')[:100]})"
                       "; the trace holds no answer of the expert")
    if gen.get("output") is None:
        raise RowError(f"{where}: the last generation has no output (still running or failed); nothing to learn from")
    inp = _maybe_json(gen.get("input"))
    tools: Any = []
    if isinstance(inp, Mapping):
        tools = inp.get("tools") or []
        inp = inp.get("messages")
    if isinstance(inp, str):
        inp = [inp]
    if not isinstance(inp, list):
        raise RowError(f"{where}: the last generation's input is not a list of chat messages; the importer reads the "
                       "OpenAI/LangChain message forms")
    messages = [_message(m, where, k) for k, m in enumerate(inp)]
    messages.append(_output_message(_maybe_json(gen["output"]), where))
    expert_scores: dict[str, float] = {}
    other_scores: dict[str, Any] = {}
    for name, value in t.scores.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
            expert_scores[name] = float(value)
        else:
            other_scores[name] = value
    session = t.info.get("sessionId")
    metadata: dict[str, Any] = {"source": "langfuse", "trace_id": trace_id, "observation_id": gen.get("id"),
                                "generations": t.generations}
    if t.first_start:
        metadata["timestamp"] = t.first_start
    for key, ours in (("sessionId", "session_id"), ("userId", "user_id"), ("tags", "tags"), ("name", "trace_name"),
                      ("release", "release"), ("environment", "environment")):
        if key in t.info:
            metadata[ours] = t.info[key]
    if gen.get("model"):
        metadata["model"] = gen["model"]
    if isinstance(gen.get("metadata"), Mapping) and gen["metadata"]:
        metadata["generation_metadata"] = gen["metadata"]
    if other_scores:
        metadata["scores"] = other_scores
    row_id = f"langfuse-{trace_id}"
    group = f"langfuse-session-{session}" if session else row_id
    return {
        "id": row_id,
        "cohorts": list(options.cohorts),
        "split": options.split or _eval_split(group, options.eval_fraction),
        "messages": normalise_messages(messages),
        "tools": [x if isinstance(x, Mapping) and "function" in x else {"type": "function", "function": x}
                  for x in tools] if isinstance(tools, list) else tools,
        "expected": None,
        "expert_scores": expert_scores,
        "metadata": metadata,
    }


__all__ = ["iter_rows"]
