"""Paired parity statistics and gate verdicts. Pure: no pytest, no litellm, no pyarrow.

For one (cohort, metric) the gate receives paired per-item scores in [0, 1], ``expert[i]`` and
``clone[i]`` for the same item ``i`` (a decision point or a trajectory), optionally the cluster
(trajectory id) of each item, and how many items were lost to failed model calls. Parity is
``clone - expert`` in points (x100). :func:`parity_verdict` turns that into a :class:`Verdict`.

The rule: a CI-based non-inferiority test
------------------------------------------
With ``alpha = 1 - confidence`` and the two-sided ``confidence`` interval ``[ci_low, ci_high]``
of the mean difference, a verdict depends on the interval's position against ``-within`` only:

* PASS when the whole interval lies above the margin, ``ci_low > -within`` (strict: the margin
  belongs to H0 "the clone is worse by within or more"). This is a one-sided non-inferiority
  test at level ``alpha/2`` (2.5% for 95%), CONSORT-style.
* FAIL when the whole interval lies below it, ``ci_high < -within``.
* INCONCLUSIVE otherwise, with ``n_needed``: the units (trajectories when clustered, else items)
  at which the *observed* effect would settle it (see below).

Because both bounds are non-decreasing in every clone score (below), raising any clone score
never makes a verdict worse and lowering one never makes it better.

The interval: Tango's score interval on trajectory-level differences
-------------------------------------------------------------------
Units are trajectories (``clusters``) or items. Unit ``j`` has ``m_j`` items and the sum
``S_j`` of its item differences ``clone - expert``; its mean difference ``x_j = S_j / m_j``
lies in [-1, 1]. With ``M = sum m_j`` the estimate is ``D = sum S_j / M`` and the effective
number of units is Kish's ``n = M^2 / sum m_j^2`` (the number of trajectories when they are
equally long). The unit differences enter as fractional discordant pairs:
``B = n * sum max(S_j, 0) / M`` (gains) and ``R = n * sum max(-S_j, 0) / M`` (losses).
For unclustered binary scores ``B`` and ``R`` are the counts of discordant pairs (clone wins,
clone loses) and the interval is exactly Tango's (1998) score interval for the difference of
paired proportions; otherwise it is Tango's interval for the binary majorant of the units,
which over-states their variance (``x^2 <= |x|``) and so stays valid for graded scores and for
any correlation of decision points within a trajectory.

For a candidate difference ``d`` the score statistic is
``Z(d) = cc(B - R - n d) / sqrt(n (2 q(d) + d - d^2))``, where ``cc(x) = sign(x) max(|x| - 1/2, 0)``
is the continuity correction and ``q(d)`` the constrained maximum-likelihood share of losses,
the root of ``2n q^2 - W q - R d (1 - d) = 0`` with ``W = (B + R) + (B - R) d - 2 n d``:
``q(d) = (W + sqrt(W^2 + 8 n R d (1 - d))) / (4 n)``.
The interval is ``{d : -z <= Z(d) <= z}`` with ``z = Phi^-1(1 - alpha/2)``, found by bisection
(``Z`` decreases in ``d``). With no gains it is Newcombe's (1998) continuity-corrected Wilson
interval for the loss rate. It never collapses: with no discordant pair in 10 units the lower
bound is -34.5 points (the exact Clopper-Pearson bound is -30.8, the rule of three -30), not 0.
The correction matters only for small samples (it moves a bound by about ``1/(2n)``); without
it, a clone 3 points beyond the margin passed about 1 gate in 1,000 at 30 to 100 trajectories,
because score bounds sit slightly inside exact ones when no loss is seen.
``Z`` increases with ``B`` and decreases with ``R``, which is what makes the verdicts monotone;
raising a clone score raises ``x_j``, hence ``B`` or lowers ``R``.

*p-value.* The one-sided score p-value of ``H0: true diff <= -within`` is
``Phi(-Z(-within / 100))``; ``p < alpha/2`` exactly when the interval lies above ``-within``,
so the interval rule, the p-value rule and Holm with one cohort are the same decision.

*n_needed.* At fixed shares ``B/n`` and ``R/n``, ``Z(-w) = (n |D + w| - 1/2) / sqrt(n V(-w))``
with ``V(d) = 2 q(d) + d - d^2`` (the observed SD, and the distance of the estimate to the
margin), so the margin is settled at the ``n*`` where that reaches ``z``; ``n_needed`` is
``n*`` in units. When ``D`` is already past the margin it is the size at which the interval
would most likely lie wholly below it, and the reason says so.

*Simulation.* ``bench/parity_grid.py`` runs 1,000 seeded gates in each of 512 settings (10 to
2,000 trajectories, 1 or 10 steps each, margins 1 and 3, expert success 0.9 and 0.98, binary
and graded scores, trajectory-level correlation; table in ``bench/out/parity_grid.md``): at a
true gap equal to the margin no setting passes more than 2.0% of gates (the previous BCa
bootstrap rule: up to 88%), none of 128,000 gates 3 points beyond the margin passes, and an
equal, paired clone passes every gate once the cohort resolves the margin. The price of the
binary majorant is power on clustered graded data: 500 ten-step trajectories rarely resolve a
1-point margin, which 2,000 do.
``interval="bca"`` / ``"percentile"`` keep the seeded cluster bootstrap (Efron's BCa) with the
same rule, for comparison only: the simulation shows it losing coverage in small cohorts.

Decision, in this order (the first that applies wins)
-----------------------------------------------------
1. ``n == 0`` -> inconclusive ("no items", or all items lost to failed calls).
2. ``within == 0`` -> the exact *zero-regression* rule: fail iff any item is a regression
   (binary metric: expert 1 and clone 0; any other metric: clone below expert), whatever
   ``min_n`` or the failed calls; otherwise inconclusive if any call failed (a lost item could
   hide a regression), else pass. The verdict reports ``regression_rate_upper``: the exact
   one-sided Clopper-Pearson ``confidence`` upper bound on the share of units (trajectories
   when clustered) with a regression, ``1 - (1 - confidence)^(1/n)``, about ``3/n`` at 95%,
   when none was seen: what a pass does not rule out.
3. ``ci_high < -within`` -> fail. Conclusive whatever ``min_n`` and the failed calls.
4. ``errors / total > max_error_rate`` -> inconclusive (failed calls are never scored).
5. fewer than ``min_n`` units -> inconclusive.
6. ``ci_low > -within`` -> pass, unless failed calls could overturn it: if every failed item
   had been a regression (difference -1) the mean would be ``(S - errors) / (N + errors)``;
   applying that monotone map to ``ci_low`` must still clear ``-within``, else inconclusive.
   Failed calls can prevent a pass, never hide a fail.
7. otherwise inconclusive, with ``n_needed``.

*Holm.* :func:`holm_adjust` takes the verdicts of a run (computed independently, e.g. on
pytest-xdist workers) and applies Holm's step-down to the p-values of every verdict that has one
and is not a zero-regression check (an exact statement about the observed items, not a test).
Inconclusive verdicts stay in the family (more conservative, never less valid).
A verdict keeps "pass" only if its Holm-adjusted p-value is ``<= alpha/2``; otherwise it becomes
"fail". This controls, at ``alpha/2``, the family-wise probability of passing any cohort whose
true gap is worse than its margin.

*Determinism.* The score interval uses no random numbers; unit sums use ``math.fsum`` over a
canonical order, so neither item order nor cluster labels change a verdict, not even in the last
bit. The bootstrap options are seeded from ``sha256(base seed, cohort, metric)``
(:func:`derive_seed`), never from ``hash()``, so a verdict is identical with and without
pytest-xdist.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal, cast

from .errors import GateError

if TYPE_CHECKING:  # numpy is imported lazily inside functions: importing this module stays cheap
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_MAX_ERROR_RATE",
    "DEFAULT_MIN_N",
    "DEFAULT_RESAMPLES",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "Interval",
    "Status",
    "Verdict",
    "derive_seed",
    "format_verdict",
    "holm_adjust",
    "naive_passes",
    "parity_verdict",
    "regression_rate_upper",
]

Status = Literal["pass", "fail", "inconclusive"]
Interval = Literal["score", "bca", "percentile"]
if TYPE_CHECKING:
    Scores = Sequence[float] | NDArray[Any]
    """Per-item scores in [0, 1]: a list, or a 1-D numpy array."""
PASS: Status = "pass"
FAIL: Status = "fail"
INCONCLUSIVE: Status = "inconclusive"

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_MAX_ERROR_RATE = 0.0
DEFAULT_MIN_N = 10
"""Fewest units (items, or clusters) for a pass: a guard on top of an interval that is already
honest about small samples (10 units with no loss bound the loss at -34.5 points)."""

MIN_RESAMPLES = 100

# Comparisons in points tolerate float noise far below any meaningful difference (bootstrap
# means of binary data sit exactly on the margin: -1500/500 must compare equal to -3).
_EPS = 1e-9
# Use the multinomial shortcut when distinct unit values are this many times fewer than units.
_COMPRESS_FACTOR = 16
_NORMAL = NormalDist()
# Rows of the resample index matrix drawn at once (bounds memory at ~8 MB for int64 indices).
_CHUNK_ELEMENTS = 1 << 20
# Continuity correction of the score statistic, in (effective) units: |B - R - n d| shrinks by 1/2.
_CORRECTION = 0.5
# Bisection steps for the score interval: 2 / 2^64 is below float resolution on [-1, 1].
_BISECT = 64


@dataclass(frozen=True)
class Verdict:
    """The outcome of one parity assertion: one cohort, one metric. JSON-able via :meth:`to_dict`.

    Means are in [0, 1]; ``diff``, ``ci_low``, ``ci_high`` and ``within`` are in points (x100).
    Statistics are ``None`` when there is nothing to compute them from (``n == 0``).
    ``regressions`` counts items where the clone scores below the expert (binary metric: expert
    1, clone 0); it is counted for binary metrics, and for any metric when ``within == 0``, else
    ``None``. ``p_value`` is the one-sided non-inferiority p-value (compare with
    ``(1 - confidence) / 2``); ``p_adjusted`` is its Holm-adjusted value once
    :func:`holm_adjust` has run (then ``holm_adjusted`` is true). Zero-regression verdicts
    (``within == 0``) also carry ``regression_units`` (units, i.e. trajectories when clustered or
    items, with at least one regression) and ``regression_rate_upper``, the one-sided
    ``confidence`` Clopper-Pearson upper bound on the share of such units, in [0, 1].
    """

    cohort: str
    metric: str
    n: int
    n_clusters: int | None
    expert_mean: float | None
    clone_mean: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    within: float
    status: Status
    reason: str
    n_needed: int | None
    regressions: int | None
    errors: int
    total: int
    error_rate: float
    p_value: float | None
    holm_adjusted: bool = False
    p_adjusted: float | None = None
    regression_units: int | None = None
    regression_rate_upper: float | None = None

    @property
    def passed(self) -> bool:
        """True when the cohort passes the gate."""
        return self.status == PASS

    @property
    def halfwidth(self) -> float | None:
        """Half the interval's width in points."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    @property
    def zero_regression(self) -> bool:
        """True when the verdict came from the exact zero-regression rule (``within=0``)."""
        return self.within == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (crosses the pytest-xdist channel unchanged)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        """Rebuild a verdict from :meth:`to_dict` output (older records lack the defaulted fields)."""
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise GateError(
                f"verdict record is missing {', '.join(missing)}: expected the dict written by "
                "Verdict.to_dict(); rebuild it from a current pytest-bclone run"
            )
        status = d["status"]
        if status not in (PASS, FAIL, INCONCLUSIVE):
            raise GateError(
                f"verdict record has status={status!r}: expected 'pass', 'fail' or 'inconclusive'; "
                "rebuild it with Verdict.to_dict()"
            )
        return cls(**{name: d[name] for name in names if name in d})


def derive_seed(seed: int, cohort: str, metric: str) -> int:
    """The bootstrap seed of one (cohort, metric): stable across processes and machines.

    Python's ``hash()`` of a string changes per process (PYTHONHASHSEED), so an xdist worker
    would get different intervals than a plain run; sha256 does not.
    """
    digest = hashlib.sha256(f"pytest-bclone/parity\0{seed}\0{cohort}\0{metric}".encode()).digest()
    return int.from_bytes(digest[:16], "big")


def naive_passes(expert: Scores, clone: Scores, within: float) -> bool:
    """The point-estimate rule the gate replaces: ``clone_mean - expert_mean >= -within`` points.

    Kept for the simulation that shows why it is wrong: at a true gap equal to the margin it
    passes about half the time. An empty sample does not pass.
    """
    if len(expert) != len(clone):
        raise GateError(
            f"expert has {len(expert)} scores and clone has {len(clone)}: parity is paired, pass "
            "one score per item for both agents, in the same item order"
        )
    if len(expert) == 0:
        return False
    diff = (math.fsum(clone) - math.fsum(expert)) * 100.0 / len(expert)
    return diff >= -within - _EPS


def regression_rate_upper(regressed: int, units: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """Exact one-sided Clopper-Pearson upper bound on a regression rate, in [0, 1].

    ``regressed`` of ``units`` units showed a regression. With none seen the bound is
    ``1 - (1 - confidence)^(1/units)`` (about ``3/units`` at 95%, the rule of three).
    """
    if units <= 0:
        return 1.0
    if regressed >= units:
        return 1.0
    if regressed == 0:
        return float(1.0 - (1.0 - confidence) ** (1.0 / units))
    # The bound solves P(X <= regressed; units, p) = 1 - confidence; the binomial CDF falls in p.
    lo, hi = regressed / units, 1.0
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _binom_cdf(regressed, units, mid) > 1.0 - confidence else (lo, mid)
    return hi


def _binom_cdf(x: int, n: int, p: float) -> float:
    """``P(X <= x)`` for ``X ~ Binomial(n, p)``, summed in log space (0 < p < 1)."""
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(x + 1)]
    top = max(terms)
    return math.exp(top) * math.fsum(math.exp(t - top) for t in terms)


def parity_verdict(
    cohort: str,
    metric: str,
    expert: Scores,
    clone: Scores,
    *,
    within: float,
    clusters: Sequence[Hashable] | None = None,
    errors: int = 0,
    total: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    min_n: int = DEFAULT_MIN_N,
    interval: Interval = "score",
) -> Verdict:
    """Decide one (cohort, metric) parity assertion. See the module docstring for the rules.

    ``expert`` and ``clone`` hold the scores of the items that were scored (failed model calls
    excluded), in the same item order; ``clusters`` optionally names each item's trajectory;
    ``errors`` counts the items excluded because a model call failed, out of ``total`` items
    (default ``len(expert) + errors``). ``interval`` is ``"score"`` (the default, Tango's score
    interval on trajectory-level differences) or the seeded cluster bootstrap (``"bca"``,
    ``"percentile"``; ``seed`` and ``resamples`` apply to those only). Raises
    :class:`GateError` for inputs that cannot be evaluated.
    """
    import numpy as np

    where = f"cohort {cohort!r} / metric {metric!r}"
    _check_options(where, within, confidence, resamples, max_error_rate, min_n)
    if interval not in ("score", "bca", "percentile"):
        raise GateError(
            f"{where}: interval={interval!r}: expected 'score' (the default), 'bca' or 'percentile'"
        )
    e, c, errors, total = _inputs(where, expert, clone, clusters, errors, total)
    n = int(e.shape[0])
    # numpy scalars are accepted; the verdict holds plain Python numbers (JSON-able).
    resamples, min_n = int(resamples), int(min_n)
    within, confidence, max_error_rate = float(within), float(confidence), float(max_error_rate)
    error_rate = errors / total if total else 0.0
    alpha = 1.0 - confidence
    z = _NORMAL.inv_cdf(1.0 - alpha / 2)

    # -- statistics (whenever there is something to compute them from) ------------------------
    units_sum, units_size, n_clusters = _units(where, e, c, clusters)
    k = int(units_sum.shape[0])
    binary = bool(np.all((e == 0) | (e == 1)) and np.all((c == 0) | (c == 1))) if n else False
    regressions = int(np.count_nonzero(c < e)) if binary or within == 0 else None
    expert_mean = clone_mean = diff = ci_low = ci_high = p_value = None
    gains = losses = n_eff = 0.0
    above = below = False
    if n:
        expert_mean = math.fsum(e.tolist()) / n
        clone_mean = math.fsum(c.tolist()) / n
        diff = math.fsum((c - e).tolist()) * 100.0 / n
        gains, losses, n_eff = _score_counts(units_sum, units_size)
        if interval == "score":
            lo, hi = _score_bounds_one(gains, losses, n_eff, z)
            # The bounds bracket the estimate by construction; min/max only absorb the rounding
            # of two ways of computing the same mean.
            ci_low = min(float(lo) * 100.0, diff)
            ci_high = max(float(hi) * 100.0, diff)
            stat = _score_z_one(gains, losses, n_eff, -within / 100.0)
            p_value = _NORMAL.cdf(-stat) if math.isfinite(stat) else (0.0 if stat > 0 else 1.0)
            # Decided on the statistic itself: Z(-w) > z is exactly "ci_low > -within".
            above, below = stat > z, stat < -z
        else:
            ci_low, ci_high, p_value = _bootstrap_interval(
                units_sum, units_size, diff, within, alpha, resamples,
                np.random.default_rng(derive_seed(seed, cohort, metric)), interval,
            )
            above, below = ci_low > -within + _EPS, ci_high < -within - _EPS

    reg_units = reg_upper = None
    if within == 0 and n:
        # Units with at least one regression: trajectories when clustered, else items.
        if clusters is None:
            reg_units = int(regressions or 0)
        else:
            reg_units = len({cid for cid, lost in zip(clusters, (c < e).tolist()) if lost})
        reg_upper = regression_rate_upper(reg_units, k, confidence)

    def verdict(status: Status, reason: str, n_needed: int | None = None) -> Verdict:
        return Verdict(
            cohort=cohort, metric=metric, n=n, n_clusters=n_clusters, expert_mean=expert_mean,
            clone_mean=clone_mean, diff=diff, ci_low=ci_low, ci_high=ci_high,
            confidence=confidence, within=within, status=status, reason=reason,
            n_needed=n_needed, regressions=regressions, errors=errors, total=total,
            error_rate=error_rate, p_value=p_value, regression_units=reg_units,
            regression_rate_upper=reg_upper,
        )

    # -- decision -------------------------------------------------------------------------------
    if n == 0:
        if errors:
            return verdict(
                INCONCLUSIVE,
                f"{errors} of {total} items lost to failed model calls ({error_rate:.1%}): nothing "
                "was scored; failed items are never scored, so fix the failing calls",
            )
        return verdict(INCONCLUSIVE, "no items: the cohort has no scored items for this metric")
    assert diff is not None and ci_low is not None and ci_high is not None  # for mypy
    unit_word = "trajectories" if n_clusters is not None else "items"
    level = f"{confidence * 100:g}%"

    if within == 0:
        # Exact and observed: no min_n and no failed call can hide a regression that was seen.
        assert regressions is not None and reg_upper is not None  # counted for every metric when within=0
        bound = f"{reg_upper:.1%}"
        if regressions:
            what = "the expert succeeded and the clone failed" if binary else "the clone scored below the expert"
            plural = "s" if regressions != 1 else ""
            return verdict(
                FAIL,
                f"{regressions} regression{plural}: {what} on {regressions} item{plural}, and "
                "within=0 allows none",
            )
        if errors:
            return verdict(
                INCONCLUSIVE,
                f"no regression among the scored items, but the {errors} items lost to failed "
                "model calls could hide regressions that within=0 does not allow",
            )
        return verdict(
            PASS,
            f"zero regressions: the clone does at least as well as the expert on all {k} {unit_word}; "
            f"a regression rate up to {bound} of {unit_word} is not ruled out ({level} upper bound)",
        )

    if below:
        # However small the sample, an interval wholly below the margin is conclusive.
        return verdict(
            FAIL,
            f"the clone is worse than the margin allows: the whole {level} interval lies below -{within:g} pts",
        )
    needed = _needed_units(gains, losses, n_eff, k, diff / 100.0, within / 100.0, z)
    if error_rate > max_error_rate + 1e-12:
        return verdict(
            INCONCLUSIVE,
            f"{errors} of {total} items lost to failed model calls ({error_rate:.1%}, above the "
            f"allowed {max_error_rate:.1%}); failed items are never scored, so fix the failing "
            "calls or raise the allowed error rate",
        )
    if k < min_n:
        more = max(min_n, needed) if needed is not None and not above else min_n
        return verdict(INCONCLUSIVE, f"too few {unit_word} to decide: {k}, at least {min_n} are needed", more)
    if above:
        if errors:
            # Worst case for the failed items: each a regression (diff -1). The mean becomes
            # (S - errors) / (n + errors), a monotone map applied to the interval's lower bound.
            worst = (ci_low / 100.0 * n - errors) / (n + errors) * 100.0
            if worst <= -within + _EPS:
                return verdict(
                    INCONCLUSIVE,
                    f"the clone clears the margin on the scored items, but if the {errors} items lost "
                    f"to failed model calls were all regressions the lower bound would be {worst:.1f} pts",
                )
        return verdict(PASS, f"the clone is within the margin: the whole {level} interval lies above -{within:g} pts")
    span = f"the {level} interval [{_pts(ci_low)}, {_pts(ci_high)}] pts contains the -{within:g}-point margin"
    if needed is None:
        return verdict(
            INCONCLUSIVE,
            f"{span} and the estimate sits on the margin: no sample size is expected to settle it",
        )
    if diff < -within:
        return verdict(
            INCONCLUSIVE,
            f"{span}; the estimate {_pts(diff)} pts is already past the margin, so more data would "
            f"most likely confirm a failure: about {needed} {unit_word} would settle it",
            needed,
        )
    return verdict(
        INCONCLUSIVE,
        f"{span}: too few {unit_word} to show the clone within it; at the observed effect about "
        f"{needed} {unit_word} would",
        needed,
    )


def _legacy_verdict(
    cohort: str,
    metric: str,
    expert: Scores,
    clone: Scores,
    *,
    within: float,
    clusters: Sequence[Hashable] | None = None,
    errors: int = 0,
    total: int | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    min_n: int = DEFAULT_MIN_N,
    interval: Literal["bca", "percentile"] = "bca",
) -> Verdict:
    """The gate's previous rule, kept for comparison (``bench/parity_grid.py``); do not gate on it.

    BCa cluster bootstrap interval; ``min_n`` and failed calls checked before "wholly below";
    inconclusive when the half-width exceeds the margin, else fail unless ``ci_low > -within``.
    That half-width rule made verdicts non-monotone in the clone's scores, and the bootstrap
    interval collapses to [0, 0] on small samples without regressions (issue 14).
    """
    import numpy as np

    where = f"cohort {cohort!r} / metric {metric!r}"
    _check_options(where, within, confidence, resamples, max_error_rate, min_n)
    if interval not in ("bca", "percentile"):
        raise GateError(f"{where}: interval={interval!r}: expected 'bca' (the default) or 'percentile'")
    e, c, errors, total = _inputs(where, expert, clone, clusters, errors, total)
    n = int(e.shape[0])
    # numpy scalars are accepted; the verdict holds plain Python numbers (JSON-able).
    resamples, min_n = int(resamples), int(min_n)
    within, confidence, max_error_rate = float(within), float(confidence), float(max_error_rate)
    error_rate = errors / total if total else 0.0
    alpha = 1.0 - confidence

    # -- statistics (whenever there is something to compute them from) ------------------------
    units_sum, units_size, n_clusters = _units(where, e, c, clusters)
    binary = bool(np.all((e == 0) | (e == 1)) and np.all((c == 0) | (c == 1))) if n else False
    # A regression is an item where the clone scores below the expert: for a binary metric,
    # expert 1 and clone 0. Counted for binary metrics, and for any metric when within=0.
    regressions = int(np.count_nonzero(c < e)) if binary or within == 0 else None
    expert_mean = clone_mean = diff = ci_low = ci_high = p_value = None
    if n:
        expert_mean = math.fsum(e.tolist()) / n
        clone_mean = math.fsum(c.tolist()) / n
        diff = math.fsum((c - e).tolist()) * 100.0 / n
        ci_low, ci_high, p_value = _bootstrap_interval(
            units_sum, units_size, diff, within, alpha, resamples,
            np.random.default_rng(derive_seed(seed, cohort, metric)), interval,
        )

    def verdict(status: Status, reason: str, n_needed: int | None = None) -> Verdict:
        return Verdict(
            cohort=cohort, metric=metric, n=n, n_clusters=n_clusters, expert_mean=expert_mean,
            clone_mean=clone_mean, diff=diff, ci_low=ci_low, ci_high=ci_high,
            confidence=confidence, within=float(within), status=status, reason=reason,
            n_needed=n_needed, regressions=regressions, errors=errors, total=total,
            error_rate=error_rate, p_value=p_value,
        )

    # -- decision -------------------------------------------------------------------------------
    if error_rate > max_error_rate + 1e-12:
        return verdict(
            INCONCLUSIVE,
            f"{errors} of {total} items lost to failed model calls ({error_rate:.1%}, above the "
            f"allowed {max_error_rate:.1%}); failed items are never scored, so fix the failing "
            "calls or raise the allowed error rate",
        )
    if n == 0:
        return verdict(INCONCLUSIVE, "no items: the cohort has no scored items for this metric")
    assert diff is not None and ci_low is not None and ci_high is not None  # for mypy
    units = n_clusters if n_clusters is not None else n
    unit_word = "trajectories" if n_clusters is not None else "items"

    if within == 0:
        assert regressions is not None  # counted for every metric when within=0
        if regressions:
            what = "the expert succeeded and the clone failed" if binary else "the clone scored below the expert"
            plural = "s" if regressions != 1 else ""
            return verdict(
                FAIL,
                f"{regressions} regression{plural}: {what} on {regressions} item{plural}, and "
                "within=0 allows none",
            )
        if errors:
            return verdict(
                INCONCLUSIVE,
                f"no regression among the scored items, but the {errors} items lost to failed "
                "model calls could hide regressions that within=0 does not allow",
            )
        return verdict(PASS, "zero regressions: the clone does at least as well as the expert on every item")

    halfwidth = (ci_high - ci_low) / 2
    more = _legacy_needed(units, halfwidth, within)
    if units < min_n:
        return verdict(
            INCONCLUSIVE,
            f"too few {unit_word} to decide: {units}, at least {min_n} are needed",
            max(min_n, more if halfwidth > within + _EPS else 0),
        )
    level = f"{confidence * 100:g}%"
    if ci_high < -within - _EPS:
        # However wide, an interval wholly below the margin is conclusive: the clone is worse.
        return verdict(
            FAIL,
            f"the clone is worse than the margin allows: the whole {level} interval lies below -{within:g} pts",
        )
    if halfwidth > within + _EPS:
        return verdict(
            INCONCLUSIVE,
            f"too small to resolve a {within:g}-point margin: the {level} interval is "
            f"+/-{halfwidth:.1f} pts wide; about {more} {unit_word} would resolve it",
            more,
        )
    # Strict: a lower bound exactly on the margin does not reject H0 "diff <= -within".
    if ci_low <= -within + _EPS:
        if ci_high <= -within + _EPS:
            why = "the clone is worse than the margin allows"
        elif diff <= -within + _EPS:
            why = "the clone is likely worse than the margin allows"
        else:
            why = (
                f"the clone may be worse than the margin allows: the {level} interval reaches "
                f"-{within:g} pts"
            )
        return verdict(FAIL, why)
    if errors:
        # Worst case for the failed items: each a regression (diff -1). The mean becomes
        # (S - errors) / (n + errors), a monotone map we apply to the interval's lower bound.
        worst = (ci_low / 100.0 * n - errors) / (n + errors) * 100.0
        if worst <= -within + _EPS:
            return verdict(
                INCONCLUSIVE,
                f"the clone clears the margin on the scored items, but if the {errors} items lost "
                f"to failed model calls were all regressions the lower bound would be {worst:.1f} pts",
            )
    return verdict(PASS, f"the clone is within the margin: the whole {level} interval lies above -{within:g} pts")


def holm_adjust(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Holm-correct the non-inferiority tests of a run; returns new verdicts in the same order.

    The family is every verdict with a p-value that is not a zero-regression check (those are
    exact, not tests); inconclusive verdicts stay in it, which only makes it more conservative.
    With ``m`` tests and p-values sorted ascending ``p(1) <= ... <= p(m)``, the adjusted value is
    ``max over j <= i of min(1, (m - j + 1) * p(j))``. A verdict keeps "pass" only if its adjusted
    p-value is ``<= (1 - confidence) / 2``; otherwise it becomes "fail" with the reason. Family
    members get ``holm_adjusted=True`` and ``p_adjusted``. Idempotent; independent of the order
    of ``verdicts`` (tied p-values get the same adjusted value).
    """
    family = [i for i, v in enumerate(verdicts) if v.p_value is not None and not v.zero_regression]
    if not family:
        return list(verdicts)
    levels = sorted({verdicts[i].confidence for i in family})
    if len(levels) > 1:
        raise GateError(
            f"Holm correction needs one confidence level for the whole run, got {levels}: give "
            "every parity assertion the same confidence= (or none, to use the run's default)"
        )
    alpha_half = (1.0 - levels[0]) / 2
    m = len(family)
    order = sorted(family, key=lambda i: cast(float, verdicts[i].p_value))
    adjusted: dict[int, float] = {}
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * cast(float, verdicts[i].p_value)))
        adjusted[i] = running
    out: list[Verdict] = []
    for i, v in enumerate(verdicts):
        if i not in adjusted:
            out.append(v)
            continue
        adj = adjusted[i]
        new = replace(v, holm_adjusted=True, p_adjusted=adj)
        if v.status == PASS and adj > alpha_half + 1e-9:
            new = replace(
                new,
                status=FAIL,
                reason=(
                    f"non-inferiority not shown after Holm correction across {m} cohort tests "
                    f"(adjusted p={adj:.3g} > {alpha_half:.3g})"
                ),
            )
        out.append(new)
    return out


def format_verdict(verdict: Verdict) -> list[str]:
    """The failure-message lines of a verdict: the summary line first, then details.

    ``long_tail / trajectory_score: n=412 expert=0.912 clone=0.874 diff=-3.8 pts 95% CI
    [-6.1, -1.5] margin -3.0 -> FAIL: the clone is worse than the margin allows``
    """
    v = verdict
    size = f"n={v.n}" + (f" ({v.n_clusters} trajectories)" if v.n_clusters is not None else "")
    level = f"{v.confidence * 100:g}%"
    if v.n and v.expert_mean is not None and v.clone_mean is not None and v.diff is not None:
        stats = (
            f" expert={v.expert_mean:.3f} clone={v.clone_mean:.3f} diff={_pts(v.diff)} pts"
            f" {level} CI [{_pts(v.ci_low)}, {_pts(v.ci_high)}]"
        )
    else:
        stats = ""
    lines = [
        f"{v.cohort} / {v.metric}: {size}{stats} margin {_pts(-v.within)} -> {v.status.upper()}: {v.reason}"
    ]
    if v.n_needed is not None:
        unit = "trajectories" if v.n_clusters is not None else "items"
        have = v.n_clusters if v.n_clusters is not None else v.n
        lines.append(f"  needed to decide: about {v.n_needed} {unit} (have {have})")
    if v.regressions:
        lines.append(f"  regressions: {v.regressions} items where the clone did worse than the expert")
    if v.regression_rate_upper is not None and v.regression_units is not None:
        unit = "trajectories" if v.n_clusters is not None else "items"
        have = v.n_clusters if v.n_clusters is not None else v.n
        lines.append(
            f"  regression rate: {v.regression_units} of {have} {unit} regressed; rates up to "
            f"{v.regression_rate_upper:.1%} are not ruled out ({level} one-sided upper bound)"
        )
    if v.errors:
        lines.append(f"  failed model calls: {v.errors} of {v.total} items ({v.error_rate:.1%}), excluded")
    if v.holm_adjusted and v.p_adjusted is not None and v.p_value is not None:
        lines.append(f"  Holm-adjusted p={v.p_adjusted:.3g} (raw p={v.p_value:.3g})")
    return lines


# -- internals ----------------------------------------------------------------------------------


def _pts(value: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _real(value: object) -> bool:
    """A real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_options(
    where: str, within: float, confidence: float, resamples: int, max_error_rate: float, min_n: int
) -> None:
    if not _real(within) or not 0 <= within <= 100:
        raise GateError(
            f"{where}: within={within!r}: the margin is the number of points (0 to 100) the clone "
            "may lose against the expert; pass a number such as within=3 (0 means no regression)"
        )
    if not _real(confidence) or not 0.5 < confidence < 1:
        raise GateError(
            f"{where}: confidence={confidence!r}: expected a level strictly between 0.5 and 1, "
            "such as confidence=0.95"
        )
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < MIN_RESAMPLES:
        raise GateError(
            f"{where}: resamples={resamples!r}: expected an integer >= {MIN_RESAMPLES} bootstrap "
            f"resamples, such as {DEFAULT_RESAMPLES}"
        )
    if not _real(max_error_rate) or not 0 <= max_error_rate <= 1:
        raise GateError(
            f"{where}: max_error_rate={max_error_rate!r}: expected a share from 0 to 1 of items "
            "that may be lost to failed model calls, such as 0.0 (none) or 0.05"
        )
    if isinstance(min_n, bool) or not isinstance(min_n, numbers.Integral) or min_n < 1:
        raise GateError(f"{where}: min_n={min_n!r}: expected an integer >= 1, such as {DEFAULT_MIN_N}")


def _scores(where: str, who: str, scores: Scores) -> NDArray[np.float64]:
    import numpy as np

    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((s for s in scores if not isinstance(s, (int, float))), scores)
        raise GateError(
            f"{where}: {who} score {bad!r} is not a number: evaluators must return floats in [0, 1]"
        ) from None
    if arr.ndim != 1:
        raise GateError(f"{where}: {who} scores have shape {arr.shape}: expected a flat list, one score per item")
    bad_mask = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if bad_mask.any():
        i = int(np.flatnonzero(bad_mask)[0])
        raise GateError(
            f"{where}: {who} score {float(arr[i])!r} at item {i} is outside [0, 1]: evaluators "
            "must return scores in [0, 1]; rescale the metric or fix the evaluator "
            f"({int(bad_mask.sum())} bad score{'s' if bad_mask.sum() != 1 else ''} in all)"
        )
    return arr


def _units(
    where: str, e: NDArray[np.float64], c: NDArray[np.float64], clusters: Sequence[Hashable] | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], int | None]:
    """Per-unit (sum of differences, number of items), in a canonical order.

    Units are items, or clusters. Sorting by (sum, size) makes the resampling independent of
    the order items arrive in and of the cluster labels; ``fsum`` makes cluster sums exact.
    """
    import numpy as np

    d = c - e
    if clusters is None:
        return np.sort(d), np.ones_like(d), None
    groups: dict[Hashable, list[float]] = {}
    try:
        for cid, value in zip(clusters, d.tolist()):
            groups.setdefault(cid, []).append(value)
    except TypeError:
        raise GateError(f"{where}: cluster ids must be hashable (trajectory ids such as strings)") from None
    sums = np.array([math.fsum(g) for g in groups.values()], dtype=np.float64)
    sizes = np.array([len(g) for g in groups.values()], dtype=np.float64)
    order = np.lexsort((sizes, sums))
    return sums[order], sizes[order], len(groups)


def _kinds(
    sums: NDArray[np.float64], sizes: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The distinct (sum, size) units, sorted, and how many units of each there are."""
    import numpy as np

    kinds, mult = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
    return kinds, mult.astype(np.int64)


def _bootstrap_points(
    sums: NDArray[np.float64],
    sizes: NDArray[np.float64],
    kinds: NDArray[np.float64],
    mult: NDArray[np.int64],
    resamples: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Sorted bootstrap means in points: ``100 * sum(sums[idx]) / sum(sizes[idx])``."""
    import numpy as np

    k = int(sums.shape[0])
    if kinds.shape[0] * _COMPRESS_FACTOR <= k:
        # Exact shortcut: the counts of each distinct unit in a resample of k units are
        # Multinomial(k, mult / k); same distribution, B x kinds work instead of B x k.
        counts = rng.multinomial(k, mult / k, size=resamples).astype(np.float64)
        num = counts @ kinds[:, 0]
        den = counts @ kinds[:, 1]
    else:
        num = np.empty(resamples)
        den = np.empty(resamples)
        rows = max(1, _CHUNK_ELEMENTS // k)
        unit_sizes_are_one = bool(np.all(sizes == 1))
        for start in range(0, resamples, rows):
            stop = min(resamples, start + rows)
            idx = rng.integers(0, k, size=(stop - start, k))
            num[start:stop] = sums[idx].sum(axis=1)
            den[start:stop] = k if unit_sizes_are_one else sizes[idx].sum(axis=1)
    # Multiply before dividing: integer sums of binary data stay exact (-1500 / 500 == -3.0).
    boot = num * 100.0 / den
    boot.sort()
    return boot


def _bca_constants(
    boot: NDArray[np.float64], estimate: float, kinds: NDArray[np.float64], mult: NDArray[np.int64]
) -> tuple[float, float]:
    """BCa bias correction ``z0`` and acceleration ``a`` (Efron 1987; Efron & Tibshirani ch. 14).

    ``z0 = Phi^-1(share of resamples below the estimate)``, ties counted half (the mid-rank
    convention of scipy.stats.bootstrap: binary metrics put whole atoms on the estimate, and
    identical agents then get z0 = 0 instead of -inf). ``a`` is the jackknife skewness of the
    leave-one-unit-out estimates ``(S - s_i) / (N - n_i)`` (units are items or clusters).
    """
    import numpy as np

    b = boot.shape[0]
    below = int(np.searchsorted(boot, estimate - _EPS, side="left"))
    upto = int(np.searchsorted(boot, estimate + _EPS, side="right"))
    share = min(max((below + upto) / 2 / b, 0.5 / b), 1 - 0.5 / b)
    z0 = _NORMAL.inv_cdf(share)

    k = int(mult.sum())
    if kinds.shape[0] < 2:  # every unit alike: no skewness to correct (and 0/0 otherwise)
        return z0, 0.0
    w = mult.astype(np.float64)
    total_sum = float(w @ kinds[:, 0])
    total_size = float(w @ kinds[:, 1])
    loo = (total_sum - kinds[:, 0]) / (total_size - kinds[:, 1])
    dev = float(w @ loo) / k - loo
    spread = float(w @ dev**2)
    if spread <= 1e-24 * k:  # float noise only
        return z0, 0.0
    return z0, float(w @ dev**3) / (6.0 * spread**1.5)


def _bca_level(z0: float, a: float, level: float) -> float:
    """The bootstrap quantile level BCa uses in place of ``level``: Phi(z0 + u / (1 - a u)), u = z0 + z."""
    if z0 == 0.0 and a == 0.0:
        return level  # the percentile interval, without a float round trip
    u = z0 + _NORMAL.inv_cdf(level)
    den = 1.0 - a * u
    if den <= 0.0:  # beyond the map's range: the level's limit
        return 0.0 if u < 0 else 1.0
    return _NORMAL.cdf(z0 + u / den)


def _bca_p(z0: float, a: float, share: float) -> float:
    """Inverse of :func:`_bca_level`: the nominal level whose BCa quantile is at ``share``."""
    if z0 == 0.0 and a == 0.0:
        return share
    if share <= 0.0:
        return 0.0
    if share >= 1.0:
        return 1.0
    q = _NORMAL.inv_cdf(share) - z0
    den = 1.0 + a * q
    if den <= 0.0:
        return 0.0 if q < 0 else 1.0
    return _NORMAL.cdf(q / den - z0)


def _legacy_needed(units: int, halfwidth: float, within: float) -> int:
    """Units that would shrink the half-width to the margin, by the 1/sqrt(n) law (within > 0)."""
    return max(units + 1, math.ceil(units * (halfwidth / within) ** 2 - 1e-9))


def _inputs(
    where: str, expert: Scores, clone: Scores, clusters: Sequence[Hashable] | None, errors: int, total: int | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], int, int]:
    """Validated scores as float arrays, and plain-int ``errors`` and ``total``."""
    e = _scores(where, "expert", expert)
    c = _scores(where, "clone", clone)
    n = int(e.shape[0])
    if c.shape[0] != n:
        raise GateError(
            f"{where}: expert has {n} scores and clone has {c.shape[0]}: parity is paired, so pass "
            "one score per item for both agents, in the same item order"
        )
    if clusters is not None and len(clusters) != n:
        raise GateError(
            f"{where}: clusters has {len(clusters)} ids for {n} items: pass one trajectory id per "
            "item (or clusters=None when items are independent)"
        )
    if isinstance(errors, bool) or not isinstance(errors, numbers.Integral) or errors < 0:
        raise GateError(
            f"{where}: errors={errors!r}: expected the number (>= 0) of items excluded because a "
            "model call failed"
        )
    if total is None:
        total = n + int(errors)
    if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < errors:
        raise GateError(
            f"{where}: total={total!r} with errors={errors}: expected the number of items "
            "attempted, at least errors; leave total=None to use scored items + errors"
        )
    return e, c, int(errors), int(total)


def _score_counts(sums: NDArray[np.float64], sizes: NDArray[np.float64]) -> tuple[float, float, float]:
    """Tango's inputs for trajectory-level units: fractional gains ``B``, losses ``R``, effective ``n``.

    ``n`` is Kish's effective number of units ``M^2 / sum m_j^2``; ``B = n * sum max(S_j, 0) / M``
    and ``R = n * sum max(-S_j, 0) / M``, so ``(B - R) / n`` is the item-level mean difference.
    Unclustered, ``n`` is the item count and ``B``, ``R`` the gains and losses. ``fsum`` over the
    canonical unit order keeps the result independent of item order.
    """
    size_total = math.fsum(sizes.tolist())
    n_eff = size_total * size_total / math.fsum((sizes * sizes).tolist())
    scale = n_eff / size_total
    gains = math.fsum(s for s in sums.tolist() if s > 0) * scale
    losses = math.fsum(-s for s in sums.tolist() if s < 0) * scale
    return gains, losses, n_eff


def _score_q(gains: Any, losses: Any, n: Any, delta: Any) -> Any:
    """Constrained ML share of losses under ``true diff = delta`` (Tango 1998). Vectorised."""
    import numpy as np

    w = (gains + losses) + (gains - losses) * delta - 2.0 * n * delta
    disc = np.maximum(w * w + 8.0 * n * losses * delta * (1.0 - delta), 0.0)
    return (w + np.sqrt(disc)) / (4.0 * n)


def _score_var(gains: Any, losses: Any, n: Any, delta: Any) -> Any:
    """Per-unit variance of the difference under ``true diff = delta``: ``2 q + delta - delta^2``."""
    import numpy as np

    return np.maximum(2.0 * _score_q(gains, losses, n, delta) + delta - delta * delta, 0.0)


def _score_z(gains: Any, losses: Any, n: Any, delta: Any) -> Any:
    """Tango's statistic ``cc(B - R - n delta) / sqrt(n V(delta))``, continuity-corrected; +-inf where V is 0.

    Works on floats or numpy arrays (one gate per element): the bench and the sequential gate
    call it on arrays of gates.
    """
    import numpy as np

    raw = np.asarray(gains - losses - n * delta, dtype=np.float64)
    num = np.sign(raw) * np.maximum(np.abs(raw) - _CORRECTION, 0.0)
    den = np.sqrt(np.asarray(n * _score_var(gains, losses, n, delta), dtype=np.float64))
    safe = np.where(den > 0, den, 1.0)
    # V = 0 only where the data admit no spread at delta: any distance is infinitely many SDs,
    # and 0/0 (no discordance, delta equal to the estimate) is no evidence either way.
    edge = np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0))
    return np.where(den > 0, num / safe, edge)


def _score_bounds(gains: Any, losses: Any, n: Any, z: float) -> tuple[Any, Any]:
    """The score interval ``{d : -z <= Z(d) <= z}`` as fractions, by bisection. Vectorised.

    ``Z`` decreases in ``d`` and is 0 at the estimate, so the lower bound is the crossing of
    ``z`` on ``[-1, estimate]`` and the upper the crossing of ``-z`` on ``[estimate, 1]``. The
    returned bounds sit on the not-rejected side of each crossing.
    """
    import numpy as np

    est = np.asarray((gains - losses) / n, dtype=np.float64)
    # Both crossings at once: row 0 brackets the lower bound, row 1 the upper.
    lo = np.stack([np.full_like(est, -1.0), est])
    hi = np.stack([est, np.full_like(est, 1.0)])
    sign = np.array([1.0, -1.0]).reshape((2,) + (1,) * est.ndim)
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        # Row 0 rejects where Z > z (the bound is higher); row 1 where Z < -z (it is lower).
        beyond = sign * _score_z(gains, losses, n, mid) > z
        lo = np.where(beyond == (sign > 0), mid, lo)
        hi = np.where(beyond == (sign > 0), hi, mid)
    return hi[0], lo[1]


def _score_var_one(gains: float, losses: float, n: float, delta: float) -> float:
    """:func:`_score_var` for one gate in plain floats (a verdict's hot path: no numpy overhead)."""
    w = (gains + losses) + (gains - losses) * delta - 2.0 * n * delta
    q = (w + math.sqrt(max(w * w + 8.0 * n * losses * delta * (1.0 - delta), 0.0))) / (4.0 * n)
    return max(2.0 * q + delta - delta * delta, 0.0)


def _score_z_one(gains: float, losses: float, n: float, delta: float) -> float:
    """:func:`_score_z` for one gate in plain floats; same formula, same edge values."""
    raw = gains - losses - n * delta
    num = math.copysign(max(abs(raw) - _CORRECTION, 0.0), raw)
    den = math.sqrt(n * _score_var_one(gains, losses, n, delta))
    if den > 0:
        return num / den
    return math.inf if num > 0 else -math.inf if num < 0 else 0.0


def _score_bounds_one(gains: float, losses: float, n: float, z: float) -> tuple[float, float]:
    """:func:`_score_bounds` for one gate in plain floats (the same bisection, step for step)."""
    est = (gains - losses) / n
    lo, hi = -1.0, est
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _score_z_one(gains, losses, n, mid) > z else (lo, mid)
    lower = hi
    lo, hi = est, 1.0
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _score_z_one(gains, losses, n, mid) < -z else (mid, hi)
    return lower, lo


def _needed_units(gains: float, losses: float, n_eff: float, units: int, diff: float, within: float,
                  z: float) -> int | None:
    """Units at which the observed shares would settle the margin (``diff``, ``within`` fractions).

    At the same shares, ``n`` effective units give ``Z(-w) = (n |D + w| - 1/2) / sqrt(n V(-w))``;
    it reaches ``z`` at ``n* = t^2``, ``t = (z sqrt(V) + sqrt(z^2 V + 2 |D + w|)) / (2 |D + w|)``.
    ``None`` when the estimate sits on the margin (no size is expected to settle it). Converted
    from effective units to units by ``units / n``.
    """
    gap = abs(diff + within)
    if gap < 1e-12:
        return None
    root_var = math.sqrt(_score_var_one(gains, losses, n_eff, -within))
    t = (z * root_var + math.sqrt(z * z * root_var * root_var + 4.0 * gap * _CORRECTION)) / (2.0 * gap)
    return max(units + 1, math.ceil(t * t * units / n_eff - 1e-9))


def _bootstrap_interval(
    sums: NDArray[np.float64], sizes: NDArray[np.float64], diff: float, within: float, alpha: float,
    resamples: int, rng: np.random.Generator, interval: str,
) -> tuple[float, float, float]:
    """The seeded cluster bootstrap interval (BCa or percentile) in points and its p-value.

    Kept for ``interval="bca"``/``"percentile"`` and the previous rule: ``z0`` and ``a`` are 0 for
    the percentile interval, which BCa then reduces to exactly. The interval is widened, if need
    be, to contain the estimate. H0 is "diff <= -within": resamples exactly on the margin count
    against the clone; mapping their share through the inverse BCa level map makes
    ``p <= alpha/2`` exactly when ``ci_low > -within``.
    """
    import numpy as np

    kinds, mult = _kinds(sums, sizes)
    boot = _bootstrap_points(sums, sizes, kinds, mult, resamples, rng)
    z0, accel = (0.0, 0.0) if interval == "percentile" else _bca_constants(boot, diff, kinds, mult)
    lo_level = _bca_level(z0, accel, alpha / 2)
    hi_level = _bca_level(z0, accel, 1 - alpha / 2)
    lo_index = min(resamples - 1, math.floor(lo_level * resamples + 1e-9))
    hi_index = max(0, resamples - 1 - math.floor((1 - hi_level) * resamples + 1e-9))
    ci_low = min(float(boot[lo_index]), diff)
    ci_high = max(float(boot[hi_index]), diff)
    at_or_below = int(np.searchsorted(boot, -within + _EPS, side="right")) / resamples
    return ci_low, ci_high, _bca_p(z0, accel, at_or_below)
