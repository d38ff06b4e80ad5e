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

import io
import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import is_
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



class LazyReasons(Sequence[str]):
    """The clone's reasons of one step item, aligned with its metrics, read from the scoring
    columns (``cols.score(metric, i).reason``) when asked: a report shows a few, and building every
    one cost most of the scoring time."""

    __slots__ = ("_cols", "_i")

    def __init__(self, cols: Any, i: int) -> None:
        self._cols = cols
        self._i = i

    def __len__(self) -> int:
        return len(self._cols.metrics)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return tuple(self)[k]
        return self._cols.score(self._cols.metrics[k], self._i).reason

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


class ActionColumn(Sequence["Action | None"]):
    """One role's actions over a block's rows, as codes: ``-1`` no action (a failed call), ``-2``
    the recording's own action at that row (read from the trajectory when asked), ``k >= 0``
    ``objects[k]``; ``flags`` says which actions have unparseable arguments. What a block that
    crossed the xdist channel holds: the controller parses no recorded action it does not show."""

    __slots__ = ("_block", "codes", "flags", "objects")

    def __init__(self, codes: Any, objects: list[Action | None], flags: Any) -> None:
        self.codes = codes
        self.objects = objects
        self.flags = flags
        self._block: StepBlock | None = None  # the block whose rows these are (set by StepBlock)

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[r] for r in range(len(self))[row]]
        code = int(self.codes[row])
        if code >= 0:
            return self.objects[code]
        if code == -1:
            return None
        block = self._block
        assert block is not None
        t = None if block.trajectories is None else block.trajectories[int(block.traj[row])]
        if t is None:
            raise KeyError(f"no recorded trajectory for item {block.key(row)}: it is not in this dataset")
        return t.expert_actions()[int(block.step[row])]

    @staticmethod
    def of(actions: Sequence[Action | None]) -> ActionColumn:
        """``actions`` (a plain list, or a column) as a column."""
        import numpy as np

        if isinstance(actions, ActionColumn):
            return actions
        objects = list(actions)
        codes = np.arange(len(objects), dtype=np.int32)
        codes[[i for i, a in enumerate(objects) if a is None]] = -1
        return ActionColumn(codes, objects, _unparseable(objects))

    @staticmethod
    def concat(parts: Sequence[Sequence[Action | None]], rows: Any | None) -> ActionColumn:
        """The parts' actions one after the other (``rows``: those rows of that, in that order)."""
        import numpy as np

        cols = [ActionColumn.of(p) for p in parts]
        objects: list[Action | None] = []
        codes = []
        for c in cols:
            codes.append(np.where(c.codes >= 0, c.codes + len(objects), c.codes).astype(np.int32))
            objects.extend(c.objects)
        all_codes = np.concatenate(codes)
        flags = np.concatenate([c.flags for c in cols])
        if rows is not None:
            all_codes, flags = all_codes[rows], flags[rows]
        return ActionColumn(all_codes, objects, flags)


def _table_code(a: Action, seen: dict[Any, int], table: list[Any]) -> int:
    """The index of ``a`` in a wire table of distinct actions (added when new)."""
    try:
        k: Any = ("v", a)
        code = seen.get(k)
    except TypeError:  # an action with dict arguments: by identity
        k = ("i", id(a))
        code = seen.get(k)
    if code is None:
        code = seen[k] = len(table)
        table.append(a.to_dict())
    return code


def _unparseable(actions: Iterable[Action | None]) -> Any:
    import numpy as np

    return np.fromiter((a is not None and bool(a.tool_calls) and a.unparseable for a in actions), dtype=bool)


class StepBlock:
    """Step-mode decision points (mode ``step``, level ``step``), column by column.

    What one replay scored, or every replay's points merged in key order (:meth:`ResultsStore.step_table`).
    Rows of one trajectory are contiguous (``starts[t]:starts[t + 1]`` for trajectory ``tids[t]``);
    per row: the step, each role's scores aligned with ``metrics`` (``scored[role]`` False where the
    role was not scored: a failed call), the repeat-0 actions, the per-repeat call figures, and
    the shift flags. Errors and dead tools are sparse (row -> value). An :class:`Item` is built from
    a row only when a reader asks for one (:meth:`item`): a million decision points stay a few
    arrays and lists of shared references, not a million records.
    """

    __slots__ = ("actions", "calls", "cohorts", "dead", "distance", "errors", "metrics", "ood", "reason_at",
                 "reasons", "scored", "scores", "starts", "step", "tids", "traj", "trajectories")

    def __init__(
        self,
        tids: list[str],
        cohorts: list[tuple[str, ...]],
        starts: Any,
        step: Any,
        metrics: tuple[str, ...],
        scores: dict[str, Any],
        scored: dict[str, Any],
        errors: dict[str, dict[int, str]],
        actions: dict[str, Sequence[Action | None]],
        calls: dict[str, list[tuple[CallStats, ...]]],
        dead: dict[int, tuple[str, ...]],
        ood: Any | None = None,
        distance: Any | None = None,
        reasons: Any | None = None,
        reason_at: Any | None = None,
        trajectories: Sequence[Any] | None = None,
    ) -> None:
        import numpy as np

        self.tids = tids
        self.cohorts = cohorts
        self.starts = np.asarray(starts, dtype=np.int64)  # len(tids) + 1
        self.step = np.asarray(step, dtype=np.int32)
        self.traj = np.repeat(np.arange(len(tids), dtype=np.int32), np.diff(self.starts))
        self.metrics = metrics
        self.scores = scores  # role -> float64 (rows, len(metrics))
        self.scored = scored  # role -> bool (rows,)
        self.errors = errors
        self.actions = actions
        self.calls = calls
        self.dead = dead
        self.ood = ood  # int8 (rows,): 1 out of distribution, 0 in, -1 unknown; None: no shift check
        self.distance = distance  # float64 (rows,), unrounded
        self.reasons = reasons  # the clone's repeat-0 scoring columns (reasons built from them on demand)
        self.reason_at = reason_at  # int32 (rows,): row -> index in ``reasons``, -1 none
        self.trajectories = trajectories  # the Trajectory of each tid when known (recorded actions on the wire)
        for column in actions.values():
            if isinstance(column, ActionColumn):
                column._block = self

    def __len__(self) -> int:
        return int(self.step.shape[0])

    def key(self, row: int) -> str:
        return f"{self.tids[int(self.traj[row])]}#{int(self.step[row])}"

    def item(self, row: int) -> Item:
        """The :class:`Item` of ``row`` (built now; equal to the one the runner used to store)."""
        t = int(self.traj[row])
        tid = self.tids[t]
        step = int(self.step[row])
        cs = tuple(self.scores["clone"][row].tolist()) if self.scored["clone"][row] else None
        es = tuple(self.scores["expert"][row].tolist()) if self.scored["expert"][row] else None
        reasons: Sequence[str] = ()
        if cs is not None and self.metrics and self.reasons is not None and self.reason_at is not None:
            j = int(self.reason_at[row])
            if j >= 0:
                reasons = LazyReasons(self.reasons, j)
        ood = distance = None
        if self.ood is not None and self.distance is not None and self.ood[row] >= 0:
            ood = bool(self.ood[row])
            distance = round(float(self.distance[row]), 6)
        return Item(
            ItemKey("step", "step", f"{tid}#{step}"), tid, step, self.cohorts[t], self.metrics, cs, es,
            reasons, self.errors["clone"].get(row), self.errors["expert"].get(row),  # type: ignore[arg-type]
            self.actions["clone"][row], self.actions["expert"][row], self.calls["clone"][row],
            self.calls["expert"][row], self.dead.get(row, ()), ood, distance,
        )

    def items(self, rows: Iterable[int] | None = None) -> list[Item]:
        return [self.item(r) for r in (range(len(self)) if rows is None else rows)]

    def trajectory_rows(self, t: int) -> range:
        return range(int(self.starts[t]), int(self.starts[t + 1]))

    # -- column reads --------------------------------------------------------------------------------
    def cohort_mask(self, cohort: str, only: set[str] | None = None) -> Any:
        """Rows of trajectories in ``cohort`` (and, with ``only``, among those trajectory ids)."""
        import numpy as np

        per = np.fromiter((cohort in c and (only is None or tid in only) for tid, c in zip(self.tids, self.cohorts)),
                          dtype=bool, count=len(self.tids))
        return per[self.traj]

    def pair_columns(self, metric: str) -> tuple[Any, Any, Any]:
        """``(expert, clone, both)`` on ``metric``: both roles' values per row, and where both are
        scored (what :meth:`Item.pair` returns a pair for)."""
        import numpy as np

        if metric not in self.metrics:
            empty = np.zeros(len(self), dtype=np.float64)
            return empty, empty, np.zeros(len(self), dtype=bool)
        k = self.metrics.index(metric)
        e = self.scores["expert"][:, k]
        c = self.scores["clone"][:, k]
        both = self.scored["expert"] & self.scored["clone"] & ~np.isnan(e) & ~np.isnan(c)
        return e, c, both

    def clone_scored(self, metric: str) -> Any:
        """Rows where the clone has a score on ``metric`` (what :meth:`Item.score` returns a value for)."""
        import numpy as np

        if metric not in self.metrics:
            return np.zeros(len(self), dtype=bool)
        return self.scored["clone"] & ~np.isnan(self.scores["clone"][:, self.metrics.index(metric)])

    def diverges(self) -> Any:
        """:attr:`Item.diverges` of every row."""
        import numpy as np

        if "action_match" not in self.metrics:
            return np.zeros(len(self), dtype=bool)
        v = self.scores["clone"][:, self.metrics.index("action_match")]
        return self.scored["clone"] & (v < 1.0)  # nan < 1 is False, as for a missing score

    def compact_actions(self) -> None:
        """Hold both roles' actions as :class:`ActionColumn` codes, in place: a row whose action is
        the recording's own (the very object its trajectory's ``expert_actions()`` holds) refers to
        it (``-2``), read again from the trajectory when a row is shown, as in a block that crossed
        the xdist channel; the expert's action is kept itself where the clone's differs (the
        confusion table reads those). The same actions are read back, and the recording's parsed
        actions may then be dropped (a million of them were about a third of a large gate's memory)."""
        import numpy as np

        if self.trajectories is None or any(isinstance(a, ActionColumn) for a in self.actions.values()):
            return
        clone, expert = self.actions["clone"], self.actions["expert"]
        n = len(self)
        steps = self.step.tolist()
        mine: list[Action | None] = []  # per row, the recording's own action at its step
        for t, trajectory in enumerate(self.trajectories):
            own = trajectory.expert_actions()
            k = len(own)
            mine.extend([own[s] if s < k else None for s in steps[int(self.starts[t]):int(self.starts[t + 1])]])
        # Compared object by object in C (operator.is_ over the columns), not in a Python loop per row.
        c_ref = np.fromiter(map(is_, clone, mine), dtype=bool, count=n)
        e_ref = np.fromiter(map(is_, expert, mine), dtype=bool, count=n) & np.fromiter(
            map(is_, clone, expert), dtype=bool, count=n)
        codes: dict[str, Any] = {}
        objects: dict[str, list[Action | None]] = {}
        for role, column, ref in (("clone", clone, c_ref), ("expert", expert, e_ref)):
            none = np.fromiter(map(is_, column, repeat(None)), dtype=bool, count=n)
            ref &= ~none  # None is no one's own action (a missing step's ``mine`` is None too)
            kept = ~(ref | none)
            code = np.cumsum(kept, dtype=np.int64) - 1
            code[ref] = -2
            code[none] = -1
            codes[role] = code.astype(np.int32)
            objects[role] = list(compress(column, kept.tolist()))
        columns = {r: ActionColumn(codes[r], objects[r], _unparseable(self.actions[r])) for r in ROLES}
        for column in columns.values():
            column._block = self
        self.actions = dict(columns)

    def unparseable_count(self, role: str) -> int:
        """How many of ``role``'s actions have tool-call arguments that are not a JSON object."""
        column = self.actions[role]
        flags = column.flags if isinstance(column, ActionColumn) else _unparseable(column)
        return int(flags.sum())

    def differing_rows(self) -> list[int]:
        """Rows where the two roles' actions are not the very same object (a recorded action both
        roles read is the same; so are equal codes of the recording on the wire)."""
        e, c = self.actions["expert"], self.actions["clone"]
        if isinstance(e, ActionColumn) and isinstance(c, ActionColumn):
            import numpy as np

            # Without reading an action: both the recording's own (the same object), both none
            # (None is None), or objects of the two roles' own tables (compared by identity).
            same = ((e.codes == -2) & (c.codes == -2)) | ((e.codes == -1) & (c.codes == -1))
            own = (e.codes >= 0) & (c.codes >= 0)
            return [r for r in np.flatnonzero(~same).tolist()
                    if not own[r] or e.objects[e.codes[r]] is not c.objects[c.codes[r]]]
        return [r for r, (a, b) in enumerate(zip(e, c)) if a is not b]

    # -- building ------------------------------------------------------------------------------------
    def take(self, rows: Any, tids: list[str], cohorts: list[tuple[str, ...]], starts: Any,
             trajectories: Sequence[Any] | None) -> StepBlock:
        """A block of ``rows`` (in that order), whose trajectories are ``tids`` (contiguous runs, ``starts``)."""
        import numpy as np

        rows = np.asarray(rows, dtype=np.int64)
        order = rows.tolist()
        inverse = np.full(len(self), -1, dtype=np.int64)
        inverse[rows] = np.arange(len(rows))

        def sparse(d: Mapping[int, Any]) -> dict[int, Any]:
            out = {int(inverse[r]): v for r, v in d.items() if inverse[r] >= 0}
            return dict(sorted(out.items()))

        return StepBlock(
            tids, cohorts, starts, self.step[rows], self.metrics,
            {r: a[rows] for r, a in self.scores.items()}, {r: a[rows] for r, a in self.scored.items()},
            {r: sparse(d) for r, d in self.errors.items()},
            {r: ActionColumn.concat([a], rows) if isinstance(a, ActionColumn) else [a[i] for i in order]
             for r, a in self.actions.items()},
            {r: [c[i] for i in order] for r, c in self.calls.items()},
            sparse(self.dead),
            None if self.ood is None else self.ood[rows], None if self.distance is None else self.distance[rows],
            self.reasons, None if self.reason_at is None else self.reason_at[rows], trajectories,
        )

    @staticmethod
    def concat(blocks: Sequence[StepBlock], order: Any | None = None) -> StepBlock:
        """One block of ``blocks``' rows (their trajectories disjoint, metrics equal): in order, or
        with ``order`` the rows ``order`` of their concatenation (each trajectory's rows together).
        Built column by column, so only one column is ever held twice besides the parts."""
        import numpy as np

        if len(blocks) == 1 and order is None:
            return blocks[0]
        first = blocks[0]
        counts = np.concatenate([np.diff(b.starts) for b in blocks])
        tids = [t for b in blocks for t in b.tids]
        cohorts = [c for b in blocks for c in b.cohorts]
        tlist = [b.trajectories for b in blocks]
        trajs = None if any(t is None for t in tlist) else [x for t in tlist for x in t]  # type: ignore[union-attr]
        offsets = np.cumsum([0] + [len(b) for b in blocks])
        where: Any = None
        if order is not None:
            order = np.asarray(order, dtype=np.int64)
            traj = np.repeat(np.arange(len(tids)), counts)[order]
            seq = traj[np.sort(np.unique(traj, return_index=True)[1])].tolist()  # trajectories as they come
            tids, cohorts, counts = [tids[t] for t in seq], [cohorts[t] for t in seq], counts[seq]
            trajs = None if trajs is None else [trajs[t] for t in seq]
            where = np.empty(int(offsets[-1]), dtype=np.int64)
            where[order] = np.arange(len(order))
            order_list = order.tolist()

        def rows(parts: list[Any]) -> Any:
            if any(p is None for p in parts):
                return None
            whole = np.concatenate(parts)
            return whole if order is None else whole[order]

        def items(parts: Sequence[Sequence[Any]]) -> list[Any]:
            whole = [x for p in parts for x in p]
            return whole if order is None else [whole[i] for i in order_list]

        def sparse(get: Any) -> dict[int, Any]:
            out = {int(off) + r: v for b, off in zip(blocks, offsets) for r, v in get(b).items()}
            return out if where is None else dict(sorted((int(where[r]), v) for r, v in out.items()))

        # Reasons stay with their own scoring columns: a merged block reads them from its parts.
        reasons = reason_at = None
        if all(b.reasons is not None and b.reason_at is not None for b in blocks):
            flat: list[Any] = []  # every part's own scoring columns, a merged block's parts lifted
            ats = []
            for b in blocks:
                at = b.reason_at
                assert at is not None
                ats.append(np.where(at >= 0, at.astype(np.int64) + (len(flat) << 40), -1))
                flat.extend(b.reasons.parts if isinstance(b.reasons, _ReasonParts) else [b.reasons])
            reasons, reason_at = _ReasonParts(flat), rows(ats)
        return StepBlock(
            tids, cohorts, np.concatenate([[0], np.cumsum(counts)]), rows([b.step for b in blocks]), first.metrics,
            {r: rows([b.scores[r] for b in blocks]) for r in ROLES},
            {r: rows([b.scored[r] for b in blocks]) for r in ROLES},
            {r: sparse(lambda b, r=r: b.errors[r]) for r in ROLES},
            {r: (ActionColumn.concat([b.actions[r] for b in blocks], order)
                 if any(isinstance(b.actions[r], ActionColumn) for b in blocks)
                 else items([b.actions[r] for b in blocks])) for r in ROLES},
            {r: items([b.calls[r] for b in blocks]) for r in ROLES},
            sparse(lambda b: b.dead), rows([b.ood for b in blocks]), rows([b.distance for b in blocks]),
            reasons, reason_at, trajs,
        )

    @staticmethod
    def merged_key_order(blocks: Sequence[StepBlock]) -> Any | None:
        """:meth:`key_order` of ``blocks``' concatenation, read from their ids and steps only."""
        import numpy as np

        index = object.__new__(StepBlock)  # ids, steps and trajectory rows: all key_order reads
        index.tids = [t for b in blocks for t in b.tids]
        index.step = np.concatenate([b.step for b in blocks])
        index.traj = np.repeat(np.arange(len(index.tids), dtype=np.int32),
                               np.concatenate([np.diff(b.starts) for b in blocks]))
        return index.key_order()

    def key_order(self) -> Any | None:
        """The rows in key order (``<trajectory id>#<step>`` compared as strings, the order of
        :meth:`ResultsStore.items`), or None when they already are."""
        import numpy as np

        if self.ids_interleave():
            raise ValueError("a '#' in a trajectory id: key order interleaves trajectories")
        # Without '#' in ids, key order is trajectory id order (compared as id + '#'), then the
        # step compared as a string (10 before 2).
        t_order = sorted(range(len(self.tids)), key=lambda t: self.tids[t] + "#")
        t_rank = np.empty(len(self.tids), dtype=np.int64)
        t_rank[t_order] = np.arange(len(self.tids))
        top = int(self.step.max()) + 1 if len(self) else 0
        s_rank = np.empty(top, dtype=np.int64)
        s_rank[sorted(range(top), key=str)] = np.arange(top)
        rows = np.lexsort((s_rank[self.step], t_rank[self.traj]))
        return None if np.array_equal(rows, np.arange(len(self))) else rows

    def ids_interleave(self) -> bool:
        """Whether a trajectory id holds a '#': ``a#1#0`` then sorts between ``a#0`` and ``a#2``,
        so no block in key order keeps each trajectory's rows together."""
        return any("#" in t for t in self.tids)

    def reordered(self, rows: Any) -> StepBlock:
        """This block's rows in the order ``rows`` (a permutation that keeps each trajectory's rows together)."""
        return StepBlock.concat([self], rows)

    # -- the xdist channel ----------------------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        """A compact JSON-free form for the xdist channel: arrays as bytes, each distinct action and
        call-figure tuple once, a recorded expert action by reference (the controller reads its own copy)."""
        wire: dict[str, Any] = {
            # Per-trajectory lists as JSON text: one object on the channel, not one per trajectory.
            "block": 1, "tids": json.dumps(self.tids), "starts": self.starts.tobytes(), "step": self.step.tobytes(),
            "metrics": list(self.metrics), "cohorts": json.dumps(self.cohorts),
            "scores": {r: self.scores[r].tobytes() for r in ROLES}, "scored": {r: self.scored[r].tobytes() for r in ROLES},
            "errors": {r: [[i, e] for i, e in self.errors[r].items()] for r in ROLES},
            "dead": [[i, list(d)] for i, d in self.dead.items()],
            "ood": None if self.ood is None else self.ood.tobytes(),
            "distance": None if self.distance is None else self.distance.tobytes(),
            # The expert's action travels itself where the clone's differs (the controller's
            # confusion table reads those), by reference elsewhere.
            "actions": {r: self._wire_actions(r, set(self.differing_rows()) if r == "expert" else ()) for r in ROLES},
            "unparseable": {r: (a.flags if isinstance(a, ActionColumn) else _unparseable(a)).tobytes()
                            for r, a in self.actions.items()},
            "calls": {r: _wire_table(self.calls[r], lambda calls: [c.to_dict() for c in calls]) for r in ROLES},
        }
        return wire

    def _wire_actions(self, role: str, inline: Collection[int] = ()) -> dict[str, Any]:
        import numpy as np

        actions = self.actions[role]
        codes = np.empty(len(actions), dtype=np.int32)
        table: list[Any] = []
        seen: dict[Any, int] = {}
        recorded = self.trajectories
        if isinstance(actions, ActionColumn) and not any(int(actions.codes[r]) == -2 for r in inline):
            # Codes already (StepBlock.compact_actions): a reference stays one, no trajectory is read.
            kinds = actions.codes
            for row in range(len(actions)):
                code = int(kinds[row])
                if code < 0:
                    codes[row] = code
                    continue
                a = actions.objects[code]
                assert a is not None
                codes[row] = _table_code(a, seen, table)
            return {"codes": codes.tobytes(), "table": table}
        for t in range(len(self.tids)):
            own = recorded[t].expert_actions() if recorded is not None else ()
            for row in self.trajectory_rows(t):
                a = actions[row]
                if a is None:
                    codes[row] = -1
                    continue
                step = int(self.step[row])
                if step < len(own) and own[step] is a and row not in inline:
                    codes[row] = -2  # the recording's own action: the controller has it
                    continue
                codes[row] = _table_code(a, seen, table)
        return {"codes": codes.tobytes(), "table": table}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any], trajectories: Mapping[str, Any]) -> StepBlock:
        """The block :meth:`to_wire` shipped; ``trajectories`` (id -> Trajectory) give the recorded actions."""
        import numpy as np

        tids = list(json.loads(d["tids"]))
        starts = np.frombuffer(d["starts"], dtype=np.int64).copy()
        step = np.frombuffer(d["step"], dtype=np.int32).copy()
        metrics = tuple(d["metrics"])
        n, m = len(step), len(metrics)
        trajs = [trajectories.get(t) for t in tids]

        def actions(role: str) -> ActionColumn:
            w = d["actions"][role]
            return ActionColumn(np.frombuffer(w["codes"], dtype=np.int32).copy(),
                                [Action.from_dict(a) for a in w["table"]],
                                np.frombuffer(d["unparseable"][role], dtype=bool).copy())

        def calls(role: str) -> list[tuple[CallStats, ...]]:
            w = d["calls"][role]
            table = [tuple(CallStats.from_dict(c) for c in entry) for entry in w["table"]]
            return [table[c] for c in np.frombuffer(w["codes"], dtype=np.int32).tolist()]

        return cls(
            tids, [tuple(c) for c in json.loads(d["cohorts"])], starts, step, metrics,
            {r: np.frombuffer(d["scores"][r], dtype=np.float64).reshape(n, m).copy() for r in ROLES},
            {r: np.frombuffer(d["scored"][r], dtype=bool).copy() for r in ROLES},
            {r: {int(i): str(e) for i, e in d["errors"][r]} for r in ROLES},
            {r: actions(r) for r in ROLES}, {r: calls(r) for r in ROLES},
            {int(i): tuple(x) for i, x in d["dead"]},
            None if d.get("ood") is None else np.frombuffer(d["ood"], dtype=np.int8).copy(),
            None if d.get("distance") is None else np.frombuffer(d["distance"], dtype=np.float64).copy(),
            None, None, None if any(t is None for t in trajs) else trajs,
        )


def _wire_table(values: Sequence[Any], encode: Any) -> dict[str, Any]:
    """``values`` as int32 codes into a table of their distinct (hashable) values, each encoded once."""
    import numpy as np

    codes = np.empty(len(values), dtype=np.int32)
    seen: dict[Any, int] = {}
    table: list[Any] = []
    for i, v in enumerate(values):
        code = seen.get(v)
        if code is None:
            code = seen[v] = len(table)
            table.append(encode(v))
        codes[i] = code
    return {"codes": codes.tobytes(), "table": table}


class _ReasonParts:
    """The scoring columns of several blocks as one: index ``(part << 40) + i``."""

    __slots__ = ("metrics", "parts")

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.metrics = parts[0].metrics

    def score(self, metric: str, i: int) -> Any:
        return self.parts[i >> 40].score(metric, i & ((1 << 40) - 1))


_STEP = ("step", "step")


class ResultsStore:
    """Every item of the run, with the views the gate and the reports read.

    Step-mode decision points live in :class:`StepBlock` columns (one per replay); every other item
    (a trajectory, an episode) is an :class:`Item` by key. Readers that go through items get
    :class:`Item` records either way; the gate's statistics and the report read the columns
    (:meth:`step_table`). A step item put one by one (a judge's rescoring, a hand-built store) turns
    the blocks into items, so the store never holds a decision point twice.
    """

    def __init__(self) -> None:
        # ItemKey -> Item, and ("block", n) -> a StepBlock not yet merged into the table, or the rows
        # of the table (int array) that were that block: one dict keeps the storing order of all.
        self._items: dict[Any, Any] = {}
        self._nblocks = 0
        self._pending: list[StepBlock] = []  # blocks not yet merged into ``_table``
        self._table: StepBlock | None = None  # every merged block's rows, in key order
        self._step_at: dict[str, tuple[StepBlock, int]] = {}  # trajectory id -> (its block, index there)
        self._step_items = 0  # step-mode decision points held as Items
        self._rows = 0  # ... and in blocks
        self._sorted: dict[tuple[str, str], list[Item]] = {}  # (mode, level) -> items by key; a cache

    def __len__(self) -> int:
        return len(self._items) - self._nblocks + self._rows

    def __bool__(self) -> bool:
        return bool(self._items)

    def _entries(self) -> Iterator[tuple[StepBlock | None, Any]]:
        """The stored values in storing order: ``(block, rows)`` for a block's rows (``rows`` None:
        all of ``block``), ``(None, item)`` for an item."""
        for v in list(self._items.values()):
            if isinstance(v, Item):
                yield None, v
            elif isinstance(v, StepBlock):
                yield v, None
            else:
                yield self._table, v

    def __iter__(self) -> Iterator[Item]:
        for block, v in self._entries():
            if block is None:
                yield v
            else:
                yield from block.items(None if v is None else v.tolist())

    def put(self, item: Item) -> None:
        """Add or replace ``item``."""
        if (item.id.mode, item.id.level) == _STEP:
            if self._nblocks:
                self._explode()
            if item.id not in self._items:
                self._step_items += 1
        self._items[item.id] = item
        self._sorted.pop((item.id.mode, item.id.level), None)

    def add_block(self, block: StepBlock) -> None:
        """Add the step-mode decision points of one replay (trajectories not yet in the store)."""
        if not len(block):
            return
        if self._step_items or block.ids_interleave():
            for it in block.items():
                self.put(it)
            return
        self._items[("block", self._nblocks)] = block
        self._nblocks += 1
        for t, tid in enumerate(block.tids):
            self._step_at[tid] = (block, t)
        self._pending.append(block)
        self._rows += len(block)

    def _explode(self) -> None:
        """Turn every block into items, in place (a step item is being put one by one)."""
        items: dict[Any, Any] = {}
        for block, v in self._entries():
            if block is None:
                items[v.id] = v
            else:
                for it in block.items(None if v is None else v.tolist()):
                    items[it.id] = it
        self._items = items
        self._step_items += self._rows
        self._nblocks, self._pending, self._table, self._step_at, self._rows = 0, [], None, {}, 0

    def step_table(self) -> StepBlock | None:
        """Every step-mode decision point as one block in key order, or None when they are held as
        items (or there are none)."""
        if self._pending:
            import numpy as np

            parts = ([self._table] if self._table is not None else []) + self._pending
            order = StepBlock.merged_key_order(parts)
            table = StepBlock.concat(parts, order)
            where = np.arange(len(table)) if order is None else np.empty(len(table), dtype=np.int64)
            if order is not None:
                where[order] = np.arange(len(table))  # a row of the parts' concatenation -> its row in the table
            offsets = dict(zip(map(id, parts), np.cumsum([0] + [len(p) for p in parts]).tolist()))
            for k, v in self._items.items():
                if isinstance(v, StepBlock):
                    start = offsets[id(v)]
                    self._items[k] = where[start:start + len(v)]
                elif not isinstance(v, Item):
                    self._items[k] = where[v]  # rows of the previous table, its offset 0 in ``merged``
            self._table, self._pending = table, []
            self._step_at = {tid: (table, t) for t, tid in enumerate(table.tids)}
        return self._table

    def get(self, key: ItemKey) -> Item | None:
        if (key.mode, key.level) == _STEP and self._nblocks:
            tid, _, step = key.key.rpartition("#")
            at = self._step_at.get(tid)
            if at is None or not step.isdigit():
                return None
            block, t = at
            for row in block.trajectory_rows(t):
                if int(block.step[row]) == int(step) and block.key(row) == key.key:
                    return block.item(row)
            return None
        v = self._items.get(key)
        return v if isinstance(v, Item) else None

    def items(self, mode: str | None = None, level: str | None = None) -> list[Item]:
        """Items of ``mode`` and ``level`` (either None: all), in key order (stable across processes,
        so seeded statistics over them are reproducible under xdist)."""
        table = self.step_table()
        if mode is not None and level is not None:
            if (mode, level) == _STEP and table is not None:
                return table.items()  # built on demand, never cached: a million records
            cached = self._sorted.get((mode, level))
            if cached is None:
                cached = sorted((it for k, it in self._items.items() if isinstance(it, Item)
                                 and k.mode == mode and k.level == level), key=lambda it: it.id)
                self._sorted[mode, level] = cached
            return cached
        out = sorted((it for it in self._items.values() if isinstance(it, Item)
                      and (mode is None or it.id.mode == mode) and (level is None or it.id.level == level)),
                     key=lambda it: it.id)
        if table is not None and mode in (None, "step") and level in (None, "step"):
            out = sorted(out + table.items(), key=lambda it: it.id)
        return out

    def items_outside_steps(self) -> list[Item]:
        """Every item held as a record (all but the step-mode decision points in columns), in key order."""
        return sorted((v for v in self._items.values() if isinstance(v, Item)), key=lambda it: it.id)

    def cohort_items(self, cohort: str, mode: str, level: str, only: set[str] | None = None) -> list[Item]:
        """Items of ``cohort`` in ``mode`` at ``level``, in key order (``only``: of those trajectories;
        the others' items are not built)."""
        table = self.step_table()
        if (mode, level) == _STEP and table is not None:
            import numpy as np

            return table.items(np.flatnonzero(table.cohort_mask(cohort, only)).tolist())
        return [it for it in self.items(mode, level)
                if cohort in it.cohorts and (only is None or it.trajectory_id in only)]

    def cohort_pairs(self, cohort: str, mode: str, level: str, metric: str, only: set[str] | None = None
                     ) -> tuple[list[float], list[float], list[str], int]:
        """``(expert, clone, trajectory ids, items)`` of ``cohort``'s items in key order (``only``:
        of those trajectories): both roles' scores on ``metric`` where both are scored, each such
        item's trajectory, and how many items there are (scored or not). From the columns when the
        decision points are held there."""
        table = self.step_table()
        if (mode, level) == _STEP and table is not None:
            import numpy as np

            rows = table.cohort_mask(cohort, only)
            e, c, both = table.pair_columns(metric)
            sel = rows & both
            tids = table.tids
            return (e[sel].tolist(), c[sel].tolist(), [tids[t] for t in table.traj[sel].tolist()],
                    int(np.count_nonzero(rows)))
        items = self.cohort_items(cohort, mode, level, only)
        scored = [(it, p) for it in items if (p := it.pair(metric)) is not None]
        return [p[0] for _, p in scored], [p[1] for _, p in scored], [it.trajectory_id for it, _ in scored], len(items)

    def worst_candidates(self, cohort: str, mode: str, level: str, metric: str, k: int) -> list[Item]:
        """Items among which the ``k`` where the clone lost most on ``metric`` are (the gap ``clone -
        expert``, ties in key order): all of the cohort's items, or from the columns only those ``k``."""
        table = self.step_table()
        if (mode, level) == _STEP and table is not None:
            import numpy as np

            e, c, both = table.pair_columns(metric)
            rows = np.flatnonzero(table.cohort_mask(cohort) & both)
            order = np.argsort(c[rows] - e[rows], kind="stable")[:k]  # stable: ties stay in key order
            return table.items(rows[order].tolist())
        return self.cohort_items(cohort, mode, level)

    def step_items(self, trajectory_id: str, steps: int) -> list[Item]:
        """The step-mode decision points of one trajectory (``steps`` of them), in step order."""
        at = self._step_at.get(trajectory_id)
        if at is not None:
            block, t = at
            by_step = {int(block.step[r]): r for r in block.trajectory_rows(t)}
            return [block.item(by_step[k]) for k in range(steps) if k in by_step]
        out = []
        for k in range(steps):
            it = self._items.get(ItemKey("step", "step", f"{trajectory_id}#{k}"))
            if it is not None:
                out.append(it)
        return out

    def trajectory_item(self, mode: str, trajectory_id: str) -> Item | None:
        v = self._items.get(ItemKey(mode, "trajectory", trajectory_id))
        return v if isinstance(v, Item) else None

    def modes(self) -> list[str]:
        return sorted({k.mode for k, v in self._items.items() if isinstance(v, Item)} | ({"step"} if self._nblocks else set()))

    def trajectory_ids(self) -> set[str]:
        return {it.trajectory_id for it in self._items.values() if isinstance(it, Item)} | set(self._step_at)

    def trajectory_items(self) -> list[Item]:
        """One trajectory-level item per trajectory (rollout mode wins over step mode: it is what
        serving the trajectory costs when the clone drives it)."""
        out: dict[str, Item] = {}
        for it in self.items(level="trajectory"):
            if it.id.mode == "rollout" or it.trajectory_id not in out:
                out[it.trajectory_id] = it
        return list(out.values())

    def role_calls(self, role: str) -> Iterator[tuple[CallStats, ...]]:
        """``role``'s call figures of every item (one tuple per item, a figure per repeat), in the
        order the items were stored."""
        for block, v in self._entries():
            if block is None:
                yield v.calls(role)
            elif v is None:
                yield from block.calls[role]
            else:
                calls = block.calls[role]
                yield from (calls[r] for r in v.tolist())

    def cohort_trajectories(self) -> dict[str, set[str]]:
        """Cohort -> ids of the trajectories with an item in it."""
        out: dict[str, set[str]] = {}
        for tid, (block, t) in self._step_at.items():
            for c in block.cohorts[t]:
                out.setdefault(c, set()).add(tid)
        for v in self._items.values():
            if isinstance(v, Item):
                for c in v.cohorts:
                    out.setdefault(c, set()).add(v.trajectory_id)
        return out

    # -- xdist -------------------------------------------------------------------------------------
    def export(self, *, objects: bool = False) -> list[dict[str, Any]]:
        """Every item, step-mode decision points as compact column blocks (:meth:`StepBlock.to_wire`):
        what a worker ships to the controller, in storing order. The other items travel as JSON
        text (for xdist's channel), or with ``objects`` as the items themselves (for a pickle)."""
        table = self.step_table()
        out: list[dict[str, Any]] = [] if table is None else [table.to_wire()]
        # Reasons not yet built stay behind: they are read where the items were scored (a worker's
        # assertions show its worst items), never by the controller, and building them all cost
        # a re-scoring of every trajectory.
        items = (replace(v, clone_reasons=()) if isinstance(v.clone_reasons, LazyReasons) else v
                 for v in self._items.values() if isinstance(v, Item))
        if objects:
            # Pickled as they are: no dict per item on either side (Item.from_dict for a large
            # gate's trajectory items was most of the controller's merge).
            kept = list(items)
            return [*out, {"items": kept}] if kept else out
        # The items as one JSON text: xdist's channel serialises each Python object it carries one
        # by one, which for a large gate's trajectory items cost more memory than the items. Written
        # item by item: the dicts of every item at once were most of a large worker's export peak.
        text = io.StringIO()
        for item in items:
            text.write("," if text.tell() else "[")
            text.write(json.dumps(item.to_dict()))
        return [*out, {"items_json": text.getvalue() + "]"}] if text.tell() else out

    def merge(self, rows: Iterable[Mapping[str, Any]], trajectories: Mapping[str, Any] | None = None) -> None:
        """Add a worker's items. Items are deterministic, so one worker's copy is as good as another's:
        an item two workers both replayed is kept (and its calls counted) once. ``trajectories``
        (id -> Trajectory) resolve the recorded actions a block refers to."""
        import numpy as np

        for row in rows:
            if "items_json" in row:
                self.merge(json.loads(row["items_json"]), trajectories)
                continue
            if "items" in row:  # Item records themselves (a pickled export)
                for item in row["items"]:
                    if item.id not in self._items and self.get(item.id) is None:
                        self.put(item)
                continue
            if row.get("block"):
                block = StepBlock.from_wire(row, trajectories or {})
                keep = [t for t, tid in enumerate(block.tids)
                        if tid not in self._step_at and ItemKey("step", "step", f"{tid}#0") not in self._items]
                if len(keep) < len(block.tids):
                    rows_kept = np.concatenate([np.arange(block.starts[t], block.starts[t + 1]) for t in keep]) \
                        if keep else np.zeros(0, dtype=np.int64)
                    counts = np.diff(block.starts)[keep]
                    trajs = None if block.trajectories is None else [block.trajectories[t] for t in keep]
                    block = block.take(rows_kept, [block.tids[t] for t in keep], [block.cohorts[t] for t in keep],
                                       np.concatenate([[0], np.cumsum(counts)]), trajs)
                self.add_block(block)
                continue
            item = Item.from_dict(row)
            if item.id not in self._items and self.get(item.id) is None:
                self.put(item)
