"""Tests of the anytime-valid sequential parity gate (pytest_bclone.sequential)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_bclone.errors import GateError
from pytest_bclone.parity import parity_verdict
from pytest_bclone.sequential import (
    BETS,
    FUTILITY_SHARE,
    WEIGHTS,
    SequentialParity,
    SequentialPlan,
    SequentialState,
    identical_clone_passes,
    log_wealth,
    log_wealth_path,
    round_size,
    units_for_identical_clone,
)

RANK = {"fail": 0, "continue": 1, "pass": 2}


def run(diffs: list[float], *, within: float = 3.0, rounds: int = 10, **kw: object) -> list[SequentialState]:
    """Feed ``diffs`` in ``rounds`` equal rounds (stopping once settled); the state after each."""
    gate = SequentialParity(within, total_units=len(diffs), **kw)  # type: ignore[arg-type]
    size = math.ceil(len(diffs) / rounds)
    states = []
    for start in range(0, len(diffs), size):
        states.append(gate.update(diffs[start:start + size]))
        if states[-1].settled:
            break
    return states


def units_at(rng: np.random.Generator, n: int, gap: float, steps: int = 10) -> list[float]:
    """Trajectory-mean differences of a clone with true mean gap ``-gap`` (fraction), clustered steps.

    Each trajectory has a loss propensity (Beta), so its steps' losses are correlated; gains make
    the outcomes paired but not identical.
    """
    loss_p = rng.beta(0.5, 0.5 * (1 - (gap + 0.02)) / (gap + 0.02), n)
    losses = rng.binomial(steps, np.clip(loss_p, 0, 1)) / steps
    gains = rng.binomial(steps, 0.02, n) / steps
    return (gains - losses).tolist()


# -- validity under optional stopping ----------------------------------------------------------


def test_the_sequence_covers_the_true_mean_at_every_look() -> None:
    """400 seeded cohorts at the margin, ten looks each: the sequence ever excludes the true mean <= 5%.

    The looks are computed with ``log_wealth`` on all cohorts at once (the function the gate
    uses); a sample of cohorts is run through :class:`SequentialParity` itself and must agree.
    """
    rng = np.random.default_rng(11)
    runs, n, threshold = 400, 300, math.log(40)
    x = np.array([units_at(rng, n, 0.03) for _ in range(runs)])
    true_y = (1 - 0.03) / 2  # the generator's mean on the [0, 1] scale
    y = (x + 1) / 2
    ends = range(30, n + 1, 30)
    below = np.zeros(runs, dtype=bool)  # the sequence's lower bound rose above the truth
    above = np.zeros(runs, dtype=bool)
    for t in ends:
        below |= log_wealth(y[:, :t], true_y, BETS, up=True) >= threshold
        above |= log_wealth(y[:, :t], true_y, BETS, up=False) >= threshold
    assert (below | above).mean() <= 0.05
    assert below.mean() <= 0.025  # a clone at the margin passes at most alpha/2 of the time
    # the truth is the margin here, so the gate passes exactly on "below" and fails on "above"
    for i in range(0, runs, 20):
        status = run(x[i].tolist(), within=3.0)[-1].status
        assert {"pass": bool(below[i]), "fail": bool(above[i]), "continue": not (below[i] or above[i])}[status]


def test_peeking_at_the_fixed_n_interval_passes_too_often_where_the_sequence_does_not() -> None:
    """Why a sequence: ten looks at a fixed-n interval pass a clone at the margin more often."""
    rng = np.random.default_rng(5)
    runs, n = 200, 400
    diffs = np.where(rng.random((runs, n)) < 0.5 - 0.0075, 1.0, -1.0)  # +-1 units, true mean -1.5 points
    y = (diffs + 1) / 2
    seq = np.zeros(runs, dtype=bool)
    for t in range(40, n + 1, 40):
        seq |= log_wealth(y[:, :t], (1 - 0.015) / 2, BETS, up=True) >= math.log(40)
    peek = 0
    for r in range(runs):
        e = np.where(diffs[r] < 0, 1.0, 0.0)
        c = np.where(diffs[r] > 0, 1.0, 0.0)
        peek += any(parity_verdict("c", "m", e[:k], c[:k], within=1.5).status == "pass"
                    for k in range(40, n + 1, 40))
    assert seq.mean() <= 0.025
    assert peek / runs > 0.025  # the inflation the sequence avoids
    assert peek / runs > seq.mean()


def test_ville_bound_on_the_log_wealth_under_the_null() -> None:
    # Under mu = m exactly the mixture is a martingale: its running max crosses 2/alpha in at most
    # alpha/2 of runs, here measured on 4000 bounded paths of 200 units.
    rng = np.random.default_rng(3)
    y = rng.beta(2.0, 2.0, (4000, 200))  # mean 0.5
    crossed = np.zeros(4000, dtype=bool)
    for t in range(10, 201, 10):
        crossed |= log_wealth(y[:, :t], 0.5, (0.5, 0.25, 0.1), up=True) >= math.log(40)
    assert crossed.mean() <= 0.025


# -- the stop rules ------------------------------------------------------------------------------


def test_a_clear_pass_stops_early_and_a_clear_fail_stops_earlier() -> None:
    good = run([0.0] * 2000)
    assert good[-1].status == "pass" and good[-1].units_seen < 1000
    assert good[-1].low is not None and good[-1].low > -3
    assert good[-1].p_value is not None and good[-1].p_value <= 0.025
    bad = run([-1.0 if i % 5 == 0 else 0.0 for i in range(2000)])
    assert bad[-1].status == "fail" and bad[-1].units_seen == 200
    assert bad[-1].high is not None and bad[-1].high < -3
    assert "lies wholly below -3 pts after 200 of 2000 trajectories" in bad[-1].reason


def test_zero_regression_cohorts_stop_at_the_first_regression_and_never_pass_early() -> None:
    gate = SequentialParity(0, total_units=100, zero_regression=True)
    state = gate.update([0.0] * 40, [0] * 40)
    assert state.status == "continue" and "a pass needs all" in state.reason
    state = gate.update([0.0] * 10, [0] * 9 + [1])
    assert state.status == "fail" and state.units_seen == 50 and state.regressions == 1
    assert gate.update([0.0] * 10).status == "fail"  # settled: further rounds are ignored
    clean = SequentialParity(0, total_units=20)
    assert clean.zero_regression
    state = clean.update([0.0] * 20, [0] * 20)
    assert state.status == "continue" and state.complete
    assert "decide with the fixed-n rule" in state.reason


def test_an_unsettled_full_cohort_is_left_to_the_fixed_n_rule() -> None:
    states = run([0.0] * 50)  # 50 equal trajectories cannot show a 3-point margin
    assert [s.status for s in states] == ["continue"] * 10
    assert states[-1].complete and not states[-2].complete
    assert states[-1].units_seen == states[-1].total_units == 50


def test_min_units_holds_back_a_pass_but_not_a_fail() -> None:
    gate = SequentialParity(50, total_units=100, min_units=30)
    assert gate.update([0.0] * 20).status == "continue"
    assert gate.update([0.0] * 10).status == "pass"
    failing = SequentialParity(3, total_units=100, min_units=30)
    assert failing.update([-1.0] * 10).status == "fail"


def test_bad_inputs_name_the_value_and_the_fix() -> None:
    with pytest.raises(GateError, match=r"unit difference 1.5 is outside \[-1, 1\]"):
        SequentialParity(3, total_units=10).update([1.5])
    with pytest.raises(GateError, match=r"11 units seen but total_units=10"):
        SequentialParity(3, total_units=10).update([0.0] * 11)
    with pytest.raises(GateError, match=r"within=-1: the margin is the number of points"):
        SequentialParity(-1, total_units=10)
    with pytest.raises(GateError, match=r"total_units=0: expected the cohort's number of trajectories"):
        SequentialParity(3, total_units=0)
    with pytest.raises(GateError, match=r"confidence=1.5: expected a level strictly between 0.5 and 1"):
        SequentialParity(3, 1.5, total_units=10)


# -- monotone, order-free, consistent --------------------------------------------------------------

unit = st.sampled_from([-1.0, -0.5, -0.1, 0.0, 0.1, 0.5, 1.0]) | st.floats(-1.0, 1.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(unit, min_size=1, max_size=300), st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0]), st.data())
def test_raising_any_unit_never_makes_a_look_worse(diffs: list[float], within: float, more: st.DataObject) -> None:
    raised = [min(1.0, x + more.draw(st.sampled_from([0.0, 0.0, 0.05, 0.5, 2.0]))) for x in diffs]
    rounds = more.draw(st.integers(1, 10))
    low, high = run(diffs, within=within, rounds=rounds, min_units=1), run(raised, within=within, rounds=rounds,
                                                                               min_units=1)
    for i, a in enumerate(low):
        b = high[min(i, len(high) - 1)]  # the raised run may have stopped earlier, with a pass
        assert RANK[b.status] >= RANK[a.status], (a.reason, b.reason)
        if len(high) > i:
            assert a.low is not None and b.low is not None and b.low >= a.low - 1e-9
            assert a.high is not None and b.high is not None and b.high >= a.high - 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(unit, min_size=2, max_size=200), st.randoms(use_true_random=False))
def test_order_within_a_round_does_not_matter(diffs: list[float], rnd: random.Random) -> None:
    shuffled = list(diffs)
    rnd.shuffle(shuffled)
    a = SequentialParity(3, total_units=len(diffs)).update(diffs)
    b = SequentialParity(3, total_units=len(diffs)).update(shuffled)
    assert a == b


@settings(max_examples=80, deadline=None)
@given(st.lists(unit, min_size=10, max_size=300), st.sampled_from([1.0, 3.0, 10.0]))
def test_pass_means_the_p_value_and_the_sequence_clear_the_margin(diffs: list[float], within: float) -> None:
    for s in run(diffs, within=within, min_units=1):
        assert s.p_value is not None and s.low is not None and s.high is not None
        assert (s.status == "pass") == (s.p_value <= 0.025)
        # the bounds are found on a grid of 0.05 points; the decisions are exact
        if s.status == "pass":
            assert s.low >= -within - 0.05
        if s.status == "fail":
            assert s.high <= -within + 0.05


# -- the mixture's weights ------------------------------------------------------------------------


def test_weights_halve_from_the_largest_bet_and_sum_to_one() -> None:
    assert math.isclose(math.fsum(WEIGHTS), 1.0)
    assert all(math.isclose(a, 2 * b) for a, b in itertools.pairwise(WEIGHTS))
    assert BETS[0] == max(BETS) and len(WEIGHTS) == len(BETS)


def test_the_weighted_mixture_is_the_weighted_mean_of_the_bets_products() -> None:
    y = np.random.default_rng(3).uniform(0, 1, (4, 50))
    per_bet = np.array([[np.prod(1 + (c / 0.49) * (row - 0.49)) for c in BETS] for row in y])
    assert np.allclose(log_wealth(y, 0.49, up=True), np.log(per_bet @ np.asarray(WEIGHTS)))
    equal = log_wealth(y, 0.49, BETS, up=True, weights=[1.0] * len(BETS))
    assert np.allclose(equal, np.log(per_bet.mean(axis=1)))


def test_the_path_is_log_wealth_at_every_look() -> None:
    y = np.random.default_rng(4).uniform(0, 1, (3, 97))
    ends = [10, 20, 55, 97]
    for up in (True, False):
        path = log_wealth_path(y, 0.485, ends, up=up)
        assert np.allclose(path, np.stack([log_wealth(y[:, :e], 0.485, up=up) for e in ends], axis=1))


def test_bad_weights_are_one_clear_error() -> None:
    with pytest.raises(GateError, match=r"weights=\(1.0, -1.0\): expected one positive weight per bet \(2\)"):
        SequentialParity(3, total_units=10, bets=(0.5, 0.2), weights=(1.0, -1.0))
    with pytest.raises(GateError, match="one positive weight per bet"):
        SequentialParity(3, total_units=10, bets=(0.5, 0.2), weights=(1.0,))


# -- cohorts too small for parity -----------------------------------------------------------------


@pytest.mark.parametrize("within", [0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0])
def test_no_cohort_passes_below_the_information_floor(within: float) -> None:
    """t ties cannot tell an equal clone from one losing whole trajectories at rate within/100
    (which ties all t with probability (1 - w)^t): no valid level-2.5% rule passes on fewer
    than log(0.025) / log(1 - w) of them. The fixed-n rule must respect the floor, and the
    smallest passing size is where passing starts for good."""
    floor = math.log(0.025) / math.log(1 - within / 100)
    needed = units_for_identical_clone(within)
    assert needed >= floor
    assert identical_clone_passes(needed, within) and not identical_clone_passes(needed - 1, within)
    assert all(identical_clone_passes(k, within) for k in range(needed, needed + 40))


def test_known_sizes_an_identical_clone_needs() -> None:
    # about 470 / within: 156 trajectories at 3 points, 476 at 1 point
    assert [units_for_identical_clone(w) for w in (1.0, 3.0, 5.0)] == [476, 156, 92]
    assert units_for_identical_clone(0.0) == 1  # zero regression: ties always pass


def test_the_plan_is_fixed_by_size_margin_and_level() -> None:
    small = SequentialPlan.for_cohort(109, 3.0)
    assert small.futile and small.needed == 156 and small.round_size == 10
    assert small.horizon == 60 and small.ends() == [10, 20, 30, 40, 50, 60]  # first round end >= half of 109
    assert small.horizon >= FUTILITY_SHARE * 109
    big = SequentialPlan.for_cohort(2000, 3.0)
    assert not big.futile and big.needed is None and big.horizon == 2000
    assert big.ends()[:2] == [100, 200] and big.ends()[-1] == 2000 and len(big.ends()) == 20
    assert SequentialPlan.for_cohort(156, 3.0).futile is False
    assert SequentialPlan.for_cohort(155, 3.0).futile is True
    assert SequentialPlan.for_cohort(155, 3.0, confidence=0.8).futile is False  # a lower level needs fewer
    assert round_size(15) == 10 and round_size(1001) == 51


RANKS = {"fail": 0, "inconclusive": 1, "pass": 2}


def gate(diffs: list[float], within: float) -> tuple[str, int]:
    """The sequential gate's procedure on trajectory-mean differences (sequential_gate's loop):
    rounds by the plan, stop on a settled sequence, else the fixed-n rule on what was replayed
    (every trajectory, or a futile plan's horizon). Returns (verdict, trajectories replayed)."""
    plan = SequentialPlan.for_cohort(len(diffs), within)
    seq = SequentialParity(within, total_units=len(diffs))
    seen = 0
    for end in plan.ends():
        state = seq.update(diffs[seen:end])
        seen = end
        if state.settled:
            return state.status, end
    seen_diffs = diffs[:plan.horizon]  # all of them, or a futile plan's horizon
    expert = [max(0.0, -x) for x in seen_diffs]
    clone = [max(0.0, x) for x in seen_diffs]
    verdict = parity_verdict("c", "m", expert, clone, within=within, clusters=list(range(len(seen_diffs))))
    return verdict.status, plan.horizon


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(20, 260), st.sampled_from([3.0, 5.0]), st.data())
def test_the_whole_procedure_is_monotone_futility_included(units: int, within: float, data: st.DataObject) -> None:
    """Cohorts on both sides of the futility size: a clone better on any trajectory never gets a
    harsher verdict, whether the cohort settles, stops as too small, or falls to the fixed-n rule."""
    diffs = data.draw(st.lists(unit, min_size=units, max_size=units))
    raised = [min(1.0, x + data.draw(st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.5, 2.0]))) for x in diffs]
    worse, better = gate(diffs, within), gate(raised, within)
    assert RANKS[better[0]] >= RANKS[worse[0]], (worse, better)


def test_a_futile_cohort_still_fails_a_clearly_worse_clone_and_stops_a_good_one_early() -> None:
    rng = np.random.default_rng(11)
    bad = (-rng.binomial(10, 0.4, 100) / 10).tolist()  # 40 points worse, 3-point margin
    assert gate(bad, 3.0) == ("fail", 20)
    good = [0.0] * 100  # identical, but 100 trajectories cannot show 3 points
    assert gate(good, 3.0) == ("inconclusive", 50)
    # 15 points worse: the sequence does not settle by the horizon; the fixed-n look there fails it
    worse = (-np.random.default_rng(12).binomial(10, 0.15, 100) / 10).tolist()
    assert gate(worse, 3.0) == ("fail", 50)


def test_the_procedure_is_monotone_on_realistic_cohorts_near_every_boundary() -> None:
    """Seeded: clustered cohorts at gaps around the margin, on both sides of the futility size,
    each beside a copy improved on a few trajectories; the copy never gets a harsher verdict."""
    rng = np.random.default_rng(20261202)
    for trial in range(250):
        units = int(rng.choice([40, 100, 150, 160, 240]))
        within = float(rng.choice([3.0, 5.0]))
        diffs = units_at(rng, units, gap=float(rng.uniform(0.0, 0.12)))
        raised = list(diffs)
        for i in rng.choice(units, size=int(rng.integers(1, 6)), replace=False):
            raised[i] = min(1.0, raised[i] + float(rng.choice([0.1, 0.3, 1.0])))
        worse, better = gate(diffs, within), gate(raised, within)
        assert RANKS[better[0]] >= RANKS[worse[0]], (trial, worse, better)
