"""Benchmark: the parity gate's error rates over a seeded simulation grid (issue 14).

For every setting, ``--gates`` independent gates (default 1,000) are simulated and decided by
the NEW rule (Tango's score interval on trajectory-level differences, decided by the interval's
position) and by the OLD rule (``parity._legacy_verdict``: BCa cluster bootstrap, half-width
rule), side by side. The grid:

  trajectories   10, 20, 30, 60, 100, 200, 500, 2000
  steps          1 or 10 decision points per trajectory (clustered by trajectory)
  margin         1 and 3 points
  expert         success 0.9 and 0.98
  metric         binary (one check per step) or graded (the mean of 4 checks per step)
  true gap       = margin, margin + 3, 0 with paired outcomes, 0 with independent outcomes

The model. Every check has a latent normal ``sqrt(.3) T + sqrt(.3) S + sqrt(.4) E`` (T per
trajectory, S per step, E per check: trajectory-level and step-level correlation), mapped to
``U`` uniform; the expert passes a check when ``U < expert`` and the clone when ``U' < expert -
gap``, so the true gap is exact. Paired outcomes: ``U' = U`` except for 10% of checks, which
redraw their step and check terms (the clone is a different model: it sometimes wins where
the expert loses); independent outcomes redraw everything, trajectory term included.

Requirements checked and printed: at gap = margin the new rule passes <= 5% of gates in every
setting; at margin + 3 it passes none; at gap 0 paired it passes >= 95% wherever the sample
resolves the margin (``k >= k95``, the size at which the score test has 95% power at the true
shares, printed per setting); at gap 0 independent it never fails.

    python bench/parity_grid.py [--gates 1000] [--old-gates 100] [--out bench/out/parity_grid.md]

The old rule costs a bootstrap per gate, so it runs on the first ``--old-gates`` gates of each
setting (the same data as the new rule's); its rates carry that sample's noise (+-5 points at
100 gates, enough to show where it passes 20-90% of gates that it must not). Runs in one process.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_bclone import parity

SIZES = (10, 20, 30, 60, 100, 200, 500, 2000)
STEPS = (1, 10)
MARGINS = (1.0, 3.0)
EXPERTS = (0.9, 0.98)
METRICS = ("binary", "graded")
GAPS = ("margin", "margin+3", "0 paired", "0 independent")
CHECKS = {"binary": 1, "graded": 4}
SWAP = 0.1  # share of a paired clone's checks that do not follow the expert's latent
_RHO_T, _RHO_S = 0.3, 0.3  # latent variance shares of the trajectory and step terms
_Z = NormalDist().inv_cdf(0.975)
_Z95 = NormalDist().inv_cdf(0.95)
# Elements per simulated chunk (bounds memory at a few hundred MB).
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Setting:
    trajectories: int
    steps: int
    margin: float
    expert: float
    metric: str
    gap: str

    @property
    def true_gap(self) -> float:
        """The clone's true loss in points."""
        return {"margin": self.margin, "margin+3": self.margin + 3.0}.get(self.gap, 0.0)


def _phi(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(x))


def simulate(setting: Setting, gates: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Expert and clone per-step scores, shape ``(gates, trajectories, steps)``."""
    k, s, m = setting.trajectories, setting.steps, CHECKS[setting.metric]
    shape = (gates, k, s, m)
    t = rng.standard_normal((gates, k, 1, 1))
    st = rng.standard_normal((gates, k, s, 1))
    e = rng.standard_normal(shape)
    u = _phi(math.sqrt(_RHO_T) * t + math.sqrt(_RHO_S) * st + math.sqrt(1 - _RHO_T - _RHO_S) * e)
    if setting.gap == "0 independent":
        t2 = rng.standard_normal((gates, k, 1, 1))
    else:
        t2 = t
    fresh = _phi(math.sqrt(_RHO_T) * t2 + math.sqrt(_RHO_S) * rng.standard_normal((gates, k, s, 1))
                 + math.sqrt(1 - _RHO_T - _RHO_S) * rng.standard_normal(shape))
    if setting.gap == "0 independent":
        u2 = fresh
    else:
        u2 = np.where(rng.random(shape) < SWAP, fresh, u)
    expert = (u < setting.expert).mean(axis=3)
    clone = (u2 < setting.expert - setting.true_gap / 100.0).mean(axis=3)
    return expert, clone


def new_status(expert: np.ndarray, clone: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The new rule, vectorised over gates: status codes (0 fail, 1 inconclusive, 2 pass) and the shares.

    The same functions as ``parity.parity_verdict`` (equal-length trajectories: Kish's effective
    n is the trajectory count, and a unit's fractional gain or loss is its sum over ``steps``).
    """
    gates, k, s = expert.shape
    sums = (clone - expert).sum(axis=2)
    gains = np.maximum(sums, 0).sum(axis=1) / s
    losses = np.maximum(-sums, 0).sum(axis=1) / s
    n = np.full(gates, float(k))
    stat = parity._score_z(gains, losses, n, -margin / 100.0)
    status = np.where(stat > _Z, 2, np.where(stat < -_Z, 0, 1))
    return status, gains / k, losses / k


def old_status(expert: np.ndarray, clone: np.ndarray, margin: float) -> np.ndarray:
    """The old rule, one gate at a time (a bootstrap each)."""
    gates, k, s = expert.shape
    clusters = None if s == 1 else np.repeat(np.arange(k), s).tolist()
    code = {"fail": 0, "inconclusive": 1, "pass": 2}
    out = np.empty(gates, dtype=int)
    for g in range(gates):
        v = parity._legacy_verdict("sim", "m", expert[g].ravel(), clone[g].ravel(), within=margin,
                                   clusters=clusters, seed=g)
        out[g] = code[v.status]
    return out


def k95(gain_share: float, loss_share: float, margin: float) -> float:
    """Trajectories at which the score test has 95% power at these true shares (normal approximation)."""
    d = gain_share - loss_share
    w = margin / 100.0
    if d + w <= 0:
        return math.inf
    var = parity._score_var_one(gain_share, loss_share, 1.0, -w)
    return (_Z + _Z95) ** 2 * var / (d + w) ** 2


@dataclass
class Row:
    setting: Setting
    new: np.ndarray  # counts fail, inconclusive, pass
    old: np.ndarray
    new_gates: int
    old_gates: int
    k95: float

    def rate(self, which: str, code: int) -> float:
        counts, gates = (self.new, self.new_gates) if which == "new" else (self.old, self.old_gates)
        return float(counts[code]) / gates if gates else math.nan


def run_setting(setting: Setting, gates: int, old_gates: int, seed: int) -> Row:
    rng = np.random.default_rng([seed, SIZES.index(setting.trajectories), setting.steps, int(setting.margin),
                                 EXPERTS.index(setting.expert), METRICS.index(setting.metric),
                                 GAPS.index(setting.gap)])
    per_gate = setting.trajectories * setting.steps * CHECKS[setting.metric]
    chunk = max(1, _CHUNK // per_gate)
    new = np.zeros(3, dtype=int)
    old = np.zeros(3, dtype=int)
    gain_sum = loss_sum = 0.0
    done = 0
    while done < gates:
        g = min(chunk, gates - done)
        expert, clone = simulate(setting, g, rng)
        status, gains, losses = new_status(expert, clone, setting.margin)
        new += np.bincount(status, minlength=3)
        gain_sum += float(gains.sum())
        loss_sum += float(losses.sum())
        if done < old_gates:
            take = min(g, old_gates - done)
            old += np.bincount(old_status(expert[:take], clone[:take], setting.margin), minlength=3)
        done += g
    return Row(setting, new, old, gates, min(old_gates, gates),
               k95(gain_sum / gates, loss_sum / gates, setting.margin))


def grid() -> list[Setting]:
    return [Setting(*combo) for combo in itertools.product(SIZES, STEPS, MARGINS, EXPERTS, METRICS, GAPS)]


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def table(rows: list[Row]) -> str:
    head = ("| gap | metric | steps | expert | margin | trajectories | k95 | new pass % | new fail % | "
            "new inc % | old pass % | old fail % | old inc % | check |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        s = r.setting
        lines.append(
            f"| {s.gap} | {s.metric} | {s.steps} | {s.expert:g} | {s.margin:g} | {s.trajectories} | "
            f"{_k95(r)} | {_pct(r.rate('new', 2))} | {_pct(r.rate('new', 0))} | "
            f"{_pct(r.rate('new', 1))} | {_pct(r.rate('old', 2))} | {_pct(r.rate('old', 0))} | "
            f"{_pct(r.rate('old', 1))} | {check(r) or 'ok'} |"
        )
    return "\n".join(lines)


def _k95(r: Row) -> str:
    if r.setting.gap != "0 paired":
        return "-"
    return "inf" if math.isinf(r.k95) else f"{r.k95:.0f}"


def check(r: Row) -> str:
    """Which requirement of issue 14 this setting's NEW-rule rates break ('' when none)."""
    s = r.setting
    passed = r.rate("new", 2)
    if s.gap == "margin" and passed > 0.05:
        return "PASS > 5% at the margin"
    if s.gap == "margin+3" and r.new[2] > 0:
        return "a pass at margin+3"
    if s.gap == "0 paired" and s.trajectories >= r.k95 and passed < 0.95:
        return "pass < 95% though resolvable"
    if s.gap == "0 independent" and r.new[0] > 0:
        return "a FAIL at gap 0"
    return ""


def _gates(rows: list[Row], gap: str, which: str) -> int:
    return sum(r.new_gates if which == "new" else r.old_gates for r in rows if r.setting.gap == gap)


def summary(rows: list[Row]) -> str:
    at_margin_new = max(r.rate("new", 2) for r in rows if r.setting.gap == "margin")
    at_margin_old = max(r.rate("old", 2) for r in rows if r.setting.gap == "margin")
    mean_new = float(np.mean([r.rate("new", 2) for r in rows if r.setting.gap == "margin"]))
    mean_old = float(np.mean([r.rate("old", 2) for r in rows if r.setting.gap == "margin"]))
    beyond_new = sum(int(r.new[2]) for r in rows if r.setting.gap == "margin+3")
    beyond_old = sum(int(r.old[2]) for r in rows if r.setting.gap == "margin+3")
    resolvable = [r for r in rows if r.setting.gap == "0 paired" and r.setting.trajectories >= r.k95]
    min_res = min((r.rate("new", 2) for r in resolvable), default=math.nan)
    fails_indep_new = sum(int(r.new[0]) for r in rows if r.setting.gap == "0 independent")
    fails_indep_old = sum(int(r.old[0]) for r in rows if r.setting.gap == "0 independent")
    broken = [r for r in rows if check(r)]
    return "\n".join([
        "| requirement | new rule | old rule |",
        "|---|---|---|",
        f"| highest pass rate at gap = margin (<= 5%, target 2.5%) | {_pct(at_margin_new)}% | {_pct(at_margin_old)}% |",
        (f"| mean pass rate at gap = margin over {len([r for r in rows if r.setting.gap == 'margin'])} settings "
         f"| {_pct(mean_new)}% | {_pct(mean_old)}% |"),
        (f"| passes at gap = margin + 3 (must be 0) | {beyond_new} of {_gates(rows, 'margin+3', 'new')} | "
         f"{beyond_old} of {_gates(rows, 'margin+3', 'old')} |"),
        (f"| lowest pass rate at gap 0 paired where resolvable ({len(resolvable)} settings, >= 95%) | "
         f"{_pct(min_res)}% | - |"),
        (f"| fails at gap 0 independent (must be 0) | {fails_indep_new} of {_gates(rows, '0 independent', 'new')} | "
         f"{fails_indep_old} of {_gates(rows, '0 independent', 'old')} |"),
        f"| settings breaking a requirement (new rule) | {len(broken)} of {len(rows)} | - |",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--old-gates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "parity_grid.md")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows = []
    settings = [s for s in grid() if s.trajectories in args.sizes]
    for i, setting in enumerate(settings):
        rows.append(run_setting(setting, args.gates, args.old_gates, args.seed))
        if (i + 1) % 32 == 0:
            print(f"  {i + 1}/{len(settings)} settings, {time.perf_counter() - start:.0f}s", file=sys.stderr)
            # a long run on a shared machine keeps what it has so far
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".partial.md").write_text(table(rows) + "\n")
    rows.sort(key=lambda r: (GAPS.index(r.setting.gap), r.setting.metric, r.setting.steps, r.setting.expert,
                             r.setting.margin, r.setting.trajectories))
    elapsed = time.perf_counter() - start
    text = (
        f"# Parity gate simulation grid\n\n`python bench/parity_grid.py --gates {args.gates} --old-gates "
        f"{args.old_gates} --seed {args.seed}` ({len(rows)} settings, {elapsed:.0f} s on one core). New rule: "
        f"{args.gates} gates a setting; old rule: the first {args.old_gates} of them.\n\n"
        f"{summary(rows)}\n\n{table(rows)}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if any(check(r) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
