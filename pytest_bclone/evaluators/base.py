"""The evaluator protocols and the per-step context they share.

Three kinds of evaluator, told apart by the method they implement:

* :class:`StepEvaluator` -- ``score_step(step)``: one agent action at one decision point.
* :class:`TrajectoryEvaluator` -- ``score_trajectory(trajectory, steps)`` in step mode (the agent's
  action at every decision point) and ``score_episode(trajectory, episode)`` in rollout mode.
* :class:`JudgeEvaluator` -- ``async ajudge_step(step)`` / ``async ajudge_episode(...)``: an LLM
  judge; its failures raise :class:`~pytest_bclone.errors.JudgeError`.

Every score is a :class:`~pytest_bclone.records.Score` in [0, 1], higher is better, with a reason a
person can read. The reference is always the *recorded* expert action at the point
(``point.expert_action``); the same evaluator scores the clone's and the expert's actions, so a
``recorded`` expert gets 1.0 on every imitation metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..records import Action, DecisionPoint, Episode, Score, Trajectory
from .normalize import CallMatch, NormArgs, Toolset, match_calls, normalize_args, toolset

__all__ = [
    "JudgeEvaluator",
    "JudgeFailure",
    "Step",
    "StepEvaluator",
    "TrajectoryEvaluator",
    "expert_actions",
]


class Step:
    """One agent action at one decision point, with what evaluators share computed once.

    Built by the entry points (one per ``(point, action)`` pair) and handed to every metric, so the
    recorded expert action is parsed once, the toolset comes from the per-list cache, and the
    optimal call matching is solved once for ``tool_selection``, ``tool_arguments``,
    ``action_match`` and ``trajectory_score`` together. Attributes are computed on first use.
    """

    __slots__ = ("_agent_args", "_expert", "_expert_args", "_match", "_tools", "action", "point")

    def __init__(self, point: DecisionPoint, action: Action, *, expert: Action | None = None) -> None:
        self.point = point
        self.action = action
        self._expert = expert
        self._tools: Toolset | None = None
        self._expert_args: tuple[NormArgs | None, ...] | None = None
        self._agent_args: tuple[NormArgs | None, ...] | None = None
        self._match: CallMatch | None = None

    @property
    def expert(self) -> Action:
        """The recorded expert action at this point (the reference)."""
        if self._expert is None:
            self._expert = self.point.expert_action
        return self._expert

    @property
    def tools(self) -> Toolset:
        """The parsed toolset of the state (cached per tool list)."""
        if self._tools is None:
            self._tools = toolset(self.point.trajectory.tools)
        return self._tools

    @property
    def expert_args(self) -> tuple[NormArgs | None, ...]:
        """Canonical arguments of the expert's calls, in call order."""
        if self._expert_args is None:
            tools = self.tools
            self._expert_args = tuple(normalize_args(c, tools) for c in self.expert.tool_calls)
        return self._expert_args

    @property
    def agent_args(self) -> tuple[NormArgs | None, ...]:
        """Canonical arguments of the agent's calls, in call order."""
        if self._agent_args is None:
            tools = self.tools
            self._agent_args = tuple(normalize_args(c, tools) for c in self.action.tool_calls)
        return self._agent_args

    @property
    def match(self) -> CallMatch:
        """The optimal matching of the agent's calls against the expert's."""
        if self._match is None:
            self._match = match_calls(
                self.expert.tool_names, self.expert_args, self.action.tool_names, self.agent_args
            )
        return self._match

    @property
    def key(self) -> str:
        """The item id of the point: ``<trajectory id>#<step>``."""
        return self.point.key

    def __repr__(self) -> str:
        return f"Step({self.point.key}, {self.action.describe()})"


@runtime_checkable
class StepEvaluator(Protocol):
    """Scores one agent action at one decision point.

    Example (register it from ``pytest_bclone_register_evaluators``)::

        class Politeness:
            name = "politeness"
            binary = True

            def score_step(self, step: Step) -> Score:
                text = step.action.text or ""
                ok = "please" in text.lower() or step.action.is_tool_call
                return Score(1.0 if ok else 0.0, "polite" if ok else f"no 'please' in {text[:40]!r}")
    """

    name: str
    binary: bool
    """True when every score is 0 or 1 (the gate may then use a test for proportions)."""

    def score_step(self, step: Step) -> Score:
        """The score of ``step.action`` against ``step.expert`` at ``step.point``."""
        ...


@runtime_checkable
class TrajectoryEvaluator(Protocol):
    """Scores a whole trajectory: in step mode from the agent's action at each of its decision
    points, in rollout mode from the :class:`~pytest_bclone.records.Episode` the agent drove.

    ``modes`` names the modes it supports (``"step"``, ``"rollout"``); the entry points refuse the
    others with an error naming the metric and the mode.
    """

    name: str
    binary: bool
    modes: frozenset[str]

    def score_trajectory(self, trajectory: Trajectory, steps: Sequence[Step]) -> Score:
        """Step mode: ``steps`` are every decision point of ``trajectory``, in order."""
        ...

    def score_episode(self, trajectory: Trajectory, episode: Episode) -> Score:
        """Rollout mode: ``episode`` is one agent's run of ``trajectory`` (never a failed one)."""
        ...


@runtime_checkable
class JudgeEvaluator(Protocol):
    """An LLM-judged metric. Raises :class:`~pytest_bclone.errors.JudgeError` when the judge call
    fails or its answer is not a valid verdict; the runners turn that into a :class:`JudgeFailure`.
    """

    name: str
    binary: bool

    async def ajudge_step(self, step: Step) -> Score:
        """Judge one agent action at one decision point."""
        ...

    async def ajudge_episode(self, trajectory: Trajectory, episode: Episode) -> Score:
        """Judge one agent's whole rollout."""
        ...


@dataclass(frozen=True, slots=True)
class JudgeFailure:
    """A judged item without a score: the judge call failed or answered garbage.

    It stands in the score list at the item's position, so the lists stay aligned with their
    inputs; the gate leaves it out of the parity statistics and counts it as an error.
    """

    metric: str
    item: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (crosses the xdist channel unchanged)."""
        return {"metric": self.metric, "item": self.item, "error": self.error}


def expert_actions(trajectory: Trajectory) -> tuple[Action, ...]:
    """The recorded expert's actions of a trajectory, in order (one per decision point; parsed once
    per trajectory object, see :meth:`~pytest_bclone.records.Trajectory.expert_actions`)."""
    return trajectory.expert_actions()


def episode_key(trajectory: Trajectory, episode: Episode) -> str:
    """The item id of a rollout: ``<trajectory id>`` plus ``@r<repeat>`` for repeats after the first."""
    return trajectory.id if episode.repeat == 0 else f"{trajectory.id}@r{episode.repeat}"

