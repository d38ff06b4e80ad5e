"""Trajectory metrics (trajectory_score, task_completion, step_count), the registry and the entry points."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest

from pytest_bclone.errors import EvaluatorError
from pytest_bclone.evaluators import (
    MATCH_MODES,
    EvaluatorRegistry,
    Step,
    TrajectoryScore,
    default_registry,
    group_by_trajectory,
    score_episodes,
    score_steps,
    score_trajectories,
)
from pytest_bclone.records import Action, Episode, ExpectedOutcome, Score, Trajectory

from .evaluators_support import act, call, say, traj

REGISTRY = default_registry()

LOOKUP = act(call("get_order_details", order_id="W1"))
FIND = act(call("find_user", email="a@b.c"))
CANCEL = act(call("cancel_pending_order", order_id="W1", reason="no longer needed"))
DONE = say("Your order W1 is cancelled; the refund of 1,000 USD takes 5 days.")


def refund_trajectory(expected: ExpectedOutcome | None = None) -> Trajectory:
    return traj("Cancel order W1 please.", FIND, LOOKUP, CANCEL, DONE, expected=expected)


EXPECTED = ExpectedOutcome((call("cancel_pending_order", order_id="W1", reason="no longer needed"),),
                           ("refund of 1000 usd",))


def step_mode(t: Trajectory, agent: Sequence[Action], metrics: list[str]) -> dict[str, Score]:
    pairs = list(zip(t.decision_points(), agent))
    return {m: v[0] for m, v in score_trajectories(REGISTRY, metrics, group_by_trajectory(pairs)).items()}


def rollout(t: Trajectory, agent: Sequence[Action], metrics: list[str], **kw: object) -> dict[str, Score]:
    episode = Episode(t.id, tuple(agent), (), **kw)  # type: ignore[arg-type]
    return {m: v[0] for m, v in score_episodes(REGISTRY, metrics, [(t, episode)]).items()}


# --- trajectory_score ---------------------------------------------------------------------------

def test_trajectory_score_step_mode_is_the_mean_step_score() -> None:
    t = refund_trajectory()
    expert = [FIND, LOOKUP, CANCEL, DONE]
    assert step_mode(t, expert, ["trajectory_score"])["trajectory_score"].value == 1.0
    # step 1 wrong tool (0), step 2 half the arguments (0.5): (1 + 0 + 0.5 + 1) / 4
    clone = [FIND, say("hm"), act(call("cancel_pending_order", order_id="W1", reason="changed mind")), DONE]
    score = step_mode(t, clone, ["trajectory_score"])["trajectory_score"]
    assert score.value == pytest.approx(0.625)
    assert "lowest: step 1 (0.00: expert called get_order_details; agent replied with text" in score.reason


@pytest.mark.parametrize(("agent", "expected"), [
    # expert sequence: find_user, get_order_details, cancel_pending_order
    ([FIND, LOOKUP, CANCEL, DONE], {"strict": 1, "unordered": 1, "subset": 1, "superset": 1}),
    ([LOOKUP, FIND, CANCEL, DONE], {"strict": 2 / 3, "unordered": 1, "subset": 1, "superset": 1}),
    ([FIND, CANCEL, DONE], {"strict": 2 / 3, "unordered": 2 / 3, "subset": 1, "superset": 2 / 3}),
    ([FIND, LOOKUP, LOOKUP, CANCEL, DONE], {"strict": 3 / 4, "unordered": 3 / 4, "subset": 3 / 4, "superset": 1}),
    ([DONE], {"strict": 0, "unordered": 0, "subset": 1, "superset": 0}),
])
def test_trajectory_score_rollout_match_modes(agent: list[Action], expected: dict[str, float]) -> None:
    t = refund_trajectory()
    for mode in MATCH_MODES:
        registry = EvaluatorRegistry()
        registry.register(TrajectoryScore(mode))
        score = score_episodes(registry, ["trajectory_score"], [(t, Episode(t.id, tuple(agent), ()))])
        assert score["trajectory_score"][0].value == pytest.approx(expected[mode]), mode


def test_trajectory_score_rollout_compares_arguments_unless_told_not_to() -> None:
    t = refund_trajectory()
    agent = (FIND, act(call("get_order_details", order_id="W9")), CANCEL, DONE)
    strict = TrajectoryScore().score_episode(t, Episode(t.id, agent, ()))
    assert strict.value == pytest.approx(2 / 3)
    assert "missing get_order_details(order_id='W1')" in strict.reason
    assert "extra get_order_details(order_id='W9')" in strict.reason
    assert TrajectoryScore(compare_arguments=False).score_episode(t, Episode(t.id, agent, ())).value == 1.0
    with pytest.raises(EvaluatorError, match="unknown match mode 'fuzzy'; use one of strict, unordered"):
        TrajectoryScore("fuzzy")


# --- task_completion ------------------------------------------------------------------------------

def test_task_completion_rollout_met() -> None:
    t = refund_trajectory(EXPECTED)
    score = rollout(t, [FIND, LOOKUP, CANCEL, DONE], ["task_completion"], final_state_ok=True)["task_completion"]
    assert score.value == 1.0
    assert "final-state check passed" in score.reason


@pytest.mark.parametrize(("agent", "kw", "problem"), [
    ([FIND, LOOKUP, DONE], {}, "missing cancel_pending_order(order_id='W1', reason='no longer needed')"),
    ([act(call("cancel_pending_order", order_id="W2", reason="no longer needed")), DONE], {}, "missing"),
    ([CANCEL, say("Done.")], {}, "output 'refund of 1000 usd' not in the replies"),
    ([CANCEL, act(call("modify_items", order_id="W1", item_ids=[1])), DONE], {},
     "unwanted state-changing call modify_items"),
    ([CANCEL, DONE], {"final_state_ok": False}, "the environment's final-state check failed"),
])
def test_task_completion_rollout_not_met(agent: list[Action], kw: dict[str, object], problem: str) -> None:
    score = rollout(refund_trajectory(EXPECTED), agent, ["task_completion"], **kw)["task_completion"]
    assert score.value == 0.0
    assert problem in score.reason


def test_task_completion_rollout_normalises_required_arguments() -> None:
    # a required action written with an explicit default equals the agent's call without it
    expected = ExpectedOutcome((call("search_products", query="Shoes", limit=10),), ())
    t = traj("Find shoes", act(call("search_products", query="shoes")), say("Here."), expected=expected)
    assert rollout(t, [act(call("search_products", query=" SHOES")), say("ok")],
                   ["task_completion"])["task_completion"].value == 1.0


def test_task_completion_without_expected_outcome_requires_the_experts_state_changes() -> None:
    t = refund_trajectory(None)
    met = rollout(t, [CANCEL, say("ok")], ["task_completion"])["task_completion"]
    assert met.value == 1.0 and "the expert's state-changing calls" in met.reason
    assert rollout(t, [FIND, LOOKUP, say("ok")], ["task_completion"])["task_completion"].value == 0.0
    # read-only trajectory: every expert call is required
    reads = traj("Where is W1?", LOOKUP, say("Shipped."))
    assert rollout(reads, [say("Shipped.")], ["task_completion"])["task_completion"].value == 0.0
    assert rollout(reads, [LOOKUP, say("ok")], ["task_completion"])["task_completion"].value == 1.0


def test_task_completion_step_mode_scores_the_expected_outcome_over_all_decision_points() -> None:
    t = refund_trajectory(EXPECTED)
    expert = [FIND, LOOKUP, CANCEL, DONE]
    full = step_mode(t, expert, ["task_completion"])["task_completion"]
    assert full.value == 1.0
    assert full.reason == "met (expected outcome, step mode): 1 required action(s), 1 output(s)"
    # the cancel is made, the output is missing from every reply
    no_output = step_mode(t, [FIND, LOOKUP, CANCEL, say("Done.")], ["task_completion"])["task_completion"]
    assert no_output.value == 0.0
    assert "output 'refund of 1000 usd' not in the replies" in no_output.reason
    # a requirement met at another decision point than the expert's still counts (same rule as rollouts)
    early = step_mode(t, [CANCEL, LOOKUP, say("ok"), DONE], ["task_completion"])["task_completion"]
    assert early.value == 1.0
    # a second cancel is a state change beyond the required ones
    twice = step_mode(t, [FIND, CANCEL, CANCEL, DONE], ["task_completion"])["task_completion"]
    assert twice.value == 0.0
    assert "unwanted state-changing call cancel_pending_order" in twice.reason


def test_task_completion_step_mode_scores_the_recorded_expert_against_the_expected_outcome() -> None:
    # Same reference for both agents: the recorded expert's own actions are scored against the
    # expected outcome exactly as a clone's are, so an expert run that missed it is not 100.
    expected = ExpectedOutcome((call("cancel_pending_order", order_id="W1", reason="no longer needed"),
                                call("modify_items", order_id="W1", item_ids=["1"])), ())
    missed = refund_trajectory(expected)  # the expert never modified the items
    met = traj("Cancel order W1 please.", FIND, LOOKUP, CANCEL, DONE, id="t2", expected=EXPECTED)
    points = missed.decision_points() + met.decision_points()
    recorded = [(p, p.expert_action) for p in points]  # the recorded expert, as replay serves it
    scores = score_trajectories(REGISTRY, ["task_completion"], group_by_trajectory(recorded))["task_completion"]
    assert [s.value for s in scores] == [0.0, 1.0]
    assert "missing modify_items(item_ids=['1'], order_id='W1')" in scores[0].reason
    # a clone doing what the expected outcome asks scores above the expert on that trajectory
    fixed = [FIND, LOOKUP, act(call("cancel_pending_order", order_id="W1", reason="no longer needed"),
                                 call("modify_items", order_id="W1", item_ids=["1"])), DONE]
    assert step_mode(missed, fixed, ["task_completion"])["task_completion"].value == 1.0


def test_task_completion_step_mode_without_expected_outcome_locates_the_experts_calls() -> None:
    t = refund_trajectory()  # no expected outcome: the expert's state-changing calls are required
    assert step_mode(t, [FIND, LOOKUP, CANCEL, DONE], ["task_completion"])["task_completion"].value == 1.0
    missed = step_mode(t, [FIND, LOOKUP, say("ok"), DONE], ["task_completion"])["task_completion"]
    assert missed.value == 0.0
    assert "step 2: not reproduced cancel_pending_order" in missed.reason
    # an unwanted state change counts against it: 1 reproduced / (1 located + 1 unwanted)
    unwanted = step_mode(t, [FIND, CANCEL, CANCEL, DONE], ["task_completion"])["task_completion"]
    assert unwanted.value == pytest.approx(1 / 2)
    assert "step 1: unwanted state-changing call cancel_pending_order" in unwanted.reason


def test_step_count() -> None:
    t = refund_trajectory()
    assert rollout(t, [FIND, LOOKUP, CANCEL, DONE], ["step_count"])["step_count"].value == 1.0
    slow = rollout(t, [FIND, LOOKUP, LOOKUP, LOOKUP, LOOKUP, LOOKUP, CANCEL, DONE], ["step_count"])["step_count"]
    assert slow.value == 0.5 and slow.reason == "agent took 8 steps, expert 4"
    assert rollout(t, [CANCEL, DONE], ["step_count"])["step_count"].value == 1.0
    with pytest.raises(EvaluatorError, match="'step_count' scores rollouts only; run with --bclone-mode rollout"):
        step_mode(t, [FIND, LOOKUP, CANCEL, DONE], ["step_count"])


# --- registry ---------------------------------------------------------------------------------------

def test_builtin_metrics_levels_and_binary_flags() -> None:
    assert REGISTRY.names() == (
        "action_match", "dead_tool", "prompt_injection", "reasoning_quality", "safety_refusal", "step_count",
        "task_completion", "tool_arguments", "tool_selection", "toxicity", "trajectory_score",
    )
    assert REGISTRY.partition(["tool_selection", "task_completion", "toxicity"]) == {
        "step": ["tool_selection"], "trajectory": ["task_completion"], "judge": ["toxicity"]}
    assert {n for n in REGISTRY.names() if REGISTRY.binary(n)} == {"action_match", "dead_tool", "safety_refusal"}


def test_unknown_metric_names_it_lists_the_known_and_says_how_to_register() -> None:
    with pytest.raises(EvaluatorError) as err:
        score_steps(REGISTRY, ["tool_selectoin"], [])
    message = str(err.value)
    assert "unknown evaluator 'tool_selectoin' (from score_steps); did you mean 'tool_selection'?" in message
    assert "Known evaluators: action_match, dead_tool," in message
    assert "def pytest_bclone_register_evaluators(registry):" in message
    assert "registry.register(MyEvaluator())" in message


class Politeness:
    name = "politeness"
    binary = True

    def score_step(self, step: Step) -> Score:
        ok = "please" in (step.action.text or "").lower()
        return Score(1.0 if ok else 0.0, "polite" if ok else "no please")


def test_custom_evaluator_registration_and_replacement() -> None:
    registry = default_registry()
    registry.register(Politeness())
    p = traj("hi", say("Hello")).decision_points()[0]
    out = score_steps(registry, ["politeness", "action_match"], [(p, say("Please wait")), (p, say("Wait"))])
    assert [s.value for s in out["politeness"]] == [1.0, 0.0]
    with pytest.raises(EvaluatorError, match="an evaluator named 'politeness' is already registered"):
        registry.register(Politeness())
    registry.register(TrajectoryScore("unordered"), replace=True)
    assert registry.get("trajectory_score").match == "unordered"  # type: ignore[union-attr]


@pytest.mark.parametrize(("bad", "message"), [
    (object(), "its name None must be a string usable as a metric name"),
    (type("Nameless", (), {"name": "my metric", "binary": True, "score_step": lambda s, x: None})(),
     "its name 'my metric' must be"),
    (type("NoBinary", (), {"name": "x", "score_step": lambda s, x: None})(), "set its attribute binary = True"),
    (type("NoMethod", (), {"name": "x", "binary": False})(), "it has none of score_step(step)"),
    (type("NoModes", (), {"name": "x", "binary": False, "score_episode": lambda s, t, e: None})(),
     "its modes None must be a non-empty set of 'step' (score_trajectory) and 'rollout' (score_episode)"),
    (type("HalfDone", (), {"name": "x", "binary": False, "modes": frozenset({"step", "rollout"}),
                           "score_episode": lambda s, t, e: None})(),
     "modes ['rollout', 'step'] need score_trajectory"),
])
def test_bad_registrations_are_refused_with_the_fix(bad: object, message: str) -> None:
    with pytest.raises(EvaluatorError) as err:
        EvaluatorRegistry().register(bad)  # type: ignore[type-var]
    assert message in str(err.value)


def test_misbehaving_evaluators_are_named() -> None:
    class Crashing(Politeness):
        name = "crashing"

        def score_step(self, step: Step) -> Score:
            return Score(1.5, "too good")

    class Floaty(Politeness):
        name = "floaty"

        def score_step(self, step: Step) -> Score:
            return 0.5  # type: ignore[return-value]

    registry = EvaluatorRegistry()
    registry.register(Crashing())
    registry.register(Floaty())
    p = traj("hi", say("Hello")).decision_points()[0]
    with pytest.raises(EvaluatorError, match=r"evaluator 'crashing' raised ValueError\(.*outside \[0, 1\].* on item t1#0"):
        score_steps(registry, ["crashing"], [(p, say("x"))])
    with pytest.raises(EvaluatorError, match=r"evaluator 'floaty' returned 0.5 \(float\) on item t1#0"):
        score_steps(registry, ["floaty"], [(p, say("x"))])


# --- entry-point input checks ---------------------------------------------------------------------

def test_entry_points_refuse_bad_input_with_the_fix() -> None:
    t = refund_trajectory()
    points = t.decision_points()
    with pytest.raises(EvaluatorError, match="metric 'task_completion' is a trajectory-level metric; score it with "
                                             "score_trajectories or score_episodes"):
        score_steps(REGISTRY, ["task_completion"], [])
    with pytest.raises(EvaluatorError, match="metrics must be a list of names, got the string 'tool_selection'"):
        score_steps(REGISTRY, "tool_selection", [])
    with pytest.raises(EvaluatorError, match="tool_selection listed more than once"):
        score_steps(REGISTRY, ["tool_selection", "tool_selection"], [])
    with pytest.raises(EvaluatorError, match="item t1#0 has no action"):
        score_steps(REGISTRY, ["tool_selection"], [(points[0], None)])  # type: ignore[list-item]
    with pytest.raises(EvaluatorError, match=r"got steps \[0, 2\] of 4; pass every decision point in order"):
        score_trajectories(REGISTRY, ["trajectory_score"], [[(points[0], FIND), (points[2], CANCEL)]])
    with pytest.raises(EvaluatorError, match="has step\\(s\\) more than once"):
        group_by_trajectory([(points[0], FIND), (points[0], FIND)])
    with pytest.raises(EvaluatorError, match="episode t1@r1 failed \\(HTTP 500\\); leave failed episodes out"):
        score_episodes(REGISTRY, ["step_count"], [(t, Episode(t.id, (), (), error="HTTP 500", repeat=1))])
    with pytest.raises(EvaluatorError, match="episode of 'other' paired with trajectory 't1'"):
        score_episodes(REGISTRY, ["step_count"], [(t, Episode("other", (), ()))])


def test_group_by_trajectory_keeps_first_appearance_order_and_sorts_steps() -> None:
    a, b = traj("x", FIND, LOOKUP, id="a"), traj("y", DONE, id="b")
    pa, pb = a.decision_points(), b.decision_points()
    groups = group_by_trajectory([(pa[1], LOOKUP), (pb[0], DONE), (pa[0], FIND)])
    assert [[p.key for p, _ in g] for g in groups] == [["a#0", "a#1"], ["b#0"]]


def test_importing_the_package_stays_cheap() -> None:
    code = ("import sys, pytest_bclone.evaluators as e; e.default_registry(); "
            "print(sorted(m for m in ('litellm', 'pyarrow', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
