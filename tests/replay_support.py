"""Helpers for the replay, agent and cache tests: small trajectories, a scripted stub server, fast retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from pytest_bclone.agents import LitellmAgent
from pytest_bclone.cache import ModelCache
from pytest_bclone.records import Trajectory
from pytest_bclone.retry import RetryPolicy
from pytest_bclone.testing import OpenAIServer, Reply, reply

TOOLS = [
    {"type": "function", "function": {"name": "get_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "refund", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
]

FAST = RetryPolicy(max_retries=2, timeout=5.0, backoff_base=0.01, backoff_max=0.05)
"""Retries that keep the suite fast: 10-50 ms backoff."""


def tool_call(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def trajectory(i: int, *, cohorts: tuple[str, ...] = ("common_intents",)) -> Trajectory:
    """Two user turns, three assistant turns: a tool call, a text answer, and a closing text."""
    order = f"W{i}"
    return Trajectory(
        id=f"t{i}",
        cohorts=cohorts,
        split="eval",
        messages=[
            {"role": "system", "content": "You are a retail support agent."},
            {"role": "user", "content": f"Where is my order {order}?"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call("c1", "get_order", {"order_id": order})]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
            {"role": "assistant", "content": f"{order} has shipped."},
            {"role": "user", "content": f"Thanks, that is all for {order}."},
            {"role": "assistant", "content": "You are welcome!"},
        ],
        tools=TOOLS,
    )


def last_user_text(request: dict[str, Any]) -> str:
    """The content of the last user message of a chat request (identifies the trajectory)."""
    return str(next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user"))


class Script:
    """A responder: scripted replies first (in order), then ``default(request)``; thread-safe."""

    def __init__(self, default: Callable[[dict[str, Any]], Reply] | None = None) -> None:
        self.queue: list[Reply] = []
        self.default = default or (lambda _req: reply("ok"))
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.pop(0)
        return self.default(request)


    def reset(self) -> None:
        with self._lock:
            self.queue.clear()
            self.default = lambda _req: reply("ok")


def make_clone(
    server: OpenAIServer,
    cache: ModelCache | None = None,
    *,
    retry: RetryPolicy = FAST,
    prices: dict[str, tuple[float, float]] | None = None,
    model: str = "openai/stub",
    **params: Any,
) -> LitellmAgent:
    """A litellm agent talking to ``server``."""
    return LitellmAgent(
        model, params={"api_base": server.base_url, "api_key": "sk-test-secret", **params},
        cache=cache, retry=retry, prices=prices,
    )
