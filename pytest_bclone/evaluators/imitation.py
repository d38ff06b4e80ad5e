"""Step-level imitation metrics: did the agent do what the recorded expert did at this state?

``tool_selection``, ``tool_arguments`` and ``action_match`` read one shared, optimal call matching
(:attr:`Step.match <pytest_bclone.evaluators.base.Step.match>`); ``dead_tool`` checks calls against
the state's toolset. All normalisation rules are in :mod:`pytest_bclone.evaluators.normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EvaluatorError
from ..records import Score
from .base import Step
from .normalize import arg_diff, normalize_text

__all__ = ["ActionMatch", "DeadTool", "ToolArguments", "ToolSelection", "disagreement_rate"]

_BOTH_TEXT = "both replied with text (no tool calls to compare)"
# Scores are immutable: the constant verdicts are shared instead of rebuilt per step.
_NO_CALLS = Score(1.0, "no tool calls")
_ALL_ALIVE = Score(1.0, "every call uses a tool of the state's toolset")


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


def selection_reason(step: Step) -> str:
    """Why ``tool_selection`` is what it is (shared with ``action_match``)."""
    m = step.match
    expert, agent = step.expert, step.action
    if not m.size:
        return _BOTH_TEXT
    if not agent.tool_calls:
        return f"expert called {_names(expert.tool_names)}; agent replied with text {agent.describe()}"
    if not expert.tool_calls:
        return f"expert replied with text; agent called {_names(agent.tool_names)}"
    if not m.missing and not m.extra:
        return f"chose the expert's tools: {_names(expert.tool_names)}"
    matched_names = {agent.tool_calls[j].name for _, j, _ in m.pairs}
    parts = [f"{len(m.pairs)} of {m.size} calls match"]
    if m.missing:
        parts.append("missing " + _names([expert.tool_calls[i].name for i in m.missing]))
    if m.extra:
        extra = [agent.tool_calls[j].name for j in m.extra]
        parts.append("extra " + _names([n + " (duplicate)" if n in matched_names else n for n in extra]))
    return "; ".join(parts)


def arguments_reason(step: Step) -> str:
    """The argument diff of every matched call that does not fully agree ('' when all agree)."""
    m = step.match
    e_calls, a_calls = step.expert.tool_calls, step.action.tool_calls
    diffs = []
    for i, j, s in m.pairs:
        if s < 1.0:
            diff = arg_diff(e_calls[i], step.expert_args[i], a_calls[j], step.agent_args[j])
            diffs.append(f"{e_calls[i].name}: {diff}")
    return "; ".join(diffs)


class ToolSelection:
    """``tool_selection``: did the agent choose the expert's tools at this state?

    Parallel calls are compared as a multiset with the optimal matching: score = matched calls /
    max(expert calls, agent calls), so missing, extra and duplicated calls all cost credit and call
    order is irrelevant. A text reply where the expert called a tool (or the reverse) scores 0; two
    text replies score 1. Arguments do not count here (see ``tool_arguments``).
    """

    name = "tool_selection"
    binary = False

    def score_step(self, step: Step) -> Score:
        """Matched calls / max(len(expert calls), len(agent calls))."""
        return Score(step.match.selection, selection_reason(step))


class ToolArguments:
    """``tool_arguments``: argument agreement of the calls matched by name.

    Mean over matched calls of the share of argument keys that agree after normalisation (numbers,
    case and spaces, key order, schema defaults; lists stay ordered). Unparseable arguments score 0
    for that call. With no calls on either side: 1.0; calls but none matched by name: 0.0 (the tool
    choice itself is ``tool_selection``'s business). The reason is a per-argument diff.
    """

    name = "tool_arguments"
    binary = False

    def score_step(self, step: Step) -> Score:
        """Mean argument agreement over matched calls."""
        m = step.match
        value = m.arguments
        if not m.size:
            return Score(value, _BOTH_TEXT)
        if not m.pairs:
            return Score(value, "no agent call matches an expert call by name, so no arguments agree")
        diff = arguments_reason(step)
        if not diff:
            return Score(value, f"arguments agree on {len(m.pairs)} matched call(s)")
        return Score(value, f"{value:.2f} argument agreement: {diff}")


class ActionMatch:
    """``action_match``: exact agreement of the whole action (binary).

    1 when the agent's calls equal the expert's as a multiset after normalisation (same tools, same
    arguments, nothing missing or extra), or when both replied with text: free text never matches
    word for word, so its content is left to the judges and ``task_completion``'s outputs (pass
    ``compare_text=True`` to require equal text after case, space and comma normalisation).
    ``1 - mean(action_match)`` is the clone-vs-expert disagreement rate (:func:`disagreement_rate`).
    """

    name = "action_match"
    binary = True

    def __init__(self, *, compare_text: bool = False) -> None:
        self.compare_text = compare_text

    def score_step(self, step: Step) -> Score:
        """1.0 for the same action, else 0.0 with what differs."""
        m = step.match
        if not m.size:
            if self.compare_text and normalize_text(step.expert.text) != normalize_text(step.action.text):
                return Score(0.0, f"texts differ: expected {step.expert.describe()} got {step.action.describe()}")
            return Score(1.0, _BOTH_TEXT)
        if m.exact:
            return Score(1.0, "same action: " + _names(step.action.tool_names))
        reasons = []
        if m.missing or m.extra or not m.pairs:
            reasons.append(selection_reason(step))
        diff = arguments_reason(step)
        if diff:
            reasons.append(diff)
        return Score(0.0, "; ".join(reasons))


class DeadTool:
    """``dead_tool``: 0 when the agent calls a tool absent from the state's toolset (a deprecated
    tool the training data still had, or an invented one), else 1 (binary)."""

    name = "dead_tool"
    binary = True

    def score_step(self, step: Step) -> Score:
        """0.0 naming the absent tools, else 1.0."""
        calls = step.action.tool_calls
        if not calls:
            return _NO_CALLS
        names = step.tools.names
        dead = [c.name for c in calls if c.name not in names]
        if dead:
            return Score(0.0, f"called {_names(dead)}: not in this state's toolset of {len(names)} tools "
                              "(deprecated or invented)")
        return _ALL_ALIVE


def disagreement_rate(scores: Sequence[Score]) -> float:
    """The clone-vs-expert action disagreement rate: ``1 - mean(action_match)`` over ``scores``.

    ``scores`` are the ``action_match`` scores of one agent (e.g. ``score_steps(...)["action_match"]``).
    """
    if not scores:
        raise EvaluatorError(
            "disagreement_rate got no action_match scores; score at least one decision point with "
            "metric 'action_match' first"
        )
    return 1.0 - sum(s.value for s in scores) / len(scores)
