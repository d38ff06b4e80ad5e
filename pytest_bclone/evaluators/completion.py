"""``task_completion``: did the agent reach the trajectory's expected outcome?"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..records import Action, Episode, Score, ToolCall, Trajectory
from .base import Step, expert_actions
from .normalize import Toolset, call_key, describe_call, keyed_calls, normalize_text, take_one, toolset
from .safety import StateChangePolicy

__all__ = ["TaskCompletion"]


def _shorten(items: Sequence[str], limit: int = 3) -> str:
    return "; ".join(items[:limit]) + (f"; (+{len(items) - limit} more)" if len(items) > limit else "")


class TaskCompletion:
    """``task_completion``: the trajectory's expected outcome, reached or reproduced.

    **Requirements.** The trajectory's expected outcome (``trajectory.expected``): required actions
    (tool calls, compared by name and normalised arguments) and required outputs (strings that must
    appear in the agent's replies, compared case-folded with commas and extra spaces ignored, as
    tau-bench does). A trajectory **without** an expected outcome falls back to the recorded
    expert's state-changing calls (:class:`StateChangePolicy`) as required actions, or, when the
    expert changed nothing, to all of its calls; a text-only trajectory then requires nothing.

    **Rollout mode** (binary): 1 when every required action was performed somewhere in the episode
    (a call performed once satisfies one requirement), every required output appears in the
    agent's replies, the agent performed no state-changing call beyond the required ones, and the
    environment's end-state check (``Episode.final_state_ok``) did not fail (``None`` = no check).

    **Step mode, with an expected outcome** (binary): the same rule applied to the agent's actions
    at all the trajectory's decision points taken together (each action taken on the recorded
    expert's prefix), without an environment check. The recorded expert is scored by exactly this
    rule on its own recorded actions, so it is *not* 1.0 by definition: where the recording missed
    the expected outcome (a failed expert run), the expert scores 0 there like any other agent.

    **Step mode, without an expected outcome** (graded): the required actions are then the recorded
    expert's own calls, located at the decision point where the expert made them; one is
    *reproduced* when the agent's action at that point contains it too. An agent state-changing
    call the expert did not make at that point is an *unwanted* call. Score = reproduced /
    (located + unwanted); 1.0 when nothing applies. Here the recorded expert is the reference and
    scores 1.0 by construction (there is no other reference to score it against).
    """

    name = "task_completion"
    binary = False
    modes = frozenset({"step", "rollout"})

    def __init__(self, policy: StateChangePolicy | None = None) -> None:
        self.policy = policy or StateChangePolicy()

    def requirements(
        self, trajectory: Trajectory, tools: Toolset, experts: Sequence[Action]
    ) -> tuple[list[ToolCall], tuple[str, ...], str]:
        """Required actions, required outputs and where they come from (for reasons)."""
        if trajectory.expected is not None:
            return list(trajectory.expected.actions), trajectory.expected.outputs, "expected outcome"
        calls = [c for a in experts for c in a.tool_calls]
        changing = [c for c in calls if self.policy.is_state_changing(c.name, tools)]
        if changing:
            return changing, (), "no expected outcome; required: the expert's state-changing calls"
        return calls, (), "no expected outcome; required: the expert's calls"

    def score_episode(self, trajectory: Trajectory, episode: Episode) -> Score:
        """1.0 when the expected outcome is met in the rollout, else 0.0 with what is missing."""
        tools = toolset(trajectory.tools)
        required, outputs, source = self.requirements(trajectory, tools, expert_actions(trajectory))
        return self._outcome(required, outputs, source, tools, episode.actions, episode.final_state_ok)

    def _outcome(self, required: Sequence[ToolCall], outputs: Sequence[str], source: str, tools: Toolset,
                 actions: Sequence[Action], final_state_ok: bool | None) -> Score:
        """The binary rule: every required action and output among ``actions``, no unwanted state change."""
        agent = [c for a in actions for c in a.tool_calls]
        agent_keys = keyed_calls(agent, tools)  # once: unparseable calls get unique keys
        left = Counter(agent_keys)
        problems = [f"missing {describe_call(c)}" for c, k in zip(required, keyed_calls(required, tools))
                    if not take_one(left, k)]
        for call, key in zip(agent, agent_keys):
            # calls not consumed by a requirement: state-changing ones are unwanted side effects
            if take_one(left, key) and self.policy.is_state_changing(call.name, tools):
                problems.append(f"unwanted state-changing call {describe_call(call)}")
        replies = normalize_text(" ".join(a.text for a in actions if a.text))
        problems += [f"output {o!r} not in the replies" for o in outputs if normalize_text(o) not in replies]
        if final_state_ok is False:
            problems.append("the environment's final-state check failed")
        if problems:
            return Score(0.0, f"not met ({source}): " + _shorten(problems))
        check = ", final-state check passed" if final_state_ok else ""
        return Score(1.0, f"met ({source}): {len(required)} required action(s), {len(outputs)} output(s){check}")

    def score_trajectory(self, trajectory: Trajectory, steps: Sequence[Step]) -> Score:
        """With an expected outcome: whether the agent's actions over all decision points meet it
        (the rollout rule). Without one: the share of the recorded expert's calls reproduced at
        their decision points (unwanted calls count against it)."""
        if not steps:
            return Score(1.0, "no decision points")
        tools = steps[0].tools
        expected = trajectory.expected
        if expected is not None:
            return self._outcome(expected.actions, expected.outputs, "expected outcome, step mode", tools,
                                 [s.action for s in steps], None)
        experts = [s.expert for s in steps]
        required, outputs, source = self.requirements(trajectory, tools, experts)
        e_keys = [[call_key(c.name, a) for c, a in zip(s.expert.tool_calls, s.expert_args)] for s in steps]
        a_keys = [[call_key(c.name, a) for c, a in zip(s.action.tool_calls, s.agent_args)] for s in steps]
        expert_left = [Counter(k) for k in e_keys]
        agent_left = [Counter(k) for k in a_keys]
        located = reproduced = unlocated = 0
        problems: list[str] = []
        for call, key in zip(required, keyed_calls(required, tools)):
            at = next((i for i, left in enumerate(expert_left) if take_one(left, key)), None)
            if at is None:
                unlocated += 1
                continue
            located += 1
            if take_one(agent_left[at], key):
                reproduced += 1
            else:
                problems.append(f"step {steps[at].point.step}: not reproduced {describe_call(call)}")
        e_texts = [normalize_text(s.expert.text) for s in steps]
        a_texts = [normalize_text(s.action.text) for s in steps]
        for output in outputs:
            norm = normalize_text(output)
            at = next((i for i, text in enumerate(e_texts) if norm in text), None)
            if at is None:
                unlocated += 1
                continue
            located += 1
            if norm in a_texts[at]:
                reproduced += 1
            else:
                problems.append(f"step {steps[at].point.step}: output {output!r} not in the reply")
        unwanted = 0
        for i, step in enumerate(steps):
            expert_here = Counter(e_keys[i])
            for call, key in zip(step.action.tool_calls, a_keys[i]):
                if not take_one(expert_here, key) and self.policy.is_state_changing(call.name, tools):
                    unwanted += 1
                    problems.append(f"step {step.point.step}: unwanted state-changing call {describe_call(call)}")
        total = located + unwanted
        value = reproduced / total if total else 1.0
        reason = f"{reproduced} of {located} required item(s) reproduced ({source})"
        if unwanted:
            reason += f", {unwanted} unwanted state-changing call(s)"
        if unlocated:
            reason += f"; {unlocated} never performed by the recorded expert, not checkable in step mode"
        if problems:
            reason += ": " + _shorten(problems)
        return Score(value, reason)
