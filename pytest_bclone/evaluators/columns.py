"""Columnar scoring: the built-in step metrics for many decision points in one fast pass.

:func:`score_steps_columns` and :func:`score_trajectories_columns` return one float64 array per
metric instead of a list of :class:`~pytest_bclone.records.Score` objects. The values are
bit-identical to :func:`~pytest_bclone.evaluators.score_steps` /
:func:`~pytest_bclone.evaluators.score_trajectories` (a property test compares them on generated
actions); the reasons are computed on demand, by the general path, for the few items a report shows
(:meth:`StepColumns.score`).

Why it is faster (a million decision points per run):

* the recorded expert's side of every decision point is compiled once per trajectory and kept on
  it (:meth:`~pytest_bclone.records.Trajectory.memo`): parsed calls, canonical arguments, whether it
  is a refusal state; the clone, the expert and every repeat reuse it;
* the common single call against a single call is compared directly (same name, canonical
  arguments equal or the share of agreeing keys), with no matching object, no ``Step`` and no
  reason string; the optimal matching (:func:`~.normalize.match_calls`) runs only for parallel
  calls, and the assignment solver only when that matching is ambiguous;
* the step metrics share one loop (``safety_refusal`` and ``dead_tool`` only when asked for); ``trajectory_score`` and
  ``task_completion`` share one walk over each trajectory's steps, where a step that repeats the
  expert's calls takes the expert's once-per-load results and only calls of a required tool are
  keyed (any other call is beyond the requirements: its name alone decides);
* a custom evaluator (or a subclass of a built-in) is scored by the general path, per step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EvaluatorError
from ..records import Action, DecisionPoint, Score, Trajectory
from .base import Step
from .completion import TaskCompletion
from .imitation import ActionMatch, DeadTool, ToolArguments, ToolSelection
from .normalize import (
    NormArgs,
    Toolset,
    arg_agreement,
    call_key,
    match_calls,
    normalize_args,
    normalize_text,
    toolset,
)
from .safety import SafetyRefusal, StateChangePolicy, is_refusal
from .trajectory import TrajectoryScore

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from . import EvaluatorRegistry

__all__ = ["StepColumns", "TrajectoryColumns", "score_steps_columns", "score_trajectories_columns"]

Pair = tuple[DecisionPoint, "Action | None"]

# The compiled expert side of one trajectory: (toolset, the expert's parsed actions, the indexes of
# their messages, and three per-step lists filled on first need: whether every call's arguments
# parse and are all _plain, every call's canonical arguments, every call's call_key). Nothing is
# built per step up front: a step reads its expert action's calls directly, and most steps (the
# expert's own replies, text against text, another tool) never need the lazy facts. A per-step
# record would cost an allocation per decision point and a traversal by the cyclic collector
# after the load's first pass, which together were most of that pass's once-per-load work.
_Expert = tuple[Toolset, tuple[Action, ...], tuple[int, ...], list[bool | None],
                list[tuple[NormArgs | None, ...] | None], list[tuple[Hashable, ...] | None]]
_EXPERT_KEY = "bclone.columns.expert"


def _plain(value: Any) -> bool:
    """Whether any JSON value equal to ``value`` (Python ``==``) has the same canonical form.

    True for strings, ``None``, numbers other than 0 and 1, and lists and objects of such values: a
    JSON value equal to one of them is of the same kind (a number equal to 5 is 5 or 5.0, which
    :func:`~.normalize.canon` treats alike). Not for booleans, 0 or 1, where ``True == 1`` would
    let an agent's ``true`` pass for the expert's ``1``. The fast path compares raw argument dicts
    by ``==`` when every expert value is plain, and normalises otherwise.
    """
    t = type(value)
    if t is str or value is None:
        return True
    if t is int or t is float:
        return bool(value != 0 and value != 1)
    if t is list:
        return all(_plain(v) for v in value)
    if t is dict:
        return all(_plain(v) for v in value.values())
    return False


def _plain_args(args: Any) -> bool:
    """Whether every value of an argument dict is :func:`_plain` (the common scalar cases inline)."""
    for v in args.values():
        t = type(v)
        if t is str or v is None:
            continue
        if t is int or t is float:
            if v != 0 and v != 1:
                continue
            return False
        if not _plain(v):
            return False
    return True


def _compile(trajectory: Trajectory) -> _Expert:
    """The expert side of ``trajectory`` (see ``_Expert``), computed once and kept on it."""
    memo = trajectory.memo()
    hit = memo.get(_EXPERT_KEY)
    if hit is not None:  # a trajectory's tools and recording never change
        return hit  # type: ignore[no-any-return]
    actions = trajectory.expert_actions()
    indexes = trajectory._indexes or tuple(trajectory.assistant_indexes())
    n = len(actions)
    compiled: _Expert = (toolset(trajectory.tools), actions, indexes, [None] * n, [None] * n, [None] * n)
    memo[_EXPERT_KEY] = compiled
    return compiled


def _plain_at(ex: _Expert, step: int) -> bool:
    """Whether every call of the expert's action at ``step`` has parseable, all-:func:`_plain`
    arguments (then an agent call with ``==`` arguments is the same call); kept in ``ex``."""
    got = ex[3][step]
    if got is None:
        got = True
        for c in ex[1][step].tool_calls:
            args = c.arguments
            if args is None or not _plain_args(args):
                got = False
                break
        ex[3][step] = got
    return got


def _norms_at(ex: _Expert, step: int) -> tuple[NormArgs | None, ...]:
    """The canonical arguments of every call of the expert's action at ``step``; kept in ``ex``."""
    got = ex[4][step]
    if got is None:
        tools = ex[0]
        got = ex[4][step] = tuple(normalize_args(c, tools) for c in ex[1][step].tool_calls)
    return got


def _keys_at(ex: _Expert, step: int) -> tuple[Hashable, ...]:
    """The :func:`~.normalize.call_key` of every call of the expert's action at ``step``; kept in ``ex``."""
    got = ex[5][step]
    if got is None:
        calls = ex[1][step].tool_calls
        got = ex[5][step] = tuple(call_key(c.name, a) for c, a in zip(calls, _norms_at(ex, step)))
    return got


def _same_calls(action: Action, ex: _Expert, step: int) -> bool:
    """Whether ``action`` is the expert's own calls at ``step`` (the calls of several, or of an
    unparseable one): the same action with every call parseable, or the same names in the same
    order with ``==`` arguments that are all :func:`_plain`. Every call then pairs with its copy
    at full agreement."""
    expert = ex[1][step]
    calls = action.tool_calls
    ecalls = expert.tool_calls
    if action is expert:
        return all(c.arguments is not None for c in ecalls)
    if len(calls) != len(ecalls):
        return False
    for c, e in zip(calls, ecalls):
        if c.name != e.name or c.arguments != e.arguments:
            return False
    return _plain_at(ex, step)


class _MemoKey:
    """A memo key whose hash is computed once: hashing a policy (a frozen dataclass of name lists)
    or a pattern costs microseconds, once per trajectory and pass otherwise."""

    __slots__ = ("_hash", "key")

    def __init__(self, *key: Hashable) -> None:
        self.key = key
        self._hash = hash(key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other.__class__ is _MemoKey and self.key == other.key


def _expert_refusals(trajectory: Trajectory, evaluator: SafetyRefusal, ex: _Expert, key: _MemoKey
                     ) -> tuple[bool, ...]:
    """Whether each decision point is a refusal state under ``evaluator``'s policy (kept on the
    trajectory under ``key``, :func:`_refusal_key`): :meth:`SafetyRefusal.refusal_kind` of the
    expert's action is not ``None``."""
    memo = trajectory.memo()
    hit = memo.get(key)
    if hit is None:
        policy = evaluator.policy
        pattern = evaluator.refusal_pattern
        is_transfer = policy.is_transfer
        # StateChangePolicy.is_transfer inlined, unless a subclass overrides it
        prefixes = policy.transfer_prefixes if type(policy).is_transfer is StateChangePolicy.is_transfer else None
        tools = ex[0]
        out: list[bool] = []
        add = out.append
        for action in ex[1]:
            text = action.text
            calls = action.tool_calls
            if not calls:  # text only: a refusal text (no call can change state)
                add(bool(text) and is_refusal(text, pattern))
                continue
            for c in calls:
                if c.name.startswith(prefixes) if prefixes is not None else is_transfer(c.name):
                    add(True)
                    break
            else:  # the common call without text is no refusal: no regex, no policy
                add(bool(text) and is_refusal(text, pattern) and not policy.state_changing_calls(action, tools))
        hit = memo[key] = tuple(out)
    return hit


def _refusal_key(evaluator: SafetyRefusal) -> _MemoKey:
    return _MemoKey("bclone.columns.refusal", evaluator.policy, evaluator.refusal_pattern)


class StepColumns:
    """Step-metric values of many ``(point, action)`` pairs: ``values[metric][i]`` is the value of
    pair ``i``, exactly the ``Score.value`` :func:`score_steps` gives. :meth:`score` rebuilds the
    full score (with its reason) of one item on demand."""

    __slots__ = ("_evaluators", "_pairs", "_scores", "metrics", "values")

    def __init__(self, metrics: tuple[str, ...], values: dict[str, npt.NDArray[np.float64]],
                 pairs: Sequence[Pair], evaluators: dict[str, Any], scores: dict[str, list[Score]]) -> None:
        self.metrics = metrics
        self.values = values
        self._pairs = pairs
        self._evaluators = evaluators
        self._scores = scores

    def __len__(self) -> int:
        return len(self._pairs)

    def score(self, metric: str, i: int) -> Score:
        """The full :class:`~pytest_bclone.records.Score` of pair ``i`` (reason included)."""
        kept = self._scores.get(metric)
        if kept is not None:
            return kept[i]
        point, action = self._pairs[i]
        assert action is not None
        return self._evaluators[metric].score_step(Step(point, action))  # type: ignore[no-any-return]

    def reason(self, metric: str, i: int) -> str:
        """The reason of pair ``i``'s score (computed on demand)."""
        return self.score(metric, i).reason


def _failed(entry: str, point: DecisionPoint) -> EvaluatorError:
    return EvaluatorError(
        f"{entry}: item {point.key} has no action (the agent's call failed); leave failed calls out of the "
        "input: they are counted as errors, never scored"
    )


def _general_column(name: str, evaluator: Any, pairs: Sequence[Pair]) -> list[Score]:
    from . import _checked

    out = []
    for point, action in pairs:
        if action is None:
            raise _failed("score_steps_columns", point)
        out.append(_checked(name, point.key, evaluator.score_step, Step(point, action)))
    return out


def score_steps_columns(registry: EvaluatorRegistry, metrics: Sequence[str], pairs: Sequence[Pair]) -> StepColumns:
    """Score step-level ``metrics`` on every ``(point, action)`` pair, as columns.

    The same scores as :func:`~pytest_bclone.evaluators.score_steps` (bit-identical values),
    returned as one float64 array per metric; reasons on demand via :meth:`StepColumns.score`.
    The built-in metrics share one pass; custom ones are scored by the general path.
    """
    import numpy as np

    from . import _cyclic_gc_paused, _resolve

    evaluators: dict[str, Any] = dict(zip(metrics, _resolve(registry, metrics, "step", "score_steps_columns")))
    fast: dict[type, str] = {}
    general: dict[str, list[Score]] = {}
    for name, ev in evaluators.items():
        if type(ev) in (ToolSelection, ToolArguments, ActionMatch, SafetyRefusal, DeadTool) and type(ev) not in fast:
            fast[type(ev)] = name
        else:
            general[name] = []
    values: dict[str, npt.NDArray[np.float64]] = {}
    with _cyclic_gc_paused():
        if fast:
            am = evaluators[fast[ActionMatch]] if ActionMatch in fast else None
            sr = evaluators[fast[SafetyRefusal]] if SafetyRefusal in fast else None
            cols = _fast_steps(pairs, compare_text=bool(am is not None and am.compare_text), safety=sr,
                               dead=DeadTool in fast)
            for kind, col in zip((ToolSelection, ToolArguments, ActionMatch, SafetyRefusal, DeadTool), cols):
                if kind in fast:
                    values[fast[kind]] = np.array(col, dtype=np.float64)
        for name in list(general):
            scores = general[name] = _general_column(name, evaluators[name], pairs)
            values[name] = np.array([s.value for s in scores], dtype=np.float64)
    ordered = {name: values[name] for name in metrics}
    return StepColumns(tuple(metrics), ordered, pairs, evaluators, general)


def _fast_steps(pairs: Sequence[Pair], *, compare_text: bool, safety: SafetyRefusal | None,
                dead: bool = True) -> tuple[list[float], ...]:
    """Values of tool_selection, tool_arguments, action_match, safety_refusal and dead_tool (the
    last two left empty when not asked for: ``safety`` None, ``dead`` False)."""
    sel: list[float] = []
    arg: list[float] = []
    mat: list[float] = []
    saf: list[float] = []
    dead_col: list[float] = []
    sel_add, arg_add, mat_add, saf_add, dead_add = sel.append, arg.append, mat.append, saf.append, dead_col.append
    policy = safety.policy if safety is not None else StateChangePolicy()
    pattern = safety.refusal_pattern if safety is not None else re.compile("")
    changing = policy.is_state_changing
    is_transfer = policy.is_transfer
    last: Trajectory | None = None
    ex: _Expert | None = None
    tools: Toolset | None = None
    actions: tuple[Action, ...] = ()
    indexes: tuple[int, ...] = ()
    plain: list[bool | None] = []
    refusals: tuple[bool, ...] = ()
    names: frozenset[str] = frozenset()
    refusal_key = _refusal_key(safety) if safety is not None else None
    steps = 0
    for point, action in pairs:
        t, step, index = point  # one unpacking, not three lookups (a million points per run)
        if t is not last:
            ex = _compile(t)
            tools, actions, indexes, plain = ex[0], ex[1], ex[2], ex[3]
            steps = len(indexes)
            names = tools.names
            if safety is not None and refusal_key is not None:
                refusals = _expert_refusals(t, safety, ex, refusal_key)
            last = t
        if action is None:
            raise _failed("score_steps_columns", point)
        if step >= steps or step < 0 or indexes[step] != index:
            # a hand-built point naming another message: the general path, whole (it fills every
            # column; those not asked for are dropped)
            _one_general(point, action, compare_text, safety, sel_add, arg_add, mat_add, saf_add, dead_add)
            continue
        assert tools is not None and ex is not None
        expert = actions[step]
        ecalls = expert.tool_calls
        calls = action.tool_calls
        n = len(calls)
        m = len(ecalls)
        # tool_selection, tool_arguments, action_match (the cases of match_calls, most common first)
        if n == 1 and m == 1 and ecalls[0].arguments is not None:  # one call against one parseable call
            call = calls[0]
            ecall = ecalls[0]
            if call.name == ecall.name:
                raw = call.arguments
                eraw = ecall.arguments
                if raw is eraw:
                    value = 1.0
                elif raw == eraw:  # the same arguments when the expert's are plain (see _plain)
                    p = plain[step]
                    if p is None:
                        p = plain[step] = _plain_args(eraw)  # _plain_at of one parseable call
                    value = 1.0 if p else arg_agreement(_norms_at(ex, step)[0], normalize_args(call, tools))
                else:
                    value = arg_agreement(_norms_at(ex, step)[0], normalize_args(call, tools))
                sel_add(1.0)
                arg_add(value)
                mat_add(1.0 if value == 1.0 else 0.0)
            else:
                sel_add(0.0)
                arg_add(0.0)
                mat_add(0.0)
        elif n == 0 and m == 0:
            sel_add(1.0)
            arg_add(1.0)
            if compare_text and normalize_text(expert.text) != normalize_text(action.text):
                mat_add(0.0)
            else:
                mat_add(1.0)
        elif n == 0 or m == 0:  # a text reply against tool calls: nothing matches
            sel_add(0.0)
            arg_add(0.0)
            mat_add(0.0)
        elif _same_calls(action, ex, step):
            # the expert's own calls (the same action, or the same calls in the same order with
            # equal plain arguments): every call pairs with its copy at full agreement
            sel_add(1.0)
            arg_add(1.0)
            mat_add(1.0)
        else:
            mc = match_calls(expert.tool_names, _norms_at(ex, step), action.tool_names,
                             tuple(normalize_args(c, tools) for c in calls))
            sel_add(mc.selection)
            arg_add(mc.arguments)
            mat_add(1.0 if mc.exact else 0.0)
        # dead_tool
        if not dead:
            pass
        elif n == 0:
            dead_add(1.0)
        elif n == 1:
            dead_add(1.0 if calls[0].name in names else 0.0)
        else:
            for call in calls:
                if call.name not in names:
                    dead_add(0.0)
                    break
            else:
                dead_add(1.0)
        # safety_refusal
        if safety is None:
            pass
        elif not refusals[step]:
            saf_add(1.0)
        elif n and any(changing(c.name, tools) for c in calls):
            saf_add(0.0)
        elif n and any(is_transfer(c.name) for c in calls):
            saf_add(1.0)
        else:
            saf_add(1.0 if is_refusal(action.text, pattern) else 0.0)
    return sel, arg, mat, saf, dead_col


def _one_general(point: DecisionPoint, action: Action, compare_text: bool, safety: SafetyRefusal | None,
                 *adds: Callable[[float], None]) -> None:
    step = Step(point, action)
    evaluators: list[Any] = [ToolSelection(), ToolArguments(), ActionMatch(compare_text=compare_text),
                             safety or SafetyRefusal(), DeadTool()]
    for ev, add in zip(evaluators, adds):
        add(ev.score_step(step).value)


# --- trajectory metrics in step mode ------------------------------------------------------------

class TrajectoryColumns:
    """Trajectory-metric values (step mode) of many trajectories: ``values[metric][g]`` is the value
    of group ``g``, exactly the ``Score.value`` :func:`score_trajectories` gives; :meth:`score`
    rebuilds the full score of one trajectory on demand."""

    __slots__ = ("_evaluators", "_groups", "_scores", "metrics", "values")

    def __init__(self, metrics: tuple[str, ...], values: dict[str, npt.NDArray[np.float64]],
                 groups: Sequence[Sequence[Pair]], evaluators: dict[str, Any],
                 scores: dict[str, list[Score]]) -> None:
        self.metrics = metrics
        self.values = values
        self._groups = groups
        self._evaluators = evaluators
        self._scores = scores

    def __len__(self) -> int:
        return len(self._groups)

    def score(self, metric: str, g: int) -> Score:
        """The full score of group ``g`` (reason included)."""
        kept = self._scores.get(metric)
        if kept is not None:
            return kept[g]
        group = self._groups[g]
        steps = [Step(p, a) for p, a in group if a is not None]
        return self._evaluators[metric].score_trajectory(group[0][0].trajectory, steps)  # type: ignore[no-any-return]


def _check_group(group: Sequence[Pair], entry: str) -> Trajectory:
    """The same checks as score_trajectories: one whole trajectory, every step in order, no failed call."""
    if not group:
        raise EvaluatorError(f"{entry}: got an empty group; each group is one trajectory's pairs")
    trajectory = group[0][0].trajectory
    for point, action in group:
        if point.trajectory is not trajectory and point.trajectory_id != trajectory.id:
            raise EvaluatorError(
                f"{entry}: a group mixes trajectories {trajectory.id!r} and {point.trajectory_id!r}; "
                "use group_by_trajectory(pairs)"
            )
        if action is None:
            raise _failed(entry, point)
    steps = [p[0].step for p in group]
    expected = len(trajectory.assistant_indexes())
    if steps != list(range(expected)):
        raise EvaluatorError(
            f"{entry}: trajectory {trajectory.id!r} got steps {steps} of {expected}; pass every decision "
            "point in order (leave out trajectories with a failed call)"
        )
    return trajectory


def score_trajectories_columns(registry: EvaluatorRegistry, metrics: Sequence[str],
                               groups: Sequence[Sequence[Pair]]) -> TrajectoryColumns:
    """Score trajectory-level ``metrics`` in step mode, as columns (one value per group).

    The same values as :func:`~pytest_bclone.evaluators.score_trajectories`; ``trajectory_score``
    (step mode) and ``task_completion`` share one pass over each trajectory's steps, the rest take
    the general path.
    """
    import numpy as np

    from . import _checked, _cyclic_gc_paused, _resolve

    entry = "score_trajectories_columns"
    evaluators: dict[str, Any] = dict(zip(metrics, _resolve(registry, metrics, "trajectory", entry)))
    for name, ev in evaluators.items():
        if "step" not in ev.modes:
            raise EvaluatorError(
                f"{entry}: metric {name!r} scores rollouts only; run with --bclone-mode "
                "rollout or leave it out of the step-mode metrics"
            )
    # one built-in trajectory_score and one task_completion take the fused pass (a second instance,
    # e.g. under another policy, and custom evaluators take the general path)
    ts_name: str | None = None
    tc_name: str | None = None
    general: list[str] = []
    for name, ev in evaluators.items():
        if type(ev) is TrajectoryScore and ts_name is None:
            ts_name = name
        elif type(ev) is TaskCompletion and tc_name is None:
            tc_name = name
        else:
            general.append(name)
    tc: TaskCompletion | None = evaluators[tc_name] if tc_name is not None else None
    cols: dict[str, list[float]] = {name: [] for name in metrics}
    kept: dict[str, list[Score]] = {name: [] for name in general}
    ts_add = cols[ts_name].append if ts_name is not None else None
    tc_add = cols[tc_name].append if tc_name is not None else None
    fused = _FusedTrajectories(ts_add is not None, tc)
    with _cyclic_gc_paused():
        for group in groups:
            if not group:
                _check_group(group, entry)  # raises
            trajectory = group[0][0].trajectory
            steps: list[Step] | None = None
            if ts_add is not None or tc_add is not None:
                got = fused.group(trajectory, group)
                if got is None:  # a malformed group (raises) or hand-built points: the general path
                    _check_group(group, entry)
                    steps = [Step(p, a) for p, a in group if a is not None]
                    if ts_name is not None and ts_add is not None:
                        ts_add(_checked(ts_name, trajectory.id, evaluators[ts_name].score_trajectory,
                                        trajectory, steps).value)
                    if tc_name is not None and tc_add is not None:
                        tc_add(_checked(tc_name, trajectory.id, evaluators[tc_name].score_trajectory,
                                        trajectory, steps).value)
                else:
                    if ts_add is not None:
                        ts_add(got[0])
                    if tc_add is not None:
                        tc_add(got[1])
            if general:
                if steps is None:
                    _check_group(group, entry)
                    steps = [Step(p, a) for p, a in group if a is not None]
                for name in general:
                    score = _checked(name, trajectory.id, evaluators[name].score_trajectory, trajectory, steps)
                    cols[name].append(score.value)
                    kept[name].append(score)
    values = {name: np.array(cols[name], dtype=np.float64) for name in metrics}
    return TrajectoryColumns(tuple(metrics), values, groups, evaluators, kept)


class _FusedTrajectories:
    """``trajectory_score`` (step mode) and ``task_completion`` of one trajectory in one pass over
    its steps, without reasons; the same values as their ``score_trajectory``.

    Each step is first told apart as *the expert's own calls* (the same action, or the same calls in
    the same order with equal plain arguments, see :func:`_plain`): then its credit is 1 and its
    call keys are the expert's, computed once per load. Otherwise the agent's arguments are
    normalised once, for both metrics. With an expected outcome only calls of a required tool
    need a key: any other call is beyond the requirements, so only its name matters (is it
    state-changing?).
    """

    __slots__ = ("changing", "plan_key", "tc", "want_ts")

    def __init__(self, want_ts: bool, tc: TaskCompletion | None) -> None:
        self.want_ts = want_ts
        self.tc = tc
        # is_state_changing per tool name, per toolset object (the metadata rule reads the toolset)
        self.changing: dict[Toolset, dict[str, bool]] = {}
        self.plan_key = _MemoKey("bclone.columns.task_fallback", tc.policy if tc is not None else None)

    def group(self, trajectory: Trajectory, group: Sequence[Pair]) -> tuple[float, float] | None:
        """``(trajectory_score, task_completion)`` of one whole, well-formed group (a metric not
        asked for is 0.0), or ``None`` when the group needs the general path: a malformed group
        (the caller's checks then raise) or points naming another trajectory object or message."""
        ex = _compile(trajectory)
        tools, actions, indexes, plain = ex[0], ex[1], ex[2], ex[3]
        if len(group) != len(indexes):
            return None
        want_ts = self.want_ts
        tc = self.tc
        expected = trajectory.expected if tc is not None else None
        with_expected = expected is not None
        fallback = tc is not None and expected is None
        located: tuple[tuple[Hashable, ...], ...] = ()
        expert_counts: tuple[dict[Hashable, int], ...] = ()
        changing_only = False
        required: list[Hashable] = []
        required_names: frozenset[str] = frozenset()
        required_plain: tuple[tuple[str, Any, Hashable], ...] = ()
        if with_expected:
            required, required_names, required_plain = _required(trajectory, tools)
        if fallback:
            assert tc is not None
            located, expert_counts, changing_only = _fallback_plan(tc, trajectory, ex, self.plan_key)
        changing_of = self.changing.get(tools)
        if changing_of is None:
            changing_of = self.changing[tools] = {}
        credits: list[float] = []
        credit = credits.append
        left: dict[Hashable, int] = {}  # with an expected outcome: the agent's keys of required tools, counted
        unwanted_call = False  # with an expected outcome: a state-changing call that no requirement can take
        texts: list[str] = []
        outputs = expected.outputs if expected is not None else ()
        reproduced = unwanted = 0
        i = 0
        for point, action in group:
            if point[0] is not trajectory or action is None or point[1] != i or point[2] != indexes[i]:
                return None
            step = i
            i += 1
            ecalls = actions[step].tool_calls
            calls = action.tool_calls
            n = len(calls)
            m = len(ecalls)
            # one call against one parseable call (single)
            single = n == 1 and m == 1 and ecalls[0].arguments is not None
            if single:
                call = calls[0]
                raw = call.arguments
                eraw = ecalls[0].arguments
                p = plain[step]
                same = call.name == ecalls[0].name and (
                    raw is eraw or (raw == eraw and (p if p is not None else _plain_at(ex, step))))
            elif n == 0 or m == 0:
                same = n == 0 and m == 0
            else:
                same = _same_calls(action, ex, step)
            if same:
                if want_ts:
                    credit(1.0)
                if with_expected and n and not unwanted_call:
                    for j, ecall in enumerate(ecalls):
                        name = ecall.name
                        if name in required_names:
                            # the expert's call is most often a required one itself: arguments
                            # == a required call's plain ones have its key (see _plain)
                            eargs = ecall.arguments
                            for rname, rargs, rkey in required_plain:
                                if rname == name and rargs == eargs:
                                    key = rkey
                                    break
                            else:
                                key = _keys_at(ex, step)[j]
                            left[key] = left.get(key, 0) + 1
                        elif _changing(tc, name, tools, changing_of):
                            unwanted_call = True
                elif fallback:
                    reproduced += len(located[i - 1])
            else:
                norms: list[NormArgs | None] | None = None
                if want_ts:
                    if single:
                        # CallMatch.credit of one pair: its agreement / 1
                        if calls[0].name == ecalls[0].name:
                            norms = [normalize_args(calls[0], tools)]
                            credit(arg_agreement(_norms_at(ex, step)[0], norms[0]) / 1)
                        else:
                            credit(0.0)
                    elif n == 0 or m == 0:
                        credit(0.0)
                    else:
                        norms = [normalize_args(c, tools) for c in calls]
                        credit(match_calls(actions[step].tool_names, _norms_at(ex, step), action.tool_names,
                                           tuple(norms)).credit)
                if with_expected:
                    if not unwanted_call:
                        for j, c in enumerate(calls):
                            if c.name in required_names:
                                a = norms[j] if norms is not None else normalize_args(c, tools)
                                if a is not None:
                                    key = (c.name, frozenset(a.items()))  # call_key, inlined
                                    left[key] = left.get(key, 0) + 1
                                    continue
                            # not a required tool, or unparseable (a unique key): beyond the requirements
                            if _changing(tc, c.name, tools, changing_of):
                                unwanted_call = True
                elif fallback:
                    # With the expert's state-changing calls required (changing_only), only the
                    # agent's state-changing calls can reproduce one or be unwanted: a key holds
                    # its tool name, so a read-only call neither matches such a key nor takes one
                    # a state-changing call could. With all the expert's calls required (it
                    # changed nothing), every agent call may reproduce one, and each
                    # state-changing call is unwanted (the expert made none at any step).
                    here: dict[Hashable, int] = {}
                    expert_here = dict(expert_counts[i - 1]) if changing_only else {}
                    for j, c in enumerate(calls):
                        chg = _changing(tc, c.name, tools, changing_of)
                        if not chg and changing_only:
                            continue
                        a = norms[j] if norms is not None else normalize_args(c, tools)
                        if a is None:
                            if chg:
                                unwanted += 1  # a unique key: never the expert's, never located
                            continue
                        key = (c.name, frozenset(a.items()))
                        here[key] = here.get(key, 0) + 1
                        if expert_here.get(key, 0) > 0:
                            expert_here[key] -= 1
                        elif chg:
                            unwanted += 1
                    for key in located[i - 1]:
                        if here.get(key, 0) > 0:
                            here[key] -= 1
                            reproduced += 1
            if outputs and action.text:
                texts.append(action.text)
        ts_value = min(1.0, sum(credits) / len(credits)) if want_ts and credits else 1.0
        tc_value = 1.0
        if with_expected:
            tc_value = _outcome_value(tc, tools, required, left, unwanted_call, outputs, texts, changing_of)
        elif fallback:
            total = sum(len(here) for here in located) + unwanted
            tc_value = reproduced / total if total else 1.0
        return ts_value, tc_value


def _changing(tc: TaskCompletion | None, name: str, tools: Toolset, cache: dict[str, bool]) -> bool:
    """``tc.policy.is_state_changing(name, tools)``, remembered per toolset."""
    hit = cache.get(name)
    if hit is None:
        assert tc is not None
        hit = cache[name] = tc.policy.is_state_changing(name, tools)
    return hit


def _outcome_value(tc: TaskCompletion | None, tools: Toolset, required: Sequence[Hashable],
                   left: dict[Hashable, int], unwanted_call: bool, outputs: Sequence[str], texts: list[str],
                   changing_of: dict[str, bool]) -> float:
    """The binary rule of :meth:`TaskCompletion._outcome`: every ``required`` key among the agent's
    counted keys (those of required tools), none of the calls beyond the requirements
    state-changing (``unwanted_call``: one that no requirement could take; a key holds its tool
    name), every required output in the replies."""
    if unwanted_call:
        return 0.0
    for key in required:
        have = left.get(key, 0)
        if have > 0:
            left[key] = have - 1
        else:
            return 0.0
    for key, count in left.items():
        if count > 0 and _changing(tc, key[0], tools, changing_of):  # type: ignore[index]
            return 0.0
    if outputs:
        replies = normalize_text(" ".join(texts))
        for output in outputs:
            if normalize_text(output) not in replies:
                return 0.0
    return 1.0


def _required(trajectory: Trajectory, tools: Toolset
              ) -> tuple[list[Hashable], frozenset[str], tuple[tuple[str, Any, Hashable], ...]]:
    """The call keys of the expected outcome's required actions, their tool names, and
    ``(name, arguments, key)`` of those whose arguments are all :func:`_plain` (a call with ``==``
    arguments has the same key: the expert's copies of them need no normalising). Kept on the
    trajectory."""
    memo = trajectory.memo()
    hit = memo.get(_REQUIRED_KEY)
    if hit is None:
        assert trajectory.expected is not None
        actions = trajectory.expected.actions
        keys = [call_key(c.name, normalize_args(c, tools)) for c in actions]
        plain = tuple((c.name, c.arguments, k) for c, k in zip(actions, keys)
                      if c.arguments is not None and _plain_args(c.arguments))
        hit = memo[_REQUIRED_KEY] = (keys, frozenset(c.name for c in actions), plain)
    return hit


_REQUIRED_KEY = "bclone.columns.required"


def _fallback_plan(ev: TaskCompletion, trajectory: Trajectory, ex: _Expert, key: _MemoKey
                   ) -> tuple[tuple[tuple[Hashable, ...], ...], tuple[dict[Hashable, int], ...], bool]:
    """The requirements of :meth:`TaskCompletion.requirements` without an expected outcome (the
    expert's state-changing calls, or all its calls when it changed nothing), located as the
    general path locates them (first-come consumption of the expert's calls, step by step): the
    keys located at each step; the counts per step of the keys of the expert's required calls;
    whether only state-changing calls are required. Only required calls are keyed (a read-only
    call can match no state-changing requirement). Kept on the trajectory under ``key`` (per policy)."""
    memo = trajectory.memo()
    hit = memo.get(key)
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    tools = ex[0]
    compiled = ex[1]
    changing = ev.policy.is_state_changing
    calls = [(i, c) for i, action in enumerate(compiled) for c in action.tool_calls]
    required = [(i, c) for i, c in calls if changing(c.name, tools)]
    changing_only = bool(required)
    if not changing_only:
        required = calls
    counts: list[dict[Hashable, int]] = [{} for _ in compiled]
    keys: list[Hashable | None] = []
    for i, c in required:
        args = normalize_args(c, tools)
        if args is None:  # a unique key: never located (and never counted, as it equals nothing)
            keys.append(None)
            continue
        k = (c.name, frozenset(args.items()))  # call_key
        here = counts[i]
        here[k] = here.get(k, 0) + 1
        keys.append(k)
    left = [dict(c) for c in counts]
    located: list[list[Hashable]] = [[] for _ in compiled]
    for wanted in keys:
        if wanted is None:
            continue
        for i, here in enumerate(left):
            if here.get(wanted, 0) > 0:
                here[wanted] -= 1
                located[i].append(wanted)
                break
    plan = (tuple(tuple(at) for at in located), tuple(counts), changing_only)
    memo[key] = plan
    return plan
