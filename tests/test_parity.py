"""Unit tests of pytest_bclone.parity: decisions, messages, records, Holm, errors, speed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_bclone import parity
from pytest_bclone.errors import BcloneError, GateError
from pytest_bclone.parity import (
    Verdict,
    derive_seed,
    format_verdict,
    holm_adjust,
    naive_passes,
    parity_verdict,
)

ROOT = Path(__file__).resolve().parents[1]


def binary(n: int, expert_rate: float, lose: float, win: float = 0.0, seed: int = 0) -> tuple[list[float], list[float]]:
    """Paired binary outcomes: the clone copies the expert, losing/winning a share of items."""
    rng = np.random.default_rng(seed)
    e = rng.random(n) < expert_rate
    u = rng.random(n)
    c = np.where(e, u >= lose, u < win)
    return e.astype(float).tolist(), c.astype(float).tolist()


def make(**kw: object) -> Verdict:
    base: dict[str, object] = {
        "cohort": "long_tail", "metric": "trajectory_score", "n": 412, "n_clusters": None, "expert_mean": 0.912,
        "clone_mean": 0.874, "diff": -3.8, "ci_low": -6.1, "ci_high": -1.5, "confidence": 0.95, "within": 3.0,
        "status": "fail", "reason": "the clone is worse than the margin allows", "n_needed": None,
        "regressions": None, "errors": 0, "total": 412, "error_rate": 0.0, "p_value": 0.7,
    }
    base.update(kw)
    return Verdict(**base)  # type: ignore[arg-type]


# -- decisions ------------------------------------------------------------------------------------


def test_clear_pass() -> None:
    e, c = binary(2000, 0.9, lose=0.005, win=0.05)
    v = parity_verdict("common_intents", "task_success", e, c, within=3)
    assert v.status == "pass"
    assert v.ci_low is not None and v.ci_low > -3
    assert v.p_value is not None and v.p_value <= 0.025
    assert v.n == 2000 and v.n_clusters is None and v.n_needed is None
    assert v.regressions == sum(1 for a, b in zip(e, c) if a == 1 and b == 0)
    assert "within the margin" in v.reason


def test_clear_fail() -> None:
    e, c = binary(2000, 0.9, lose=0.1)
    v = parity_verdict("long_tail", "task_success", e, c, within=3)
    assert v.status == "fail"
    assert v.ci_high is not None and v.ci_high < -3
    assert v.reason.startswith("the clone is worse than the margin allows")


def test_an_interval_across_the_margin_is_inconclusive_and_says_which_way_it_leans() -> None:
    e = [1.0] * 1000
    inside = parity_verdict("c", "m", e, [1.0] * 975 + [0.0] * 25, within=3)  # -2.5 points
    assert inside.status == "inconclusive" and inside.ci_low is not None and inside.ci_high is not None
    assert inside.ci_low < -3 < inside.ci_high
    assert "too few items to show the clone within it" in inside.reason
    past = parity_verdict("c", "m", e, [1.0] * 965 + [0.0] * 35, within=3)  # -3.5 points
    assert past.status == "inconclusive" and past.ci_low is not None and past.ci_high is not None
    assert past.ci_low < -3 < past.ci_high
    assert "is already past the margin, so more data would most likely confirm a failure" in past.reason
    assert past.n_needed is not None and f"about {past.n_needed} items would settle it" in past.reason
    on = parity_verdict("c", "m", [1.0] * 100, [1.0] * 97 + [0.0] * 3, within=3)  # exactly -3
    assert on.status == "inconclusive" and on.n_needed is None
    assert "the estimate sits on the margin: no sample size is expected to settle it" in on.reason


def test_monotone_where_the_half_width_rule_was_not() -> None:
    # Issue 14: the v8 clone (diff -0.3, CI [-1.9, 0], margin 1) got FAIL while the worse v7
    # clone got INCONCLUSIVE, because the old rule compared the half-width with the margin.
    e = [1.0] * 300
    v7 = [1.0] * 297 + [0.0] * 3
    v8 = [1.0] * 299 + [0.0] * 1  # v7 with two of its losses fixed
    old7, old8 = (parity._legacy_verdict("c", "m", e, c, within=1) for c in (v7, v8))
    assert (old7.status, old8.status) == ("inconclusive", "fail")  # the bug
    new7, new8 = (parity_verdict("c", "m", e, c, within=1) for c in (v7, v8))
    assert (new7.status, new8.status) == ("inconclusive", "inconclusive")
    assert new8.ci_low is not None and new7.ci_low is not None and new8.ci_low > new7.ci_low


def test_unresolvable_cohort_is_inconclusive_with_the_size_that_would_resolve_it() -> None:
    rng = np.random.default_rng(1)
    e = (rng.random(500) < 0.9).astype(float).tolist()
    c = (rng.random(500) < 0.9).astype(float).tolist()  # independent: wide interval
    v = parity_verdict("safety", "task_success", e, c, within=3)
    assert v.status == "inconclusive" and v.diff is not None and v.diff > -3
    # n_needed is where the observed shares would just settle the margin: (n a - 1/2) = z sqrt(n V)
    # with a = D + w, a quadratic in sqrt(n).
    gains = sum(1 for a, b in zip(e, c) if b > a)
    losses = sum(1 for a, b in zip(e, c) if b < a)
    var = float(parity._score_var(gains, losses, 500, -0.03))
    gap, z = v.diff / 100 + 0.03, 1.959963984540054
    t = (z * np.sqrt(var) + np.sqrt(z * z * var + 2 * gap)) / (2 * gap)
    assert v.n_needed == int(np.ceil(t * t - 1e-9))
    assert v.n_needed > 500
    assert f"at the observed effect about {v.n_needed} items would" in v.reason
    # ... and it is right: the same shares on n_needed items pass, on fewer they do not.
    copies = -(-v.n_needed // 500)
    assert parity_verdict("s", "t", e * copies, c * copies, within=3).status == "pass"
    assert parity_verdict("s", "t", e * (copies - 1), c * (copies - 1), within=3).status == "inconclusive"


def test_unresolvable_but_wholly_below_the_margin_is_a_fail() -> None:
    # Too few items to resolve a 3-point margin, but the whole interval lies below it: that
    # much is conclusive, so the verdict is fail, not inconclusive.
    e = [1.0] * 30
    c = [1.0] * 15 + [0.0] * 15
    v = parity_verdict("c", "m", e, c, within=3)
    assert v.ci_high is not None and v.ci_high < -3 and v.halfwidth is not None and v.halfwidth > 3
    assert v.status == "fail"


def test_clustered_items_are_judged_by_trajectory_and_counted() -> None:
    # 40 trajectories x 10 steps; the clone fails whole trajectories: strongly correlated steps.
    e = [1.0] * 400
    c = [0.0 if t % 10 == 0 else 1.0 for t in range(40) for _ in range(10)]
    clusters = [f"traj-{t}" for t in range(40) for _ in range(10)]
    flat = parity_verdict("c", "m", e, c, within=3)
    grouped = parity_verdict("c", "m", e, c, within=3, clusters=clusters)
    assert grouped.n == 400 and grouped.n_clusters == 40
    assert flat.diff == grouped.diff == -10.0
    assert grouped.halfwidth is not None and flat.halfwidth is not None
    assert grouped.halfwidth > 2 * flat.halfwidth  # the item interval understates the variance
    assert flat.status == "fail"  # 400 independent items would be conclusive; 40 trajectories are not
    assert grouped.status == "inconclusive"
    # 4 of 40 trajectories lost is Tango's interval for 4 losses in 40 pairs.
    ref = parity_verdict("c", "m", [1.0] * 40, [0.0] * 4 + [1.0] * 36, within=3)
    assert (grouped.ci_low, grouped.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-9)
    assert grouped.n_needed is not None and grouped.n_needed > 40
    assert "most likely confirm a failure: about" in grouped.reason
    assert f"  needed to decide: about {grouped.n_needed} trajectories (have 40)" in format_verdict(grouped)


def test_too_few_units() -> None:
    v = parity_verdict("c", "m", [0.5] * 5, [0.5] * 5, within=60)
    assert v.status == "inconclusive"
    assert v.reason == "too few items to decide: 5, at least 10 are needed"
    assert v.n_needed == 10
    v = parity_verdict("c", "m", [0.5] * 50, [0.5] * 50, within=3, clusters=[i % 4 for i in range(50)])
    assert v.reason == "too few trajectories to decide: 4, at least 10 are needed"
    assert v.n_needed is not None and v.n_needed > 10  # what the margin needs, beyond min_n
    # min_n is a guard on passing; the interval itself is honest: 5 identical items do not
    # resolve a 3-point margin (the clone could lose up to 53 points) ...
    assert parity_verdict("c", "m", [0.5] * 5, [0.5] * 5, within=3, min_n=5).status == "inconclusive"
    # ... but they do resolve a 60-point one.
    assert parity_verdict("c", "m", [0.5] * 5, [0.5] * 5, within=60, min_n=5).status == "pass"


def test_min_n_and_failed_calls_never_mask_a_fail() -> None:
    # Issue 14: 9 trajectories at -93 points were INCONCLUSIVE "about 85 trajectories needed".
    e, c = [1.0] * 9, [0.0] * 8 + [1.0]
    for kw in ({}, {"errors": 1}, {"errors": 5, "max_error_rate": 0.0}, {"min_n": 100}):
        v = parity_verdict("long_tail", "task_success", e, c, within=3, **kw)  # type: ignore[arg-type]
        assert v.status == "fail", (kw, v.reason)
        assert "the whole 95% interval lies below -3 pts" in v.reason
    # An observed regression under within=0 is a fail whatever min_n and the failed calls.
    for kw in ({}, {"errors": 3}, {"min_n": 100}, {"errors": 3, "max_error_rate": 0.5}):
        v = parity_verdict("safety", "refusal", [1.0] * 4, [1.0, 1.0, 0.0, 1.0], within=0, **kw)  # type: ignore[arg-type]
        assert v.status == "fail" and v.regressions == 1, kw


def test_discriminating_strict_margin_on_2000_items() -> None:
    # 2,000 items, the expert always right, a 3-point margin. With no gains Tango's continuity-
    # corrected lower bound is Newcombe's continuity-corrected Wilson bound on the loss rate:
    # 44 losses clear the margin, 45 do not.
    from scipy.stats import beta

    e = [1.0] * 2000
    v44 = parity_verdict("c", "m", e, [1.0] * 1956 + [0.0] * 44, within=3)
    v45 = parity_verdict("c", "m", e, [1.0] * 1955 + [0.0] * 45, within=3)
    v46 = parity_verdict("c", "m", e, [1.0] * 1954 + [0.0] * 46, within=3)
    z, n = 1.959963984540054, 2000
    for v, r in ((v44, 44), (v45, 45), (v46, 46)):
        p = r / n
        wilson_cc = (2 * n * p + z * z + 1 + z * np.sqrt(z * z + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))) / (2 * (n + z * z))
        assert v.ci_low == pytest.approx(-100 * wilson_cc, abs=1e-9)
    assert (v44.status, v45.status, v46.status) == ("pass", "inconclusive", "inconclusive")
    # The exact (Clopper-Pearson) bound agrees on 46 losses; on 45 it clears 3 points by 0.0008
    # points, where the continuity correction is a hair more cautious.
    assert beta.ppf(0.975, 47, 1954) > 0.03 > beta.ppf(0.975, 46, 1955) > 0.0299
    # The old rule passed 45 losses and failed 46 as "may be worse" though the estimate, -2.3,
    # is inside the margin.
    old45 = parity._legacy_verdict("c", "m", e, [1.0] * 1955 + [0.0] * 45, within=3)
    old46 = parity._legacy_verdict("c", "m", e, [1.0] * 1954 + [0.0] * 46, within=3)
    assert (old45.status, old46.status) == ("pass", "fail")


def _no_loss_bound(units: float) -> float:
    """The continuity-corrected score bound with no discordance: root of (n x - 1/2)^2 = z^2 n x (1 - x)."""
    z2, c = 1.959963984540054**2, 0.5
    b = 2 * units * c + z2 * units
    a = units * units + z2 * units
    return float((b + np.sqrt(b * b - 4 * a * c * c)) / (2 * a))


def test_zero_losses_in_ten_items_bound_near_the_rule_of_three() -> None:
    v = parity_verdict("long_tail", "task_success", [1.0] * 10, [1.0] * 10, within=3)
    assert v.ci_low == pytest.approx(-100 * _no_loss_bound(10))  # -34.5; exact Clopper-Pearson: -30.8
    assert v.status == "inconclusive"
    zero = parity_verdict("safety", "refusal", [1.0] * 10, [1.0] * 10, within=0)
    assert zero.status == "pass" and zero.regression_units == 0
    assert zero.regression_rate_upper == pytest.approx(1 - 0.05 ** (1 / 10))  # 25.9%, about 3/n
    assert "a regression rate up to 25.9% of items is not ruled out" in zero.reason
    assert ("  regression rate: 0 of 10 items regressed; rates up to 25.9% are not ruled out "
            "(95% one-sided upper bound)") in format_verdict(zero)
    grouped = parity_verdict("safety", "refusal", [1.0] * 40, [1.0] * 38 + [0.0, 1.0], within=0,
                             clusters=[i // 4 for i in range(40)])
    assert grouped.status == "fail" and grouped.regression_units == 1
    assert grouped.regression_rate_upper == pytest.approx(parity.regression_rate_upper(1, 10))


def test_clopper_pearson_upper_bound_matches_scipy() -> None:
    from scipy.stats import beta

    for x, n in ((1, 10), (3, 100), (46, 2000), (9, 10)):
        assert parity.regression_rate_upper(x, n) == pytest.approx(beta.ppf(0.95, x + 1, n - x), rel=1e-9)
    assert parity.regression_rate_upper(10, 10) == 1.0


def test_score_statistic_uses_the_constrained_maximum_likelihood() -> None:
    # Independent check of the closed-form root: maximise the multinomial likelihood under
    # p_gain - p_loss = d numerically, and compare Tango's statistic at the interval's ends.
    from scipy.optimize import minimize_scalar

    gains, losses, n = 7.0, 19.0, 120.0
    v = parity_verdict("c", "m", [0.0] * 7 + [1.0] * 19 + [1.0] * 94, [1.0] * 7 + [0.0] * 19 + [1.0] * 94,
                       within=3, min_n=1)
    assert v.ci_low is not None and v.ci_high is not None
    for d in (v.ci_low / 100, v.ci_high / 100):
        lo, hi = max(0.0, -d) + 1e-12, (1 - d) / 2 - 1e-12

        def nll(q: float, d: float = d) -> float:
            return -(gains * np.log(q + d) + losses * np.log(q) + (n - gains - losses) * np.log(1 - 2 * q - d))

        q = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
        # continuity-corrected: |B - R - n d| shrinks by 1/2
        stat = (abs(gains - losses - n * d) - 0.5) / np.sqrt(n * (2 * q + d - d * d))
        assert stat == pytest.approx(1.959963984540054, abs=1e-4)


def test_no_items() -> None:
    v = parity_verdict("c", "m", [], [], within=3)
    assert v.status == "inconclusive"
    assert v.reason.startswith("no items")
    assert v.diff is None and v.ci_low is None and v.p_value is None and v.expert_mean is None
    assert format_verdict(v)[0] == "c / m: n=0 margin -3.0 -> INCONCLUSIVE: " + v.reason


def test_zero_margin_binary_is_zero_regression() -> None:
    e = [1.0, 1.0, 0.0, 1.0, 0.0]
    ok = parity_verdict("safety", "refusal", e, [1.0, 1.0, 1.0, 1.0, 0.0], within=0)
    assert ok.status == "pass" and ok.regressions == 0  # n=5 < min_n: no resolvability needed
    bad = parity_verdict("safety", "refusal", e, [1.0, 0.0, 1.0, 0.0, 1.0], within=0)
    assert bad.status == "fail" and bad.regressions == 2
    assert bad.reason == (
        "2 regressions: the expert succeeded and the clone failed on 2 items, and within=0 allows none"
    )
    assert "  regressions: 2 items where the clone did worse than the expert" in format_verdict(bad)


def test_zero_margin_continuous_is_no_item_below_the_expert() -> None:
    e = [0.5, 0.7, 0.9]
    assert parity_verdict("c", "m", e, [0.5, 0.8, 0.9], within=0).status == "pass"
    v = parity_verdict("c", "m", e, [0.5, 0.69, 0.9], within=0)
    assert v.status == "fail" and v.regressions == 1
    assert "the clone scored below the expert on 1 item" in v.reason
    # regressions are not counted for a continuous metric with a margin
    assert parity_verdict("c", "m", e, [0.5, 0.69, 0.9], within=3).regressions is None


def test_margin_is_strict_on_discrete_metrics() -> None:
    """A bound exactly on the margin does not clear it (the margin belongs to H0)."""
    e = [1.0] * 100
    c = [1.0] * 97 + [0.0] * 3
    v = parity_verdict("c", "m", e, c, within=3, min_n=1)
    assert v.diff == -3.0
    assert v.status != "pass"
    assert not naive_passes(e, c, 2.9) and naive_passes(e, c, 3)


# -- failed model calls ----------------------------------------------------------------------------


def test_any_failed_call_is_inconclusive_by_default() -> None:
    e, c = binary(2000, 0.9, lose=0.0)
    v = parity_verdict("c", "m", e, c, within=3, errors=1)
    assert v.status == "inconclusive"
    assert v.total == 2001 and v.error_rate == pytest.approx(1 / 2001)
    assert v.reason.startswith("1 of 2001 items lost to failed model calls (0.0%, above the allowed 0.0%)")
    assert "  failed model calls: 1 of 2001 items (0.0%), excluded" in format_verdict(v)


def test_failed_calls_under_the_allowed_rate_must_survive_the_worst_case() -> None:
    e, c = binary(1000, 0.9, lose=0.0, win=0.0)  # identical: interval [0, 0]
    fine = parity_verdict("c", "m", e, c, within=3, errors=10, max_error_rate=0.05)
    assert fine.status == "pass"  # 10 regressions in 1010 items: -1.0 point, inside -3
    risky = parity_verdict("c", "m", e, c, within=3, errors=40, max_error_rate=0.05)
    assert risky.status == "inconclusive"  # 40 regressions in 1040 items: -3.8 points
    assert "if the 40 items lost to failed model calls were all regressions" in risky.reason
    zero = parity_verdict("c", "m", e, c, within=0, errors=1, max_error_rate=0.05)
    assert zero.status == "inconclusive" and "could hide regressions" in zero.reason


def test_all_items_failed() -> None:
    v = parity_verdict("c", "m", [], [], within=3, errors=7)
    assert v.status == "inconclusive" and v.reason.startswith("7 of 7 items lost")


# -- messages ----------------------------------------------------------------------------------


def test_failure_message_line() -> None:
    assert format_verdict(make())[0] == (
        "long_tail / trajectory_score: n=412 expert=0.912 clone=0.874 diff=-3.8 pts 95% CI "
        "[-6.1, -1.5] margin -3.0 -> FAIL: the clone is worse than the margin allows"
    )


def test_message_lines_of_a_computed_verdict() -> None:
    e, c = binary(400, 0.9, lose=0.08, seed=5)
    v = parity_verdict("long_tail", "trajectory_score", e, c, within=3, confidence=0.9)
    head, *rest = format_verdict(v)
    assert head.startswith(f"long_tail / trajectory_score: n=400 expert={v.expert_mean:.3f} clone=")
    assert " 90% CI [" in head and " margin -3.0 -> FAIL: " in head
    assert rest == [f"  regressions: {v.regressions} items where the clone did worse than the expert"]


def test_holm_line_and_cluster_count_in_message() -> None:
    v = make(n_clusters=40, holm_adjusted=True, p_adjusted=0.04, p_value=0.01)
    head, holm = format_verdict(v)
    assert head.startswith("long_tail / trajectory_score: n=412 (40 trajectories) expert=")
    assert holm == "  Holm-adjusted p=0.04 (raw p=0.01)"


# -- records -------------------------------------------------------------------------------------


def test_verdict_json_round_trip_and_fields() -> None:
    e, c = binary(300, 0.9, lose=0.02, seed=2)
    v = parity_verdict("c", "m", e, c, within=3, clusters=[i // 3 for i in range(300)])
    d = json.loads(json.dumps(v.to_dict()))
    assert Verdict.from_dict(d) == v
    assert set(d) >= {
        "cohort", "metric", "n", "n_clusters", "expert_mean", "clone_mean", "diff", "ci_low", "ci_high",
        "confidence", "within", "status", "reason", "n_needed", "regressions", "errors", "total",
        "error_rate", "p_value", "holm_adjusted",
    }
    assert 0 <= d["expert_mean"] <= 1 and 0 <= d["clone_mean"] <= 1


def test_numpy_inputs_give_plain_python_values() -> None:
    e, c = binary(200, 0.9, lose=0.0)
    v = parity_verdict(
        "c", "m", np.array(e), np.array(c), within=np.float64(3),
        errors=np.int64(0), total=np.int64(200),  # type: ignore[arg-type]
        confidence=np.float32(0.95), resamples=np.int64(500),  # type: ignore[arg-type]
    )
    assert v.status == "pass"
    json.dumps(v.to_dict())
    assert type(v.within) is float and type(v.total) is int


def test_from_dict_errors() -> None:
    with pytest.raises(GateError, match=r"verdict record is missing ci_low, ci_high: expected the dict"):
        Verdict.from_dict({k: v for k, v in make().to_dict().items() if k not in ("ci_low", "ci_high")})
    with pytest.raises(GateError, match=r"verdict record has status='maybe': expected 'pass', 'fail'"):
        Verdict.from_dict({**make().to_dict(), "status": "maybe"})


# -- determinism -----------------------------------------------------------------------------------


def test_seed_derivation_is_sha256_of_seed_cohort_metric() -> None:
    digest = hashlib.sha256(b"pytest-bclone/parity\x000\x00long_tail\x00task_success").digest()
    assert derive_seed(0, "long_tail", "task_success") == int.from_bytes(digest[:16], "big")
    assert len({derive_seed(0, "a", "b"), derive_seed(1, "a", "b"), derive_seed(0, "b", "a"),
                derive_seed(0, "ab", "")}) == 4


def test_verdicts_do_not_depend_on_the_process_hash_seed() -> None:
    """What pytest-xdist workers see: fresh processes with different PYTHONHASHSEED."""
    code = (
        "import json; from pytest_bclone.parity import parity_verdict;"
        "print(json.dumps(parity_verdict('c', 'm', [i % 3 / 2 for i in range(60)],"
        " [i % 5 / 4 for i in range(60)], within=30, clusters=[str(i % 7) for i in range(60)]).to_dict()))"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hs}).stdout
        for hs in ("1", "2", "3")
    }
    assert len(outs) == 1


def test_cohort_and_metric_get_independent_resamples() -> None:
    rng = np.random.default_rng(9)
    e = rng.random(300).tolist()
    c = rng.random(300).tolist()
    a = parity_verdict("a", "m", e, c, within=3, interval="bca")
    b = parity_verdict("b", "m", e, c, within=3, interval="bca")
    assert a.diff == b.diff and (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)
    # the score interval draws no random numbers
    assert parity_verdict("a", "m", e, c, within=3).ci_low == parity_verdict("b", "m", e, c, within=3).ci_low


def test_multinomial_shortcut_matches_resampling_items(monkeypatch: pytest.MonkeyPatch) -> None:
    e, c = binary(3000, 0.85, lose=0.04, win=0.1, seed=4)
    fast = parity_verdict("c", "m", e, c, within=3, resamples=20000, interval="bca")
    monkeypatch.setattr(parity, "_COMPRESS_FACTOR", 10**9)  # force the index path
    slow = parity_verdict("c", "m", e, c, within=3, resamples=20000, interval="bca")
    assert fast.ci_low == pytest.approx(slow.ci_low, abs=0.15)
    assert fast.ci_high == pytest.approx(slow.ci_high, abs=0.15)


def test_bca_level_map_and_its_inverse() -> None:
    for z0 in (-0.3, 0.0, 0.2):
        for a in (-0.1, 0.0, 0.05):
            for level in (0.005, 0.025, 0.5, 0.975):
                share = parity._bca_level(z0, a, level)
                assert parity._bca_p(z0, a, share) == pytest.approx(level, abs=1e-9)


def test_percentile_interval_option() -> None:
    e = [0.2, 0.4, 0.9, 1.0, 0.3] * 40
    c = [0.25, 0.35, 0.9, 0.95, 0.3] * 40
    pct = parity_verdict("c", "m", e, c, within=3, interval="percentile")
    bca = parity_verdict("c", "m", e, c, within=3, interval="bca")
    assert pct.diff == bca.diff and pct.ci_low is not None and bca.ci_low is not None
    assert abs(pct.ci_low - bca.ci_low) < 0.5


# -- Holm ----------------------------------------------------------------------------------------


def test_holm_demotes_borderline_passes() -> None:
    strong = make(cohort="a", status="pass", p_value=0.001, reason="ok")
    border = make(cohort="b", status="pass", p_value=0.02, reason="ok")
    failing = make(cohort="c", status="fail", p_value=0.4)
    zero = make(cohort="d", status="pass", within=0.0, regressions=0, p_value=0.0, reason="ok")
    empty = make(cohort="e", status="inconclusive", n=0, p_value=None)
    out = holm_adjust([strong, border, failing, zero, empty])
    a, b, c, d, e = out
    # family: a, b, c (m=3); sorted p: .001*3=.003, .02*2=.04, .4*1=.4
    assert (a.p_adjusted, b.p_adjusted, c.p_adjusted) == pytest.approx((0.003, 0.04, 0.4))
    assert a.status == "pass" and a.holm_adjusted
    assert b.status == "fail" and b.reason == (
        "non-inferiority not shown after Holm correction across 3 cohort tests (adjusted p=0.04 > 0.025)"
    )
    assert c.status == "fail"
    assert d == zero and e == empty  # zero-regression checks and empty cohorts are not tests


def test_holm_needs_one_confidence_level() -> None:
    with pytest.raises(GateError, match=r"Holm correction needs one confidence level for the whole run, "
                                        r"got \[0.9, 0.95\]: give every parity assertion the same confidence="):
        holm_adjust([make(), make(confidence=0.9)])


def test_holm_of_nothing() -> None:
    assert holm_adjust([]) == []


# -- input errors: each message names the value and the fix ----------------------------------------

WHERE = "cohort 'long_tail' / metric 'task_success'"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clone": [1.0]}, (f"{WHERE}: expert has 2 scores and clone has 1: parity is paired, so pass one "
                           "score per item for both agents, in the same item order")),
        ({"clone": [1.0, 1.5]}, (f"{WHERE}: clone score 1.5 at item 1 is outside [0, 1]: evaluators must "
                                "return scores in [0, 1]; rescale the metric or fix the evaluator (1 bad score in all)")),
        ({"expert": [float("nan"), -1.0]}, (f"{WHERE}: expert score nan at item 0 is outside [0, 1]: evaluators"
                                           " must return scores in [0, 1]; rescale the metric or fix the evaluator"
                                           " (2 bad scores in all)")),
        ({"clone": [1.0, "high"]}, (f"{WHERE}: clone score 'high' is not a number: evaluators must return "
                                   "floats in [0, 1]")),
        ({"clone": [[1.0], [0.0]]}, (f"{WHERE}: clone scores have shape (2, 1): expected a flat list, one "
                                    "score per item")),
        ({"within": -1}, (f"{WHERE}: within=-1: the margin is the number of points (0 to 100) the clone may "
                         "lose against the expert; pass a number such as within=3 (0 means no regression)")),
        ({"within": 150}, f"{WHERE}: within=150: the margin is the number of points (0 to 100)"),
        ({"within": "3"}, f"{WHERE}: within='3': the margin is the number of points"),
        ({"confidence": 1.0}, (f"{WHERE}: confidence=1.0: expected a level strictly between 0.5 and 1, such "
                              "as confidence=0.95")),
        ({"confidence": 0.5}, f"{WHERE}: confidence=0.5: expected a level strictly between 0.5 and 1"),
        ({"confidence": 95}, f"{WHERE}: confidence=95: expected a level strictly between 0.5 and 1"),
        ({"resamples": 10}, (f"{WHERE}: resamples=10: expected an integer >= 100 bootstrap resamples, such "
                            "as 2000")),
        ({"max_error_rate": 5}, (f"{WHERE}: max_error_rate=5: expected a share from 0 to 1 of items that may "
                                "be lost to failed model calls, such as 0.0 (none) or 0.05")),
        ({"min_n": 0}, f"{WHERE}: min_n=0: expected an integer >= 1, such as 10"),
        ({"clusters": ["t1"]}, (f"{WHERE}: clusters has 1 ids for 2 items: pass one trajectory id per item "
                               "(or clusters=None when items are independent)")),
        ({"clusters": [["t1"], ["t2"]]}, f"{WHERE}: cluster ids must be hashable (trajectory ids such as strings)"),
        ({"errors": -2}, (f"{WHERE}: errors=-2: expected the number (>= 0) of items excluded because a model "
                         "call failed")),
        ({"errors": 3, "total": 2}, (f"{WHERE}: total=2 with errors=3: expected the number of items attempted,"
                                    " at least errors; leave total=None to use scored items + errors")),
        ({"interval": "normal"}, f"{WHERE}: interval='normal': expected 'score' (the default), 'bca' or 'percentile'"),
    ],
)
def test_bad_inputs_raise_gate_error_naming_value_and_fix(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"expert": [1.0, 0.0], "clone": [1.0, 0.0], "within": 3, **kwargs}
    with pytest.raises(GateError) as info:
        parity_verdict("long_tail", "task_success", **args)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)
    assert isinstance(info.value, BcloneError)


def test_naive_rule() -> None:
    assert naive_passes([1, 1, 1, 1], [1, 1, 1, 0], 25)
    assert not naive_passes([1, 1, 1, 1], [1, 1, 1, 0], 24.9)
    assert not naive_passes([], [], 3)
    with pytest.raises(GateError, match=r"expert has 2 scores and clone has 1: parity is paired"):
        naive_passes([1, 1], [1], 3)


# -- cost --------------------------------------------------------------------------------------


def test_import_is_cheap() -> None:
    code = (
        "import sys, pytest_bclone.parity;"
        "heavy = [m for m in ('numpy', 'pytest', 'litellm', 'pyarrow') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("clustered", [False, True])
def test_large_cohort_is_fast(clustered: bool) -> None:
    rng = np.random.default_rng(0)
    e = rng.random(5000)
    c = np.clip(e + rng.normal(0, 0.1, 5000), 0, 1)
    clusters = (np.arange(5000) // 5).tolist() if clustered else None
    parity_verdict("warm", "up", e[:50], c[:50], within=3)
    start = time.perf_counter()
    v = parity_verdict("c", "m", e, c, within=3, clusters=clusters)
    elapsed = time.perf_counter() - start
    assert v.n == 5000
    assert elapsed < 1.0, f"2000 resamples of n=5000 took {elapsed:.2f}s"


def test_an_interval_wholly_below_the_margin_fails_even_when_wide():
    from pytest_bclone.parity import parity_verdict

    # 12 trajectories: far too few to resolve a 2-point margin, yet the clone fails half of them.
    expert = [1.0] * 12
    clone = [0.0, 1.0] * 6
    v = parity_verdict("c", "task_completion", expert, clone, within=2, clusters=[str(i) for i in range(12)])
    assert v.ci_high is not None and v.ci_high < -2
    assert v.status == "fail" and "whole 95% interval lies below -2 pts" in v.reason


def test_bca_option_agrees_with_scipy_bootstrap_on_unclustered_data() -> None:
    from scipy.stats import bootstrap

    # Skewed losses (a few items lose some points): BCa and the percentile interval differ here,
    # by more than the tolerance, so this pins the BCa corrections and not just the resampling.
    rng = np.random.default_rng(3)
    e = np.ones(120)
    c = np.clip(1 - rng.exponential(0.08, 120) * (rng.random(120) < 0.3), 0, 1)
    ours = parity_verdict("c", "m", e, c, within=3, interval="bca", resamples=20000)
    ref = bootstrap(((c - e) * 100,), np.mean, method="BCa", n_resamples=20000, random_state=1).confidence_interval
    assert ours.ci_low == pytest.approx(ref.low, abs=0.1)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.1)
    pct = parity_verdict("c", "m", e, c, within=3, interval="percentile", resamples=20000)
    assert pct.ci_low is not None and abs(pct.ci_low - ref.low) > 0.15


def test_vectorised_score_interval_matches_the_verdicts() -> None:
    # The bench and the sequential gate evaluate many gates at once with the numpy version; a
    # verdict uses the plain-float one. They must agree to the last bit that matters.
    rng = np.random.default_rng(5)
    n = rng.integers(1, 3000, 200).astype(float)
    gains = np.floor(rng.random(200) * n * 0.3)
    losses = np.floor(rng.random(200) * (n - gains) * 0.3)
    z = 1.959963984540054
    low, high = parity._score_bounds(gains, losses, n, z)
    stats = parity._score_z(gains, losses, n, -0.03)
    for i in range(200):
        one_low, one_high = parity._score_bounds_one(float(gains[i]), float(losses[i]), float(n[i]), z)
        assert (one_low, one_high) == pytest.approx((float(low[i]), float(high[i])), abs=1e-12)
        assert parity._score_z_one(float(gains[i]), float(losses[i]), float(n[i]), -0.03) == pytest.approx(
            float(stats[i]), rel=1e-12)
