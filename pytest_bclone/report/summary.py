"""Assemble the run's summary (the dict every renderer reads; schema: :mod:`.schema`) from the
results store, the recorded verdicts and the gate's decision.

Pure: no pytest, no litellm. The one place the report's figures are computed, so terminal, JSON,
Markdown and HTML show the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..records import Action, Trajectory
from ..results import ROLES, Item, ResultsStore, StepBlock, call_cost

__all__ = ["RunInfo", "build_summary", "divergence_records", "recorded_expert_scores", "worst_items"]


@dataclass(frozen=True)
class RunInfo:
    """What the summary says about the run besides its results."""

    dataset: Mapping[str, Any]  # name, version, ref, fingerprint, split
    clone: str
    expert: str
    repeats: int
    seed: int
    confidence: float
    holm: bool
    wall_s: float
    prices: Mapping[str, tuple[float, float]]
    cache: Mapping[str, int]
    shift_threshold: float | None
    user: str | None = None  # what answered the agents in rollout mode (None: no rollouts ran here)
    user_calls: Mapping[str, Any] | None = None  # the user's model-call totals (an LLM user)


def build_summary(store: ResultsStore, verdicts: Sequence[Mapping[str, Any]], gate: Mapping[str, Any],
                  info: RunInfo, trajectories: Mapping[str, Trajectory]) -> dict[str, Any]:
    """The run's report as one JSON-able dict. ``trajectories`` are the evaluated rows by id (their
    recorded ``expert_scores`` are shown beside the replayed figures)."""
    table = store.step_table()
    # Decision points held in columns are read there; an item is built only for what is shown.
    step_items: Sequence[Item] = store.items("step", "step") if table is None else _Rows(table)
    if table is None:
        divergent = [it for it in step_items if it.diverges]
        n_divergent = len(divergent)
    else:
        import numpy as np

        rows = np.flatnonzero(table.diverges())
        n_divergent = int(rows.shape[0])
        divergent = table.items(rows[:20].tolist())
    return {
        "schema": "pytest-bclone/report/1",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        # Decision points of every evaluated trajectory, rollout-only cohorts included (their
        # recorded assistant turns), not only the step items.
        "dataset": {**info.dataset, "trajectories": len(store.trajectory_ids()),
                    "decision_points": _decision_points(store, trajectories, len(step_items))},
        "run": {
            "clone": info.clone, "expert": info.expert, "modes": store.modes(), "repeats": info.repeats,
            "seed": info.seed, "confidence": info.confidence, "holm": info.holm, "wall_s": round(info.wall_s, 3),
        },
        "gate": dict(gate),
        "verdicts": [dict(v) for v in verdicts],
        "scores": score_table(store, trajectories),
        "recorded_expert": recorded_expert_scores(store, trajectories),
        "agents": {role: agent_figures(store, role, {"clone": info.clone, "expert": info.expert}[role], info.prices)
                   for role in ROLES},
        "tool_confusions": _confusions(step_items) if table is None else _confusions_columns(table),
        "dead_tools": _dead_tool_table(step_items if table is None else _dead_items(table)),
        "distribution_shift": (_shift_summary(step_items, info.shift_threshold) if table is None
                               else _shift_summary_columns(table, info.shift_threshold)),
        "errors": _errors(store),
        "cache": dict(info.cache),
        "divergences": {
            "count": n_divergent, "states": len(step_items),
            "rate": round(n_divergent / len(step_items), 6) if step_items else None,
            "examples": [_divergence_example(it) for it in divergent[:20]],
        },
        "drift": None,
        "rollouts": _rollout_summary(store, info, trajectories),
        "malformed_arguments": _malformed(store),
    }


class _Rows(Sequence[Item]):
    """A step table's rows as a sequence of items, each built when read (what the few per-item
    readers get; the counts need no item at all)."""

    def __init__(self, table: StepBlock) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._table.items(range(len(self))[i])
        return self._table.item(range(len(self))[i])

    def __iter__(self) -> Iterator[Item]:
        return (self._table.item(r) for r in range(len(self)))


def _decision_points(store: ResultsStore, trajectories: Mapping[str, Trajectory], step_items: int) -> int:
    table = store.step_table()
    step_ids = {it.trajectory_id for it in store.items("step", "step")} if table is None else set(table.tids)
    others = store.trajectory_ids() - step_ids
    return step_items + sum(len(trajectories[t].assistant_indexes()) for t in others if t in trajectories)


def _malformed(store: ResultsStore) -> dict[str, int]:
    """Actions per role whose tool-call arguments were not a JSON object (scored as wrong, never a
    crash): at step items, and every turn of rollout episodes."""
    out = {role: 0 for role in ROLES}
    table = store.step_table()
    if table is not None:
        for role in ROLES:
            out[role] += table.unparseable_count(role)
    for it in store.items() if table is None else store.items_outside_steps():
        for role in ROLES:
            if it.level == "step":
                action = it.action(role)
                out[role] += int(action is not None and action.unparseable)
            elif it.mode == "rollout":
                out[role] += sum(1 for a in it.episode(role) if a.unparseable)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _recorded_means(trajectory_ids: Iterable[str], trajectories: Mapping[str, Trajectory]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for tid in trajectory_ids:
        t = trajectories.get(tid)
        if t is None:
            continue
        for name, value in t.expert_scores.items():
            out.setdefault(name, []).append(float(value))
    return out


def recorded_expert_scores(store: ResultsStore, trajectories: Mapping[str, Trajectory]) -> list[dict[str, Any]]:
    """Per cohort, the mean of each score the dataset recorded for the expert (``expert_scores``: the
    source's own rewards and evaluator scores) over the evaluated trajectories."""
    by_cohort = store.cohort_trajectories()
    rows = []
    for cohort in sorted(by_cohort):
        for name, values in sorted(_recorded_means(sorted(by_cohort[cohort]), trajectories).items()):
            rows.append({"cohort": cohort, "score": name, "n": len(values), "mean": _mean(values)})
    return rows


def score_table(store: ResultsStore, trajectories: Mapping[str, Trajectory] | None = None) -> list[dict[str, Any]]:
    """Every metric computed, per cohort and mode: n, both agents' means, the difference; and the
    recorded expert's own score of the same name (``expert_recorded``), when the dataset has one."""
    rows: list[dict[str, Any]] = []
    cohorts = sorted(store.cohort_trajectories())
    trajectories = trajectories or {}
    table = store.step_table()
    for mode in store.modes():
        for level in ("step", "trajectory"):
            if (mode, level) == ("step", "step") and table is not None:
                rows.extend(_score_rows_columns(table, cohorts, trajectories))
                continue
            its = store.items(mode, level)
            metrics = sorted({m for it in its for m in it.scores("clone")})
            for cohort in cohorts:
                mine = [it for it in its if cohort in it.cohorts]
                recorded = _recorded_means(sorted({it.trajectory_id for it in mine}), trajectories)
                for metric in metrics:
                    pairs = [p for it in mine if (p := it.pair(metric)) is not None]
                    if not pairs:
                        continue
                    e = sum(p[0] for p in pairs) / len(pairs)
                    c = sum(p[1] for p in pairs) / len(pairs)
                    rows.append({"cohort": cohort, "metric": metric, "mode": mode, "n": len(pairs),
                                 "expert_mean": round(e, 4), "clone_mean": round(c, 4),
                                 "diff": round((c - e) * 100, 2),
                                 "expert_recorded": _mean(recorded.get(metric, []))})
    return rows


def _score_rows_columns(table: StepBlock, cohorts: Sequence[str], trajectories: Mapping[str, Trajectory]
                        ) -> list[dict[str, Any]]:
    """:func:`score_table`'s rows of the step-mode decision points, from their columns (the same
    sums in the same key order, so the same figures)."""
    import numpy as np

    metrics = sorted(m for m in table.metrics if table.clone_scored(m).any())
    rows = []
    for cohort in cohorts:
        mine = table.cohort_mask(cohort)
        tids = sorted({table.tids[t] for t in np.unique(table.traj[mine]).tolist()})
        recorded = _recorded_means(tids, trajectories)
        for metric in metrics:
            e_all, c_all, both = table.pair_columns(metric)
            sel = mine & both
            if not sel.any():
                continue
            e_list, c_list = e_all[sel].tolist(), c_all[sel].tolist()
            e, c = sum(e_list) / len(e_list), sum(c_list) / len(c_list)
            rows.append({"cohort": cohort, "metric": metric, "mode": "step", "n": len(e_list),
                         "expert_mean": round(e, 4), "clone_mean": round(c, 4), "diff": round((c - e) * 100, 2),
                         "expert_recorded": _mean(recorded.get(metric, []))})
    return rows


def agent_figures(store: ResultsStore, role: str, name: str, prices: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
    """Usage, cost and latency of one agent over every item."""
    calls = [c for figures in store.role_calls(role) for c in figures]
    live = [c for c in calls if not c.cached and c.error is None and c.latency_s and c.calls]
    lat = sorted(c.latency_s for c in live)
    price = prices.get(name)
    cost = sum(call_cost(c, price) or 0.0 for c in calls)
    # Model calls, not items: a rollout episode counts each of its calls, a recording read none.
    made = sum(c.calls for c in calls)
    recorded = bool(calls) and made == 0 and not any(c.error for c in calls)
    if recorded:
        # The recorded expert made no call in this run; what serving its trajectories cost is the
        # dataset's figure (row metadata), shown as recorded, never as $0.
        costs = [it.cost(role) for it in store.trajectory_items()]
        known = [c for c in costs if c is not None]
        cost = sum(known) if known and len(known) == len(costs) else 0.0
    return {
        "name": name,
        "calls": made, "failed": sum(1 for c in calls if c.error),
        "cached": sum(c.calls for c in calls if c.cached),
        "cost_source": "recorded" if recorded else "calls",
        "prompt_tokens": sum(c.prompt_tokens for c in calls),
        "completion_tokens": sum(c.completion_tokens for c in calls),
        "cost_usd": round(cost, 6),
        "price_known": (cost > 0 or not calls) if recorded else (all(c.price_known for c in calls) or price is not None),
        "latency_p50_s": round(statistics.median(lat), 4) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], 4) if lat else None,
        "retries": sum(c.retries for c in calls),
    }


def _shift_summary(step_items: Sequence[Item], threshold: float | None) -> dict[str, Any] | None:
    metric = "action_match"
    flagged = [(it, p) for it in step_items if it.ood is not None and (p := it.pair(metric)) is not None]
    if not flagged:
        return None

    def part(pairs: list[tuple[float, float]]) -> dict[str, Any]:
        if not pairs:
            return {"n": 0, "expert_mean": None, "clone_mean": None}
        return {"n": len(pairs), "expert_mean": _mean([p[0] for p in pairs]), "clone_mean": _mean([p[1] for p in pairs])}

    ood = [p for it, p in flagged if it.ood]
    ind = [p for it, p in flagged if not it.ood]
    return {"threshold": None if threshold is None else round(float(threshold), 6),
            "ood_share": round(len(ood) / len(flagged), 4), "metric": metric,
            "in_distribution": part(ind), "out_of_distribution": part(ood)}


def _shift_summary_columns(table: StepBlock, threshold: float | None) -> dict[str, Any] | None:
    """:func:`_shift_summary` from the columns (the same lists in the same order)."""
    if table.ood is None:
        return None
    e, c, both = table.pair_columns("action_match")
    known = both & (table.ood >= 0)
    if not known.any():
        return None
    ood = known & (table.ood == 1)
    ind = known & (table.ood == 0)

    def part(sel: Any) -> dict[str, Any]:
        n = int(sel.sum())
        if not n:
            return {"n": 0, "expert_mean": None, "clone_mean": None}
        return {"n": n, "expert_mean": _mean(e[sel].tolist()), "clone_mean": _mean(c[sel].tolist())}

    return {"threshold": None if threshold is None else round(float(threshold), 6),
            "ood_share": round(int(ood.sum()) / int(known.sum()), 4), "metric": "action_match",
            "in_distribution": part(ind), "out_of_distribution": part(ood)}


def _errors(store: ResultsStore) -> dict[str, Any]:
    by_role = {r: 0 for r in ROLES}
    examples: list[dict[str, Any]] = []
    table = store.step_table()
    if table is None:
        items = store.items()
    else:  # only the decision points with an error need an item
        failed = sorted(set(table.errors["clone"]) | set(table.errors["expert"]))
        items = sorted(store.items_outside_steps() + table.items(failed), key=lambda it: it.id)
    for it in items:
        # A failed call is counted once: on its step in step mode (the trajectory item only
        # inherits it), on its episode in rollout mode.
        if it.mode == "step" and it.level == "trajectory":
            continue
        for role, err in it.errors().items():
            by_role[role] += 1
            if len(examples) < 10:
                examples.append({"key": it.key, "role": role, "error": err})
        for metric, role, err in it.judge_errors:
            by_role[role] += 1
            if len(examples) < 10:
                examples.append({"key": it.key, "role": role, "error": f"judge {metric}: {err}"})
    return {"count": sum(by_role.values()), "by_role": by_role, "examples": examples}


def _rollout_summary(store: ResultsStore, info: RunInfo, trajectories: Mapping[str, Trajectory]
                     ) -> dict[str, Any] | None:
    """Episodes driven in rollout mode, how many each agent left at the step cap, and who answered
    them (the user mode, whose episodes met it, the recorded expert's own outcome)."""
    from ..agents.user import RECORDED, user_block

    eps = store.items("rollout", "trajectory")
    if not eps:
        return None
    truncated = {r: sum(1 for it in eps if it.truncated(r)) for r in ROLES}
    examples = sorted(it.trajectory_id for it in eps if it.truncated("clone"))[:5]
    rows = [t for it in eps if (t := trajectories.get(it.trajectory_id)) is not None]
    user = user_block(info.user or RECORDED, info.expert, rows, info.user_calls)
    return {"episodes": len(eps), "truncated": truncated, "examples": examples, "user": user}


def _describe(action: Action | None) -> str:
    return "(no action)" if action is None else action.describe()


def _divergence_example(it: Item) -> dict[str, Any]:
    return {"trajectory_id": it.trajectory_id, "step": it.step, "cohorts": list(it.cohorts),
            "expert_action": _describe(it.action("expert")), "clone_action": _describe(it.action("clone"))}


def divergence_records(store: ResultsStore) -> list[dict[str, Any]]:
    """Every state where clone and expert disagree: the annotation queue for the next clone."""
    out = []
    table = store.step_table()
    if table is None:
        step_items = store.items("step", "step")
    else:
        import numpy as np

        step_items = table.items(np.flatnonzero(table.diverges()).tolist())
    for it in step_items:
        if not it.diverges:
            continue
        e, c = it.action("expert"), it.action("clone")
        out.append({"trajectory_id": it.trajectory_id, "step": it.step, "cohorts": list(it.cohorts),
                    "expert_action": None if e is None else e.to_dict(),
                    "clone_action": None if c is None else c.to_dict(),
                    "scores": {m: {"expert": it.score("expert", m), "clone": v} for m, v in it.scores("clone").items()}})
    return out


def _first_divergent_turn(it: Item) -> tuple[int, Action | None, Action | None] | None:
    """The first turn where a rollout's clone episode and expert episode took different actions."""
    clone, expert = it.episode("clone"), it.episode("expert")
    for i in range(max(len(clone), len(expert))):
        c = clone[i] if i < len(clone) else None
        e = expert[i] if i < len(expert) else None
        if c is None or e is None or c.describe() != e.describe():
            return i, e, c
    return None


def worst_items(items: Sequence[Item], metric: str, step_items: Any, k: int = 3) -> list[dict[str, Any]]:
    """The ``k`` items where the clone lost most against the expert, as readable step records.
    ``step_items(trajectory_id)`` gives a trajectory's step items (to show its first divergent step)."""
    scored = [(it, p) for it in items if (p := it.pair(metric)) is not None]
    gaps = sorted(scored, key=lambda ip: (ip[1][1] - ip[1][0], ip[0].key))
    out = []
    for it, (e, c) in gaps[:k]:
        if c >= e:
            break
        step: int | None
        ea: Action | None
        ca: Action | None
        if it.level == "step":
            step, ea, ca = it.step, it.action("expert"), it.action("clone")
        elif it.mode == "rollout":
            turn = _first_divergent_turn(it)
            step, ea, ca = turn if turn is not None else (None, None, None)
        else:
            steps = step_items(it.trajectory_id)
            # The first step where the actions differ; none may (a trajectory metric can lose
            # without a divergent step, e.g. on the outcome): then no step is shown, never one
            # where both agents agree.
            first = next((s for s in steps if s.diverges), None)
            step, ea, ca = ((None, None, None) if first is None
                            else (first.step, first.action("expert"), first.action("clone")))
        out.append({
            "trajectory_id": it.trajectory_id, "step": step,
            "expert_action": _describe(ea), "clone_action": _describe(ca),
            "clone_score": round(c, 4), "expert_score": round(e, 4), "reason": it.reason(metric),
        })
    return out


def _labels(action: Action | None) -> list[str]:
    if action is None:
        return []
    names = [c.name for c in action.tool_calls]
    return names or ["(text reply)"]


def _confusions(step_items: Iterable[Any]) -> list[dict[str, Any]]:
    """Expert tool -> clone tool counts at the states where they differ.

    A text reply on one side confuses each distinct tool of the other side with "(text reply)";
    otherwise the calls left over after the multiset difference are paired in name order, and a
    call with no counterpart pairs with "(no call)"."""
    counts: Counter[tuple[str, str]] = Counter()
    text = "(text reply)"
    for it in step_items:
        ea, ca = it.action("expert"), it.action("clone")
        if ea is None or ca is None:
            continue
        e, c = Counter(_labels(ea)), Counter(_labels(ca))
        if e == c:
            continue
        if text in c and text not in e:
            counts.update((tool, text) for tool in sorted(e))
        elif text in e and text not in c:
            counts.update((text, tool) for tool in sorted(c))
        else:
            only_e = sorted((e - c).elements())
            only_c = sorted((c - e).elements())
            for i in range(max(len(only_e), len(only_c))):
                counts[(only_e[i] if i < len(only_e) else "(no call)",
                        only_c[i] if i < len(only_c) else "(no call)")] += 1
    return [{"expert_tool": e, "clone_tool": c, "count": n}
            for (e, c), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _confusions_columns(table: StepBlock) -> list[dict[str, Any]]:
    """:func:`_confusions` over the table's actions (the same counts): a state where both agents
    took the very same action confuses nothing, and needs no item."""
    e, c = table.actions["expert"], table.actions["clone"]
    return _confusions(_ActionPair(e[r], c[r]) for r in table.differing_rows())


class _ActionPair:
    """The two actions :func:`_confusions` reads from a step item."""

    __slots__ = ("_c", "_e")

    def __init__(self, e: Action | None, c: Action | None) -> None:
        self._e, self._c = e, c

    def action(self, role: str) -> Action | None:
        return self._c if role == "clone" else self._e


class _DeadRow:
    __slots__ = ("cohorts", "dead")

    def __init__(self, dead: tuple[str, ...], cohorts: tuple[str, ...]) -> None:
        self.dead, self.cohorts = dead, cohorts


def _dead_items(table: StepBlock) -> list[Any]:
    """The rows with dead tools, in key order, as what :func:`_dead_tool_table` reads."""
    return [_DeadRow(d, table.cohorts[int(table.traj[r])]) for r, d in sorted(table.dead.items())]


def _dead_tool_table(step_items: Iterable[Any]) -> list[dict[str, Any]]:
    tools: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for it in step_items:
        for name in it.dead:
            totals[name] += 1
            tools.setdefault(name, Counter()).update(it.cohorts)
    return [{"tool": name, "count": n, "cohorts": dict(sorted(tools[name].items()))}
            for name, n in totals.most_common()]
