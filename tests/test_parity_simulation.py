"""Seeded simulation of the parity gate's decision rule, CI-sized (the full grid is bench/parity_grid.py).

The data come from the bench's model (``bench/parity_grid.py``: expert and clone checks driven by
correlated latent uniforms with trajectory-, step- and check-level terms; the clone passes a check
when its latent is below ``expert - gap``, so the true gap is exact; paired outcomes share 90% of
the latents, independent ones none). Every gate here is decided by ``parity_verdict`` itself, one
call per gate, beside the naive point-estimate rule and the previous BCa rule
(``parity._legacy_verdict``) on the same data. Run with ``pytest -s`` to see the measured rates.

Gates per setting are 300-400: a rate measured on 300 gates is good to about +-2.5 points, so a
bound of 5% on a true 2.5% rate has ample room and a broken rule (the old one passed 73% of gates
at the margin with 10 trajectories) cannot hide.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from pytest_bclone import parity
from pytest_bclone.parity import holm_adjust, naive_passes, parity_verdict

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("parity_grid", ROOT / "bench" / "parity_grid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["parity_grid"] = module
    spec.loader.exec_module(module)
    return module


grid = _bench()


def simulate(trajectories: int, steps: int, gap: str, *, margin: float = 3.0, expert: float = 0.9,
             metric: str = "binary", gates: int = 300, old: bool = False) -> dict[str, float]:
    """Rates of the new rule (and the naive and old rules) over ``gates`` seeded gates."""
    setting = grid.Setting(trajectories, steps, margin, expert, metric, gap)
    rng = np.random.default_rng([20261202, trajectories, steps, int(margin), len(gap)])
    e_all, c_all = grid.simulate(setting, gates, rng)
    clusters = None if steps == 1 else np.repeat(np.arange(trajectories), steps).tolist()
    new: Counter[str] = Counter()
    legacy: Counter[str] = Counter()
    naive = 0
    for g in range(gates):
        e, c = e_all[g].ravel(), c_all[g].ravel()
        new[parity_verdict("sim", gap, e, c, within=margin, clusters=clusters).status] += 1
        naive += naive_passes(e, c, margin)
        if old:
            legacy[parity._legacy_verdict("sim", gap, e, c, within=margin, clusters=clusters, seed=g).status] += 1
    rates = {f"new {s}": new[s] / gates for s in ("pass", "fail", "inconclusive")}
    rates["naive pass"] = naive / gates
    if old:
        rates.update({f"old {s}": legacy[s] / gates for s in ("pass", "fail", "inconclusive")})
    print(f"{trajectories:>5} x {steps:>2} {metric:<6} expert {expert:<4} margin {margin:g} gap {gap:<14} "
          + "  ".join(f"{k} {v:6.1%}" for k, v in rates.items()))
    return rates


@pytest.mark.parametrize("trajectories", [10, 20, 60])
def test_a_clone_exactly_at_the_margin_rarely_passes_in_small_cohorts(trajectories: int) -> None:
    # Issue 14: the old rule passed 73% (10 trajectories), 56% (20) and 16% (60) of these gates.
    rates = simulate(trajectories, 1, "margin", old=True)
    assert rates["new pass"] <= 0.05
    assert rates["old pass"] > 0.05  # the bug this guards against, on the same (seeded) data
    clustered = simulate(trajectories, 10, "margin", metric="graded")
    assert clustered["new pass"] <= 0.05


def test_a_clone_beyond_the_margin_never_passes() -> None:
    for trajectories in (10, 60, 500):
        assert simulate(trajectories, 1, "margin+3")["new pass"] == 0.0
    assert simulate(200, 10, "margin+3", margin=1.0, metric="graded")["new pass"] == 0.0


def test_an_equal_clone_passes_once_the_sample_resolves_the_margin() -> None:
    # k95 (score test power 95% at the true shares) is about 550 trajectories here.
    rates = simulate(2000, 1, "0 paired", gates=200)
    assert rates["new pass"] >= 0.95
    clustered = simulate(1000, 10, "0 paired", expert=0.98, gates=200)
    assert clustered["new pass"] >= 0.95


def test_an_equal_but_independent_clone_is_almost_never_failed() -> None:
    # FAIL needs the whole interval below the margin; at a true gap of 0 that happens with
    # probability below Phi(-1.96 - margin / SE) <= 2.5%, and far less where the SE is small.
    for trajectories, steps in ((10, 1), (60, 1), (60, 10)):
        rates = simulate(trajectories, steps, "0 independent", gates=400)
        assert rates["new fail"] <= 0.025
    assert simulate(2000, 1, "0 independent", gates=200)["new fail"] == 0.0


def test_holm_controls_the_family_wise_pass_rate() -> None:
    """Five cohorts of 200 items, all exactly at the margin: how often does the run pass at least one?"""
    setting = grid.Setting(200, 1, 3.0, 0.9, "binary", "margin")
    rng = np.random.default_rng(7)
    runs = 300
    e_all, c_all = grid.simulate(setting, runs * 5, rng)
    any_plain = any_holm = 0
    for run in range(runs):
        verdicts = [parity_verdict(f"c{k}", "score", e_all[run * 5 + k].ravel(), c_all[run * 5 + k].ravel(),
                                   within=3.0) for k in range(5)]
        any_plain += any(v.passed for v in verdicts)
        any_holm += any(v.passed for v in holm_adjust(verdicts))
    print(f"5 cohorts at the margin, any passes: plain {any_plain / runs:6.1%}  Holm {any_holm / runs:6.1%}")
    assert any_holm <= any_plain
    assert any_holm / runs <= 0.05


def test_the_bench_decides_exactly_as_parity_verdict() -> None:
    # The grid decides many gates at once with the vectorised statistic; it must be the verdict's rule.
    for steps, metric, gap in ((1, "binary", "margin"), (10, "graded", "0 paired"), (10, "binary", "0 independent")):
        setting = grid.Setting(60, steps, 3.0, 0.9, metric, gap)
        e_all, c_all = grid.simulate(setting, 50, np.random.default_rng(1))
        status, _, _ = grid.new_status(e_all, c_all, 3.0)
        clusters = None if steps == 1 else np.repeat(np.arange(60), steps).tolist()
        code = {"fail": 0, "inconclusive": 1, "pass": 2}
        for g in range(50):
            v = parity_verdict("sim", "m", e_all[g].ravel(), c_all[g].ravel(), within=3.0, clusters=clusters)
            assert code[v.status] == status[g]


def test_simulation_is_deterministic() -> None:
    setting = grid.Setting(20, 10, 1.0, 0.9, "graded", "0 paired")
    a = grid.simulate(setting, 5, np.random.default_rng(3))
    b = grid.simulate(setting, 5, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
