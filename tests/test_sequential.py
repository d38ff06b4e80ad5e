"""Tests of the anytime-valid sequential parity gate (pytest_bclone.sequential)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_bclone.errors import GateError
from pytest_bclone.parity import parity_verdict
from pytest_bclone.sequential import BETS, SequentialParity, SequentialState, log_wealth

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
