"""Builders for the evaluator tests: a small retail toolset, calls, actions and trajectories."""

from __future__ import annotations

import json
from typing import Any

from pytest_bclone.records import Action, DecisionPoint, ExpectedOutcome, ToolCall, Trajectory


def _tool(name: str, properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "parameters": {"type": "object", "properties": properties, "required": required}, **extra}}


TOOLS: list[dict[str, Any]] = [
    _tool("get_order_details", {"order_id": {"type": "string"}}, ["order_id"]),
    _tool("find_user", {"email": {"type": "string"}, "zip": {"type": "string"}}, ["email"]),
    _tool("search_products", {
        "query": {"type": "string"},
        "limit": {"type": "integer", "default": 10},
        "include_archived": {"type": "boolean", "default": False},
        "sort": {"type": "object", "default": {"by": "price", "asc": True}},
    }, ["query"]),
    _tool("cancel_pending_order", {"order_id": {"type": "string"}, "reason": {"type": "string"}},
          ["order_id", "reason"]),
    _tool("modify_items", {"order_id": {"type": "string"}, "item_ids": {"type": "array"},
                           "note": {"type": "string"}}, ["order_id", "item_ids"]),
    _tool("transfer_to_human_agents", {"summary": {"type": "string"}}, ["summary"]),
    _tool("a", {"p": {}, "q": {}, "r": {}, "s": {}}, []),
]


def call(name: str, **arguments: Any) -> ToolCall:
    """A parsed tool call."""
    return ToolCall.parse(name, json.dumps(arguments))


def raw_call(name: str, raw: str) -> ToolCall:
    """A call whose arguments are sent as ``raw`` (possibly unparseable)."""
    return ToolCall.parse(name, raw)


def act(*calls: ToolCall, text: str | None = None) -> Action:
    """An action: tool calls and/or a text reply."""
    return Action(tuple(calls), text)


def say(text: str) -> Action:
    """A text reply."""
    return Action((), text)


def traj(*turns: str | Action, expected: ExpectedOutcome | None = None, id: str = "t1",
         tools: list[dict[str, Any]] | None = None, split: str = "eval") -> Trajectory:
    """A trajectory: ``str`` turns are user messages, ``Action`` turns the expert's (tool results added)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a retail support agent."}]
    for turn in turns:
        if isinstance(turn, str):
            messages.append({"role": "user", "content": turn})
            continue
        msg = turn.to_message()
        messages.append(msg)
        for tc in msg.get("tool_calls", []):
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": "{\"ok\": true}"})
    return Trajectory(id, ("common_intents",), split, messages, TOOLS if tools is None else tools, expected)


def point(expert: Action, user: str = "Please help with order W1.") -> DecisionPoint:
    """The single decision point of a one-step trajectory whose expert action is ``expert``."""
    return traj(user, expert).decision_points()[0]
