"""Seeded simulation of the parity gate's decision rule, with the naive point-estimate rule beside it.

Every setting: n = 500 items per cohort, margin 3 points, binary outcomes, expert success 0.9,
1000 simulated gates (the brief asks for >= 200; 1000 makes each measured rate good to about
+/-1.5 points at 95%), 2000 bootstrap resamples (the production default: binary data take the
exact multinomial shortcut, so there is no reason to cut resamples). Run with ``pytest -s`` to
see the measured rates.

How the clone's outcomes are generated ("paired" construction): the expert succeeds with
probability 0.9; the clone copies the expert on each item, except that it loses each of the
expert's wins with probability ``lose`` and wins each of the expert's losses with probability
``win``. The true gap is ``0.1 * win - 0.9 * lose``:

- at the margin:       lose = 1/30, win = 0    -> clone 0.87, gap -3 points
- margin + 3 points:   lose = 1/15, win = 0    -> clone 0.84, gap -6 points
- no gap, paired:      lose = 1/90, win = 1/10 -> clone 0.90, gap 0 (1% of items regress, 1%
  improve: the clone loses ~1.1% of the expert's wins and wins 10% of its losses; "1% of the
  losses" would leave a -0.8 point gap, not 0)

"Independent" settings draw the clone's outcomes independently of the expert's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from pytest_bclone.parity import Interval, Verdict, holm_adjust, naive_passes, parity_verdict

N = 500
WITHIN = 3.0
EXPERT = 0.9
GATES = 1000

Scores = tuple[np.ndarray, np.ndarray]
Generator = Callable[[np.random.Generator], Scores]


def paired(lose: float, win: float, n: int = N) -> Generator:
    def draw(rng: np.random.Generator) -> Scores:
        expert = rng.random(n) < EXPERT
        u = rng.random(n)
        clone = np.where(expert, u >= lose, u < win)
        return expert.astype(float), clone.astype(float)

    return draw


def independent(clone_rate: float, n: int = N) -> Generator:
    def draw(rng: np.random.Generator) -> Scores:
        return (rng.random(n) < EXPERT).astype(float), (rng.random(n) < clone_rate).astype(float)

    return draw


@dataclass
class Rates:
    status: Counter[str]
    naive: int
    gates: int
    verdicts: list[Verdict]

    def rate(self, status: str) -> float:
        return self.status[status] / self.gates

    @property
    def naive_rate(self) -> float:
        return self.naive / self.gates

    def show(self, name: str) -> str:
        line = (
            f"{name:<44} pass {self.rate('pass'):6.1%}  fail {self.rate('fail'):6.1%}  "
            f"inconclusive {self.rate('inconclusive'):6.1%}  | naive passes {self.naive_rate:6.1%}"
        )
        print(line)
        return line


def simulate(name: str, draw: Generator, *, gates: int = GATES, interval: Interval = "bca",
             clustered: int | None = None) -> Rates:
    """Run ``gates`` independent gates; the data RNG is seeded per setting, the bootstrap per gate."""
    rng = np.random.default_rng(20240601)
    status: Counter[str] = Counter()
    naive = 0
    verdicts = []
    for gate in range(gates):
        expert, clone = draw(rng)
        clusters = None if clustered is None else (np.arange(expert.size) // clustered).tolist()
        v = parity_verdict("sim", name, expert, clone, within=WITHIN, seed=gate, interval=interval,
                           clusters=clusters)
        status[v.status] += 1
        naive += naive_passes(expert, clone, WITHIN)
        verdicts.append(v)
    return Rates(status, naive, gates, verdicts)


def test_gap_at_the_margin_rarely_passes_while_the_naive_rule_passes_half_the_time() -> None:
    rates = simulate("gap = margin, paired", paired(lose=1 / 30, win=0.0))
    rates.show("true gap -3 (= margin), paired")
    assert rates.rate("pass") <= 0.05
    assert 0.30 <= rates.naive_rate <= 0.70  # the bug the gate fixes

    # Independent outcomes: n=500 cannot resolve the margin at all, so the gate stays safe.
    indep = simulate("gap = margin, independent", independent(0.87))
    indep.show("true gap -3 (= margin), independent")
    assert indep.rate("pass") <= 0.05
    assert 0.30 <= indep.naive_rate <= 0.70


def test_percentile_interval_is_worse_calibrated_at_the_margin_than_bca() -> None:
    """Why the default is BCa: measured beside it, on the same data (not a hard bound)."""
    bca = simulate("gap = margin, paired", paired(lose=1 / 30, win=0.0))
    pct = simulate("gap = margin, paired", paired(lose=1 / 30, win=0.0), interval="percentile")
    bca.show("true gap -3, paired, BCa")
    pct.show("true gap -3, paired, percentile")
    assert bca.rate("pass") <= pct.rate("pass")


def test_gap_beyond_the_margin_fails() -> None:
    rates = simulate("gap = margin + 3, paired", paired(lose=1 / 15, win=0.0))
    rates.show("true gap -6 (margin + 3), paired")
    assert rates.rate("fail") >= 0.90
    assert rates.rate("pass") == 0.0

    # Independent outcomes: unresolvable at n=500, so "not pass" (inconclusive), never pass.
    indep = simulate("gap = margin + 3, independent", independent(0.84))
    indep.show("true gap -6 (margin + 3), independent")
    assert indep.rate("pass") == 0.0


def test_no_gap_with_closely_paired_outcomes_passes() -> None:
    rates = simulate("no gap, paired", paired(lose=1 / 90, win=1 / 10))
    rates.show("true gap 0, paired (1% regress, 1% improve)")
    assert rates.rate("pass") >= 0.95
    assert rates.naive_rate >= 0.95


def test_no_gap_with_independent_outcomes_is_inconclusive_never_fail() -> None:
    rates = simulate("no gap, independent", independent(0.9))
    rates.show("true gap 0, independent")
    needed = [v.n_needed or 0 for v in rates.verdicts if v.status == "inconclusive"]
    print(f"{'':<44} n_needed: min {min(needed)}, median {int(np.median(needed))}, max {max(needed)}")
    assert rates.status["fail"] == 0
    assert rates.rate("inconclusive") >= 0.98
    assert all(n > N for n in needed)


def test_clustered_decision_points_need_the_cluster_bootstrap() -> None:
    """200 trajectories x 5 decision points; 1/30 of trajectories lose every expert win in them.

    The true gap is exactly the margin (-3 points) but regressions come in bursts. Resampling
    decision points as if independent understates the variance and passes far too often;
    resampling trajectories keeps the gate honest.
    """
    trajectories, steps = 200, 5

    def draw(rng: np.random.Generator) -> Scores:
        expert = (rng.random(trajectories * steps) < EXPERT).astype(float)
        bad = np.repeat(rng.random(trajectories) < 1 / 30, steps)
        return expert, np.where(bad, 0.0, expert)

    by_cluster = simulate("clustered", draw, gates=500, clustered=steps)
    by_item = simulate("clustered", draw, gates=500)
    by_cluster.show("gap -3, bursty trajectories, cluster bootstrap")
    by_item.show("gap -3, bursty trajectories, item bootstrap")
    assert by_cluster.rate("pass") <= 0.05
    assert by_item.rate("pass") >= 2 * max(by_cluster.rate("pass"), 0.05)


def test_holm_controls_the_family_wise_pass_rate() -> None:
    """Five cohorts, all exactly at the margin: how often does the run pass at least one?"""
    rng = np.random.default_rng(7)
    draw = paired(lose=1 / 30, win=0.0)
    runs = 400
    any_plain = any_holm = 0
    for run in range(runs):
        verdicts = []
        for cohort in range(5):
            expert, clone = draw(rng)
            verdicts.append(parity_verdict(f"c{cohort}", "score", expert, clone, within=WITHIN, seed=run))
        any_plain += any(v.passed for v in verdicts)
        any_holm += any(v.passed for v in holm_adjust(verdicts))
    print(f"{'5 cohorts at the margin, any passes':<44} plain {any_plain / runs:6.1%}  "
          f"Holm {any_holm / runs:6.1%}")
    assert any_holm <= any_plain
    assert any_holm / runs <= 0.05


@pytest.mark.parametrize("setting", ["paired", "independent"])
def test_simulation_is_deterministic(setting: str) -> None:
    draw = paired(1 / 30, 0.0) if setting == "paired" else independent(0.87)
    a = simulate("det", draw, gates=20)
    b = simulate("det", draw, gates=20)
    assert [v.to_dict() for v in a.verdicts] == [v.to_dict() for v in b.verdicts]
