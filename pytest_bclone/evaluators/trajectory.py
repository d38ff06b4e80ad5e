"""Trajectory-level metrics: ``trajectory_score`` (step and rollout mode) and ``step_count`` (rollout)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from ..errors import EvaluatorError
from ..records import Episode, Score, ToolCall, Trajectory
from .base import Step, expert_actions
from .imitation import arguments_reason, selection_reason
from .normalize import describe_call, keyed_calls, take_one, toolset

__all__ = ["MATCH_MODES", "StepCount", "TrajectoryScore"]

MATCH_MODES = ("strict", "unordered", "subset", "superset")
"""Rollout match modes of ``trajectory_score`` (see :class:`TrajectoryScore`)."""


def _lcs(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)); tool sequences are short)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _first(calls: Sequence[ToolCall], limit: int = 3) -> str:
    shown = ", ".join(describe_call(c) for c in calls[:limit])
    return shown + (f" (+{len(calls) - limit} more)" if len(calls) > limit else "")


class TrajectoryScore:
    """``trajectory_score``: one rating per trajectory.

    **Step mode**: the mean over the trajectory's decision points of the step score
    ``tool_selection * tool_arguments`` (= summed argument agreement of matched calls /
    max(expert calls, agent calls); 1 for two text replies, 0 for text against a tool call).

    **Rollout mode**: the agent's tool-call sequence (all calls of the episode, in order) against
    the recorded expert's, calls compared by name and normalised arguments (``compare_arguments=
    False``: by name only), with ``match``:

    * ``strict``: longest common subsequence / max(len) -- 1 only for the same calls in the same order;
    * ``unordered``: multiset matches / max(len) -- 1 for the same calls in any order;
    * ``subset``: share of the agent's calls that the expert made too -- 1 when the agent did
      nothing the expert did not (1 for no calls);
    * ``superset``: share of the expert's calls the agent made too -- 1 when the agent did at least
      everything the expert did.
    """

    name = "trajectory_score"
    binary = False
    modes = frozenset({"step", "rollout"})

    def __init__(self, match: str = "strict", *, compare_arguments: bool = True) -> None:
        if match not in MATCH_MODES:
            raise EvaluatorError(
                f"trajectory_score: unknown match mode {match!r}; use one of {', '.join(MATCH_MODES)} "
                "(e.g. TrajectoryScore(match='unordered'))"
            )
        self.match = match
        self.compare_arguments = compare_arguments

    def score_trajectory(self, trajectory: Trajectory, steps: Sequence[Step]) -> Score:
        """Mean step score ``tool_selection * tool_arguments`` over the decision points."""
        if not steps:
            return Score(1.0, "no decision points")
        credits = [s.match.credit for s in steps]
        value = sum(credits) / len(credits)
        reason = f"mean step score {value:.2f} over {len(steps)} steps"
        worst = min(range(len(steps)), key=credits.__getitem__)
        if credits[worst] < 1.0:
            step = steps[worst]
            why = "; ".join(r for r in (selection_reason(step), arguments_reason(step)) if r)
            reason += f"; lowest: step {step.point.step} ({credits[worst]:.2f}: {why})"
        return Score(min(1.0, value), reason)

    def score_episode(self, trajectory: Trajectory, episode: Episode) -> Score:
        """The agent's tool sequence against the recorded expert's, by ``match`` mode."""
        tools = toolset(trajectory.tools)
        expert = [c for a in expert_actions(trajectory) for c in a.tool_calls]
        agent = [c for a in episode.actions for c in a.tool_calls]
        e_keys = keyed_calls(expert, tools, with_arguments=self.compare_arguments)
        a_keys = keyed_calls(agent, tools, with_arguments=self.compare_arguments)
        common = Counter(e_keys) & Counter(a_keys)
        matched = sum(common.values())
        if self.match == "strict":
            size = max(len(e_keys), len(a_keys))
            value = _lcs(e_keys, a_keys) / size if size else 1.0
        elif self.match == "unordered":
            size = max(len(e_keys), len(a_keys))
            value = matched / size if size else 1.0
        elif self.match == "subset":
            value = matched / len(a_keys) if a_keys else 1.0
        else:  # superset
            value = matched / len(e_keys) if e_keys else 1.0
        reason = (f"{self.match} match {value:.2f}: {matched} of {len(expert)} expert calls made "
                  f"({len(agent)} agent calls)")
        missing_left, extra_left = Counter(e_keys) - common, Counter(a_keys) - common
        missing = [c for c, k in zip(expert, e_keys) if take_one(missing_left, k)]
        extra = [c for c, k in zip(agent, a_keys) if take_one(extra_left, k)]
        if missing and self.match != "subset":
            reason += "; missing " + _first(missing)
        if extra and self.match != "superset":
            reason += "; extra " + _first(extra)
        if value < 1.0 and not missing and not extra:
            reason += "; same calls in another order"
        return Score(value, reason)



class StepCount:
    """``step_count`` (rollout mode only): efficiency against the expert,
    ``min(1, expert steps / agent steps)``, steps being assistant turns (recorded expert turns vs
    the episode's actions). An agent that needs twice the turns scores 0.5; fewer turns score 1
    (``task_completion`` tells whether they sufficed). In step mode every agent takes exactly the
    recorded steps, so the metric does not apply there.
    """

    name = "step_count"
    binary = False
    modes = frozenset({"rollout"})

    def score_trajectory(self, trajectory: Trajectory, steps: Sequence[Step]) -> Score:
        """Not applicable: raises :class:`~pytest_bclone.errors.EvaluatorError`."""
        raise EvaluatorError(
            "step_count scores rollouts only: in step mode every agent takes exactly the recorded steps; "
            "run with --bclone-mode rollout or leave step_count out of the step-mode metrics"
        )

    def score_episode(self, trajectory: Trajectory, episode: Episode) -> Score:
        """``min(1, expert turns / agent turns)``."""
        expert_steps = len(trajectory.assistant_indexes())
        agent_steps = len(episode.actions)
        if agent_steps == 0:
            return Score(0.0, f"agent took no steps (expert took {expert_steps})")
        value = min(1.0, expert_steps / agent_steps)
        return Score(value, f"agent took {agent_steps} steps, expert {expert_steps}")
