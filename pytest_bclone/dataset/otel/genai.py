"""OpenTelemetry GenAI semantic conventions: ``gen_ai.input.messages`` / ``gen_ai.output.messages``.

The current conventions (what ``opentelemetry-instrumentation-openai-v2`` writes in its experimental
mode, and OpenLLMetry's newest releases) keep each side of the call as one JSON attribute: a list of
``{"role": ..., "parts": [...]}`` with parts of type ``text`` (``content``), ``tool_call`` (``id``,
``name``, ``arguments``), ``tool_call_response`` (``id``, ``response``) and ``refusal``
(``content``: kept as the assistant's text); ``gen_ai.system_instructions`` holds system parts and
``gen_ai.tool.definitions`` the tools. Exporters that store JSON attributes as nested objects
(Phoenix) are read too.

The older, event-based encoding puts each message in a span event: ``gen_ai.system.message``,
``gen_ai.user.message``, ``gen_ai.assistant.message`` (``content``, ``tool_calls``),
``gen_ai.tool.message`` (``content``, ``id``) and ``gen_ai.choice`` (``message`` or ``content`` /
``tool_calls``); the body may also be one JSON ``body`` attribute.

Provider: ``gen_ai.provider.name`` (current) or ``gen_ai.system`` (older).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .calls import LLMCall, arguments_text, first_attr, json_list, openai_tool, role, text_of, unflatten
from .spans import Event, Span

_MESSAGE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                   "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool",
                   "gen_ai.choice": "assistant"}


def _attr_json(span: Span, key: str) -> list[Any] | None:
    value = span.attributes.get(key)
    if value is None:
        value = unflatten(span.attributes, key)
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = [value]
    return json_list(span, key, value)


def read_call(span: Span) -> LLMCall | None:
    """The LLM call of a GenAI-conventions span, or None when the span records no messages so."""
    inputs_raw = _attr_json(span, "gen_ai.input.messages")
    outputs_raw = _attr_json(span, "gen_ai.output.messages")
    events = [e for e in span.events if e.name in _MESSAGE_EVENTS]
    if inputs_raw is None and outputs_raw is None and not events:
        return None
    if inputs_raw is not None or outputs_raw is not None:
        inputs = _messages(span, "gen_ai.input.messages", inputs_raw or [])
        outputs = _messages(span, "gen_ai.output.messages", outputs_raw or [])
        convention = "genai"
    else:
        inputs, outputs = _event_messages(span, events)
        convention = "genai-events"
    system = _attr_json(span, "gen_ai.system_instructions")
    if system and not (inputs and inputs[0]["role"] in ("system", "developer")):
        text = "".join(str(p.get("content") or p.get("text") or "") for p in system if isinstance(p, Mapping))
        inputs.insert(0, {"role": "system", "content": text})
    attrs = span.attributes
    model = first_attr(attrs, "gen_ai.response.model", "gen_ai.request.model")
    provider = first_attr(attrs, "gen_ai.provider.name", "gen_ai.system")
    return LLMCall(span, convention, inputs, outputs, definitions(span), None if model is None else str(model),
                   None if provider is None else str(provider))


def _messages(span: Span, key: str, raw: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(m, Mapping):
            raise span.error(where, f"a JSON {type(m).__name__}", "each message is {\"role\": ..., \"parts\": [...]}")
        r = role(span, f"{where}.role", m.get("role"))
        parts = m.get("parts")
        if parts is None and ("content" in m or "tool_calls" in m):
            out.extend(_openai_like(span, where, r, m))  # some exporters keep OpenAI's own shape
            continue
        if not isinstance(parts, list):
            raise span.error(f"{where}.parts", f"a JSON {type(parts).__name__}", "each message needs a list of parts")
        out.extend(_from_parts(span, where, r, parts))
    return out


def _from_parts(span: Span, where: str, r: str, parts: list[Any]) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        pw = f"{where}.parts[{j}]"
        if not isinstance(p, Mapping):
            raise span.error(pw, f"a JSON {type(p).__name__}", "each part is an object with a type")
        kind = p.get("type")
        if kind in ("text", "refusal"):
            # A refusal is the assistant's answer: kept as its text, never an empty message.
            texts.append(str(p.get("content") if p.get("content") is not None else p.get("text") or ""))
        elif kind == "tool_call":
            name = p.get("name")
            if not isinstance(name, str) or not name:
                raise span.error(f"{pw}.name", f"the tool call's name is {name!r}", "every tool call needs the name "
                                 "of the function it calls")
            call: dict[str, Any] = {"type": "function", "function": {
                "name": name, "arguments": arguments_text(span, f"{pw}.arguments", p.get("arguments"))}}
            if p.get("id"):
                call["id"] = str(p["id"])
            calls.append(call)
        elif kind == "tool_call_response":
            result: dict[str, Any] = {"role": "tool", "content": text_of(p.get("response")) or ""}
            if p.get("id"):
                result["tool_call_id"] = str(p["id"])
            results.append(result)
        # reasoning, blob, uri, file and unknown parts carry nothing a trajectory row keeps
    if results:
        return results  # one OpenAI tool message per answered call
    msg: dict[str, Any] = {"role": r, "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def _openai_like(span: Span, where: str, r: str, m: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = m.get("content")
    if isinstance(content, (Mapping, list)):
        content = json.dumps(content, ensure_ascii=False)
    if not content and isinstance(m.get("refusal"), str):
        content = m["refusal"]
    msg: dict[str, Any] = {"role": r, "content": content}
    calls = []
    for j, tc in enumerate(m.get("tool_calls") or ()):
        if not isinstance(tc, Mapping):
            raise span.error(f"{where}.tool_calls[{j}]", f"a JSON {type(tc).__name__}", "each tool call is an object")
        fn: Mapping[str, Any] = tc["function"] if isinstance(tc.get("function"), Mapping) else tc
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise span.error(f"{where}.tool_calls[{j}].function.name", f"the tool call's name is {name!r}",
                             "every tool call needs the name of the function it calls")
        call: dict[str, Any] = {"type": "function", "function": {
            "name": name, "arguments": arguments_text(span, f"{where}.tool_calls[{j}]", fn.get("arguments"))}}
        if tc.get("id"):
            call["id"] = str(tc["id"])
        calls.append(call)
    if calls:
        msg["tool_calls"] = calls
    tcid = m.get("tool_call_id") or m.get("id")
    if r == "tool" and tcid:
        msg["tool_call_id"] = str(tcid)
    return [msg]


def _event_body(span: Span, k: int, event: Event) -> dict[str, Any]:
    attrs = dict(event.attributes)
    body: dict[str, Any] = {}
    for key in ("body", "message", "gen_ai.event.body"):
        raw = attrs.get(key)
        if raw is None:
            raw = unflatten(attrs, key)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raw = {"content": raw}
        if isinstance(raw, Mapping):
            body.update(raw)
    for key in ("content", "role", "id", "tool_call_id", "refusal"):
        if key in attrs and key not in body:
            body[key] = attrs[key]
    calls = attrs.get("tool_calls")
    if calls is None:
        calls = unflatten(attrs, "tool_calls")
    if calls is not None and "tool_calls" not in body:
        body["tool_calls"] = json_list(span, f"events[{k}].tool_calls", calls)
    return body


def _event_messages(span: Span, events: list[Event]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    for k, event in enumerate(events):
        body = _event_body(span, k, event)
        r = str(body.get("role") or _MESSAGE_EVENTS[event.name])
        target = outputs if event.name == "gen_ai.choice" else inputs
        target.extend(_openai_like(span, f"events[{k}] ({event.name})", role(span, f"events[{k}].role", r), body))
    return inputs, outputs


def definitions(span: Span) -> list[dict[str, Any]]:
    """The tools of ``gen_ai.tool.definitions`` as OpenAI function tools."""
    raw = _attr_json(span, "gen_ai.tool.definitions")
    return [openai_tool(span, f"gen_ai.tool.definitions[{i}]", t) for i, t in enumerate(raw or ())]


__all__ = ["definitions", "read_call"]
