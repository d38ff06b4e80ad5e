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
  ``K+(m) = mean over c of prod_i (1 + (c / m) (y_i - m))``
* for ``H0: mu >= d``: ``K-(m) = mean over c of prod_i (1 - (c / (1 - m)) (y_i - m))``

with ``c`` on a fixed grid of betting fractions in (0, 1) (a mixture of constant bets, the
betting confidence sequences of Waudby-Smith & Ramdas 2023 with a fixed mixing grid rather
than predictable plug-in bets). Each product is a nonnegative martingale under its null, so by
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

*Simulation* (``bench/sequential_grid.py``, 1,000 gates in each of 128 settings of 10-step
trajectories, rounds of 10%): at most 0.2% of gates pass at a gap equal to the margin, none at
margin + 3, and an equal paired clone passes wherever the fixed-n gate does. Cohorts of 2,000
trajectories replay 10% (margin + 5) to 40% (gap 0, 1-point margin) of themselves; with a
3-point margin 500 trajectories replay under 50%. Cohorts of 200 gain little (about 75% replayed
even for a clone 5 points beyond the margin): a round of 20 trajectories says too little.
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

__all__ = ["BETS", "SequentialParity", "SequentialState", "SequentialStatus"]

SequentialStatus = Literal["pass", "fail", "continue"]

BETS = tuple(0.95 * 0.7**k for k in range(14))
"""The betting fractions ``c`` mixed with equal weight: 0.95 down to 0.0092, geometric, so that
both large effects with small variance (paired outcomes) and small effects with large variance
(independent outcomes) have a bet near their best one."""

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
        self.within = float(within)
        self.confidence = confidence
        self.zero_regression = zero_regression or within == 0
        self.total_units = total_units
        self.min_units = int(min_units)
        self._bets = tuple(float(c) for c in bets)
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
        up = float(log_wealth(y[None, :], self._m0, self._bets, up=True)[0])
        down = float(log_wealth(y[None, :], self._m0, self._bets, up=False)[0])
        self._best_up = max(self._best_up, up)
        self._best_down = max(self._best_down, down)
        self._low = max(self._low, _bound(y, self._bets, self._threshold, up=True))
        self._high = min(self._high, _bound(y, self._bets, self._threshold, up=False))
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


def log_wealth(y: NDArray[np.float64], m: float, bets: Sequence[float], *, up: bool) -> NDArray[np.float64]:
    """``log K+(m)`` (``up``) or ``log K-(m)`` of each row of ``y`` (units on the [0, 1] scale).

    Vectorised over rows (gates): the bench and :class:`SequentialParity` share it. The mixture
    is an equal-weight mean over ``bets`` of the products, taken in log space.
    """
    import numpy as np

    c = np.asarray(bets, dtype=np.float64)[None, None, :]
    # Each factor is (1 - c) + c y / m (up) or (1 - c) + c (1 - y) / (1 - m): positive since c < 1.
    scaled = y[:, :, None] / m if up else (1.0 - y[:, :, None]) / (1.0 - m)
    per_bet = np.log((1.0 - c) + c * scaled).sum(axis=1)  # (rows, bets)
    top = per_bet.max(axis=1, keepdims=True)
    return np.asarray(top[:, 0] + np.log(np.exp(per_bet - top).mean(axis=1)))


def _bound(y: NDArray[np.float64], bets: Sequence[float], threshold: float, *, up: bool) -> float:
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
    lo, hi = 1e-12, 1.0 - 1e-12
    for _ in range(_REFINE):
        ms = np.linspace(lo, hi, _GRID)
        scaled = y[None, :, None] / ms[:, None, None] if up else (1.0 - y[None, :, None]) / (1.0 - ms[:, None, None])
        per_bet = np.log((1.0 - c) + c * scaled).sum(axis=1)
        top = per_bet.max(axis=1, keepdims=True)
        rejected = top[:, 0] + np.log(np.exp(per_bet - top).mean(axis=1)) >= threshold
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
