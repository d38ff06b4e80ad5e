"""Anytime-valid sequential parity: stop replaying a cohort once its verdict is settled (issue 10).

Pure: no pytest, no litellm; numpy is imported lazily. The fixed-n gate (:mod:`.parity`) looks at
a cohort once; a sequential gate looks after every round of replayed trajectories, and a plain
interval would then pass a clone at the margin far more often than 2.5% ("peeking"). A
*confidence sequence* stays valid at every look, whenever the gate chooses to stop.

The statistic
-------------
Units are trajectories, in the (seeded) order they are replayed; unit ``i`` has its mean paired
difference ``x_i = mean(clone - expert)`` over its decision points, in [-1, 1], and the target is
the mean ``mu`` of ``x`` over the cohort's traffic (with equal-length trajectories, the fixed-n
gate's item mean). On the [0, 1] scale ``y = (x + 1) / 2`` and ``m = (d + 1) / 2`` for a
difference ``d``, two test supermartingales bet on ``y``:

* for ``H0: mu <= d`` (the clone is no better than ``d``):
  ``K+(m) = sum over c of w_c prod_i (1 + (c / m) (y_i - m))``
* for ``H0: mu >= d``: ``K-(m) = sum over c of w_c prod_i (1 - (c / (1 - m)) (y_i - m))``

with ``c`` on a fixed grid of betting fractions in (0, 1) and fixed prior weights ``w_c`` (a
mixture of constant bets, the betting confidence sequences of Waudby-Smith & Ramdas 2023 with a
fixed mixing grid rather than predictable plug-in bets). Each product is a nonnegative martingale under its null, so by
Ville's inequality ``P(sup_t K >= 2/alpha) <= alpha/2``: the *lower* bound
``low_t = sup{d : K+_t(m) >= 2/alpha}``, the upper bound likewise from ``K-``, and their running
intersection over the looks form a ``1 - alpha`` confidence sequence. Why a fixed grid: every
factor grows with ``y_i`` for ``K+`` (and falls for ``K-``) whatever came before, so a clone
that scores higher anywhere gets a sequence that is higher everywhere: monotone verdicts,
independent of the order within a round. Predictable bets that adapt to the past variance would
give that up.

The rule, after every round
---------------------------
* ``zero_regression``: FAIL at the first unit with a regression (``unit_regressions``); it never
  passes early: a pass needs every unit (the exact fixed-n rule).
* FAIL once ``K-(m0) >= 2/alpha`` at some look, ``m0 = (1 - within/100) / 2``: the sequence lies
  wholly below ``-within``.
* PASS once ``K+(m0) >= 2/alpha`` at some look with at least ``min_units`` units seen: the
  sequence lies wholly above ``-within``. The anytime-valid p-value is ``1 / max_t K+_t(m0)``
  (capped at 1), so ``p <= alpha/2`` exactly when it passes.
* otherwise CONTINUE; once every unit is seen the state is ``complete`` and the cohort is decided
  by the fixed-n rule (:func:`pytest_bclone.parity.parity_verdict` on all its items). That final
  look is one more test: the pass error is at most ``alpha/2`` for the sequence plus ``alpha/2``
  for the fixed-n look, and far less in practice (``bench/sequential_grid.py`` measures it).

Cohorts too small for parity
----------------------------
Every valid test, sequential or not, has a floor: ``t`` trajectories that all tie cannot tell an
equal clone from one that loses whole trajectories (difference -1) at a rate of ``within/100``,
which would tie all ``t`` with probability ``(1 - within/100)^t``; a level-``alpha/2`` test must
see ``t >= log(alpha/2) / log(1 - within/100)`` trajectories to pass anything (121 at 3 points,
367 at 1 point), and the fixed-n rule needs about ``470 / within`` (:func:`identical_clone_passes`).
A cohort below that cannot pass even a clone identical to the expert, and this is known before
anything is replayed: it depends on the cohort's size, the margin and the level, not on the
clone. :mod:`pytest_bclone.sequential_gate` replays such a cohort for :data:`FUTILITY_SHARE` of
its trajectories, looking after every round as usual, and then decides it with the fixed-n rule
on what it replayed: a clone clearly below its margin FAILs; otherwise the cohort is INCONCLUSIVE,
named too small, with the size it would need. The stopping round is fixed in advance, so
verdicts stay monotone (stopping where the data looked hopeless would not be: a worse clone
stopped INCONCLUSIVE while a better one went on to FAIL); one fixed-n look at a fixed round
costs the same error as the full replay's final look. A clone *better* than the expert, which
the full replay might have passed, is stopped too (run without ``--bclone-sequential`` to
replay it in full).

*Simulation* (``bench/sequential_grid.py``, 1,000 gates in each of 128 settings of 10-step
trajectories, the gate's rounds of 5%): at most 1.1% of gates pass at a gap equal to the margin,
none at margin + 3, and an equal paired clone passes wherever the fixed-n gate does. A paired
equal clone replays 43.6% of its cohort on average over the grid (10% of 2,000 trajectories at
3 points, 91% of 500 at 1 point, near the floor above), a clone 5 points past its margin 23.2%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import GateError
from .parity import DEFAULT_CONFIDENCE, DEFAULT_MIN_N

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "BETS",
    "FUTILITY_SHARE",
    "ROUNDS",
    "WEIGHTS",
    "SequentialParity",
    "SequentialPlan",
    "SequentialState",
    "SequentialStatus",
    "identical_clone_passes",
    "log_wealth",
    "log_wealth_path",
    "round_size",
    "units_for_identical_clone",
]

SequentialStatus = Literal["pass", "fail", "continue"]

BETS = tuple(0.95 * 0.7**k for k in range(14))
"""The betting fractions ``c`` of the mixture: 0.95 down to 0.0092, geometric, so that both large
effects with small variance (paired outcomes) and small effects with large variance (independent
outcomes) have a bet near their best one."""

WEIGHTS = tuple(0.5**k / sum(0.5**j for j in range(len(BETS))) for k in range(len(BETS)))
"""Prior weight of each bet: halving from the largest. A mixture pays ``log(1 / weight)`` of
evidence for the bet that wins; an equal-weight mixture of 14 bets paid ``log 14 = 2.6`` nats on
top of the ``log(2 / alpha) = 3.7`` a decision needs, whichever bet won. Early stopping is worth
having where the paired differences are mostly ties, and there the largest bets win (a tie
earns at most ``log(1 / (1 - within/100))`` a trajectory, and only a bet near 1 gets close), so
they get most of the weight: 0.69 nats for the largest. Small bets, which win on noisy data
where the sequence settles late anyway, keep a share. Any fixed positive weights keep the
mixture a test martingale (validity) and monotone (each product is); ``bench/sequential_grid.py``
measured 45% against 52% of trajectories replayed at gap 0 for equal weights."""

FUTILITY_SHARE = 0.5
"""Share of a cohort replayed, looking for a FAIL, when not even an identical clone could pass it.
Half: the example's multi-turn refund cohort (81 trajectories, 15 points below a 2-point margin)
fails on 41 of them, not on 30, and at 0.5 the grid still replays under 45% at gap 0."""

ROUNDS = 20
"""A cohort is replayed in about this many rounds (at least 10 trajectories a round). Finer rounds
cost no validity (the sequence is valid at every look) and stop closer to where the evidence
settles: 20 rounds replayed 45% of a paired equal clone's trajectories where 10 replayed 52%
(``bench/sequential_grid.py``); each round is one concurrent replay batch, so more rounds only
add the latency of waiting for a round's slowest call."""


def round_size(total: int) -> int:
    """Trajectories per round for a cohort of ``total``: a twentieth, at least 10."""
    return max(10, math.ceil(total / ROUNDS))


@dataclass(frozen=True)
class SequentialPlan:
    """How a cohort will be replayed, fixed before any replay from its size, margin and level.

    ``horizon`` is the number of trajectories after which the replay stops unsettled: the whole
    cohort, or, when ``futile`` (not even an identical clone could pass it), the first round
    end covering :data:`FUTILITY_SHARE` of it, where the fixed-n rule decides on the trajectories
    replayed. ``needed`` is then the size that could pass.
    """

    total: int
    round_size: int
    horizon: int
    futile: bool
    needed: int | None

    @classmethod
    def for_cohort(cls, total: int, within: float, confidence: float = DEFAULT_CONFIDENCE,
                   min_n: int = DEFAULT_MIN_N) -> SequentialPlan:
        """The plan for a cohort of ``total`` trajectories gated at ``within`` points."""
        size = round_size(total)
        futile = total > 0 and not identical_clone_passes(total, within, confidence, min_n)
        if not futile:
            return cls(total, size, total, False, None)
        rounds = math.ceil(max(size, math.ceil(FUTILITY_SHARE * total)) / size)
        return cls(total, size, min(total, rounds * size), True, units_for_identical_clone(within, confidence, min_n))

    def ends(self) -> list[int]:
        """The number of trajectories seen at each look, up to the horizon."""
        return [min(start + self.round_size, self.total) for start in range(0, self.horizon, self.round_size)]


def identical_clone_passes(units: int, within: float, confidence: float = DEFAULT_CONFIDENCE,
                           min_n: int = DEFAULT_MIN_N) -> bool:
    """Whether the fixed-n rule passes a clone identical to the expert on ``units`` trajectories.

    Each trajectory counts as one item: the largest effective sample ``units`` trajectories can
    give (Kish's effective number never exceeds the number of clusters), so a False here holds
    for any lengths. Depends on no replayed data.
    """
    from .parity import parity_verdict

    if units < 1:
        return False
    ties = [1.0] * units
    verdict = parity_verdict("identical", "clone", ties, ties, within=within, clusters=list(range(units)),
                             confidence=confidence, min_n=min_n)
    return verdict.status == "pass"


def units_for_identical_clone(within: float, confidence: float = DEFAULT_CONFIDENCE,
                              min_n: int = DEFAULT_MIN_N) -> int:
    """The fewest trajectories on which the fixed-n rule passes an identical clone (about ``470 / within``)."""
    lo, hi = 1, 16
    while not identical_clone_passes(hi, within, confidence, min_n):
        lo, hi = hi, hi * 2
    while lo < hi:  # passing is monotone in the number of ties
        mid = (lo + hi) // 2
        if identical_clone_passes(mid, within, confidence, min_n):
            hi = mid
        else:
            lo = mid + 1
    return lo


# Bounds on the [0, 1] scale: a grid of 64 candidates refined twice, 64^-2 = 2.4e-4 (0.05 points,
# the precision a report prints); the decisions themselves are exact (capital at the margin).
_GRID = 64
_REFINE = 2


@dataclass(frozen=True)
class SequentialState:
    """The sequential gate after a round. Bounds and ``diff`` in points (x100).

    ``status`` is ``"pass"`` or ``"fail"`` once settled (it then never changes), else
    ``"continue"``. ``complete`` is true when every unit was seen without settling: decide the
    cohort with the fixed-n rule. ``p_value`` is the anytime-valid non-inferiority p-value.
    """

    status: SequentialStatus
    low: float | None
    high: float | None
    units_seen: int
    total_units: int
    reason: str
    diff: float | None = None
    p_value: float | None = None
    regressions: int = 0
    complete: bool = False

    @property
    def settled(self) -> bool:
        """True once the gate passed or failed (replay may stop)."""
        return self.status != "continue"

    @property
    def share_seen(self) -> float:
        """Share of the cohort's units replayed so far."""
        return self.units_seen / self.total_units if self.total_units else 1.0


class SequentialParity:
    """An anytime-valid sequential parity gate for one (cohort, metric). See the module docstring.

    >>> gate = SequentialParity(within=3, total_units=1000)
    >>> state = gate.update([0.0] * 100)        # 100 trajectories, no difference
    >>> state.status, state.units_seen
    ('continue', 100)
    """

    def __init__(
        self,
        within: float,
        confidence: float = DEFAULT_CONFIDENCE,
        *,
        zero_regression: bool = False,
        total_units: int,
        min_units: int = DEFAULT_MIN_N,
        bets: Sequence[float] = BETS,
        weights: Sequence[float] | None = None,
    ) -> None:
        if isinstance(within, bool) or not isinstance(within, (int, float)) or not 0 <= within < 100:
            raise GateError(
                f"within={within!r}: the margin is the number of points (0 to below 100) the clone may "
                "lose against the expert; pass a number such as within=3 (0 means no regression)"
            )
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
            raise GateError(f"confidence={confidence!r}: expected a level strictly between 0.5 and 1, such as 0.95")
        if isinstance(total_units, bool) or not isinstance(total_units, int) or total_units < 1:
            raise GateError(f"total_units={total_units!r}: expected the cohort's number of trajectories (>= 1)")
        if not bets or any(not 0 < c < 1 for c in bets):
            raise GateError(f"bets={tuple(bets)!r}: expected betting fractions strictly between 0 and 1")
        if weights is None:
            weights = WEIGHTS if tuple(bets) == BETS else (1.0,) * len(bets)
        if len(weights) != len(bets) or any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise GateError(f"weights={tuple(weights)!r}: expected one positive weight per bet ({len(bets)})")
        self.within = float(within)
        self.confidence = confidence
        self.zero_regression = zero_regression or within == 0
        self.total_units = total_units
        self.min_units = int(min_units)
        self._bets = tuple(float(c) for c in bets)
        self._weights = tuple(float(w) / math.fsum(weights) for w in weights)
        self._threshold = math.log(2.0 / (1.0 - confidence))  # log(2 / alpha)
        self._m0 = (1.0 - self.within / 100.0) / 2.0
        self._y: list[float] = []
        self._sum = 0.0
        self._regressions = 0
        self._best_up = -math.inf  # max over looks of log K+(m0)
        self._best_down = -math.inf  # max over looks of log K-(m0)
        self._low = -math.inf  # running intersection, [0, 1] scale
        self._high = math.inf
        self._state = SequentialState("continue", None, None, 0, total_units, "no units seen yet")

    @property
    def state(self) -> SequentialState:
        """The state after the last round."""
        return self._state

    def update(self, unit_diffs: Sequence[float], unit_regressions: Sequence[int] = ()) -> SequentialState:
        """Add one round of units (their mean differences in [-1, 1]) and decide; returns the new state.

        ``unit_regressions`` optionally counts each unit's regressions (items where the clone
        scored below the expert); a zero-regression gate fails at the first. A settled gate
        ignores further rounds.
        """
        if self._state.settled:
            return self._state
        diffs = [float(x) for x in unit_diffs]
        bad = [x for x in diffs if not -1.0 <= x <= 1.0]
        if bad:
            raise GateError(
                f"unit difference {bad[0]!r} is outside [-1, 1]: pass each trajectory's mean of "
                "clone - expert over scores in [0, 1]"
            )
        if len(self._y) + len(diffs) > self.total_units:
            raise GateError(
                f"{len(self._y) + len(diffs)} units seen but total_units={self.total_units}: a "
                "cohort cannot replay more trajectories than it has"
            )
        self._y.extend((x + 1.0) / 2.0 for x in diffs)
        self._sum = math.fsum(self._y)
        self._regressions += sum(int(r) for r in unit_regressions)
        self._state = self._decide()
        return self._state

    # -- internals ----------------------------------------------------------------------------

    def _decide(self) -> SequentialState:
        import numpy as np

        y = np.array(sorted(self._y))  # a canonical order: sums of logs then do not depend on arrival order
        seen = len(self._y)
        diff = (2.0 * self._sum / seen - 1.0) * 100.0 if seen else None
        up = float(log_wealth(y[None, :], self._m0, self._bets, up=True, weights=self._weights)[0])
        down = float(log_wealth(y[None, :], self._m0, self._bets, up=False, weights=self._weights)[0])
        self._best_up = max(self._best_up, up)
        self._best_down = max(self._best_down, down)
        self._low = max(self._low, _bound(y, self._bets, self._weights, self._threshold, up=True))
        self._high = min(self._high, _bound(y, self._bets, self._weights, self._threshold, up=False))
        low, high = (2.0 * self._low - 1.0) * 100.0, (2.0 * self._high - 1.0) * 100.0
        p_value = min(1.0, math.exp(-self._best_up)) if not self.zero_regression else None
        level = f"{self.confidence * 100:g}%"

        def state(status: SequentialStatus, reason: str) -> SequentialState:
            return SequentialState(status, low, high, seen, self.total_units, reason, diff, p_value,
                                   self._regressions, status == "continue" and seen >= self.total_units)

        if self.zero_regression:
            if self._regressions:
                return state("fail", f"{self._regressions} regression(s) in the first {seen} trajectories, "
                                     "and a zero-regression cohort allows none")
            if seen >= self.total_units:
                return state("continue", "every trajectory replayed without a regression: decide with the fixed-n rule")
            return state("continue", f"no regression in {seen} of {self.total_units} trajectories: a pass needs all")
        if self._best_down >= self._threshold:
            return state("fail", f"the {level} confidence sequence lies wholly below -{self.within:g} pts "
                                 f"after {seen} of {self.total_units} trajectories")
        if self._best_up >= self._threshold and seen >= self.min_units:
            return state("pass", f"the {level} confidence sequence lies wholly above -{self.within:g} pts "
                                 f"after {seen} of {self.total_units} trajectories")
        if seen >= self.total_units:
            return state("continue", "every trajectory replayed and the sequence still contains the margin: "
                                     "decide with the fixed-n rule")
        return state("continue", f"the {level} confidence sequence [{low:.1f}, {high:.1f}] pts contains "
                                 f"-{self.within:g} pts after {seen} of {self.total_units} trajectories")


def log_wealth(y: NDArray[np.float64], m: float, bets: Sequence[float] = BETS, *, up: bool,
               weights: Sequence[float] | None = None) -> NDArray[np.float64]:
    """``log K+(m)`` (``up``) or ``log K-(m)`` of each row of ``y`` (units on the [0, 1] scale).

    Vectorised over rows (gates): the bench and :class:`SequentialParity` share it. The mixture
    is the ``weights``-weighted mean over ``bets`` of the products (default: :data:`WEIGHTS` for
    :data:`BETS`, equal weights for other bets), taken in log space.
    """
    import numpy as np

    c = np.asarray(bets, dtype=np.float64)[None, None, :]
    # Each factor is (1 - c) + c y / m (up) or (1 - c) + c (1 - y) / (1 - m): positive since c < 1.
    scaled = y[:, :, None] / m if up else (1.0 - y[:, :, None]) / (1.0 - m)
    per_bet = np.log((1.0 - c) + c * scaled).sum(axis=1)  # (rows, bets)
    return _mix(per_bet, _weights(bets, weights))


def log_wealth_path(y: NDArray[np.float64], m: float, ends: Sequence[int], *, up: bool,
                    bets: Sequence[float] = BETS, weights: Sequence[float] | None = None) -> NDArray[np.float64]:
    """:func:`log_wealth` of every prefix ``y[:, :end]`` for ``end`` in ``ends``: shape (rows, len(ends)).

    One cumulative sum instead of a sum per look: the simulation bench decides thousands of gates
    at every round with it (``tests/test_sequential.py`` checks it against :func:`log_wealth`)."""
    import numpy as np

    c = np.asarray(bets, dtype=np.float64)[None, None, :]
    scaled = y[:, :, None] / m if up else (1.0 - y[:, :, None]) / (1.0 - m)
    cum = np.cumsum(np.log((1.0 - c) + c * scaled), axis=1)[:, [e - 1 for e in ends], :]  # (rows, looks, bets)
    return _mix(cum, _weights(bets, weights))


def _weights(bets: Sequence[float], weights: Sequence[float] | None) -> NDArray[np.float64]:
    import numpy as np

    if weights is None:
        weights = WEIGHTS if tuple(bets) == BETS else (1.0,) * len(bets)
    w = np.asarray(weights, dtype=np.float64)
    return np.asarray(w / w.sum())


def _mix(per_bet: NDArray[np.float64], w: NDArray[np.float64]) -> NDArray[np.float64]:
    """log of the ``w``-weighted mean of ``exp(per_bet)`` over the last axis, computed stably."""
    import numpy as np

    top = per_bet.max(axis=-1, keepdims=True)
    return np.asarray(top[..., 0] + np.log((np.exp(per_bet - top) * w).sum(axis=-1)))


def _bound(y: NDArray[np.float64], bets: Sequence[float], weights: Sequence[float], threshold: float, *,
           up: bool) -> float:
    """The sequence's bound at this look on the [0, 1] scale.

    ``K+(m)`` falls as ``m`` rises, so the lower bound is the largest ``m`` it still rejects
    (``K+ >= 2/alpha``); ``K-`` rises with ``m`` and the upper bound is the smallest it rejects.
    Found by a grid search refined ``_REFINE`` times (each a single vectorised evaluation of
    ``_GRID`` candidates), keeping the rejected side: resolution ``_GRID ** -_REFINE``.
    """
    import numpy as np

    if y.size == 0:
        return 0.0 if up else 1.0
    c = np.asarray(bets, dtype=np.float64)[None, None, :]
    w = _weights(bets, weights)
    lo, hi = 1e-12, 1.0 - 1e-12
    for _ in range(_REFINE):
        ms = np.linspace(lo, hi, _GRID)
        scaled = y[None, :, None] / ms[:, None, None] if up else (1.0 - y[None, :, None]) / (1.0 - ms[:, None, None])
        rejected = _mix(np.log((1.0 - c) + c * scaled).sum(axis=1), w) >= threshold
        step = ms[1] - ms[0]
        if up:  # rejected on a prefix of ms
            k = int(np.count_nonzero(rejected))
            if k == 0:
                return lo
            lo, hi = float(ms[k - 1]), float(min(ms[k - 1] + step, 1.0 - 1e-12))
        else:  # rejected on a suffix
            k = int(np.count_nonzero(~rejected))
            if k == _GRID:
                return hi
            lo, hi = float(max(ms[k] - step, 1e-12)), float(ms[k])
    return lo if up else hi
