"""Hypothesis properties of the parity gate: each is true for every input, not just on average."""

from __future__ import annotations

import json
import random
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_bclone.parity import Verdict, holm_adjust, parity_verdict

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B = 200  # resamples: properties hold for any B, and small B keeps the suite fast

# Scores from a small grid give ties and binary-only samples often; free floats give the rest.
score = st.one_of(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
                  st.floats(0.0, 1.0))
within_st = st.sampled_from([0.0, 0.5, 1.0, 3.0, 5.0, 10.0, 25.0, 100.0])


@st.composite
def paired_scores(draw: st.DrawFn, min_size: int = 1, max_size: int = 60) -> tuple[list[float], list[float]]:
    pairs = draw(st.lists(st.tuples(score, score), min_size=min_size, max_size=max_size))
    return [e for e, _ in pairs], [c for _, c in pairs]


@st.composite
def clusters_for(draw: st.DrawFn, n: int) -> list[str] | None:
    if draw(st.booleans()):
        return None
    k = draw(st.integers(1, max(1, n)))
    return [f"t{draw(st.integers(0, k - 1))}" for _ in range(n)]


def verdict(expert: list[float], clone: list[float], within: float, **kw: object) -> Verdict:
    options: dict[str, object] = {"resamples": B, **kw}
    return parity_verdict("cohort", "metric", expert, clone, within=within, **options)  # type: ignore[arg-type]


@FAST
@given(paired_scores(), within_st, st.integers(0, 2**32), st.data())
def test_interval_contains_the_point_estimate(data: tuple[list[float], list[float]], within: float,
                                              seed: int, more: st.DataObject) -> None:
    expert, clone = data
    v = verdict(expert, clone, within, seed=seed, clusters=more.draw(clusters_for(len(expert))))
    assert v.ci_low is not None and v.ci_high is not None and v.diff is not None
    assert v.ci_low <= v.diff <= v.ci_high
    assert -100.0 <= v.ci_low and v.ci_high <= 100.0


@FAST
@given(st.lists(score, min_size=1, max_size=80), within_st, st.data())
def test_identical_agents_get_the_no_discordance_interval(scores: list[float], within: float,
                                                          more: st.DataObject) -> None:
    """No difference in n (effective) units bounds the loss near the rule of three, never at 0."""
    clusters = more.draw(clusters_for(len(scores)))
    v = verdict(scores, list(scores), within, min_n=1, clusters=clusters)
    sizes = [len(scores)] if clusters is None else [clusters.count(t) for t in set(clusters)]
    units = len(scores) if clusters is None else len(scores) ** 2 / sum(m * m for m in sizes)  # Kish
    # the continuity-corrected score bound: the root of (n x - 1/2)^2 = z^2 n x (1 - x)
    z2 = NormalDist().inv_cdf(0.975) ** 2
    b, a = units + z2 * units, units * units + z2 * units
    bound = (b + (b * b - a) ** 0.5) / (2 * a)
    assert v.diff == 0.0
    assert v.ci_low == pytest.approx(-100 * bound, rel=1e-9)
    assert v.ci_high == pytest.approx(100 * bound, rel=1e-9)
    assert v.status == ("pass" if within == 0 or v.ci_low > -within else "inconclusive"), v.reason


@FAST
@given(paired_scores(), within_st, st.integers(0, 2**32), st.data())
def test_same_seed_same_verdict(data: tuple[list[float], list[float]], within: float, seed: int,
                                more: st.DataObject) -> None:
    expert, clone = data
    clusters = more.draw(clusters_for(len(expert)))
    a = verdict(expert, clone, within, seed=seed, clusters=clusters)
    b = verdict(list(expert), list(clone), within, seed=seed, clusters=clusters)
    assert a == b


@FAST
@given(paired_scores(), within_st, st.randoms(use_true_random=False), st.data())
def test_item_order_and_cluster_labels_do_not_change_the_verdict(
    data: tuple[list[float], list[float]], within: float, rnd: random.Random, more: st.DataObject
) -> None:
    expert, clone = data
    clusters = more.draw(clusters_for(len(expert)))
    order = list(range(len(expert)))
    rnd.shuffle(order)
    shuffled_clusters = None if clusters is None else ["renamed-" + clusters[i][::-1] for i in order]
    a = verdict(expert, clone, within, clusters=clusters)
    b = verdict([expert[i] for i in order], [clone[i] for i in order], within, clusters=shuffled_clusters)
    assert a.to_dict() == b.to_dict()  # exactly, not approximately


@FAST
@given(paired_scores(), within_st, within_st, st.integers(0, 8), st.data())
def test_a_larger_margin_never_turns_pass_into_fail(data: tuple[list[float], list[float]], w1: float,
                                                    w2: float, errors: int, more: st.DataObject) -> None:
    expert, clone = data
    lo, hi = sorted((w1, w2))
    kw = {"clusters": more.draw(clusters_for(len(expert))), "errors": errors, "max_error_rate": 1.0}
    small, large = verdict(expert, clone, lo, **kw), verdict(expert, clone, hi, **kw)
    if small.passed:
        assert large.status != "fail"
        if lo > 0:
            assert large.passed  # same interval, a lower bar
    if large.p_value is not None and small.p_value is not None:
        assert large.p_value <= small.p_value


@FAST
@given(paired_scores(min_size=5))
def test_more_of_the_same_data_narrows_the_interval(data: tuple[list[float], list[float]]) -> None:
    """Four copies of a sample halve the standard error; the interval never widens."""
    expert, clone = data
    one = verdict(expert, clone, 3.0)
    four = verdict(expert * 4, clone * 4, 3.0)
    assert one.halfwidth is not None and four.halfwidth is not None
    assert four.halfwidth <= one.halfwidth + 1e-9


@FAST
@given(paired_scores(), within_st, st.integers(1, 50), st.floats(0.0, 1.0), st.data())
def test_failed_calls_never_make_a_verdict_pass(data: tuple[list[float], list[float]], within: float,
                                                errors: int, max_error_rate: float, more: st.DataObject) -> None:
    expert, clone = data
    clusters = more.draw(clusters_for(len(expert)))
    clean = verdict(expert, clone, within, clusters=clusters, max_error_rate=max_error_rate)
    dirty = verdict(expert, clone, within, clusters=clusters, errors=errors, max_error_rate=max_error_rate)
    if not clean.passed:
        assert not dirty.passed
    if dirty.passed:  # a pass with failed calls holds even if each failed item were a regression
        assert dirty.ci_low is not None
        n = dirty.n
        assert (dirty.ci_low / 100 * n - errors) / (n + errors) * 100 > -within


@FAST
@given(paired_scores(), within_st, st.data())
def test_verdicts_survive_json(data: tuple[list[float], list[float]], within: float, more: st.DataObject) -> None:
    expert, clone = data
    v = verdict(expert, clone, within, clusters=more.draw(clusters_for(len(expert))),
                errors=more.draw(st.integers(0, 3)), max_error_rate=0.5)
    for w in (v, *holm_adjust([v, v])):
        assert Verdict.from_dict(json.loads(json.dumps(w.to_dict()))) == w


@FAST
@given(paired_scores(min_size=10), st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0, 50.0]), st.data())
def test_interval_and_p_value_give_the_same_decision(data: tuple[list[float], list[float]], within: float,
                                                     more: st.DataObject) -> None:
    """With enough units and no failed call: pass iff p < alpha/2 iff ci_low > -within; fail iff ci_high < -within."""
    expert, clone = data
    v = verdict(expert, clone, within, min_n=1, clusters=more.draw(clusters_for(len(expert))))
    assert v.p_value is not None and v.ci_low is not None and v.ci_high is not None
    half = (1 - v.confidence) / 2
    assert v.passed == (v.p_value < half) == (v.ci_low > -within)
    assert (v.status == "fail") == (v.p_value > 1 - half) == (v.ci_high < -within)


@FAST
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])), min_size=1, max_size=60))
def test_zero_margin_on_a_binary_metric_is_zero_regression(pairs: list[tuple[float, float]]) -> None:
    expert = [e for e, _ in pairs]
    clone = [c for _, c in pairs]
    v = verdict(expert, clone, 0.0)
    regressions = sum(1 for e, c in pairs if e == 1 and c == 0)
    assert v.regressions == regressions
    assert v.status == ("pass" if regressions == 0 else "fail")


@st.composite
def run_of_verdicts(draw: st.DrawFn) -> list[Verdict]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        expert, clone = draw(paired_scores(min_size=10, max_size=40))
        out.append(parity_verdict(f"c{i}", "m", expert, clone, within=draw(within_st), resamples=B))
    return out


@FAST
@given(run_of_verdicts(), st.randoms(use_true_random=False))
def test_holm_only_removes_passes_and_ignores_order(verdicts: list[Verdict], rnd: random.Random) -> None:
    adjusted = holm_adjust(verdicts)
    for before, after in zip(verdicts, adjusted):
        assert after.passed <= before.passed  # never creates a pass
        if after.status != before.status:
            assert (before.status, after.status) == ("pass", "fail")
        if after.holm_adjusted:
            assert after.p_adjusted is not None and before.p_value is not None
            assert after.p_adjusted >= before.p_value
    assert holm_adjust(adjusted) == adjusted  # idempotent
    order = list(range(len(verdicts)))
    rnd.shuffle(order)
    shuffled = holm_adjust([verdicts[i] for i in order])
    assert shuffled == [adjusted[i] for i in order]
    if len(verdicts) == 1:  # Holm with one test is the plain rule
        assert adjusted[0].status == verdicts[0].status


# -- monotonicity: raising any clone score never makes a verdict worse ----------------------------

RANK = {"fail": 0, "inconclusive": 1, "pass": 2}


def _options(more: st.DataObject, n: int) -> dict[str, object]:
    return {
        "clusters": more.draw(clusters_for(n)),
        "errors": more.draw(st.sampled_from([0, 0, 1, 3])),
        "max_error_rate": more.draw(st.sampled_from([0.0, 0.05, 1.0])),
        "min_n": more.draw(st.sampled_from([1, 10, 30])),
    }


def _assert_monotone(low: Verdict, high: Verdict) -> None:
    """``high`` is ``low`` with some clone scores raised: never a worse verdict, never lower bounds."""
    assert RANK[high.status] >= RANK[low.status], (low.status, low.reason, high.status, high.reason)
    assert low.ci_low is not None and high.ci_low is not None and low.ci_high is not None and high.ci_high is not None
    assert high.ci_low >= low.ci_low - 1e-9 and high.ci_high >= low.ci_high - 1e-9
    assert low.p_value is not None and high.p_value is not None and high.p_value <= low.p_value + 1e-12


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paired_scores(), within_st, st.data())
def test_raising_one_clone_score_never_makes_a_verdict_worse(data: tuple[list[float], list[float]],
                                                             within: float, more: st.DataObject) -> None:
    expert, clone = data
    i = more.draw(st.integers(0, len(clone) - 1))
    raised = list(clone)
    raised[i] = more.draw(st.one_of(st.just(1.0), st.floats(clone[i], 1.0)))
    kw = _options(more, len(clone))
    _assert_monotone(verdict(expert, clone, within, **kw), verdict(expert, raised, within, **kw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paired_scores(), within_st, st.data())
def test_lowering_one_clone_score_never_makes_a_verdict_better(data: tuple[list[float], list[float]],
                                                               within: float, more: st.DataObject) -> None:
    expert, clone = data
    i = more.draw(st.integers(0, len(clone) - 1))
    lowered = list(clone)
    lowered[i] = more.draw(st.one_of(st.just(0.0), st.floats(0.0, clone[i])))
    kw = _options(more, len(clone))
    _assert_monotone(verdict(expert, lowered, within, **kw), verdict(expert, clone, within, **kw))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32), st.integers(60, 3000), st.sampled_from([1, 10]), st.booleans(),
    st.sampled_from([0.9, 0.98]), st.sampled_from([0.0, 1.0, 3.0]), st.floats(0.0, 0.1), st.floats(0.001, 0.5),
)
def test_raising_many_clone_scores_in_a_large_cohort_never_makes_a_verdict_worse(
    seed: int, n: int, steps: int, graded: bool, expert_rate: float, within: float, lose: float, share: float
) -> None:
    """Large, clustered or not, binary or graded cohorts near the margin; raise a random subset of clone scores."""
    rng = np.random.default_rng(seed)
    size = n * steps if steps > 1 else n
    if graded:
        e = np.round(np.clip(rng.beta(9 * expert_rate, 9 * (1 - expert_rate) + 0.1, size), 0, 1) * 4) / 4
        c = np.clip(e - (rng.random(size) < lose) * rng.choice([0.25, 0.5, 1.0], size), 0, 1)
    else:
        e = (rng.random(size) < expert_rate).astype(float)
        c = np.where(rng.random(size) < lose, 0.0, e)
    clusters = (np.arange(size) // steps).tolist() if steps > 1 else None
    up = rng.random(size) < share
    raised = np.where(up, np.minimum(1.0, c + rng.random(size) * (1 - c)), c)
    kw: dict[str, object] = {"clusters": clusters, "min_n": 1}
    _assert_monotone(verdict(e.tolist(), c.tolist(), within, **kw), verdict(e.tolist(), raised.tolist(), within, **kw))


@FAST
@given(paired_scores(), within_st, st.integers(1, 50), st.floats(0.0, 1.0), st.sampled_from([1, 10, 100]), st.data())
def test_min_n_and_failed_calls_never_mask_a_fail(data: tuple[list[float], list[float]], within: float,
                                                  errors: int, max_error_rate: float, min_n: int,
                                                  more: st.DataObject) -> None:
    expert, clone = data
    clusters = more.draw(clusters_for(len(expert)))
    clean = verdict(expert, clone, within, clusters=clusters, min_n=1)
    dirty = verdict(expert, clone, within, clusters=clusters, min_n=min_n, errors=errors,
                    max_error_rate=max_error_rate)
    if clean.status == "fail":
        assert dirty.status == "fail", dirty.reason
    if within == 0 and clean.regressions:
        assert dirty.status == "fail"


@pytest.mark.parametrize("n", [10, 30, 100, 500, 2000])
def test_every_loss_and_gain_count_is_ordered(n: int) -> None:
    """Exhaustive over loss counts of a binary metric, at several gain counts: one more loss never helps.

    Hypothesis samples small cohorts; a rule that misbehaves only where the interval is about as
    wide as the margin (the old half-width rule) needs hundreds of items, so scan them all.
    """
    for within in (1.0, 3.0):
        for gains in sorted({0, 1, 5, n // 50}):
            previous = None
            for losses in range(min(n - gains, int(0.12 * n) + 2)):
                # gains: expert 0 / clone 1; losses: expert 1 / clone 0; the rest agree at 1
                expert = [0.0] * gains + [1.0] * (n - gains)
                clone = [1.0] * gains + [0.0] * losses + [1.0] * (n - gains - losses)
                v = parity_verdict("c", "m", expert, clone, within=within)
                if previous is not None:
                    assert RANK[v.status] <= RANK[previous.status], (n, within, gains, losses, v.reason)
                    assert v.ci_low is not None and previous.ci_low is not None and v.ci_low <= previous.ci_low
                previous = v
