"""The distribution-shift detector: fit on the train split, flag out-of-distribution eval states."""

from __future__ import annotations

import random

import pytest

from pytest_bclone.errors import EvaluatorError
from pytest_bclone.evaluators import DistributionShift
from pytest_bclone.evaluators.shift import state_tokens
from pytest_bclone.records import State, Trajectory

from .evaluators_support import act, call, say, traj

INTENTS = [
    ("Where is my order {n}? It has not arrived yet.", "get_order_details"),
    ("I want to cancel order {n}, I no longer need it.", "cancel_pending_order"),
    ("Can you find shoes in size {n} for me?", "search_products"),
    ("My email is user{n}@example.com, please look up my account.", "find_user"),
]


def intent_trajectory(i: int, intent: int, split: str = "train") -> Trajectory:
    text, tool = INTENTS[intent]
    return traj(text.format(n=1000 + i), act(call(tool, order_id=f"W{i}")), say("Done."), id=f"{split}{i}", split=split)


@pytest.fixture(scope="module")
def detector() -> DistributionShift:
    rng = random.Random(0)
    train = [intent_trajectory(i, rng.randrange(len(INTENTS))) for i in range(400)]
    return DistributionShift(quantile=0.95).fit(train)


def test_states_like_the_train_split_are_in_distribution(detector: DistributionShift) -> None:
    # new ids, same intents: digit runs fold to 0, so they match train states exactly
    evals = [p for i in range(8) for p in intent_trajectory(5000 + i, i % 4, "eval").decision_points()]
    flags = detector.flag(evals)
    assert all(not f.is_ood for f in flags)
    assert max(f.distance for f in flags) < 1e-5


def test_unseen_states_are_flagged_with_their_distance(detector: DistributionShift) -> None:
    novel = traj("Mein Paket wurde beschädigt, ich möchte eine Entschädigung und einen Anwalt.",
                 act(call("file_legal_claim", case="x")), say("ok"), id="odd", split="eval")
    flags = detector.flag(novel.decision_points())
    assert flags[0].is_ood and flags[0].distance > 0.5
    assert flags[1].is_ood  # the tool called so far (file_legal_claim) was never seen either
    assert detector.threshold is not None and flags[0].distance > detector.threshold
    assert flags[0].to_dict() == {"distance": flags[0].distance, "is_ood": True}


def test_threshold_is_the_quantile_of_train_leave_one_out_distances() -> None:
    # three distinct train states; each one's nearest other state is at a known cosine distance
    train = [traj("alpha beta", say("a"), id="a"), traj("alpha gamma", say("b"), id="b"),
             traj("delta epsilon", say("c"), id="c")]
    strict = DistributionShift(quantile=1.0).fit(train)
    assert strict.threshold == pytest.approx(1.0)  # 'delta epsilon' shares nothing with the others
    half = DistributionShift(quantile=0.5).fit(train)
    assert half.threshold == pytest.approx(0.5)  # 'alpha beta' vs 'alpha gamma': cos = 1/2
    # a state repeated in train has an identical neighbour: distance 0
    assert DistributionShift(quantile=1.0).fit([train[0], train[0]]).threshold == pytest.approx(0.0, abs=1e-6)


def test_state_representation_and_inputs() -> None:
    t = traj("Refund order W123 now", act(call("get_order_details", order_id="W1")), "and W999?", say("ok"))
    tokens = state_tokens(t.messages, t.decision_points()[1].message_index)
    assert tokens == ["and", "w0", "\x01get_order_details", "\x02get_order_details"]
    detector = DistributionShift().fit([t])
    p = t.decision_points()[1]
    as_state = State(t.id, 1, t.messages[: p.message_index], t.tools)
    assert detector.distances([as_state]) == pytest.approx(detector.distances([p]))
    assert detector.flag([]) == []


def test_misuse_is_explained() -> None:
    with pytest.raises(EvaluatorError, match="call fit\\(train_trajectories\\) before flag"):
        DistributionShift().flag([])
    with pytest.raises(EvaluatorError, match="fit got no train states"):
        DistributionShift().fit([])
    with pytest.raises(EvaluatorError, match="quantile 1.5 must be in \\(0, 1\\]"):
        DistributionShift(quantile=1.5)


def test_results_are_deterministic_across_instances() -> None:
    rng = random.Random(1)
    train = [intent_trajectory(i, rng.randrange(4)) for i in range(50)]
    evals = [p for t in (intent_trajectory(9, 2, "eval"), traj("something else entirely", say("x")))
             for p in t.decision_points()]
    first = DistributionShift(max_reference=20, seed=3).fit(train)
    second = DistributionShift(max_reference=20, seed=3).fit(train)
    assert first.threshold == second.threshold
    assert first.flag(evals) == second.flag(evals)
