"""The columnar fast path scores exactly as the general path: bit-identical values on generated actions."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_bclone.errors import EvaluatorError
from pytest_bclone.evaluators import (
    ActionMatch,
    DeadTool,
    EvaluatorRegistry,
    SafetyRefusal,
    StateChangePolicy,
    TaskCompletion,
    ToolArguments,
    ToolSelection,
    TrajectoryScore,
    default_registry,
    group_by_trajectory,
    score_steps,
    score_steps_columns,
    score_trajectories,
    score_trajectories_columns,
)
from pytest_bclone.records import Action, DecisionPoint, ExpectedOutcome, Score, ToolCall, Trajectory

from .evaluators_support import act, call, say, traj

STEP_METRICS = ["tool_selection", "tool_arguments", "action_match", "safety_refusal", "dead_tool"]
TRAJ_METRICS = ["trajectory_score", "task_completion"]


def _registry(compare_text: bool, policy: StateChangePolicy) -> EvaluatorRegistry:
    registry = EvaluatorRegistry()
    for ev in (ToolSelection(), ToolArguments(), ActionMatch(compare_text=compare_text), SafetyRefusal(policy),
               DeadTool(), TrajectoryScore(), TaskCompletion(policy)):
        registry.register(ev)
    return registry


class _AlsoTransfers(StateChangePolicy):
    """A policy whose own is_transfer also counts the tool ``a`` (the fast path must call it)."""

    def is_transfer(self, name: str) -> bool:
        return name == "a" or super().is_transfer(name)


REGISTRIES = [
    default_registry(),
    _registry(True, StateChangePolicy.with_overrides(state_changing=["find_user"], read_only=["modify_items"])),
    _registry(False, _AlsoTransfers()),
]

# --- generators -------------------------------------------------------------------------------------

NAMES = ["get_order_details", "find_user", "search_products", "cancel_pending_order", "modify_items",
         "transfer_to_human_agents", "a", "refund_v1"]  # refund_v1: not in the toolset (dead)
KEYS = ["order_id", "query", "limit", "include_archived", "sort", "item_ids", "reason", "p", "q"]
TEXTS = ["Sure, let me check.", "I'm sorry, but I can't process that refund.", "i cannot  CANCEL it",
         "Done: the refund of 1,000 USD is issued.", "", "against our policy"]

scalars = st.one_of(
    st.sampled_from([1, 1.0, 0, 0.0, True, False, None, 10, 10.0, 5, -0.0, 2.5]),
    st.sampled_from(["W1", "w1 ", " W1", "price", "Price", "x", "", "no longer needed"]),
    st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False, width=32),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["by", "asc", "k"]), inner, max_size=3)),
    max_leaves=6,
)
arg_dicts = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)


@st.composite
def tool_calls(draw: st.DrawFn) -> ToolCall:
    name = draw(st.sampled_from(NAMES))
    how = draw(st.sampled_from(["json", "json", "dict", "reordered", "bad", "array", "empty"]))
    if how == "bad":
        return ToolCall.parse(name, draw(st.sampled_from(["{bad", "{\"a\": ", "nul"])))
    if how == "array":
        return ToolCall.parse(name, "[1, 2]")
    if how == "empty":
        return ToolCall.parse(name, draw(st.sampled_from(["", "  ", None])))
    args = draw(arg_dicts)
    if how == "dict":
        return ToolCall.parse(name, args)
    if how == "reordered":
        return ToolCall.parse(name, json.dumps(dict(reversed(list(args.items())))))
    return ToolCall.parse(name, json.dumps(args))


@st.composite
def actions(draw: st.DrawFn) -> Action:
    n = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    calls = [draw(tool_calls()) for _ in range(n)]
    if n >= 2 and draw(st.booleans()):
        calls[1] = calls[0]  # a duplicate
    text = draw(st.sampled_from(TEXTS)) if n == 0 or draw(st.booleans()) else None
    return Action(tuple(calls), text or None)


def retyped(value: Any) -> Any:
    """An equal-looking value of another JSON type: 1 <-> true <-> 1.0, 0 <-> false, 5 <-> 5.0, 'W1' -> ' w1'."""
    if value is True or value is False:
        return int(value)
    if type(value) is int:
        return bool(value) if value in (0, 1) else float(value)
    if type(value) is float:
        return int(value) if value.is_integer() else value
    if type(value) is str:
        return f" {value.lower()}"
    if type(value) is list:
        return [retyped(v) for v in value]
    if type(value) is dict:
        return {k: retyped(v) for k, v in value.items()}
    return value


@st.composite
def variant(draw: st.DrawFn, expert: Action) -> Action:
    """An agent action: often a perturbation of the expert's, so matches and near matches are common."""
    how = draw(st.sampled_from(["same", "copy", "reorder", "drop", "extra", "argchange", "argdrop", "retype",
                                "name", "text", "fresh"]))
    calls = list(expert.tool_calls)
    if how == "same":
        return expert  # the very object (as the recorded expert agent may answer)
    if how == "copy":  # equal calls, re-sent as JSON (new objects, other key order)
        return Action(tuple(ToolCall.parse(c.name, json.dumps(dict(reversed(list((c.arguments or {}).items())))))
                            if c.arguments is not None else ToolCall.parse(c.name, c.raw_arguments)
                            for c in calls), expert.text)
    if how == "reorder":
        return Action(tuple(reversed(calls)), expert.text)
    if how == "drop" and calls:
        return Action(tuple(calls[1:]), expert.text)
    if how == "extra":
        return Action((*calls, draw(tool_calls())), expert.text)
    if how == "argchange" and calls and calls[0].arguments is not None:
        args = dict(calls[0].arguments)
        args[draw(st.sampled_from(KEYS))] = draw(json_values)
        return Action((ToolCall.parse(calls[0].name, json.dumps(args)), *calls[1:]), expert.text)
    if how == "retype" and calls:  # values equal under Python == but not always as JSON (true vs 1)
        return Action(tuple(ToolCall.parse(c.name, {k: retyped(v) for k, v in c.arguments.items()})
                            if c.arguments is not None else c for c in calls), expert.text)
    if how == "argdrop" and calls:  # a missing argument (or none at all)
        args = dict(calls[0].arguments or {})
        if args and draw(st.booleans()):
            args.pop(draw(st.sampled_from(sorted(args))))
        else:
            args = {}
        return Action((ToolCall.parse(calls[0].name, json.dumps(args)), *calls[1:]), expert.text)
    if how == "name" and calls:
        return Action((ToolCall.parse(draw(st.sampled_from(NAMES)), calls[0].raw_arguments), *calls[1:]), expert.text)
    if how == "text":
        return Action((), draw(st.sampled_from(TEXTS)) or None)
    return draw(actions())


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[Trajectory], list[tuple[Any, Action]]]:
    trajectories = []
    for t in range(draw(st.integers(1, 3))):
        experts = draw(st.lists(actions(), min_size=1, max_size=4))
        expected = None
        if draw(st.booleans()):
            required = draw(st.lists(tool_calls().filter(lambda c: c.arguments is not None), max_size=2))
            outputs = draw(st.lists(st.sampled_from(["refund of 1000 usd", "W1", "sorry"]), max_size=2))
            expected = ExpectedOutcome(tuple(ToolCall.parse(c.name, dict(c.arguments or {})) for c in required),
                                       tuple(outputs))
        trajectories.append(traj(*[x for e in experts for x in ("help me", e)], expected=expected, id=f"t{t}"))
    pairs = []
    for t in trajectories:
        for p in t.decision_points():
            pairs.append((p, draw(variant(p.expert_action))))
    return trajectories, pairs


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.sampled_from(range(len(REGISTRIES))))
def test_columns_equal_the_general_path_bit_for_bit(data: tuple[list[Trajectory], list[Any]], which: int) -> None:
    registry = REGISTRIES[which]
    _, pairs = data
    general = score_steps(registry, STEP_METRICS, pairs)
    columns = score_steps_columns(registry, STEP_METRICS, pairs)
    for metric in STEP_METRICS:
        got = columns.values[metric]
        assert len(got) == len(pairs)
        for i, score in enumerate(general[metric]):
            assert bits(float(got[i])) == bits(score.value), (metric, i, pairs[i], score)
    groups = group_by_trajectory(pairs)
    general_t = score_trajectories(registry, TRAJ_METRICS, groups)
    columns_t = score_trajectories_columns(registry, TRAJ_METRICS, groups)
    for metric in TRAJ_METRICS:
        for g, score in enumerate(general_t[metric]):
            assert bits(float(columns_t.values[metric][g])) == bits(score.value), (metric, g, groups[g], score)
    # the recorded expert against itself, through the cached parse
    recorded = [(p, p.expert_action) for p, _ in pairs]
    general = score_steps(registry, STEP_METRICS, recorded)
    columns = score_steps_columns(registry, STEP_METRICS, recorded)
    for metric in STEP_METRICS:
        assert [bits(float(v)) for v in columns.values[metric]] == [bits(s.value) for s in general[metric]], metric


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.sampled_from(range(len(REGISTRIES))),
       st.lists(st.sampled_from(STEP_METRICS), min_size=1, max_size=5, unique=True))
def test_any_subset_of_step_metrics_scores_as_the_general_path(
        data: tuple[list[Trajectory], list[Any]], which: int, metrics: list[str]) -> None:
    # The one pass skips the columns not asked for; a point naming another message than its
    # step's (built by hand) takes the general path for it.
    registry = REGISTRIES[which]
    _, pairs = data
    p, action = pairs[-1]
    pairs = [*pairs, (DecisionPoint(p.trajectory, p.step, 0), action)]  # message 0: the user's turn
    general = score_steps(registry, metrics, pairs)
    columns = score_steps_columns(registry, metrics, pairs)
    assert list(columns.values) == metrics
    for metric in metrics:
        assert [bits(float(v)) for v in columns.values[metric]] == [bits(s.value) for s in general[metric]], metric


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.sampled_from(range(len(REGISTRIES))), st.sampled_from([TRAJ_METRICS, TRAJ_METRICS[:1],
                                                                             TRAJ_METRICS[1:]]))
def test_trajectory_columns_equal_the_general_path_on_a_fresh_load(
        data: tuple[list[Trajectory], list[Any]], which: int, metrics: list[str]) -> None:
    # The trajectory pass first (nothing compiled yet, as after a load), each metric alone and both
    # together (they share one pass), for the agent and for the recorded expert against itself.
    registry = REGISTRIES[which]
    _, pairs = data
    recorded = [(p, p.expert_action) for p, _ in pairs]
    for these in (pairs, recorded):
        groups = group_by_trajectory(these)
        columns = score_trajectories_columns(registry, metrics, groups)
        general = score_trajectories(registry, metrics, groups)
        for metric in metrics:
            assert [bits(float(v)) for v in columns.values[metric]] == [bits(s.value) for s in general[metric]], (
                metric, groups)
    # then the step metrics, reading the per-step facts the trajectory pass filled in (a step
    # reads them in whichever order the passes came)
    steps = score_steps_columns(registry, STEP_METRICS, pairs)
    general_steps = score_steps(registry, STEP_METRICS, pairs)
    for metric in STEP_METRICS:
        assert [bits(float(v)) for v in steps.values[metric]] == [bits(s.value) for s in general_steps[metric]], metric


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NAMES), arg_dicts, st.data())
def test_single_calls_with_lookalike_values_score_alike(name: str, args: dict[str, Any], data: st.DataObject) -> None:
    # The single-call fast path compares raw arguments by == where that is safe; values that are
    # equal in Python but not as JSON (true vs 1, 0 vs false) must still be told apart.
    t = traj("hi", act(ToolCall.parse(name, json.dumps(args))), id="single")
    p = t.decision_points()[0]
    how = data.draw(st.sampled_from(["retype", "copy", "dict"]))
    sent = {k: retyped(v) for k, v in args.items()} if how == "retype" else dict(args)
    agent = Action((ToolCall.parse(name, sent if how != "copy" else json.dumps(sent)),))
    for registry in REGISTRIES:
        general = score_steps(registry, STEP_METRICS, [(p, agent)])
        columns = score_steps_columns(registry, STEP_METRICS, [(p, agent)])
        for metric in STEP_METRICS:
            assert bits(float(columns.values[metric][0])) == bits(general[metric][0].value), (metric, args, sent)
        groups = group_by_trajectory([(p, agent)])
        general_t = score_trajectories(registry, ["trajectory_score"], groups)["trajectory_score"][0]
        assert bits(float(score_trajectories_columns(registry, ["trajectory_score"], groups).values[
            "trajectory_score"][0])) == bits(general_t.value)


def test_reasons_on_demand_are_the_general_scores() -> None:
    t = traj("Cancel W1", act(call("get_order_details", order_id="W1")),
             act(call("cancel_pending_order", order_id="W1", reason="x")), say("Done."))
    points = t.decision_points()
    agent = [act(call("get_order_details", order_id="W2")), say("no"), say("done.")]
    pairs = list(zip(points, agent))
    general = score_steps(REGISTRIES[0], STEP_METRICS, pairs)
    columns = score_steps_columns(REGISTRIES[0], STEP_METRICS, pairs)
    for metric in STEP_METRICS:
        assert [columns.score(metric, i) for i in range(3)] == general[metric]
    assert columns.reason("tool_arguments", 0) == (
        "0.00 argument agreement: get_order_details: order_id: expected 'W1' got 'W2'")


def test_custom_and_subclassed_evaluators_take_the_general_path() -> None:
    class Strict(ToolSelection):
        name = "strict_selection"

        def score_step(self, step: Any) -> Score:
            return Score(0.25, "custom")

    registry = EvaluatorRegistry()
    registry.register(ToolSelection())
    registry.register(Strict())
    t = traj("hi", act(call("get_order_details", order_id="W1")))
    pairs = [(t.decision_points()[0], act(call("get_order_details", order_id="W1")))]
    columns = score_steps_columns(registry, ["tool_selection", "strict_selection"], pairs)
    assert columns.values["tool_selection"].tolist() == [1.0]
    assert columns.values["strict_selection"].tolist() == [0.25]
    assert columns.score("strict_selection", 0).reason == "custom"


def test_columns_refuse_what_the_general_path_refuses() -> None:
    t = traj("hi", act(call("get_order_details", order_id="W1")), say("ok"))
    p0, p1 = t.decision_points()
    with pytest.raises(EvaluatorError, match=r"item t1#0 has no action"):
        score_steps_columns(REGISTRIES[0], STEP_METRICS, [(p0, None)])
    with pytest.raises(EvaluatorError, match=r"got steps \[1\] of 2"):
        score_trajectories_columns(REGISTRIES[0], TRAJ_METRICS, [[(p1, say("ok"))]])
    with pytest.raises(EvaluatorError, match="trajectory-level metric"):
        score_steps_columns(REGISTRIES[0], ["task_completion"], [])


def test_each_recorded_action_is_parsed_once_per_trajectory(monkeypatch: pytest.MonkeyPatch) -> None:
    t = traj("hi", act(call("get_order_details", order_id="W1")), say("ok"), id="once")
    parsed = []
    original = Action.from_message.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Action], message: Any) -> Action:
        parsed.append(message)
        return original(cls, message)  # type: ignore[no-any-return]

    monkeypatch.setattr(Action, "from_message", classmethod(counting))
    points = t.decision_points()
    for _ in range(3):  # clone, expert, a repeat: every pass reads the recording
        score_steps_columns(REGISTRIES[0], STEP_METRICS, [(p, say("x")) for p in points])
        score_steps(REGISTRIES[0], STEP_METRICS, [(p, say("x")) for p in points])
        assert [p.expert_action for p in points] == [p.expert_action for p in points]
    assert len(parsed) == 2
    assert points[0].expert_action is points[0].expert_action


# --- the load's parse of a recorded action -----------------------------------------------------------

argument_texts = st.one_of(
    arg_dicts.map(json.dumps),
    st.tuples(st.sampled_from(["", " ", "\n", "\ufeff", "x"]), arg_dicts.map(json.dumps),
              st.sampled_from(["", " ", "\t\n", "}", "{", ",", "x", "{}", "[]"])).map("".join),
    st.sampled_from(["{", "{}", "{ }", "{bad", "{\"a\": ", "{\"a\": NaN}", "{\"a\": 1, \"a\": 2}", "[1]", "1",
                     "null", "", "  ", "\"{}\""]),
    st.text(max_size=12).map(lambda s: "{" + s),
    st.none(),
    arg_dicts,
)


@settings(max_examples=400, deadline=None)
@given(argument_texts, st.sampled_from([None, "", "call_7"]), st.sampled_from([None, "", "ok", [{"text": "a"}]]))
def test_a_recorded_action_reads_as_tool_call_parse_reads_it(raw: Any, call_id: str | None, content: Any) -> None:
    # Action.from_message scans a plain JSON object text directly and fills the records through
    # their slots; every field must be what ToolCall.parse and the dataclass constructors give.
    message = {"role": "assistant", "content": content,
               "tool_calls": [{"id": call_id, "function": {"name": "f", "arguments": raw}}]}
    got = Action.from_message(message)
    want = ToolCall.parse("f", raw, call_id or "call_0")
    (call_got,) = got.tool_calls
    assert call_got == want
    assert call_got.arguments == want.arguments and call_got.error == want.error
    assert type(call_got) is ToolCall and type(got) is Action
    assert got.text == (("a" if isinstance(content, list) else content) or None)
    assert got == Action((want,), got.text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(NAMES), arg_dicts, st.sampled_from(["retype", "copy", "dict"]), st.booleans())
def test_expert_copies_of_required_calls_with_lookalike_values_complete_alike(
        name: str, args: dict[str, Any], how: str, same_object: bool) -> None:
    # A step repeating the expert's calls takes the key of a required call whose arguments are ==
    # and plain; the expert's true must not pass for the requirement's 1 (nor 0 for false).
    sent = {k: retyped(v) for k, v in args.items()} if how == "retype" else dict(args)
    expert = act(ToolCall.parse(name, sent if how == "dict" else json.dumps(sent)))
    expected = ExpectedOutcome((ToolCall.parse(name, dict(args)),), ())
    t = traj("hi", expert, expected=expected, id="required")
    p = t.decision_points()[0]
    agent = p.expert_action if same_object else Action.from_message(p.expert_action.to_message())
    for registry in REGISTRIES:
        groups = group_by_trajectory([(p, agent)])
        general = score_trajectories(registry, TRAJ_METRICS, groups)
        columns = score_trajectories_columns(registry, TRAJ_METRICS, groups)
        for metric in TRAJ_METRICS:
            assert bits(float(columns.values[metric][0])) == bits(general[metric][0].value), (metric, args, sent)
