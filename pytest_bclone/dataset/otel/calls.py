"""What every convention reader gives: one LLM call of a span, as OpenAI chat messages.

A reader is a function ``(span) -> LLMCall | None``: ``None`` when the span is not an LLM call of
its convention, a :class:`~pytest_bclone.errors.RowError` (naming the span and attribute) when it
is one but cannot be read. Helpers shared by the readers live here too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .spans import Span

ROLES = {"system", "developer", "user", "assistant", "tool"}
ROLE_ALIASES = {"model": "assistant", "ai": "assistant", "human": "user", "function": "tool", "bot": "assistant"}


@dataclass(frozen=True)
class LLMCall:
    """One model call: the messages it was given, what it answered, the tools it was offered."""

    span: Span
    convention: str
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    provider: str | None = None


def role(span: Span, key: str, value: Any) -> str:
    """A message role, aliases mapped (``model``/``ai`` -> assistant, ``human`` -> user)."""
    if not isinstance(value, str) or not value:
        raise span.error(key, f"the role is {value!r}", "every message needs a role (system, user, assistant, tool)")
    out = ROLE_ALIASES.get(value.lower(), value.lower())
    if out not in ROLES:
        raise span.error(key, f"unknown role {value!r}", f"use one of {', '.join(sorted(ROLES))}")
    return out


def arguments_text(span: Span, key: str, value: Any) -> str:
    """Tool-call arguments as JSON text (objects are serialised; text is kept as recorded)."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list)):
        return json.dumps(value, ensure_ascii=False)
    raise span.error(key, f"a JSON {type(value).__name__}", "arguments must be a JSON object or its text")


def text_of(value: Any) -> str | None:
    """A tool result or message content as text: strings kept, other JSON serialised."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def openai_tool(span: Span, key: str, schema: Any) -> dict[str, Any]:
    """A tool definition in any of the shapes instrumentations record, as an OpenAI function tool."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise span.error(key, f"not valid JSON ({exc})", "record the tool's JSON schema as JSON text") from None
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
        if isinstance(fn.get("parameters"), str):
            try:
                fn["parameters"] = json.loads(fn["parameters"])
            except ValueError as exc:
                raise span.error(key, f"the parameters are not valid JSON ({exc})", "record them as a JSON "
                                 "schema") from None
        if isinstance(fn.get("name"), str) and fn["name"]:
            return {"type": "function", "function": fn}
    raise span.error(key, "no tool name in the schema", "record {\"type\": \"function\", \"function\": {\"name\": ..., "
                     "\"parameters\": ...}}")


def json_list(span: Span, key: str, value: Any) -> list[Any]:
    """An attribute holding a JSON list (as text, or already decoded)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise span.error(key, f"not valid JSON ({exc})", "record the value as JSON text") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise span.error(key, f"a JSON {type(value).__name__}", "expected a JSON list")
    return value


def unflatten(attrs: Mapping[str, Any], prefix: str) -> Any:
    """Rebuild the value that :func:`flatten` spread over ``prefix.*`` keys (a dict; digit keys
    make lists), or None when there are none. Phoenix and some exporters store JSON attributes
    as nested objects."""
    root: dict[str, Any] = {}
    dot = prefix + "."
    for key, value in attrs.items():
        if not key.startswith(dot):
            continue
        node = root
        *parents, leaf = key[len(dot):].split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
    if not root:
        return None
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def first_attr(attrs: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` that has a non-empty value."""
    for key in keys:
        value = attrs.get(key)
        if value not in (None, ""):
            return value
    return None


def refusal_from_output_value(span: Span) -> str | None:
    """The ``refusal`` of the answer recorded whole in ``output.value`` (OpenInference keeps the
    raw response there, but not the refusal among its output messages)."""
    raw = span.attributes.get("output.value")
    if not isinstance(raw, str) or "refusal" not in raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    candidates: Sequence[Any]
    if isinstance(doc, Mapping) and isinstance(doc.get("choices"), list):
        candidates = [c.get("message") for c in doc["choices"] if isinstance(c, Mapping)]
    elif isinstance(doc, list):
        candidates = doc
    else:
        candidates = [doc]
    for m in reversed(candidates):
        if isinstance(m, Mapping) and isinstance(m.get("refusal"), str) and m["refusal"]:
            return str(m["refusal"])
    return None


__all__ = ["LLMCall", "arguments_text", "first_attr", "json_list", "openai_tool", "refusal_from_output_value", "role",
           "text_of", "unflatten"]
