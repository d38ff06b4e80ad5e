"""OpenLLMetry (Traceloop) spans before the GenAI message attributes: ``gen_ai.prompt.N.*``.

Messages in ``gen_ai.prompt.{i}.role|content|tool_call_id|tool_calls.{j}.id|name|arguments`` and
``gen_ai.completion.{i}.role|content|refusal|tool_calls.{j}...`` (or the older
``function_call.name|arguments``); tools in ``llm.request.functions.{i}.name|description|parameters``;
model ``gen_ai.response.model`` / ``gen_ai.request.model``, provider ``gen_ai.system``. Newer
OpenLLMetry releases write the GenAI conventions' JSON messages instead (read by
:mod:`.genai`). Indexes are read as recorded: gaps between messages are an error (a lost message),
gaps between tool calls are not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .calls import LLMCall, arguments_text, first_attr, openai_tool, role
from .spans import Span

_MSG_RE = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(.+)$")
_CALL_RE = re.compile(r"^tool_calls\.(\d+)\.(.+)$")
_FN_RE = re.compile(r"^llm\.request\.functions\.(\d+)\.(.+)$")


def read_call(span: Span) -> LLMCall | None:
    """The LLM call of an OpenLLMetry span with ``gen_ai.prompt.N`` attributes, or None."""
    fields: dict[str, dict[int, dict[str, tuple[str, Any]]]] = {"prompt": {}, "completion": {}}
    for key, value in span.attributes.items():
        m = _MSG_RE.match(key)
        if m:
            fields[m.group(1)].setdefault(int(m.group(2)), {})[m.group(3)] = (key, value)
    if not fields["prompt"] and not fields["completion"]:
        return None
    sides = []
    for side in ("prompt", "completion"):
        found = fields[side]
        for i in range(len(found)):
            if i not in found:
                raise span.error(f"gen_ai.{side}.{i}", f"message {i} is missing but message {max(found)} exists",
                                 "the message list must be numbered 0, 1, 2... without gaps")
        sides.append([_message(span, f"gen_ai.{side}.{i}", found[i], side) for i in range(len(found))])
    attrs = span.attributes
    model = first_attr(attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.response.model")
    provider = first_attr(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.vendor")
    return LLMCall(span, "openllmetry", sides[0], sides[1], _functions(span), None if model is None else str(model),
                   None if provider is None else str(provider))


def _message(span: Span, prefix: str, fields: Mapping[str, tuple[str, Any]], side: str) -> dict[str, Any]:
    default_role = "assistant" if side == "completion" else None
    role_key, role_value = fields.get("role", (f"{prefix}.role", default_role))
    _, content = fields.get("content", (f"{prefix}.content", None))
    if content is not None and not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    refusal = fields.get("refusal", ("", None))[1]
    if not content and isinstance(refusal, str) and refusal:
        content = refusal  # a refusal is the assistant's answer
    msg: dict[str, Any] = {"role": role(span, role_key, role_value), "content": content}
    if "tool_call_id" in fields and fields["tool_call_id"][1]:
        msg["tool_call_id"] = str(fields["tool_call_id"][1])
    calls: dict[int, dict[str, tuple[str, Any]]] = {}
    for sub, kv in fields.items():
        m = _CALL_RE.match(sub)
        if m:
            calls.setdefault(int(m.group(1)), {})[m.group(2)] = kv
    if "function_call.name" in fields:
        calls.setdefault(len(calls), {"name": fields["function_call.name"],
                                      "arguments": fields.get("function_call.arguments", ("", None))})
    out = []
    for j in sorted(calls):
        c = calls[j]
        name_key, name = c.get("name", (f"{prefix}.tool_calls.{j}.name", None))
        if not isinstance(name, str) or not name:
            raise span.error(name_key, f"the tool call's name is {name!r}", "every tool call needs the name of the "
                             "function it calls")
        args_key, args = c.get("arguments", (f"{prefix}.tool_calls.{j}.arguments", None))
        call: dict[str, Any] = {"type": "function", "function": {"name": name,
                                                                 "arguments": arguments_text(span, args_key, args)}}
        if c.get("id", ("", None))[1]:
            call["id"] = str(c["id"][1])
        out.append(call)
    if out:
        msg["tool_calls"] = out
    return msg


def _functions(span: Span) -> list[dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        m = _FN_RE.match(key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [openai_tool(span, f"llm.request.functions.{i}", found[i]) for i in sorted(found)]


__all__ = ["read_call"]
