"""The JSON schema of one trajectory row, and row <-> :class:`Trajectory` conversion.

Rows are validated when they enter the store (import, build), not on every load: a version's
hashes already prove its rows are the ones that were validated.
"""

from __future__ import annotations

import difflib
import json
import json.encoder
import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from ..errors import RowError
from ..records import ExpectedOutcome, Trajectory

SCHEMA_VERSION = 1

_TOOL_CALL = {
    "type": "object",
    "required": ["function"],
    "properties": {
        "id": {"type": "string"},
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "required": ["name", "arguments"],
            "properties": {"name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}},
        },
    },
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}

ROW_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pytest-bclone trajectory row",
    "type": "object",
    "required": ["id", "cohorts", "split", "messages", "tools"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "cohorts": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}},
        "split": {"enum": ["train", "eval"]},
        "messages": {
            "type": "array",
            "minItems": 1,
            "contains": {"type": "object", "properties": {"role": {"const": "assistant"}}, "required": ["role"]},
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": _CONTENT,
                    "tool_calls": {"type": "array", "items": _TOOL_CALL},
                    "tool_call_id": {"type": "string"},
                    "name": {"type": "string"},
                },
                "allOf": [
                    {"if": {"properties": {"role": {"const": "tool"}}},
                     "then": {"required": ["tool_call_id", "content"]}},
                    {"if": {"properties": {"role": {"enum": ["system", "developer", "user"]}}},
                     "then": {"required": ["content"]}},
                ],
            },
        },
        "tools": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string", "minLength": 1}, "parameters": {"type": "object"}},
                    },
                },
            },
        },
        "expected": {
            "type": ["object", "null"],
            "properties": {
                "actions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
                    },
                },
                "outputs": {"type": "array", "items": {"type": "string"}},
            },
        },
        "expert_scores": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
        "metadata": {"type": "object"},
    },
}


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # type: ignore[import-untyped]  # lazy: only import/build paths validate

    return jsonschema.Draft202012Validator(ROW_SCHEMA)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<row>"


ROW_KEYS = ("id", "cohorts", "split", "messages", "tools", "expected", "expert_scores", "metadata")
"""Every key a row may have (the schema forbids others)."""

_REQUIRED = ("id", "cohorts", "split", "messages", "tools")
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_NEEDS_CONTENT = frozenset({"system", "developer", "user"})
_COHORT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_num(v: Any) -> bool:
    return type(v) is float or type(v) is int  # bool is not a number for the schema either


def _fast_expected(e: Any) -> bool:
    if e is None:
        return True
    if type(e) is not dict:
        return False
    if "actions" in e:
        acts = e["actions"]
        if type(acts) is not list:
            return False
        for a in acts:
            if type(a) is not dict or type(a.get("name")) is not str:
                return False
            if "arguments" in a and type(a["arguments"]) is not dict:
                return False
    if "outputs" in e:
        outs = e["outputs"]
        if type(outs) is not list or any(type(o) is not str for o in outs):
            return False
    return True


_INVALID, _VALID, _UNANSWERED = 0, 1, 2
"""What :func:`_fast_check` found: not certainly valid (jsonschema decides); valid; valid for the
schema but a tool message answers no earlier tool call (validate_row words that)."""


def _fast_check(row: Any) -> int:
    """The hand-written row check behind :func:`fast_valid` and :func:`validate_row`, one pass.

    Message and tool checks are written inline (not as helpers): the import calls this on every
    row, and a call per message and per tool was a third of its cost.
    """
    if type(row) is not dict:
        return _INVALID
    keys = row.keys()
    if not keys <= _KEYSET or not _REQUIRED_SET <= keys:
        return _INVALID
    rid, cohorts, msgs, tools = row["id"], row["cohorts"], row["messages"], row["tools"]
    if type(rid) is not str or not rid or row["split"] not in ("train", "eval") or type(row["split"]) is not str:
        return _INVALID
    if type(cohorts) is not list:
        return _INVALID
    for c in cohorts:
        if type(c) is not str or not _COHORT_RE.fullmatch(c):
            return _INVALID
    if type(msgs) is not list or not msgs:
        return _INVALID
    has_assistant = False
    answered = True
    called: set[str] = set()  # ids of the tool calls made so far (a tool message must answer one)
    for m in msgs:
        if type(m) is not dict:
            return _INVALID
        role = m.get("role")
        if type(role) is not str or role not in _ROLES:
            return _INVALID
        if "content" in m:
            c = m["content"]
            if c is not None and type(c) is not str and type(c) is not list:
                return _INVALID
        elif role == "tool" or role in _NEEDS_CONTENT:
            return _INVALID
        if "tool_calls" in m:
            calls = m["tool_calls"]
            if type(calls) is not list:
                return _INVALID
            for tc in calls:
                if type(tc) is not dict:
                    return _INVALID
                fn = tc.get("function")
                if type(fn) is not dict:
                    return _INVALID
                name, args = fn.get("name"), fn.get("arguments")
                if type(name) is not str or not name or type(args) is not str:
                    return _INVALID
                if "id" in tc:
                    call_id = tc["id"]
                    if type(call_id) is not str:
                        return _INVALID
                    if call_id:
                        called.add(call_id)
                if "type" in tc and tc["type"] != "function":
                    return _INVALID
        if "tool_call_id" in m:
            answer = m["tool_call_id"]
            if type(answer) is not str:
                return _INVALID
            if role == "tool" and answer not in called:
                answered = False
        elif role == "tool":
            return _INVALID
        if "name" in m and type(m["name"]) is not str:
            return _INVALID
        if role == "assistant":
            has_assistant = True
    if not has_assistant or type(tools) is not list:
        return _INVALID
    for t in tools:
        if type(t) is not dict or t.get("type") != "function":
            return _INVALID
        fn = t.get("function")
        if type(fn) is not dict:
            return _INVALID
        name = fn.get("name")
        if type(name) is not str or not name:
            return _INVALID
        if "parameters" in fn and type(fn["parameters"]) is not dict:
            return _INVALID
    if "expected" in row and not _fast_expected(row["expected"]):
        return _INVALID
    if "expert_scores" in row:
        scores = row["expert_scores"]
        if type(scores) is not dict:
            return _INVALID
        for v in scores.values():
            if not _is_num(v) or not 0 <= v <= 1:  # NaN fails both comparisons
                return _INVALID
    if "metadata" in row and type(row["metadata"]) is not dict:
        return _INVALID
    return _VALID if answered else _UNANSWERED


def fast_valid(row: Any) -> bool:
    """True when ``row`` certainly matches :data:`ROW_SCHEMA` (and has finite expert scores).

    A hand-written check of the row shape, over 100x cheaper than jsonschema: imports call it on
    every row and fall back to jsonschema only to word the error of a row it rejects. It must
    never accept a row the schema rejects (a test compares both on generated rows); rejecting a
    valid row would only cost speed, never correctness, since jsonschema then decides.
    """
    return _fast_check(row) != _INVALID


_KEYSET = frozenset(ROW_KEYS)
_REQUIRED_SET = frozenset(_REQUIRED)


def validate_row(row: Any, source: str) -> None:
    """Raise :class:`RowError` for the first problem of ``row``; ``source`` is e.g. ``file.jsonl:12``.

    Besides the schema, every ``tool`` message must answer a tool call made earlier in the row,
    expert scores must be finite, and an unknown key is named with the list of known ones.
    The common case (a valid row) takes the hand-written fast path; jsonschema runs only to
    word the error of a row the fast path rejects.
    """
    found = _fast_check(row)
    if found == _VALID:
        return
    if found == _INVALID:
        _schema_error(row, source)
    seen: set[str] = set()
    for i, m in enumerate(row["messages"]):
        for tc in m.get("tool_calls") or ():
            if tc.get("id"):
                seen.add(tc["id"])
        if m["role"] == "tool" and m["tool_call_id"] not in seen:
            raise RowError(
                f"{source}: row {row['id']!r}, field messages[{i}].tool_call_id: {m['tool_call_id']!r} answers no "
                "earlier tool call of this row; give the assistant's tool call that id or drop the tool message"
            )


def unknown_keys_message(source: str, rid: Any, unknown: list[str], known: tuple[str, ...] = ROW_KEYS) -> str:
    """The refusal of unknown row keys: names them, the known keys, a close match, and the flag."""
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, known, n=1, cutoff=0.5)
        if close:
            hints.append(f"{k} -> {close[0]}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return (
        f"{source}: row {rid!r} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        f"{hint}; known keys: {', '.join(known)}; rename it, or pass --keep-unknown-keys to keep it under "
        "metadata.import_extra"
    )


def _schema_error(row: Any, source: str) -> None:
    """Raise the RowError that explains why ``row`` failed the fast path (jsonschema words it);
    return when the schema accepts it after all."""
    if not isinstance(row, Mapping):
        raise RowError(f"{source}: row is a JSON {type(row).__name__}, expected an object with id, cohorts, split, "
                       "messages, tools; fix or remove that line")
    rid = row.get("id", "?")
    unknown = sorted(k for k in row if k not in _KEYSET)
    if unknown:
        raise RowError(unknown_keys_message(source, rid, unknown))
    if isinstance(row.get("cohorts"), str):
        raise RowError(f"{source}: row {rid!r}, field cohorts: {row['cohorts']!r} is a string; cohorts is a list of "
                       f"names, e.g. [{row['cohorts']!r}]")
    errors = sorted(_validator().iter_errors(row), key=lambda e: list(e.absolute_path))
    if errors:
        err = min(errors, key=lambda e: len(list(e.absolute_path)) * -1)  # the most specific one
        raise RowError(
            f"{source}: row {rid!r}, field {_path(err.absolute_path)}: {err.message}; "
            "fix that field (schema: pytest_bclone.dataset.schema.ROW_SCHEMA)"
        )
    scores = row.get("expert_scores") or {}
    for k, v in scores.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise RowError(f"{source}: row {rid!r}, field expert_scores.{k}: {v} is not a number in [0, 1]; "
                           "record the score, or leave the key out when the source has none")
    # The fast path is stricter than the schema in corner cases (e.g. a cohort name ending in a
    # newline, which the schema's `$` accepts): the schema decides, so the row is valid.


def row_to_trajectory(row: Mapping[str, Any]) -> Trajectory:
    """A validated row as a :class:`Trajectory`."""
    return Trajectory(
        id=str(row["id"]),
        cohorts=tuple(row.get("cohorts") or ()),
        split=str(row.get("split", "eval")),
        messages=list(row["messages"]),
        tools=list(row.get("tools") or ()),
        expected=ExpectedOutcome.from_dict(row.get("expected")),
        expert_scores=dict(row.get("expert_scores") or {}),
        metadata=dict(row.get("metadata") or {}),
    )


def trajectory_to_row(t: Trajectory) -> dict[str, Any]:
    """A :class:`Trajectory` as a plain row (the inverse of :func:`row_to_trajectory`)."""
    return {
        "id": t.id,
        "cohorts": list(t.cohorts),
        "split": t.split,
        "messages": [dict(m) for m in t.messages],
        "tools": [dict(x) for x in t.tools],
        "expected": None if t.expected is None else t.expected.to_dict(),
        "expert_scores": dict(t.expert_scores),
        "metadata": dict(t.metadata),
    }


# One encoder for every call: json.dumps with options builds a new JSONEncoder each time, which
# costs about as much as encoding a small tool-call argument object.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text (hashes, diffs)."""
    return _CANONICAL(value)


def canonical_encoder(*, allow_nan: bool = True, check_circular: bool = True) -> Callable[[Any], str]:
    """A reusable function giving :func:`canonical_json`'s text (``allow_nan=False``: NaN raises).

    ``json.JSONEncoder.encode`` builds a new C encoder on every call, which costs as much as
    encoding a small object; this one is built once. With ``check_circular`` its markers live
    across calls and a call that raised may leave ids in them: build a new encoder after an
    error, and give each thread its own. Without it, only encode acyclic values (e.g. values fresh
    from ``json.loads``).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python built without the _json accelerator
        return json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan,
                                check_circular=check_circular).encode
    c_encode = make({} if check_circular else None, _DEFAULT, json.encoder.encode_basestring, None, ":", ",",
                    True, False, allow_nan)

    def encode(value: Any) -> str:
        return "".join(c_encode(value, 0))

    return encode


_DEFAULT = json.JSONEncoder().default  # the TypeError of a value that is not JSON
