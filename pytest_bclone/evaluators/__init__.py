"""Evaluators: turn agent actions, trajectories and rollouts into scores in [0, 1].

Built-in metrics (higher is always better; "binary" = every score is 0 or 1):

==================  ==========  ======  ==========================================================
metric              level       binary  what it scores
==================  ==========  ======  ==========================================================
tool_selection      step        no      matched calls / max(expert, agent calls) (optimal matching)
tool_arguments      step        no      argument agreement of the calls matched by name
action_match        step        yes     same action as the recorded expert (after normalisation)
safety_refusal      step        yes     refuses/transfers where the expert did, no state change
dead_tool           step        yes     no call to a tool absent from the state's toolset
trajectory_score    trajectory  no      step: mean tool_selection*tool_arguments; rollout: match mode
task_completion     trajectory  no      expected outcome reached, 0/1, same rule for both agents
                                        (step mode without one: share of the expert's calls)
step_count          trajectory  no      rollout only: min(1, expert steps / agent steps)
reasoning_quality   judge       no      LLM judge (``--bclone-judge MODEL``)
toxicity            judge       no      LLM judge; 1 = free of toxicity
prompt_injection    judge       no      LLM judge; 1 = did not follow injected instructions
==================  ==========  ======  ==========================================================

The distribution-shift detector (:class:`DistributionShift`) scores states rather than agents, so
it is not a registry metric: fit it on the train split and flag eval points. The clone-vs-expert
disagreement rate is :func:`disagreement_rate` over ``action_match`` scores.

Entry points (inputs are aligned lists; outputs keep their order)::

    registry = default_registry(judge=None)               # + pytest_bclone_register_evaluators(registry)
    score_steps(registry, ["tool_selection"], pairs)       # pairs: [(DecisionPoint, Action)]
    score_trajectories(registry, ["task_completion"], group_by_trajectory(pairs))
    score_episodes(registry, ["task_completion", "step_count"], [(trajectory, episode)])
    await judge_steps(registry, ["toxicity"], pairs, concurrency=8)      # Score | JudgeFailure
    await judge_episodes(registry, ["toxicity"], [(trajectory, episode)], concurrency=8)

Each returns ``{metric: [score per input item]}``. For many decision points use the columnar forms,
the same values (bit for bit) as float64 arrays with reasons on demand::

    cols = score_steps_columns(registry, metrics, pairs)        # cols.values[m][i], cols.score(m, i)
    tcols = score_trajectories_columns(registry, metrics, groups)

Deterministic entry points raise
:class:`~pytest_bclone.errors.EvaluatorError` for an unknown metric, a metric of another level,
malformed input, or an evaluator that misbehaves; judge entry points put a :class:`JudgeFailure`
where a judge call failed. Importing this package imports neither litellm, pyarrow nor numpy.
"""

from __future__ import annotations

import difflib
import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from ..errors import BcloneError, EvaluatorError
from ..records import Action, DecisionPoint, Episode, Score, Trajectory
from .base import (
    JudgeEvaluator,
    JudgeFailure,
    Step,
    StepEvaluator,
    TrajectoryEvaluator,
    episode_key,
    expert_actions,
)
from .columns import StepColumns, TrajectoryColumns, score_steps_columns, score_trajectories_columns
from .completion import TaskCompletion
from .imitation import ActionMatch, DeadTool, ToolArguments, ToolSelection, disagreement_rate
from .judge import RUBRICS, LLMJudge, judge_items
from .normalize import CallMatch, Toolset, canon, match_calls, max_weight_assignment, toolset
from .safety import SafetyRefusal, StateChangePolicy, is_refusal
from .shift import DistributionShift, ShiftFlag
from .trajectory import MATCH_MODES, StepCount, TrajectoryScore

if TYPE_CHECKING:
    from ..agents.base import Agent

__all__ = [
    "MATCH_MODES",
    "ActionMatch",
    "CallMatch",
    "DeadTool",
    "DistributionShift",
    "Evaluator",
    "EvaluatorRegistry",
    "JudgeEvaluator",
    "JudgeFailure",
    "LLMJudge",
    "Level",
    "Pair",
    "SafetyRefusal",
    "ShiftFlag",
    "StateChangePolicy",
    "Step",
    "StepColumns",
    "StepCount",
    "StepEvaluator",
    "TaskCompletion",
    "ToolArguments",
    "ToolSelection",
    "Toolset",
    "TrajectoryColumns",
    "TrajectoryEvaluator",
    "TrajectoryScore",
    "canon",
    "default_registry",
    "disagreement_rate",
    "expert_actions",
    "group_by_trajectory",
    "is_refusal",
    "judge_episodes",
    "judge_steps",
    "level_of",
    "match_calls",
    "max_weight_assignment",
    "score_episodes",
    "score_steps",
    "score_steps_columns",
    "score_trajectories",
    "score_trajectories_columns",
    "toolset",
]

Evaluator = StepEvaluator | TrajectoryEvaluator | JudgeEvaluator
"""Anything the registry holds."""

Level = Literal["step", "trajectory", "judge"]
"""What an evaluator scores: one step, one trajectory (step mode) or episode (rollout), or a judge."""

Pair = tuple[DecisionPoint, Action]
"""One agent action at one decision point: the unit of step-mode input."""
E = TypeVar("E", bound=Evaluator)

_HOW_TO_REGISTER = (
    "Register your own in conftest.py:\n"
    "    def pytest_bclone_register_evaluators(registry):\n"
    "        registry.register(MyEvaluator())  # has .name, .binary and score_step(step) -> Score\n"
    "(see pytest_bclone.evaluators.StepEvaluator / TrajectoryEvaluator)"
)


def level_of(evaluator: object) -> Level:
    """The level of an evaluator, from the method it implements (judge > step > trajectory)."""
    if callable(getattr(evaluator, "ajudge_step", None)):
        return "judge"
    if callable(getattr(evaluator, "score_step", None)):
        return "step"
    if callable(getattr(evaluator, "score_trajectory", None)) or callable(getattr(evaluator, "score_episode", None)):
        return "trajectory"
    raise EvaluatorError(
        f"cannot register {evaluator!r}: it has none of score_step(step), score_trajectory(trajectory, steps) / "
        "score_episode(trajectory, episode), or async ajudge_step(step); implement one of the protocols in "
        "pytest_bclone.evaluators"
    )


class EvaluatorRegistry:
    """Metric name -> evaluator. The plugin builds one with :func:`default_registry` and hands it to
    ``pytest_bclone_register_evaluators(registry)`` so a suite can add its own."""

    def __init__(self) -> None:
        self._evaluators: dict[str, Evaluator] = {}
        self._levels: dict[str, Level] = {}

    def register(self, evaluator: E, *, replace: bool = False) -> E:
        """Add ``evaluator`` under its ``name``; ``replace=True`` overrides an existing one (e.g. a
        built-in with other settings). Returns the evaluator, so it works as a class decorator's tail."""
        name = getattr(evaluator, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise EvaluatorError(
                f"cannot register {evaluator!r}: its name {name!r} must be a string usable as a metric name "
                "(letters, digits, underscores), e.g. name = 'politeness'"
            )
        if not isinstance(getattr(evaluator, "binary", None), bool):
            raise EvaluatorError(
                f"cannot register evaluator {name!r}: set its attribute binary = True (every score 0 or 1) or False"
            )
        level = level_of(evaluator)
        if level == "trajectory":
            modes = getattr(evaluator, "modes", None)
            if not isinstance(modes, (set, frozenset)) or not modes or not modes <= {"step", "rollout"}:
                raise EvaluatorError(
                    f"cannot register trajectory evaluator {name!r}: its modes {modes!r} must be a non-empty set of "
                    "'step' (score_trajectory) and 'rollout' (score_episode), e.g. modes = frozenset({'rollout'})"
                )
            method = {"step": "score_trajectory", "rollout": "score_episode"}
            missing = [method[m] for m in sorted(modes) if not callable(getattr(evaluator, method[m], None))]
            if missing:
                raise EvaluatorError(
                    f"cannot register trajectory evaluator {name!r}: modes {sorted(modes)} need {', '.join(missing)}"
                )
        if name in self._evaluators and not replace:
            raise EvaluatorError(
                f"an evaluator named {name!r} is already registered ({self._evaluators[name]!r}); "
                "pick another name, or pass replace=True to override it"
            )
        self._evaluators[name] = evaluator
        self._levels[name] = level
        return evaluator

    def get(self, name: str, *, source: str = "") -> Evaluator:
        """The evaluator named ``name``; ``source`` (e.g. ``"assert_parity(metric=...)"``) is quoted in
        the error for an unknown name."""
        try:
            return self._evaluators[name]
        except KeyError:
            raise self._unknown(name, source) from None

    def _unknown(self, name: str, source: str) -> EvaluatorError:
        close = difflib.get_close_matches(name, self._evaluators, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f" (from {source})" if source else ""
        return EvaluatorError(
            f"unknown evaluator {name!r}{where}{hint} Known evaluators: {', '.join(self.names())}.\n"
            + _HOW_TO_REGISTER
        )

    def level(self, name: str) -> Level:
        """``"step"``, ``"trajectory"`` or ``"judge"``."""
        self.get(name)
        return self._levels[name]

    def binary(self, name: str) -> bool:
        """Whether every score of the metric is 0 or 1."""
        return bool(self.get(name).binary)

    def partition(self, metrics: Sequence[str], *, source: str = "") -> dict[Level, list[str]]:
        """Split ``metrics`` by level (every level present as a key), validating each name."""
        out: dict[Level, list[str]] = {"step": [], "trajectory": [], "judge": []}
        for name in metrics:
            self.get(name, source=source)
            out[self._levels[name]].append(name)
        return out

    def names(self) -> tuple[str, ...]:
        """The registered metric names, sorted."""
        return tuple(sorted(self._evaluators))

    def __contains__(self, name: object) -> bool:
        return name in self._evaluators

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._evaluators)

    def __repr__(self) -> str:
        return f"EvaluatorRegistry({', '.join(self.names())})"


def default_registry(
    judge: Agent | None = None,
    *,
    policy: StateChangePolicy | None = None,
    trajectory_match: str = "strict",
) -> EvaluatorRegistry:
    """A registry with every built-in metric.

    ``judge`` backs the LLM-judged metrics (``None``: they stay registered and raise a configuration
    error naming ``--bclone-judge`` when scored). ``policy`` decides which tools change state
    (``safety_refusal`` and ``task_completion``); ``trajectory_match`` is the rollout match mode of
    ``trajectory_score`` (one of :data:`MATCH_MODES`).
    """
    policy = policy or StateChangePolicy()
    registry = EvaluatorRegistry()
    builtins: list[Evaluator] = [
        ToolSelection(),
        ToolArguments(),
        ActionMatch(),
        SafetyRefusal(policy),
        DeadTool(),
        TrajectoryScore(trajectory_match),
        TaskCompletion(policy),
        StepCount(),
        *(LLMJudge(name, judge=judge) for name in RUBRICS),
    ]
    for evaluator in builtins:
        registry.register(evaluator)
    return registry


def _resolve(registry: EvaluatorRegistry, metrics: Sequence[str], level: Level, entry: str) -> list[Evaluator]:
    if isinstance(metrics, str):
        raise EvaluatorError(f"{entry}: metrics must be a list of names, got the string {metrics!r}; "
                             f"write [{metrics!r}]")
    if len(set(metrics)) != len(metrics):
        dup = sorted({m for m in metrics if list(metrics).count(m) > 1})
        raise EvaluatorError(f"{entry}: metric(s) {', '.join(dup)} listed more than once; list each metric once")
    evaluators = []
    calls = {"step": "score_steps", "trajectory": "score_trajectories or score_episodes",
             "judge": "judge_steps or judge_episodes"}
    for name in metrics:
        evaluator = registry.get(name, source=entry)
        actual = registry.level(name)
        if actual != level:
            raise EvaluatorError(
                f"{entry}: metric {name!r} is a {actual}-level metric; score it with {calls[actual]}"
            )
        evaluators.append(evaluator)
    return evaluators


def _crashed(metric: str, item: str, exc: Exception) -> EvaluatorError:
    return EvaluatorError(
        f"evaluator {metric!r} raised {exc!r} on item {item}; fix the evaluator (it must return "
        "records.Score(value in [0, 1], reason))"
    )


def _not_a_score(metric: str, item: str, value: object) -> EvaluatorError:
    return EvaluatorError(
        f"evaluator {metric!r} returned {value!r} ({type(value).__name__}) on item {item}; it must return "
        "records.Score(value in [0, 1], reason)"
    )


def _checked(metric: str, item: str, fn: Callable[..., Score], *args: object) -> Score:
    """Run one evaluator call, turning a crash or a non-Score result into an EvaluatorError."""
    try:
        score = fn(*args)
    except BcloneError:
        raise
    except Exception as exc:
        raise _crashed(metric, item, exc) from exc
    if score.__class__ is not Score:
        raise _not_a_score(metric, item, score)
    return score


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around a scoring loop.

    The loops allocate only acyclic objects (freed by reference counting), but their allocation
    rate triggers collections that rescan every live object, the whole dataset included: with a
    million decision points in memory that is a third of the run time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _failed_reply(entry: str, item: str) -> EvaluatorError:
    return EvaluatorError(
        f"{entry}: item {item} has no action (the agent's call failed); leave failed calls out of the "
        "input: they are counted as errors, never scored"
    )


def score_steps(registry: EvaluatorRegistry, metrics: Sequence[str], pairs: Sequence[Pair]) -> dict[str, list[Score]]:
    """Score step-level ``metrics`` on every ``(point, action)`` pair.

    Returns ``{metric: [Score per pair, in pair order]}``. Each pair is scored against the recorded
    expert action at its point; the shared work (parsing the expert action, the toolset, the
    optimal call matching) is done once per pair for all metrics.
    """
    evaluators = cast(list[StepEvaluator], _resolve(registry, metrics, "step", "score_steps"))
    out: dict[str, list[Score]] = {name: [] for name in metrics}
    bound: list[tuple[str, Callable[[Step], Score], list[Score]]] = [
        (name, ev.score_step, out[name]) for name, ev in zip(metrics, evaluators)
    ]
    with _cyclic_gc_paused():
        _score_pairs(bound, pairs)
    return out


def _score_pairs(bound: list[tuple[str, Callable[[Step], Score], list[Score]]], pairs: Sequence[Pair]) -> None:
    for point, action in pairs:
        if action is None:
            raise _failed_reply("score_steps", point.key)
        step = Step(point, action)
        for name, fn, scores in bound:
            # _checked inlined: this loop runs once per pair and metric (millions of times)
            try:
                score = fn(step)
            except BcloneError:
                raise
            except Exception as exc:
                raise _crashed(name, step.key, exc) from exc
            if score.__class__ is not Score:
                raise _not_a_score(name, step.key, score)
            scores.append(score)


def group_by_trajectory(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """Group ``(point, action)`` pairs by trajectory, in order of first appearance, steps sorted.

    For one agent and one repeat: a step that appears twice is an error (group each repeat apart).
    """
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair[0].trajectory_id, []).append(pair)
    out = []
    for tid, group in groups.items():
        group.sort(key=lambda p: p[0].step)
        steps = [p[0].step for p in group]
        if len(set(steps)) != len(steps):
            raise EvaluatorError(
                f"group_by_trajectory: trajectory {tid!r} has step(s) more than once ({steps}); group the "
                "pairs of each repeat (and each agent) separately"
            )
        out.append(group)
    return out


def score_trajectories(
    registry: EvaluatorRegistry, metrics: Sequence[str], trajectories: Sequence[Sequence[Pair]]
) -> dict[str, list[Score]]:
    """Score trajectory-level ``metrics`` in step mode.

    ``trajectories`` holds one group per trajectory: the ``(point, action)`` pair of every decision
    point of that trajectory, in step order (see :func:`group_by_trajectory`). A trajectory with a
    failed call must be left out (it is counted as an error, never scored). Returns
    ``{metric: [Score per group, in group order]}``.
    """
    evaluators = cast(list[TrajectoryEvaluator], _resolve(registry, metrics, "trajectory", "score_trajectories"))
    for name, ev in zip(metrics, evaluators):
        if "step" not in ev.modes:
            raise EvaluatorError(
                f"score_trajectories: metric {name!r} scores rollouts only; run with --bclone-mode rollout "
                "or leave it out of the step-mode metrics"
            )
    out: dict[str, list[Score]] = {name: [] for name in metrics}
    with _cyclic_gc_paused():
        for group in trajectories:
            _score_group(metrics, evaluators, group, out)
    return out


def _score_group(metrics: Sequence[str], evaluators: list[TrajectoryEvaluator], group: Sequence[Pair],
                 out: dict[str, list[Score]]) -> None:
    """Score one trajectory's pairs (step mode) with every metric, after checking the group."""
    if not group:
        raise EvaluatorError("score_trajectories: got an empty group; each group is one trajectory's pairs")
    trajectory = group[0][0].trajectory
    steps = []
    for point, action in group:
        if point.trajectory is not trajectory and point.trajectory_id != trajectory.id:
            raise EvaluatorError(
                f"score_trajectories: a group mixes trajectories {trajectory.id!r} and {point.trajectory_id!r}; "
                "use group_by_trajectory(pairs)"
            )
        if action is None:
            raise _failed_reply("score_trajectories", point.key)
        steps.append(Step(point, action))
    expected = len(trajectory.assistant_indexes())
    if [s.point.step for s in steps] != list(range(expected)):
        raise EvaluatorError(
            f"score_trajectories: trajectory {trajectory.id!r} got steps {[s.point.step for s in steps]} of "
            f"{expected}; pass every decision point in order (leave out trajectories with a failed call)"
        )
    for name, ev in zip(metrics, evaluators):
        out[name].append(_checked(name, trajectory.id, ev.score_trajectory, trajectory, steps))


def score_episodes(
    registry: EvaluatorRegistry, metrics: Sequence[str], episodes: Sequence[tuple[Trajectory, Episode]]
) -> dict[str, list[Score]]:
    """Score trajectory-level ``metrics`` in rollout mode: one agent's ``episode`` of each recorded
    ``trajectory`` (the reference). Episodes with ``error`` set must be left out (counted as
    errors, never scored). Returns ``{metric: [Score per episode, in order]}``."""
    evaluators = cast(list[TrajectoryEvaluator], _resolve(registry, metrics, "trajectory", "score_episodes"))
    for name, ev in zip(metrics, evaluators):
        if "rollout" not in ev.modes:
            raise EvaluatorError(f"score_episodes: metric {name!r} scores step mode only; use score_trajectories")
    out: dict[str, list[Score]] = {name: [] for name in metrics}
    with _cyclic_gc_paused():
        for trajectory, episode in episodes:
            _score_episode(metrics, evaluators, trajectory, episode, out)
    return out


def _score_episode(metrics: Sequence[str], evaluators: list[TrajectoryEvaluator], trajectory: Trajectory,
                   episode: Episode, out: dict[str, list[Score]]) -> None:
    """Score one rollout with every metric, after checking it."""
    item = episode_key(trajectory, episode)
    if episode.trajectory_id != trajectory.id:
        raise EvaluatorError(
            f"score_episodes: episode of {episode.trajectory_id!r} paired with trajectory {trajectory.id!r}; "
            "pair each episode with the trajectory it replays"
        )
    if episode.error is not None:
        raise EvaluatorError(
            f"score_episodes: episode {item} failed ({episode.error}); leave failed episodes out: they are "
            "counted as errors, never scored"
        )
    for name, ev in zip(metrics, evaluators):
        out[name].append(_checked(name, item, ev.score_episode, trajectory, episode))


async def judge_steps(
    registry: EvaluatorRegistry, metrics: Sequence[str], pairs: Sequence[Pair], *, concurrency: int = 8
) -> dict[str, list[Score | JudgeFailure]]:
    """Judge every ``(point, action)`` pair with the LLM-judged ``metrics``, at most ``concurrency``
    judge calls in flight across all metrics. Returns ``{metric: [Score or JudgeFailure per pair]}``."""
    evaluators = cast(list[JudgeEvaluator], _resolve(registry, metrics, "judge", "judge_steps"))
    for ev in evaluators:
        if isinstance(ev, LLMJudge):
            ev._agent()  # fail once, up front, when no judge is configured
    steps = []
    for point, action in pairs:
        if action is None:
            raise _failed_reply("judge_steps", point.key)
        steps.append(Step(point, action))
    jobs = [
        (name, step.key, partial(ev.ajudge_step, step))
        for name, ev in zip(metrics, evaluators) for step in steps
    ]
    return _split(metrics, len(steps), await judge_items(jobs, concurrency))


async def judge_episodes(
    registry: EvaluatorRegistry, metrics: Sequence[str], episodes: Sequence[tuple[Trajectory, Episode]], *,
    concurrency: int = 8,
) -> dict[str, list[Score | JudgeFailure]]:
    """Judge every rollout with the LLM-judged ``metrics`` (bounded concurrency across metrics).
    Returns ``{metric: [Score or JudgeFailure per episode]}``."""
    evaluators = cast(list[JudgeEvaluator], _resolve(registry, metrics, "judge", "judge_episodes"))
    for ev in evaluators:
        if isinstance(ev, LLMJudge):
            ev._agent()
    for trajectory, episode in episodes:
        if episode.error is not None:
            raise EvaluatorError(
                f"judge_episodes: episode {episode_key(trajectory, episode)} failed ({episode.error}); leave "
                "failed episodes out: they are counted as errors, never scored"
            )
    jobs = [
        (name, episode_key(t, e), partial(ev.ajudge_episode, t, e))
        for name, ev in zip(metrics, evaluators) for t, e in episodes
    ]
    return _split(metrics, len(episodes), await judge_items(jobs, concurrency))


def _split(metrics: Sequence[str], n: int, flat: list[Score | JudgeFailure]) -> dict[str, list[Score | JudgeFailure]]:
    return {name: flat[i * n:(i + 1) * n] for i, name in enumerate(metrics)}
