"""The Agent protocol: a state in, an action out (asynchronously)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..records import AgentReply, State

ROLES = ("clone", "expert")


@runtime_checkable
class Agent(Protocol):
    """Anything that acts at a state.

    ``name`` identifies the agent in reports and cache keys (a litellm model string, ``recorded``,
    or ``python:module:callable``). ``act`` must not raise for a failed model call: it returns an
    :class:`~pytest_bclone.records.AgentReply` whose ``action`` is ``None`` and whose
    ``stats.error`` says what failed, so the failure is counted and reported, never scored.
    ``repeat`` is the sample index (0..K-1) for ``--bclone-repeats``; agents that sample must make
    each index an independent sample.
    """

    name: str

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply: ...


def needs_calls(agent: object) -> bool:
    """Whether ``agent`` answers by making calls (a model, a function) rather than reading a recording.

    An agent opts out with a class attribute ``needs_calls = False`` (the recorded expert does):
    its actions then cost what the recording says, and rollouts replay its recording instead of
    asking it turn by turn. Not part of :class:`Agent`, so agents written before it still match.
    """
    return bool(getattr(agent, "needs_calls", True))
