"""The JSON schema of one trajectory row, and row <-> :class:`Trajectory` conversion.

Rows are validated when they enter the store (import, build), not on every load: a version's
hashes already prove its rows are the ones that were validated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
    import jsonschema  # lazy: only import/build paths validate

    return jsonschema.Draft202012Validator(ROW_SCHEMA)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<row>"


def validate_row(row: Any, source: str) -> None:
    """Raise :class:`RowError` for the first problem of ``row``; ``source`` is e.g. ``file.jsonl:12``.

    Besides the schema, every ``tool`` message must answer a tool call made earlier in the row.
    """
    if not isinstance(row, Mapping):
        raise RowError(f"{source}: row is a JSON {type(row).__name__}, expected an object with id, cohorts, split, "
                       "messages, tools; fix or remove that line")
    errors = sorted(_validator().iter_errors(row), key=lambda e: list(e.absolute_path))
    if errors:
        err = min(errors, key=lambda e: len(list(e.absolute_path)) * -1)  # the most specific one
        rid = row.get("id", "?")
        raise RowError(
            f"{source}: row {rid!r}, field {_path(err.absolute_path)}: {err.message}; "
            "fix that field (schema: pytest_bclone.dataset.schema.ROW_SCHEMA)"
        )
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


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text (hashes, diffs)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
