"""``--bclone-sequential``: replay a cohort in seeded rounds and stop once its verdict is known.

The statistics are :class:`~pytest_bclone.sequential.SequentialParity`'s (an anytime-valid
confidence sequence, so looking after every round does not inflate the error rate); this module
drives the replay: it orders the cohort's trajectories with a seed derived from the run's seed
and the cohort, replays them a round at a time through the session's runner (trajectories other
cohorts already replayed cost nothing), feeds each trajectory's mean paired difference to the
sequence, and stops when it settles.

Failed model calls never help a clone pass: a trajectory with a failed call is left out of the
sequence, and while any is, an early PASS is not taken (the replay goes on, and the fixed-n rule,
which counts failed calls, decides at the end). A FAIL may stop the cohort early whatever failed:
the trajectories that were scored already put the clone below its margin. A cohort that reaches
its full size without settling is decided by the fixed-n rule on all its items, exactly as
without ``--bclone-sequential``.

A cohort too small for even a clone identical to the expert to pass its margin (known from its
size alone, :func:`pytest_bclone.sequential.identical_clone_passes`) is replayed for
:data:`~pytest_bclone.sequential.FUTILITY_SHARE` of its trajectories and, unless the sequence
settles by then, decided by the fixed-n rule on those ("too small"): FAIL when they already put
the clone below its margin, else INCONCLUSIVE with the number of trajectories it would need.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .parity import derive_seed
from .sequential import ROUNDS, round_size

if TYPE_CHECKING:
    from .parity import Status, Verdict
    from .records import Trajectory
    from .session import BcloneSession

__all__ = ["ROUNDS", "SequentialRun", "round_size", "savings", "sequential_parity"]


@dataclass(frozen=True)
class SequentialRun:
    """How the sequential gate went for one (cohort, metric): what it replayed and why it stopped."""

    cohort: str
    metric: str
    mode: str
    replayed: int  # trajectories of the cohort replayed when it stopped
    total: int
    rounds: int
    stopped: str  # "pass", "fail" (settled early), "too small" (futility) or "full" (the fixed-n rule)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the report's ``sequential`` block)."""
        return {"cohort": self.cohort, "metric": self.metric, "mode": self.mode, "replayed": self.replayed,
                "total": self.total, "rounds": self.rounds, "stopped": self.stopped, "reason": self.reason}


def seeded_order(trajectories: list[Trajectory], seed: int, cohort: str) -> list[Trajectory]:
    """The cohort's trajectories in a seeded order: by id first, so the order does not depend on
    how the dataset happened to be stored, then shuffled with a seed of the run's seed and the cohort."""
    ordered = sorted(trajectories, key=lambda t: t.id)
    random.Random(derive_seed(seed, cohort, "sequential")).shuffle(ordered)
    return ordered


def sequential_parity(session: BcloneSession, cohort: str, within: float, metric: str, mode: str,
                      confidence: float) -> tuple[Verdict, SequentialRun]:
    """Replay ``cohort`` round by round until the confidence sequence settles its verdict."""
    from .sequential import SequentialParity, SequentialPlan

    runner = session.runner
    order = seeded_order([t for t in runner.eval_trajectories if cohort in t.cohorts], session.cfg.seed, cohort)
    total = len(order)
    # Fixed before any replay, from the cohort's size alone: its rounds, and whether even a clone
    # identical to the expert could pass it (if not, only FUTILITY_SHARE is replayed: a FAIL can
    # still show).
    plan = SequentialPlan.for_cohort(total, within, confidence)
    size = plan.round_size
    gate = SequentialParity(within, confidence, zero_regression=within == 0, total_units=max(total, 1))
    seen: set[str] = set()
    failed_units = 0
    rounds = 0
    state = gate.state
    for start in range(0, total, size):
        batch = order[start:start + size]
        rounds += 1
        runner.replay_trajectories(mode, batch)
        ids = {t.id for t in batch}
        seen |= ids
        session.ensure_judged(cohort, metric)  # judges the items replayed so far
        units: dict[str, list[tuple[float, float] | None]] = {}
        for item in session.cohort_items(cohort, metric, mode, only=ids):  # this round's items only
            units.setdefault(item.trajectory_id, []).append(item.pair(metric))
        diffs, regressions = [], []
        for tid in sorted(units):
            pairs = units[tid]
            if any(p is None for p in pairs) or not pairs:
                failed_units += 1  # never scored: left out of the sequence
                continue
            diffs.append(math.fsum(c - e for e, c in pairs) / len(pairs))  # type: ignore[misc]
            regressions.append(sum(1 for e, c in pairs if c < e))  # type: ignore[misc]
        if not state.settled:
            state = gate.update(diffs, regressions)
        if state.status == "fail" or (state.status == "pass" and failed_units == 0):
            break
        if len(seen) >= plan.horizon:
            break
    if plan.futile and not state.settled and len(seen) < total:
        # Too small for parity: decided at the plan's fixed horizon by the fixed-n rule on what was
        # replayed (a clone clearly below its margin fails; otherwise inconclusive, named too small).
        partial = session.fixed_parity(cohort, within, metric, mode, confidence, only=seen)
        small = (f"too small to show parity: even a clone identical to the expert on all {total} trajectories "
                 f"could not pass a {within:g}-point margin at {confidence * 100:g}% (about {plan.needed} are "
                 f"needed); decided by the fixed-n rule on the {len(seen)} replayed")
        if partial.status == "inconclusive":
            verdict = replace(partial, n_needed=plan.needed, reason=f"sequential: {small}")
        else:
            verdict = replace(partial, reason=f"sequential: {small}: {partial.reason}")
        return verdict, SequentialRun(cohort, metric, mode, len(seen), total, rounds, "too small",
                                      f"{small}: {partial.status}")
    full = len(seen) >= total
    if full or not state.settled or (state.status == "pass" and failed_units):
        # Not settled early (or a pass that failed calls cannot vouch for): the fixed-n rule on
        # every item, as without --bclone-sequential.
        runner.replay_trajectories(mode, order)
        verdict = session.fixed_parity(cohort, within, metric, mode, confidence)
        why = ("the confidence sequence did not settle before the last round" if not state.settled
               else f"{failed_units} trajectories with failed calls: a pass must count them"
               if state.status == "pass" else state.reason)
        return verdict, SequentialRun(cohort, metric, mode, total, total, rounds, "full",
                                      f"{why}; decided by the fixed-n rule on all {total} trajectories")
    # Settled early: the verdict's figures are those of the trajectories replayed, its interval
    # the confidence sequence's (the one that is valid under stopping).
    partial = session.fixed_parity(cohort, within, metric, mode, confidence, only=seen)
    status: Status = "pass" if state.status == "pass" else "fail"
    verdict = replace(partial, status=status, ci_low=state.low, ci_high=state.high,
                      p_value=state.p_value if state.p_value is not None else partial.p_value, n_needed=None,
                      reason=f"sequential: {state.reason}")
    return verdict, SequentialRun(cohort, metric, mode, len(seen), total, rounds, state.status, state.reason)


def savings(session: BcloneSession) -> dict[str, Any]:
    """The report's ``sequential`` block: per cohort, what was replayed and why it stopped; for the
    run, the trajectories, model calls and money a full replay would have spent on top.

    Savings count trajectories of the gated cohorts that no cohort replayed, in each mode.
    Calls: a step-mode trajectory asks every agent that makes calls once per decision point and
    repeat; a rollout trajectory is one episode per such agent and repeat. Money: those
    trajectories at the mean cost of the replayed ones (None when that cost is unknown)."""
    from .agents.base import needs_calls

    runner = session.runner
    agents = runner.agents()
    calling = [role for role, agent in agents.items() if needs_calls(agent)]
    repeats = session.cfg.repeats
    runs = [run.to_dict() for run in session.sequential_runs]
    saved_trajectories, saved_calls, units = 0, 0, set()
    money: float | None = 0.0
    for mode in sorted({run.mode for run in session.sequential_runs}):
        gated = {run.cohort for run in session.sequential_runs if run.mode == mode}
        done = runner.replayed(mode)
        skipped = [t for t in runner.eval_trajectories if gated.intersection(t.cohorts) and t.id not in done]
        saved_trajectories += len(skipped)
        if mode == "step":
            saved_calls += sum(len(t.assistant_indexes()) for t in skipped) * len(calling) * repeats
            units.add("calls")
        else:
            saved_calls += len(skipped) * len(calling) * repeats
            units.add("episodes")
        costs = []
        for item in session.store.items(mode, "trajectory"):
            if item.trajectory_id in done:
                parts = [item.cost(role) for role in calling]
                costs.append(None if any(c is None for c in parts) else sum(c for c in parts if c is not None))
        if money is not None and skipped:
            # Trajectories whose cost is unknown (a failed call reports no tokens) are left out of
            # the mean; with none known the saving is unknown, not zero.
            known = [c for c in costs if c is not None]
            money = money + sum(known) / len(known) * len(skipped) if known else None
    return {"cohorts": runs, "saved_trajectories": saved_trajectories, "saved_calls": saved_calls,
            "saved_unit": " and ".join(sorted(units)) or "calls",
            "saved_usd": None if money is None else round(money, 6)}
