"""Python callables as agents: ``python:module:callable`` specs or callables passed directly."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..errors import AgentError
from ..records import Action, AgentReply, CallStats, State
from ..retry import describe_exception
from .base import Agent

__all__ = ["PYTHON_PREFIX", "PythonAgent", "callable_name", "load_python_spec", "to_reply"]

PYTHON_PREFIX = "python:"

AgentCallable = Callable[..., Any]
"""``fn(state)`` or ``fn(state, repeat=k)``, sync or async, returning what :func:`to_reply` reads."""


def callable_name(fn: object) -> str:
    """``python:module:qualname`` of a callable (its class for a callable instance)."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isclass(fn) else type(fn)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{PYTHON_PREFIX}{module}:{qualname}"


def load_python_spec(spec: str, option: str) -> Agent | AgentCallable:
    """Import the agent or callable named by ``python:module:attr.path`` (``option``: where it came from).

    Raises :class:`~pytest_bclone.errors.AgentError` naming the spec, what failed and the fix.
    """
    target = spec.removeprefix(PYTHON_PREFIX)
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise AgentError(
            f"{option}={spec!r} is not a Python agent spec: expected python:MODULE:CALLABLE, "
            "e.g. python:my_agents:rule_based_clone"
        )
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentError(
            f"{option}={spec!r}: cannot import module {module_name!r} ({describe_exception(exc)}); "
            "make it importable from the test run (install it, or add `pythonpath = .` to your pytest ini)"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentError(
                f"{option}={spec!r}: module {module_name!r} has no attribute {attr_path!r} "
                f"(no {part!r}); check the name after the second colon"
            ) from None
    if not callable(obj) and not isinstance(obj, Agent):
        raise AgentError(
            f"{option}={spec!r}: {attr_path!r} is a {type(obj).__name__}, not a callable; name a function "
            "taking a State and returning an Action, an assistant message dict or an AgentReply, or an agent object"
        )
    return obj


def to_reply(result: object, source: str) -> AgentReply:
    """Read what a Python agent returned: an AgentReply, an Action, or an OpenAI assistant message.

    Anything else is a bug in the callable, raised as :class:`~pytest_bclone.errors.AgentError`
    (it would fail on every state, so scoring it as errors would only hide it).
    """
    if isinstance(result, AgentReply):
        return result
    if isinstance(result, Action):
        return AgentReply(result, CallStats())
    if isinstance(result, Mapping):
        return AgentReply(Action.from_message(result), CallStats())
    raise AgentError(
        f"{source} returned {type(result).__name__} {result!r:.80}; expected an Action, an OpenAI "
        "assistant message dict ({'role': 'assistant', 'content': ..., 'tool_calls': [...]}) or an AgentReply"
    )


def _accepts_repeat(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call with the state only
        return False
    return any(p.name == "repeat" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class PythonAgent:
    """An agent backed by a Python callable ``fn(state) -> Action | message dict | AgentReply``.

    ``fn`` may be sync or async; if it takes a ``repeat`` keyword it receives the sample index.
    A sync callable runs on the event loop thread (no thread-safety surprises): make it async if
    it does I/O, so that calls overlap. An exception raised by ``fn`` becomes a failed reply
    (counted and reported); ``timeout`` (``--bclone-timeout``) bounds an async callable.
    """

    def __init__(self, fn: AgentCallable, name: str | None = None, *, timeout: float | None = None) -> None:
        self.fn = fn
        self.name = name or callable_name(fn)
        self.timeout = timeout
        self._pass_repeat = _accepts_repeat(fn)

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
        """Call ``fn`` at ``state`` and read its answer."""
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                result = self.fn(state, repeat=repeat) if self._pass_repeat else self.fn(state)
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            return self._failed(f"timed out after {self.timeout:g} s (--bclone-timeout)", start)
        except Exception as exc:  # noqa: BLE001 (the agent's failure is reported, not raised)
            return self._failed(f"raised {describe_exception(exc)}", start)
        reply = to_reply(result, f"{self.name} at trajectory {state.trajectory_id!r} step {state.step}")
        if reply.stats.latency_s or reply.failed:  # the callable measured its own call: keep it
            return reply
        return AgentReply(reply.action, replace(reply.stats, latency_s=time.monotonic() - start))

    def _failed(self, why: str, start: float) -> AgentReply:
        return AgentReply(None, CallStats(latency_s=time.monotonic() - start, error=f"{self.name}: {why}"))
