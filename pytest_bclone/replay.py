"""The replay engine: ask the clone and the expert at recorded states, or let them drive episodes.

Two entry points, both synchronous (each runs its own event loop) and both returning small
JSON-able records that cross the pytest-xdist channel (``to_dict`` / ``from_dict``)::

    result = run_replay(points, {"clone": clone, "expert": expert}, concurrency=16, repeats=3)
    result.reply("t1#2", "clone", repeat=0)          # an AgentReply

    rollouts = run_rollouts(trajectories, agents, make_env, concurrency=16)
    rollouts.episode("clone", "t1")                  # an Episode

``step`` mode (:func:`run_replay`) asks every agent at every decision point, once per repeat
(teacher forcing). ``rollout`` mode (:func:`run_rollouts`) lets each agent drive each episode: tool
calls run in an :class:`Environment` from the suite, and a :class:`~pytest_bclone.agents.user.User`
answers the agent between its turns: by default the recorded user turns (``recorded``), or the
suite's simulator, an LLM user, or a scripted one (``user_factory``; ``--bclone-user``).

Concurrency is a pool of ``concurrency`` workers, so at most that many agent calls (or episodes)
are in flight however many states there are. Timeouts, retries and the cache live in the agents
(see :mod:`pytest_bclone.retry` and :mod:`pytest_bclone.cache`); a failed call comes back as a
failed :class:`~pytest_bclone.records.AgentReply` and is counted, never raised. What does raise:
:class:`~pytest_bclone.errors.BcloneError` (a cache miss in mode ``none``, an agent returning
nonsense) and Ctrl-C. Importing this module imports neither litellm nor pyarrow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar, runtime_checkable

from .agents.base import Agent, needs_calls
from .agents.recorded import RecordedAgent
from .agents.user import RecordedUsers, User, UserFactory, ask_user, user_name
from .errors import BcloneError
from .progress import Progress
from .records import (
    Action,
    AgentReply,
    CallStats,
    DecisionPoint,
    Episode,
    Message,
    State,
    ToolCall,
    ToolSpec,
    Trajectory,
)
from .retry import describe_exception

__all__ = [
    "CallTotals", "Environment", "EnvironmentFactory", "ReplayResult", "ReplyColumns", "RolloutResult",
    "StepReplies", "replay_async", "replay_columns", "replay_columns_async", "rollouts_async", "run_episode", "run_replay", "run_rollouts", "sum_stats",
]

RECORDED_USER = "recorded"

T = TypeVar("T")
J = TypeVar("J")


# --------------------------------------------------------------------------- environment


@runtime_checkable
class Environment(Protocol):
    """Where rollout tool calls run; one fresh instance per episode, from the suite's hook.

    ``tools`` is the OpenAI tool list the agent is offered (empty: the trajectory's own).
    ``execute`` returns the tool result content the agent sees (it may be a coroutine); an
    exception it raises is shown to the agent as ``Error: ...``, as tau-bench does. An
    environment may also define ``final_state_ok() -> bool | None``, its own end-state check
    (e.g. the database matches the expected one), reported as ``Episode.final_state_ok``.
    """

    @property
    def tools(self) -> Sequence[ToolSpec]:  # read-only, so a plain `self.tools = [...]` satisfies it
        ...

    def execute(self, call: ToolCall) -> str | Awaitable[str]: ...


EnvironmentFactory = Callable[[Trajectory], Environment]
"""``factory(trajectory) -> Environment``: the plugin's ``pytest_bclone_make_environment`` hook."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class CallTotals:
    """Sums over a set of replies or episodes of one agent; ``items`` is how many were summed."""

    items: int = 0
    failed: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    retries: int = 0
    price_known: bool = True

    @classmethod
    def of(cls, stats: Iterable[CallStats]) -> CallTotals:
        """The totals of ``stats``."""
        items = failed = cached = prompt = completion = retries = 0
        cost = latency = 0.0
        known = True
        for s in stats:
            items += 1
            failed += s.error is not None
            cached += s.cached
            prompt += s.prompt_tokens
            completion += s.completion_tokens
            cost += s.cost_usd
            latency += s.latency_s
            retries += s.retries
            known = known and s.price_known
        return cls(items, failed, cached, prompt, completion, cost, latency, retries, known)

    def __add__(self, other: CallTotals) -> CallTotals:
        return CallTotals(
            self.items + other.items, self.failed + other.failed, self.cached + other.cached,
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd, self.latency_s + other.latency_s, self.retries + other.retries,
            self.price_known and other.price_known,
        )

    @property
    def error_rate(self) -> float:
        """Share of failed items (0 when there are none)."""
        return self.failed / self.items if self.items else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items, "failed": self.failed, "cached": self.cached, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd, "latency_s": self.latency_s,
            "retries": self.retries, "price_known": self.price_known,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallTotals:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def sum_stats(stats: Sequence[CallStats]) -> CallStats:
    """One CallStats for several calls (an episode): sums, ``cached`` when all were, first error."""
    totals = CallTotals.of(stats)
    error = next((s.error for s in stats if s.error is not None), None)
    return CallStats(
        totals.prompt_tokens, totals.completion_tokens, totals.cost_usd, totals.latency_s, totals.retries,
        bool(stats) and totals.cached == len(stats), error, totals.price_known, sum(s.calls for s in stats),
    )


@dataclass(frozen=True)
class StepReplies:
    """Every agent's reply at one decision point for one repeat index."""

    key: str
    trajectory_id: str
    step: int
    repeat: int
    cohorts: tuple[str, ...]
    replies: Mapping[str, AgentReply]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "trajectory_id": self.trajectory_id, "step": self.step, "repeat": self.repeat,
            "cohorts": list(self.cohorts), "replies": {role: r.to_dict() for role, r in self.replies.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepReplies:
        return cls(
            d["key"], d["trajectory_id"], int(d["step"]), int(d["repeat"]), tuple(d.get("cohorts") or ()),
            {role: AgentReply.from_dict(r) for role, r in d["replies"].items()},
        )


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of a step-mode replay: ``items`` in (point, repeat) order.

    ``agents`` maps each role to its agent's name; ``wall_s`` is the replay's wall time.
    """

    items: tuple[StepReplies, ...]
    agents: Mapping[str, str]
    repeats: int = 1
    wall_s: float = 0.0

    @cached_property
    def _index(self) -> dict[tuple[str, int], StepReplies]:
        return {(item.key, item.repeat): item for item in self.items}

    def reply(self, key: str, role: str, repeat: int = 0) -> AgentReply:
        """The reply of ``role`` at point ``key`` (``<trajectory id>#<step>``) for ``repeat``."""
        return self._index[key, repeat].replies[role]

    def totals(self) -> dict[str, CallTotals]:
        """Per role: calls, failures, cache hits, tokens, cost, latency, retries."""
        return {role: CallTotals.of(item.replies[role].stats for item in self.items) for role in self.agents}

    def errors(self) -> list[tuple[str, int, str, str]]:
        """Every failed reply as ``(key, repeat, role, error)``."""
        return [
            (item.key, item.repeat, role, reply.stats.error or "failed")
            for item in self.items for role, reply in item.replies.items() if reply.failed
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [item.to_dict() for item in self.items], "agents": dict(self.agents),
            "repeats": self.repeats, "wall_s": self.wall_s,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReplayResult:
        return cls(
            tuple(StepReplies.from_dict(i) for i in d["items"]), dict(d["agents"]), int(d.get("repeats", 1)),
            float(d.get("wall_s", 0.0)),
        )

    @classmethod
    def merge(cls, results: Iterable[ReplayResult]) -> ReplayResult:
        """One result from several (pytest-xdist workers): items concatenated, the longest wall time."""
        results = list(results)
        agents: dict[str, str] = {}
        for r in results:
            agents.update(r.agents)
        return cls(
            tuple(i for r in results for i in r.items), agents, max((r.repeats for r in results), default=1),
            max((r.wall_s for r in results), default=0.0),
        )


@dataclass(frozen=True)
class RolloutResult:
    """The outcome of a rollout run: per role, its episodes in (trajectory, repeat) order.

    ``user`` names what answered the agents (``recorded``, ``llm:MODEL``, ``python:...``, the
    suite's simulator). ``user_calls`` holds, per role and aligned with ``episodes``, the figures
    of the user's calls in each episode (an LLM user's tokens, cost, cache hits, failures): kept
    apart from the agent's, so a simulator's cost is never billed to the clone. A role whose agent
    is the recorded expert has no user calls: its episode is its recording.
    """

    episodes: Mapping[str, tuple[Episode, ...]]
    agents: Mapping[str, str]
    repeats: int = 1
    wall_s: float = 0.0
    user: str = RECORDED_USER
    user_calls: Mapping[str, tuple[CallTotals, ...]] = field(default_factory=dict)

    @cached_property
    def _index(self) -> dict[tuple[str, str, int], Episode]:
        return {(role, e.trajectory_id, e.repeat): e for role, eps in self.episodes.items() for e in eps}

    def episode(self, role: str, trajectory_id: str, repeat: int = 0) -> Episode:
        """The episode ``role`` drove for ``trajectory_id`` and ``repeat``."""
        return self._index[role, trajectory_id, repeat]

    def totals(self) -> dict[str, CallTotals]:
        """Per role, summed over episodes (``items`` counts episodes, ``failed`` those with an error)."""
        return {role: CallTotals.of(e.stats for e in eps) for role, eps in self.episodes.items()}

    def user_totals(self) -> dict[str, CallTotals]:
        """Per role, the user's calls summed over its episodes (``items`` counts calls)."""
        return {role: sum(calls, CallTotals()) for role, calls in self.user_calls.items()}

    def user_episode_calls(self, role: str, trajectory_id: str, repeat: int = 0) -> CallTotals:
        """The user's calls in one episode (none for a recorded user or a recorded expert)."""
        calls = self.user_calls.get(role)
        if not calls:
            return CallTotals()
        eps = self.episodes[role]
        index = next(i for i, e in enumerate(eps) if e.trajectory_id == trajectory_id and e.repeat == repeat)
        return calls[index]

    @property
    def simulated_roles(self) -> tuple[str, ...]:
        """Roles whose episodes met the user (live agents); the recorded expert's are recordings."""
        return tuple(role for role, name in self.agents.items() if name != "recorded")

    def to_dict(self) -> dict[str, Any]:
        return {
            "episodes": {role: [e.to_dict() for e in eps] for role, eps in self.episodes.items()},
            "agents": dict(self.agents), "repeats": self.repeats, "wall_s": self.wall_s, "user": self.user,
            "user_calls": {role: [c.to_dict() for c in calls] for role, calls in self.user_calls.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutResult:
        return cls(
            {role: tuple(Episode.from_dict(e) for e in eps) for role, eps in d["episodes"].items()},
            dict(d["agents"]), int(d.get("repeats", 1)), float(d.get("wall_s", 0.0)),
            str(d.get("user", RECORDED_USER)),
            {role: tuple(CallTotals.from_dict(c) for c in calls) for role, calls in (d.get("user_calls") or {}).items()},
        )

    @classmethod
    def merge(cls, results: Iterable[RolloutResult]) -> RolloutResult:
        """One result from several (pytest-xdist workers)."""
        results = list(results)
        episodes: dict[str, list[Episode]] = {}
        user_calls: dict[str, list[CallTotals]] = {}
        agents: dict[str, str] = {}
        for r in results:
            agents.update(r.agents)
            for role, eps in r.episodes.items():
                episodes.setdefault(role, []).extend(eps)
                # keep user_calls aligned with episodes even when a part has none recorded
                user_calls.setdefault(role, []).extend(r.user_calls.get(role) or [CallTotals()] * len(eps))
        users = list(dict.fromkeys(r.user for r in results)) or [RECORDED_USER]
        return cls(
            {role: tuple(eps) for role, eps in episodes.items()}, agents,
            max((r.repeats for r in results), default=1), max((r.wall_s for r in results), default=0.0),
            ", ".join(users), {role: tuple(c) for role, c in user_calls.items()},
        )


# --------------------------------------------------------------------------- engine


def _progress(progress: bool | Progress, total: int, label: str, unit: str) -> Progress:
    if isinstance(progress, Progress):
        progress.restart(total, label, unit)
        return progress
    return Progress(total, label=label, unit=unit, enabled=None if progress else False)


async def _ask(agent: Agent, state: State, repeat: int) -> AgentReply:
    """``agent.act`` that turns an unexpected exception (a buggy hook agent) into a failed reply."""
    try:
        return await agent.act(state, repeat=repeat)
    except BcloneError:  # a cache miss in mode none, an agent returning nonsense: stop the run
        raise
    except Exception as exc:  # noqa: BLE001 (the Agent protocol says act must not raise; report it)
        return AgentReply(None, CallStats(
            error=f"agent {agent.name!r} raised {describe_exception(exc)} at trajectory "
                  f"{state.trajectory_id!r} step {state.step} (act must return a failed AgentReply instead)"
        ))


async def _pool(jobs: Sequence[J], concurrency: int, handle: Callable[[J], Awaitable[tuple[bool, bool] | None]],
                bar: Progress) -> None:
    """Run ``handle`` on every job with at most ``concurrency`` in flight.

    ``concurrency`` workers pull from one shared iterator (safe: one thread), so however many jobs
    there are, only that many tasks exist. The first :class:`BcloneError` stops the pool and is
    raised as itself, not as an exception group.
    """
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            tally = await handle(job)
            if tally is not None:  # None: a recording was read, no call made
                bar.advance(cached=int(tally[0]), failed=int(tally[1]))

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(jobs)))):
                group.create_task(worker())
    except BaseExceptionGroup as errors:
        first = next((e for e in errors.exceptions if isinstance(e, BcloneError)), errors.exceptions[0])
        raise first from None
    finally:
        bar.close()


async def _close(agents: Mapping[str, Agent]) -> None:
    """Let agents release what is bound to this event loop (litellm's HTTP clients)."""
    for agent in agents.values():
        aclose = getattr(agent, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass(frozen=True)
class ReplyColumns:
    """A step-mode replay's answers, column by column: ``replies[role][repeat][i]`` is ``role``'s
    reply at ``points[i]`` for ``repeat``. What the runner reads (no per-point record, no index by
    key); :class:`ReplayResult` is built from it for callers that want records."""

    points: Sequence[DecisionPoint]
    replies: Mapping[str, list[list[AgentReply]]]
    agents: Mapping[str, str]
    repeats: int
    wall_s: float

    def to_result(self) -> ReplayResult:
        """The same answers as a :class:`ReplayResult`, in (point, repeat) order."""
        roles = list(self.replies)
        items = tuple(
            StepReplies(p.key, p.trajectory_id, p.step, r, tuple(p.cohorts),
                        {role: self.replies[role][r][i] for role in roles})
            for i, p in enumerate(self.points) for r in range(self.repeats)
        )
        return ReplayResult(items, dict(self.agents), self.repeats, self.wall_s)


_RECORDED_READ = CallStats(calls=0)  # one shared (frozen) record: a recording read, no model call


def _recorded_replies(agent: RecordedAgent, points: Sequence[DecisionPoint]) -> list[AgentReply]:
    """The recorded expert's replies, read synchronously: a lookup needs no event loop turn, and a
    million of them through the pool cost more than the rest of the replay."""
    out = []
    for p in points:
        found = agent.action_at(p.trajectory.id, p.step)
        out.append(AgentReply(None, CallStats(error=found, calls=0)) if isinstance(found, str)
                   else AgentReply(found, _RECORDED_READ))
    return out


async def replay_columns_async(
    points: Iterable[DecisionPoint],
    agents: Mapping[str, Agent],
    *,
    concurrency: int = 16,
    repeats: int = 1,
    progress: bool | Progress = True,
) -> ReplyColumns:
    """The coroutine behind :func:`run_replay`: every agent's replies as :class:`ReplyColumns`."""
    points = list(points)
    roles = list(agents)
    n = len(points)
    replies: dict[str, list[list[AgentReply]]] = {}
    # The recorded expert itself (not a subclass that may override act) is read directly: its
    # answer is the same for every repeat, the recording being one sample.
    direct = {role for role in roles if type(agents[role]) is RecordedAgent}
    for role in direct:
        column = _recorded_replies(agents[role], points)  # type: ignore[arg-type]
        replies[role] = [column] + [list(column) for _ in range(repeats - 1)]
    asked = [role for role in roles if role not in direct]
    for role in asked:
        replies[role] = [[None] * n for _ in range(repeats)]  # type: ignore[list-item]
    jobs = [(i, r, role) for i in range(n) for r in range(repeats) for role in asked]

    # Progress counts model calls: reading the recorded expert's action is not one.
    calling = {role for role in asked if needs_calls(agents[role])}

    async def handle(job: tuple[int, int, str]) -> tuple[bool, bool] | None:
        i, r, role = job
        answer = replies[role][r][i] = await _ask(agents[role], points[i].state, r)
        return (answer.stats.cached, answer.failed) if role in calling else None

    start = time.monotonic()
    try:
        await _pool(jobs, concurrency, handle,
                    _progress(progress, sum(1 for job in jobs if job[2] in calling), "bclone replay", "calls"))
    finally:
        await _close(agents)
    return ReplyColumns(points, {role: replies[role] for role in roles}, {role: a.name for role, a in agents.items()},
                        repeats, time.monotonic() - start)


async def replay_async(
    points: Iterable[DecisionPoint],
    agents: Mapping[str, Agent],
    *,
    concurrency: int = 16,
    repeats: int = 1,
    progress: bool | Progress = True,
) -> ReplayResult:
    """The coroutine behind :func:`run_replay`, for callers that already run an event loop."""
    columns = await replay_columns_async(points, agents, concurrency=concurrency, repeats=repeats, progress=progress)
    return columns.to_result()


def replay_columns(
    points: Iterable[DecisionPoint],
    agents: Mapping[str, Agent],
    *,
    concurrency: int = 16,
    repeats: int = 1,
    progress: bool | Progress = True,
) -> ReplyColumns:
    """:func:`run_replay`, the answers as :class:`ReplyColumns` (what the runner scores from)."""
    return _run(replay_columns_async(points, agents, concurrency=concurrency, repeats=repeats, progress=progress))


def run_replay(
    points: Iterable[DecisionPoint],
    agents: Mapping[str, Agent],
    *,
    concurrency: int = 16,
    repeats: int = 1,
    progress: bool | Progress = True,
) -> ReplayResult:
    """Step mode: ask every agent at every point's recorded state, ``repeats`` times each.

    ``agents`` maps a role (``clone``, ``expert``) to its agent; ``progress`` shows a status line
    on stderr when it is a terminal and the replay lasts more than two seconds (False: never).
    Raises :class:`~pytest_bclone.errors.CacheMiss` in cache mode ``none`` when a call has no
    recording; every other failure is a failed reply in the result.
    """
    return _run(replay_async(points, agents, concurrency=concurrency, repeats=repeats, progress=progress))


# --------------------------------------------------------------------------- rollouts


def _tool_content(result: object) -> str:
    return result if isinstance(result, str) else json.dumps(result, default=str)


async def _execute(env: Environment, call: ToolCall) -> str:
    """Run one tool call; what goes wrong is told to the agent, as a tool result would be."""
    if call.arguments is None:
        return f"Error: the arguments of {call.name} could not be read: {call.error}"
    try:
        result: Any = env.execute(call)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # noqa: BLE001 (a tool error is part of the episode, as in tau-bench)
        return f"Error: {describe_exception(exc)}"
    return _tool_content(result)


def _final_state_ok(env: Environment) -> bool | None:
    check = getattr(env, "final_state_ok", None)
    if check is None:
        return None
    value = check()
    return None if value is None else bool(value)


_NO_CALL = CallStats()


def step_cap(trajectory: Trajectory) -> int:
    """Most agent turns an episode may take: 3x the recorded assistant turns + 5 (loops end)."""
    return 3 * len(trajectory.assistant_indexes()) + 5


async def run_episode(
    agent: Agent,
    trajectory: Trajectory,
    env: Environment,
    *,
    repeat: int = 0,
    max_steps: int | None = None,
    user: User | None = None,
    user_stats: list[CallStats] | None = None,
) -> Episode:
    """Let ``agent`` drive one episode of ``trajectory`` in ``env``, with ``user`` answering it.

    It starts from the recorded messages before the first assistant turn. After each action the
    tool calls run in ``env`` and their results are appended; after a text answer without tool
    calls ``user`` (default: :class:`~pytest_bclone.agents.user.RecordedUser`, the next recorded
    user message) gives the next user message. It ends when the user ends the conversation, at
    ``max_steps`` (default :func:`step_cap`), or at a failed call of the agent or of the user
    (``Episode.error``: the episode is then counted as failed, never scored). The figures of the
    user's calls are appended to ``user_stats`` when given (they are not the agent's).
    """
    messages = list(trajectory.messages)
    first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
    conversation: list[Message] = messages[:first]
    if user is None:
        user = RecordedUsers()(trajectory)
    tools = list(env.tools) or list(trajectory.tools)
    cap = step_cap(trajectory) if max_steps is None else max_steps
    actions: list[Action] = []
    stats: list[CallStats] = []
    error: str | None = None
    truncated = False
    while True:
        if len(actions) >= cap:
            truncated = True  # still acting at the cap: reported, and step_count penalises it
            break
        reply = await _ask(agent, State(trajectory.id, len(actions), tuple(conversation), tools), repeat)
        stats.append(reply.stats)
        if reply.action is None:
            error = reply.stats.error or f"agent {agent.name!r} failed without saying why"
            break
        action = reply.action
        actions.append(action)
        conversation.append(action.to_message())
        if action.tool_calls:
            for i, call in enumerate(action.tool_calls):
                content = await _execute(env, call)
                conversation.append({"role": "tool", "tool_call_id": call.id or f"call_{i}", "content": content})
            continue
        turn = await ask_user(user, tuple(conversation), repeat)
        if user_stats is not None and turn.stats != _NO_CALL:
            # A recorded or scripted user makes no call (default figures): only model calls count.
            user_stats.append(turn.stats)
        if turn.failed:
            # The user's failure, not the agent's: the episode is an error, excluded from scores.
            error = f"the user simulator ({user_name(user)}) failed: {turn.stats.error}"
            break
        if turn.text:
            conversation.append({"role": "user", "content": turn.text})
        if turn.done:
            break
    return Episode(
        trajectory.id, tuple(actions), tuple(conversation), sum_stats(stats), error, _final_state_ok(env), repeat,
        truncated,
    )


async def _recorded_episode(agent: RecordedAgent, trajectory: Trajectory, env: Environment, repeat: int) -> Episode:
    """The recorded expert's episode is its recording; its tool calls still run in ``env`` so that
    ``final_state_ok`` reports the expert's end state on the same footing as the clone's."""
    recording = agent.recording(trajectory.id)
    if recording is None:
        why = f"the recorded expert has no trajectory {trajectory.id!r}"
        return Episode(trajectory.id, (), (), CallStats(error=why), why, None, repeat)
    actions = tuple(Action.from_message(recording.messages[i]) for i in recording.assistant_indexes())
    for action in actions:
        for call in action.tool_calls:
            await _execute(env, call)
    return Episode(trajectory.id, actions, tuple(recording.messages), CallStats(calls=0), None, _final_state_ok(env),
                   repeat)


async def rollouts_async(
    trajectories: Iterable[Trajectory],
    agents: Mapping[str, Agent],
    env_factory: EnvironmentFactory,
    *,
    concurrency: int = 16,
    repeats: int = 1,
    max_steps: int | None = None,
    progress: bool | Progress = True,
    user_factory: UserFactory | None = None,
) -> RolloutResult:
    """The coroutine behind :func:`run_rollouts`."""
    trajectories = list(trajectories)
    roles = list(agents)
    users = user_factory if user_factory is not None else RecordedUsers()
    slots: dict[tuple[str, int, int], Episode] = {}
    calls: dict[tuple[str, int, int], CallTotals] = {}
    jobs = [(role, t, r) for t in range(len(trajectories)) for r in range(repeats) for role in roles]

    async def handle(job: tuple[str, int, int]) -> tuple[bool, bool] | None:
        role, t, r = job
        agent, trajectory = agents[role], trajectories[t]
        env = env_factory(trajectory)  # a fresh environment per episode: episodes never share state
        if isinstance(agent, RecordedAgent):
            slots[job] = await _recorded_episode(agent, trajectory, env, r)
            calls[job] = CallTotals()
            return None
        else:
            # A fresh user per episode from the same factory: clone and live expert meet the same user.
            stats: list[CallStats] = []
            slots[job] = await run_episode(agent, trajectory, env, repeat=r, max_steps=max_steps,
                                           user=users(trajectory), user_stats=stats)
            calls[job] = CallTotals.of(stats)
        return slots[job].stats.cached, slots[job].error is not None

    start = time.monotonic()
    try:
        await _pool(jobs, concurrency, handle, _progress(
            progress, sum(1 for job in jobs if not isinstance(agents[job[0]], RecordedAgent)), "bclone rollout",
            "episodes"))
    finally:
        await _close(agents)
        aclose = getattr(users, "aclose", None)
        if aclose is not None:
            await aclose()
    order = [(t, r) for t in range(len(trajectories)) for r in range(repeats)]
    episodes = {role: tuple(slots[role, t, r] for t, r in order) for role in roles}
    describe = getattr(users, "describe", None)
    return RolloutResult(
        episodes, {role: a.name for role, a in agents.items()}, repeats, time.monotonic() - start,
        str(describe() if describe is not None else getattr(users, "name", None) or user_name(users)),
        {role: tuple(calls[role, t, r] for t, r in order) for role in roles},
    )


def run_rollouts(
    trajectories: Iterable[Trajectory],
    agents: Mapping[str, Agent],
    env_factory: EnvironmentFactory,
    *,
    concurrency: int = 16,
    repeats: int = 1,
    max_steps: int | None = None,
    progress: bool | Progress = True,
    user_factory: UserFactory | None = None,
) -> RolloutResult:
    """Rollout mode: each agent drives every trajectory's episode ``repeats`` times.

    ``env_factory(trajectory)`` gives a fresh :class:`Environment` per episode, ``user_factory``
    a fresh :class:`~pytest_bclone.agents.user.User` (default, None: the recorded user turns; see
    :func:`~pytest_bclone.agents.user.make_users` for ``--bclone-user``). The recorded expert's
    episode is its recording (it meets no user). ``max_steps`` overrides :func:`step_cap`.
    """
    return _run(rollouts_async(
        trajectories, agents, env_factory, concurrency=concurrency, repeats=repeats, max_steps=max_steps,
        progress=progress, user_factory=user_factory,
    ))


class _Box:
    """Carries a coroutine's result out of ``asyncio.run`` with an opaque repr: on Python 3.11,
    restoring the SIGINT handler repr's the main task, result included (seconds for a million
    replies)."""

    __slots__ = ("interrupt", "value")

    def __init__(self, value: Any, interrupt: BaseException | None = None) -> None:
        self.value = value
        self.interrupt = interrupt


async def _boxed(coro: Coroutine[Any, Any, T]) -> _Box:
    try:
        return _Box(await coro)
    except (KeyboardInterrupt, SystemExit) as exc:
        # A signal (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by signals.py) raised inside
        # the task: carried out as a value so the task ends with its exception retrieved. Raised
        # through the loop instead, it left the task holding it, and asyncio printed "Task
        # exception was never retrieved" with a traceback into an interrupted run's output.
        return _Box(None, exc)


_FROZEN = [0]  # replays running that froze the heap (see _frozen_heap)
_FROZEN_LOCK = threading.Lock()


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep the objects that exist when a replay starts out of the garbage collector's full
    collections while it runs (:func:`gc.freeze`; unfrozen when the last running replay ends).

    Why: a replay allocates per call, and each full collection walks every tracked object,
    litellm's modules and the dataset included (~0.2 s each in the replay bench, 0.1-0.35 ms per
    call amortised over 2,000 calls); the objects the run creates are still collected as usual. A
    process that froze objects itself (a pre-fork server) keeps its own choice: nothing is done."""
    with _FROZEN_LOCK:
        ours = _FROZEN[0] > 0 or not gc.get_freeze_count()
        if ours:
            if _FROZEN[0] == 0:
                gc.freeze()
            _FROZEN[0] += 1
    try:
        yield
    finally:
        if ours:
            with _FROZEN_LOCK:
                _FROZEN[0] -= 1
                if _FROZEN[0] == 0:
                    gc.unfreeze()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, also from code that already runs a loop (then on a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with _frozen_heap():
            box = asyncio.run(_boxed(coro))
    else:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bclone-replay") as pool, _frozen_heap():
            box = pool.submit(asyncio.run, _boxed(coro)).result()
    if box.interrupt is not None:
        raise box.interrupt
    return box.value  # type: ignore[no-any-return]
