"""The results store: one typed, frozen record per scored item, and their merge across xdist workers.

An *item* is what a parity check pairs: a decision point (step mode, level ``step``), or a whole
trajectory (level ``trajectory``: step-mode trajectory metrics, or a rollout episode). Items are
keyed by :class:`ItemKey` ``(mode, level, key)``; ``key`` is ``<trajectory id>#<step>`` for a step
and the trajectory id otherwise.

Per-item storage is compact on purpose (a million decision points must fit a CI runner): an
:class:`Item` is a slots dataclass of tuples, with per-role fields instead of nested dicts, its
scores aligned with a ``metrics`` tuple that all items of a replay share, ``nan`` where a metric
was not scored. Readers use the accessors (:meth:`Item.score`, :meth:`ResultsStore.cohort_items`,
...), never the fields' layout, so the store can go columnar without touching them.

Pure: no pytest, no litellm, no pyarrow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .records import Action, CallStats

__all__ = ["ROLES", "Item", "ItemKey", "ResultsStore", "call_cost", "token_cost"]

ROLES = ("clone", "expert")
_NAN = float("nan")


def token_cost(prompt_tokens: float, completion_tokens: float, price: tuple[float, float]) -> float:
    """USD of ``prompt_tokens`` in and ``completion_tokens`` out at ``price`` (USD per million tokens,
    input/output). The one place the run's cost formula is written."""
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def call_cost(stats: CallStats, price: tuple[float, float] | None) -> float | None:
    """One call's cost: what the agent reported, else its tokens at ``price``; None when unknown
    (neither a reported cost nor tokens with a price: unknown is not free)."""
    if stats.cost_usd:
        return float(stats.cost_usd)
    if price is None or not (stats.prompt_tokens or stats.completion_tokens):
        return None
    return token_cost(stats.prompt_tokens, stats.completion_tokens, price)


@dataclass(frozen=True, slots=True, order=True)
class ItemKey:
    """Identity of an item: replay ``mode`` (step/rollout), ``level`` (step/trajectory) and ``key``."""

    mode: str
    level: str
    key: str


@dataclass(frozen=True, slots=True)
class Item:
    """One scored item of both agents. Per-role fields come in ``clone_*`` / ``expert_*`` pairs;
    read them through :meth:`score`, :meth:`error`, :meth:`action`, :meth:`calls`, :meth:`cost`."""

    id: ItemKey
    trajectory_id: str
    step: int | None
    cohorts: tuple[str, ...]
    metrics: tuple[str, ...]
    clone_scores: tuple[float, ...] | None  # aligned with metrics; None when the role was not scored
    expert_scores: tuple[float, ...] | None
    clone_reasons: tuple[str, ...] = ()  # why the clone scored what it did, aligned with metrics
    clone_error: str | None = None
    expert_error: str | None = None
    clone_action: Action | None = None  # repeat 0's action (step items)
    expert_action: Action | None = None
    clone_calls: tuple[CallStats, ...] = ()  # one per repeat
    expert_calls: tuple[CallStats, ...] = ()
    dead: tuple[str, ...] = ()  # tools the clone called that the state did not offer
    ood: bool | None = None
    distance: float | None = None
    clone_cost: float | None = None  # USD of serving the trajectory (trajectory items); None: unknown
    expert_cost: float | None = None
    clone_episode: tuple[Action, ...] | None = None  # rollout: the episode's actions (repeat 0)
    expert_episode: tuple[Action, ...] | None = None
    clone_truncated: bool = False
    expert_truncated: bool = False
    judge_errors: tuple[tuple[str, str, str], ...] = ()  # (metric, role, error)

    # -- accessors --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.id.mode

    @property
    def level(self) -> str:
        return self.id.level

    @property
    def key(self) -> str:
        return self.id.key

    def score(self, role: str, metric: str) -> float | None:
        """``role``'s score on ``metric``; None when not scored (a failed call or judge call)."""
        values = self.clone_scores if role == "clone" else self.expert_scores
        if values is None:
            return None
        try:
            v = values[self.metrics.index(metric)]
        except ValueError:
            return None
        return None if math.isnan(v) else v

    def scores(self, role: str) -> dict[str, float]:
        """``role``'s scores by metric (metrics it was not scored on left out)."""
        values = self.clone_scores if role == "clone" else self.expert_scores
        if values is None:
            return {}
        return {m: v for m, v in zip(self.metrics, values) if not math.isnan(v)}

    def pair(self, metric: str) -> tuple[float, float] | None:
        """``(expert, clone)`` scores on ``metric``, or None unless both are scored."""
        e, c = self.score("expert", metric), self.score("clone", metric)
        return None if e is None or c is None else (e, c)

    def reason(self, metric: str) -> str:
        try:
            return self.clone_reasons[self.metrics.index(metric)]
        except (ValueError, IndexError):
            return ""

    def error(self, role: str) -> str | None:
        return self.clone_error if role == "clone" else self.expert_error

    def errors(self) -> dict[str, str]:
        """Role -> error of the roles whose call failed."""
        return {r: e for r in ROLES if (e := self.error(r)) is not None}

    def action(self, role: str) -> Action | None:
        return self.clone_action if role == "clone" else self.expert_action

    def calls(self, role: str) -> tuple[CallStats, ...]:
        return self.clone_calls if role == "clone" else self.expert_calls

    def cost(self, role: str) -> float | None:
        return self.clone_cost if role == "clone" else self.expert_cost

    def episode(self, role: str) -> tuple[Action, ...]:
        return (self.clone_episode if role == "clone" else self.expert_episode) or ()

    def truncated(self, role: str) -> bool:
        return self.clone_truncated if role == "clone" else self.expert_truncated

    @property
    def diverges(self) -> bool:
        """The clone's action differs from the expert's (action_match below 1)."""
        v = self.score("clone", "action_match")
        return v is not None and v < 1.0

    def with_judged(self, metric: str, values: Mapping[str, float], failures: Mapping[str, str]) -> Item:
        """A copy with the judge ``metric`` scored for the roles in ``values`` and failed for ``failures``."""
        metrics = self.metrics if metric in self.metrics else (*self.metrics, metric)
        i = metrics.index(metric)

        def put(old: tuple[float, ...] | None, role: str) -> tuple[float, ...] | None:
            if old is None:
                return None
            padded = list(old) + [_NAN] * (len(metrics) - len(old))
            if role in values:
                padded[i] = float(values[role])
            return tuple(padded)

        reasons = tuple(self.clone_reasons) + ("",) * (len(metrics) - len(self.clone_reasons))
        return replace(
            self, metrics=metrics, clone_scores=put(self.clone_scores, "clone"),
            expert_scores=put(self.expert_scores, "expert"), clone_reasons=reasons,
            judge_errors=self.judge_errors + tuple((metric, r, e) for r, e in failures.items()),
        )

    def judge_failed(self, metric: str) -> bool:
        return any(m == metric for m, _, _ in self.judge_errors)

    # -- the xdist channel --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (crosses the xdist channel)."""
        def acts(a: tuple[Action, ...] | None) -> list[dict[str, Any]] | None:
            return None if a is None else [x.to_dict() for x in a]

        return {
            "mode": self.id.mode, "level": self.id.level, "key": self.id.key,
            "trajectory_id": self.trajectory_id, "step": self.step, "cohorts": list(self.cohorts),
            "metrics": list(self.metrics),
            "clone_scores": None if self.clone_scores is None else [_json_float(v) for v in self.clone_scores],
            "expert_scores": None if self.expert_scores is None else [_json_float(v) for v in self.expert_scores],
            "clone_reasons": list(self.clone_reasons), "clone_error": self.clone_error,
            "expert_error": self.expert_error,
            "clone_action": None if self.clone_action is None else self.clone_action.to_dict(),
            "expert_action": None if self.expert_action is None else self.expert_action.to_dict(),
            "clone_calls": [c.to_dict() for c in self.clone_calls],
            "expert_calls": [c.to_dict() for c in self.expert_calls],
            "dead": list(self.dead), "ood": self.ood, "distance": self.distance,
            "clone_cost": self.clone_cost, "expert_cost": self.expert_cost,
            "clone_episode": acts(self.clone_episode), "expert_episode": acts(self.expert_episode),
            "clone_truncated": self.clone_truncated, "expert_truncated": self.expert_truncated,
            "judge_errors": [list(j) for j in self.judge_errors],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Item:
        def scores(v: Sequence[float | None] | None) -> tuple[float, ...] | None:
            return None if v is None else tuple(_NAN if x is None else float(x) for x in v)

        def act(v: Mapping[str, Any] | None) -> Action | None:
            return None if v is None else Action.from_dict(v)

        def acts(v: Sequence[Mapping[str, Any]] | None) -> tuple[Action, ...] | None:
            return None if v is None else tuple(Action.from_dict(a) for a in v)

        return cls(
            ItemKey(d["mode"], d["level"], d["key"]), d["trajectory_id"], d["step"], tuple(d["cohorts"]),
            tuple(d["metrics"]), scores(d["clone_scores"]), scores(d["expert_scores"]),
            tuple(d.get("clone_reasons") or ()), d.get("clone_error"), d.get("expert_error"),
            act(d.get("clone_action")), act(d.get("expert_action")),
            tuple(CallStats.from_dict(c) for c in d.get("clone_calls") or ()),
            tuple(CallStats.from_dict(c) for c in d.get("expert_calls") or ()),
            tuple(d.get("dead") or ()), d.get("ood"), d.get("distance"), d.get("clone_cost"), d.get("expert_cost"),
            acts(d.get("clone_episode")), acts(d.get("expert_episode")), bool(d.get("clone_truncated")),
            bool(d.get("expert_truncated")), tuple((str(m), str(r), str(e)) for m, r, e in d.get("judge_errors") or ()),
        )


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else v


class ResultsStore:
    """Every item of the run, by key, with the views the gate and the reports read."""

    def __init__(self) -> None:
        self._items: dict[ItemKey, Item] = {}
        self._sorted: dict[tuple[str, str], list[Item]] = {}  # (mode, level) -> items by key; a cache

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items.values())

    def put(self, item: Item) -> None:
        """Add or replace ``item``."""
        self._items[item.id] = item
        self._sorted.pop((item.id.mode, item.id.level), None)

    def get(self, key: ItemKey) -> Item | None:
        return self._items.get(key)

    def items(self, mode: str | None = None, level: str | None = None) -> list[Item]:
        """Items of ``mode`` and ``level`` (either None: all), in key order (stable across processes,
        so seeded statistics over them are reproducible under xdist)."""
        if mode is not None and level is not None:
            cached = self._sorted.get((mode, level))
            if cached is None:
                cached = sorted((it for k, it in self._items.items() if k.mode == mode and k.level == level),
                                key=lambda it: it.id)
                self._sorted[mode, level] = cached
            return cached
        return sorted((it for it in self._items.values()
                       if (mode is None or it.id.mode == mode) and (level is None or it.id.level == level)),
                      key=lambda it: it.id)

    def cohort_items(self, cohort: str, mode: str, level: str) -> list[Item]:
        """Items of ``cohort`` in ``mode`` at ``level``, in key order."""
        return [it for it in self.items(mode, level) if cohort in it.cohorts]

    def step_items(self, trajectory_id: str, steps: int) -> list[Item]:
        """The step-mode decision points of one trajectory (``steps`` of them), in step order."""
        out = []
        for k in range(steps):
            it = self._items.get(ItemKey("step", "step", f"{trajectory_id}#{k}"))
            if it is not None:
                out.append(it)
        return out

    def trajectory_item(self, mode: str, trajectory_id: str) -> Item | None:
        return self._items.get(ItemKey(mode, "trajectory", trajectory_id))

    def modes(self) -> list[str]:
        return sorted({k.mode for k in self._items})

    def trajectory_ids(self) -> set[str]:
        return {it.trajectory_id for it in self._items.values()}

    def trajectory_items(self) -> list[Item]:
        """One trajectory-level item per trajectory (rollout mode wins over step mode: it is what
        serving the trajectory costs when the clone drives it)."""
        out: dict[str, Item] = {}
        for it in self.items(level="trajectory"):
            if it.id.mode == "rollout" or it.trajectory_id not in out:
                out[it.trajectory_id] = it
        return list(out.values())

    # -- xdist -------------------------------------------------------------------------------------
    def export(self) -> list[dict[str, Any]]:
        """Every item as JSON-able dicts (what a worker ships to the controller)."""
        return [it.to_dict() for it in self._items.values()]

    def merge(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add a worker's items. Items are deterministic, so one worker's copy is as good as another's:
        an item two workers both replayed is kept (and its calls counted) once."""
        for row in rows:
            item = Item.from_dict(row)
            if item.id not in self._items:
                self.put(item)
