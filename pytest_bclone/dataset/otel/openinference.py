"""OpenInference and traceAI LLM spans: indexed message attributes.

OpenInference (Arize; Phoenix): ``openinference.span.kind`` = ``LLM``; messages in
``llm.input_messages.{i}.message.role|content|name|tool_call_id|contents.{j}.message_content.*|
tool_calls.{j}.tool_call.id|function.name|function.arguments`` (and ``llm.output_messages...``);
tools in ``llm.tools.{i}.tool.json_schema``; model ``llm.model_name``, provider ``llm.provider`` /
``llm.system``.

traceAI (Future AGI): the same shape under GenAI-looking keys: kind in ``fi.span.kind`` or
``gen_ai.span.kind``, messages in ``gen_ai.input.messages.{i}.message.*`` /
``gen_ai.output.messages.{i}.message.*``, tools in ``gen_ai.tool.definitions.{i}.tool.json_schema``
(or OpenInference's ``llm.tools``), model ``gen_ai.request.model``, provider ``gen_ai.provider.name``.

Tool-call indexes are read as recorded: the Agents SDK instrumentors of both number tool calls
across messages without resetting, so a message may hold ``tool_calls.1`` and no ``tool_calls.0``.
A refusal that only the raw ``output.value`` records (both put it nowhere else) becomes the
assistant's text. TOOL spans (``tool.name`` / ``gen_ai.tool.name`` with ``tool.parameters`` or
``tool.json_schema``) give the tool list when the LLM spans carry none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .calls import LLMCall, arguments_text, first_attr, openai_tool, refusal_from_output_value, role
from .spans import Span

_CALL_RE = re.compile(r"^tool_calls\.(\d+)\.tool_call\.(.+)$")
_PART_RE = re.compile(r"^contents\.(\d+)\.message_content\.(.+)$")


class _Shape:
    """Where one of the two conventions keeps its messages and tools."""

    def __init__(self, name: str, input_prefix: str, output_prefix: str, tool_prefixes: tuple[str, ...]) -> None:
        self.name = name
        self.input_prefix = input_prefix
        self.output_prefix = output_prefix
        self.msg_re = re.compile(rf"^({re.escape(input_prefix)}|{re.escape(output_prefix)})\.(\d+)\.message\.(.+)$")
        self.tool_re = re.compile(r"^(" + "|".join(re.escape(p) for p in tool_prefixes) + r")\.(\d+)\.tool\."
                                  r"json_schema$")


OPENINFERENCE = _Shape("openinference", "llm.input_messages", "llm.output_messages", ("llm.tools",))
TRACEAI = _Shape("traceai", "gen_ai.input.messages", "gen_ai.output.messages",
                 ("gen_ai.tool.definitions", "llm.tools"))


def span_kind(span: Span) -> str:
    """The OpenInference / traceAI span kind (``LLM``, ``TOOL``, ``AGENT``, ``CHAIN``...), upper case."""
    return str(first_attr(span.attributes, "openinference.span.kind", "fi.span.kind", "gen_ai.span.kind") or "").upper()


def _shape_of(span: Span) -> _Shape | None:
    attrs = span.attributes
    kind = span_kind(span)
    has_oi = any(k.startswith(("llm.input_messages.", "llm.output_messages.")) for k in attrs)
    has_fi = any(k.startswith(("gen_ai.input.messages.", "gen_ai.output.messages.")) and ".message." in k
                 for k in attrs)
    if "openinference.span.kind" in attrs or has_oi:
        if kind == "LLM" or (not kind and has_oi):
            return OPENINFERENCE
        return None
    if has_fi and kind in ("LLM", ""):
        return TRACEAI
    return None


def read_call(span: Span) -> LLMCall | None:
    """The LLM call of an OpenInference or traceAI LLM span, or None for other spans."""
    shape = _shape_of(span)
    if shape is None:
        return None
    inputs, outputs = _messages(span, shape)
    if not outputs or (outputs[-1]["role"] == "assistant" and not outputs[-1].get("content")
                       and not outputs[-1].get("tool_calls")):
        refusal = refusal_from_output_value(span)
        if refusal:
            outputs = outputs or [{"role": "assistant", "content": None}]
            outputs[-1]["content"] = refusal
    attrs = span.attributes
    model = first_attr(attrs, "llm.model_name", "gen_ai.response.model", "gen_ai.request.model")
    provider = first_attr(attrs, "llm.provider", "llm.system", "gen_ai.provider.name", "gen_ai.system")
    return LLMCall(span, shape.name, inputs, outputs, tools(span, shape), None if model is None else str(model),
                   None if provider is None else str(provider))


def _messages(span: Span, shape: _Shape) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    fields: dict[str, dict[int, dict[str, tuple[str, Any]]]] = {shape.input_prefix: {}, shape.output_prefix: {}}
    for key, value in span.attributes.items():
        m = shape.msg_re.match(key)
        if m:
            fields[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = (key, value)
    out = []
    for prefix in (shape.input_prefix, shape.output_prefix):
        found = fields[prefix]
        for i in range(len(found)):
            if i not in found:
                raise span.error(f"{prefix}.{i}", f"message {i} is missing but message {max(found)} exists",
                                 "the message list must be numbered 0, 1, 2... without gaps")
        out.append([_message(span, f"{prefix}.{i}.message", found[i]) for i in range(len(found))])
    return out[0], out[1]


def _message(span: Span, prefix: str, fields: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    role_key, role_value = fields.get("role", (f"{prefix}.role", None))
    msg: dict[str, Any] = {"role": role(span, role_key, role_value), "content": _content(span, fields)}
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
        # Indexes as recorded: sparse or running numbering keeps its order, gaps are not calls.
        msg["tool_calls"] = [_tool_call(span, f"{prefix}.tool_calls.{j}.tool_call", calls[j]) for j in sorted(calls)]
    refusal = fields.get("refusal")
    if refusal and isinstance(refusal[1], str) and refusal[1] and not msg["content"]:
        msg["content"] = refusal[1]
    return msg


def _content(span: Span, fields: Mapping[str, tuple[str, Any]]) -> Any:
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
    args_key, args = fields.get("function.arguments", (f"{prefix}.function.arguments", None))
    call: dict[str, Any] = {"type": "function",
                            "function": {"name": name, "arguments": arguments_text(span, args_key, args)}}
    if "id" in fields and fields["id"][1]:
        call["id"] = str(fields["id"][1])
    return call


def tools(span: Span, shape: _Shape = OPENINFERENCE) -> list[dict[str, Any]]:
    """The tools an LLM span offered, as OpenAI function tools, in index order."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        m = shape.tool_re.match(key)
        if m:
            found.setdefault(int(m.group(2)), openai_tool(span, key, value))
    return [found[i] for i in sorted(found)]


def tool_span_definition(span: Span) -> dict[str, Any] | None:
    """The tool a TOOL span ran (name, description, parameters), or None for other spans."""
    if span_kind(span) != "TOOL":
        return None
    attrs = span.attributes
    schema = first_attr(attrs, "tool.json_schema", "gen_ai.tool.json_schema")
    if schema is not None:
        return openai_tool(span, "tool.json_schema", schema)
    name = first_attr(attrs, "tool.name", "gen_ai.tool.name")
    if not isinstance(name, str) or not name:
        return None
    fn: dict[str, Any] = {"name": name}
    description = first_attr(attrs, "tool.description", "gen_ai.tool.description")
    if isinstance(description, str):
        fn["description"] = description
    params = first_attr(attrs, "tool.parameters", "gen_ai.tool.parameters")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError as exc:
            raise span.error("tool.parameters", f"not valid JSON ({exc})", "record the JSON schema as JSON text") \
                from None
    if isinstance(params, Mapping):
        fn["parameters"] = dict(params)
    return {"type": "function", "function": fn}


__all__ = ["OPENINFERENCE", "TRACEAI", "read_call", "span_kind", "tool_span_definition", "tools"]
