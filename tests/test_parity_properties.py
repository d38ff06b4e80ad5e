"""Hypothesis properties of the parity gate: each is true for every input, not just on average."""

from __future__ import annotations

import json
import random

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
@given(st.lists(score, min_size=10, max_size=80), within_st, st.integers(0, 2**32), st.data())
def test_identical_agents_pass_with_a_zero_width_interval(scores: list[float], within: float, seed: int,
                                                          more: st.DataObject) -> None:
    clusters = more.draw(clusters_for(len(scores)))
    v = verdict(scores, list(scores), within, seed=seed, min_n=1, clusters=clusters)
    assert v.diff == 0.0
    assert (v.ci_low, v.ci_high) == (0.0, 0.0)
    assert v.status == "pass", v.reason


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
@given(paired_scores(min_size=5), st.integers(0, 2**32))
def test_more_of_the_same_data_narrows_the_interval(data: tuple[list[float], list[float]], seed: int) -> None:
    """Four copies of a sample halve the bootstrap standard error; the interval never widens."""
    expert, clone = data
    one = verdict(expert, clone, 3.0, seed=seed, resamples=1000)
    four = verdict(expert * 4, clone * 4, 3.0, seed=seed, resamples=1000)
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
@given(paired_scores(min_size=10), st.sampled_from([0.5, 1.0, 3.0, 5.0, 10.0]))
def test_interval_and_p_value_give_the_same_decision(data: tuple[list[float], list[float]], within: float) -> None:
    """p <= alpha/2 exactly when the lower bound clears the margin (BCa map and its inverse)."""
    expert, clone = data
    v = verdict(expert, clone, within)
    assert v.p_value is not None and v.ci_low is not None
    resolvable = v.halfwidth is not None and v.halfwidth <= within
    if resolvable:
        assert v.passed == (v.p_value <= (1 - v.confidence) / 2 + 1e-9)
    if v.passed:
        assert v.p_value <= (1 - v.confidence) / 2 + 1e-9


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
