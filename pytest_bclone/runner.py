"""Replay and scoring orchestration: trajectories in, typed items in the results store out.

The :class:`Runner` builds the clone, the expert and the evaluator registry once, replays what a
parity check needs (lazily, once per (mode, trajectory); the cohorts the collected tests declare
are replayed together so one replay serves the whole suite at full concurrency), scores the
replies and stores one :class:`~pytest_bclone.results.Item` per decision point and per
trajectory. LLM-judge metrics are scored on demand (:meth:`Runner.ensure_judged`).

No pytest import: the plugin passes its hooks in as plain callables.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import timing
from .config import BcloneConfig
from .errors import GateError
from .records import Action, CallStats, DecisionPoint, Score, Trajectory
from .results import ROLES, Item, ItemKey, LazyReasons, ResultsStore, StepBlock, call_cost, token_cost

if TYPE_CHECKING:
    from .agents.base import Agent
    from .dataset.store import DatasetVersion
    from .evaluators import EvaluatorRegistry
    from .progress import Progress

__all__ = ["Runner"]

# per role: per item key: per repeat, the metric -> Score of that repeat (None where the call failed)
_PerRepeat = dict[str, dict[str, list[dict[str, Score] | None]]]


class Runner:
    """Replays and scores trajectories into ``store``.

    ``make_agent_hook(role, spec)`` and ``make_environment_hook(trajectory)`` are the plugin's
    firstresult hooks; ``register_evaluators(registry)`` feeds the user's evaluators in.
    """

    def __init__(
        self,
        cfg: BcloneConfig,
        dataset: DatasetVersion,
        store: ResultsStore,
        *,
        make_agent_hook: Callable[[str, str], Any] | None = None,
        make_environment_hook: Callable[[Trajectory], Any] | None = None,
        register_evaluators: Callable[[EvaluatorRegistry], None] | None = None,
        progress: bool | Progress = True,
        make_user_hook: Callable[[Trajectory], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.store = store
        self._make_agent_hook = make_agent_hook
        self._make_environment_hook = make_environment_hook
        self._make_user_hook = make_user_hook
        # What answered the agents in rollout mode (--bclone-user, the make_user hook) and the
        # figures of its model calls: small JSON-able values, so they cross xdist with the items.
        self.user_mode: str | None = None
        self.user_calls: dict[str, Any] = {}
        self._register_evaluators = register_evaluators
        self.progress = progress
        self.eval_trajectories: list[Trajectory] = dataset.select(cfg.split, cfg.sample, cfg.seed)
        self.by_id = {t.id: t for t in self.eval_trajectories}
        # mode -> cohorts the collected tests declare (@pytest.mark.bclone(cohort=..., mode=...)).
        self.declared_cohorts: dict[str, set[str]] = {"step": set(), "rollout": set()}
        self.agent_names: dict[str, str] = {}
        self.shift_threshold: float | None = None  # kept apart from the model: it crosses xdist
        self.wall_s = 0.0
        self.cache_counts: dict[str, int] = {"hits": 0, "misses": 0}
        self.batch_reports: list[dict[str, Any]] = []  # --bclone-batch: one per agent and replay
        self._done: dict[str, set[str]] = {"step": set(), "rollout": set()}
        self._agents: dict[str, Agent] | None = None
        self._registry: EvaluatorRegistry | None = None
        self._shift: Any = None

    # -- agents and evaluators ---------------------------------------------------------------------
    @property
    def registry(self) -> EvaluatorRegistry:
        """The evaluator registry (built-ins, the judge when ``--bclone-judge`` is set, the user's)."""
        if self._registry is None:
            from .agents.factory import make_judge
            from .evaluators import StateChangePolicy, default_registry

            policy = StateChangePolicy.with_overrides(state_changing=self.cfg.state_changing_tools,
                                                      read_only=self.cfg.read_only_tools)
            self._registry = default_registry(make_judge(self.cfg), policy=policy,
                                              trajectory_match=self.cfg.trajectory_match)
            if self._register_evaluators is not None:
                self._register_evaluators(self._registry)
        return self._registry

    def agents(self) -> dict[str, Agent]:
        """The clone and the expert, built once."""
        if self._agents is None:
            from .agents.factory import make_agent

            if self.cfg.clone is None:
                raise GateError(
                    "no clone to gate: pass --bclone-clone=SPEC (a litellm model string such as "
                    "openai/ft:gpt-4o-mini:acme:clone, python:module:callable, or a name your "
                    "pytest_bclone_make_agent hook resolves), or set bclone_clone in your ini file"
                )
            all_rows = self.dataset.trajectories
            self._agents = {
                "clone": make_agent("clone", self.cfg.clone, self.cfg, all_rows, self._make_agent_hook),
                "expert": make_agent("expert", self.cfg.expert, self.cfg, all_rows, self._make_agent_hook),
            }
            self.agent_names = {role: a.name for role, a in self._agents.items()}
        return self._agents

    def metric_level(self, metric: str, mode: str) -> str:
        """The item level ``metric`` scores in ``mode`` (``step`` or ``trajectory``)."""
        from .evaluators import level_of

        level = level_of(self.registry.get(metric))  # raises EvaluatorError naming known metrics
        if level == "judge":
            if mode == "rollout":
                raise GateError(
                    f"metric {metric!r} is an LLM judge of single actions; gate it in step mode (mode='step')"
                )
            return "step"
        if mode == "rollout" and level == "step":
            raise GateError(
                f"metric {metric!r} scores single steps, but the assertion runs in rollout mode; use a trajectory "
                "metric (trajectory_score, task_completion, step_count) or mode='step'"
            )
        return str(level)

    # -- replay and scoring ----------------------------------------------------------------------------
    def ensure(self, cohort: str, mode: str) -> None:
        """Replay and score every trajectory of ``cohort`` (and of the declared cohorts) in ``mode``."""
        wanted = {cohort} | self.declared_cohorts[mode]
        self.replay_trajectories(mode, [t for t in self.eval_trajectories if wanted.intersection(t.cohorts)])

    def replayed(self, mode: str) -> set[str]:
        """Ids of the trajectories replayed and scored in ``mode`` so far."""
        return set(self._done[mode])

    def replay_trajectories(self, mode: str, trajectories: Sequence[Trajectory]) -> None:
        """Replay and score those of ``trajectories`` not yet replayed in ``mode`` (the sequential
        gate's rounds; :meth:`ensure` for whole cohorts)."""
        todo = [t for t in trajectories if t.id not in self._done[mode]]
        if not todo:
            return
        start = time.monotonic()
        # Exclusive phases: the replay and the shift check inside count to their own phase.
        with timing.phase("scoring"):
            if mode == "step":
                self._run_steps(todo)
            else:
                self._run_rollouts(todo)
        self._done[mode].update(t.id for t in todo)
        # The items and the parsed actions just built live to the end of the run: frozen out of the
        # cyclic GC's reach, later full collections (pytest's own at exit too) do not rescan them.
        gc.freeze()
        self.wall_s += time.monotonic() - start
        self._collect_cache_counts()

    def _collect_cache_counts(self) -> None:
        hits = misses = 0
        seen: set[int] = set()
        for agent in (self._agents or {}).values():
            cache = getattr(agent, "cache", None)
            stats = getattr(cache, "stats", None)
            if stats is not None and id(cache) not in seen:
                seen.add(id(cache))
                hits += int(stats.hits)
                misses += int(stats.misses)
        self.cache_counts = {"hits": hits, "misses": misses}

    def _metrics(self) -> tuple[list[str], list[str], list[str], dict[str, bool]]:
        """(step metrics, step-mode trajectory metrics, rollout metrics, binary flag by metric)."""
        from .evaluators import level_of

        reg = self.registry
        step, traj, roll, binary = [], [], [], {}
        for name in reg.names():
            ev = reg.get(name)
            level = level_of(ev)
            binary[name] = bool(getattr(ev, "binary", False))
            modes = getattr(ev, "modes", ())
            if level == "step":
                step.append(name)
            elif level == "trajectory":
                if "step" in modes:
                    traj.append(name)
                if "rollout" in modes:
                    roll.append(name)
        return step, traj, roll, binary

    def _run_steps(self, trajectories: list[Trajectory]) -> None:
        from .evaluators import score_steps_columns, score_trajectories_columns
        from .replay import replay_columns

        points = [p for t in trajectories for p in t.decision_points()]
        # Where each trajectory's points start in ``points`` (they are contiguous, in order).
        bounds = [0]
        for t in trajectories:
            bounds.append(bounds[-1] + len(t.assistant_indexes()))
        if self.cfg.batch:
            self._fill_by_batch(points)
        with timing.phase("replay"):
            result = replay_columns(points, self.agents(), concurrency=self.cfg.concurrency,
                                    repeats=self.cfg.repeats, progress=self.progress)
        step_metrics, traj_metrics, _, binary = self._metrics()
        repeats = self.cfg.repeats
        with timing.phase("shift"):
            flags = self._ood_flags(points)
        # Columnar: per role and repeat, the step metrics' values as one (points x metrics) array,
        # nan where not scored; the items are one StepBlock, not a record per point (a million
        # records were most of a large gate's memory and much of its time).
        import numpy as np

        n = len(points)
        m = len(step_metrics)
        replies = result.replies
        point_vals: dict[str, list[Any]] = {r: [] for r in ROLES}
        point_ok: dict[str, list[Any]] = {r: [] for r in ROLES}
        traj_vals: dict[str, list[list[tuple[float, ...] | None]]] = {r: [] for r in ROLES}
        reason_at = np.full(n, -1, dtype=np.int32)  # the clone's repeat 0: index in its scoring columns
        clone_cols: Any = None
        clone_source: list[Sequence[Action | None]] = [[reply.action for reply in replies["clone"][0]]]
        cols: Any = None
        tcols: Any = None
        traj_reasons: dict[str, Any] = {}
        errors: dict[str, dict[str, str]] = {r: {} for r in ROLES}  # trajectory id -> first error
        point_errors: dict[str, dict[int, str]] = {r: {} for r in ROLES}  # point -> first error
        for role in ROLES:
            for rep in range(repeats):
                rl = replies[role][rep]
                actions = clone_source[0] if role == "clone" and rep == 0 else [reply.action for reply in rl]
                # Every point answered (the usual case): ``ok`` is all rows, with no list of a
                # million indexes built (a transient of tens of MB at the end of a large replay).
                ok: Any = range(n) if None not in actions else [i for i, a in enumerate(actions) if a is not None]
                failed_traj: set[str] = set()
                if len(ok) < n:
                    for i, (p, reply) in enumerate(zip(points, rl)):
                        if actions[i] is None:
                            point_errors[role].setdefault(i, reply.stats.error or "failed")
                            errors[role].setdefault(p.trajectory_id, reply.stats.error or "failed")
                            failed_traj.add(p.trajectory_id)
                pair_list = list(zip(points, actions)) if len(ok) == n else [(points[i], actions[i]) for i in ok]
                keep = role == "clone" and rep == 0  # the scoring columns kept for the clone's reasons
                pairs: Sequence[tuple[DecisionPoint, Action | None]] = _Pairs(pair_list) if keep else pair_list
                cols = score_steps_columns(self.registry, step_metrics, pairs)
                vals = np.full((n, m), np.nan)
                rows: Any = slice(None) if len(ok) == n else ok
                got = np.zeros(n, dtype=bool)
                got[rows] = True
                if m and ok:
                    vals[rows] = np.column_stack([np.asarray(cols.values[k], dtype=np.float64) for k in step_metrics])
                if role == "clone" and rep == 0:
                    clone_cols = cols
                    reason_at[rows] = np.arange(len(ok), dtype=np.int32)
                point_vals[role].append(vals)
                point_ok[role].append(got)
                # One group per trajectory whose every point was answered (none failed), in order.
                # (trajectory index, its first point) of each group
                gat = [(g, a) for g, (t, a, b) in enumerate(zip(trajectories, bounds, bounds[1:]))
                       if b > a and t.id not in failed_traj]
                if len(ok) == n:  # every point answered: ``pair_list`` is aligned with ``points``
                    glist = [pair_list[a:bounds[g + 1]] for g, a in gat]
                else:
                    glist = [list(zip(points[a:bounds[g + 1]], actions[a:bounds[g + 1]])) for g, a in gat]
                del pair_list
                groups: Sequence[Sequence[tuple[DecisionPoint, Action | None]]] = _Pairs(glist) if keep else glist
                tvals: dict[str, tuple[float, ...]] = {}
                if glist:
                    tcols = score_trajectories_columns(self.registry, traj_metrics, groups)
                    tcolumns = [tcols.values[k].tolist() for k in traj_metrics]
                    for g, group in enumerate(glist):
                        tid = group[0][0].trajectory_id
                        tvals[tid] = tuple(c[g] for c in tcolumns)
                        if role == "clone" and rep == 0:
                            traj_reasons[tid] = (tcols, g)
                traj_vals[role].append([tvals.get(t.id) for t in trajectories])
                if keep:
                    # The pairs go now, before the next role's are built: the kept columns rebuild
                    # one from the clone's actions (the block's, once it is built) when a reason is read.
                    _detach(pairs, groups, gat, None if len(ok) == n else ok, trajectories, bounds, clone_source)
                del glist, groups, pairs
        # The last role's scoring columns hold its (point, action) pairs, and nothing below reads a
        # decision point: dropped before the block is built, not at return (the end of a large
        # replay is this process's peak).
        cols = tcols = None
        del actions, points, result  # the replay result holds a list of the points too
        for t in trajectories:
            # The evaluators' per-trajectory facts served this scoring pass and nothing after it: a
            # third of what a large gate kept once scored (a reason read later derives them again).
            t.forget_memo()
        step_m, traj_m = tuple(step_metrics), tuple(traj_metrics)
        scores: dict[str, Any] = {}
        scored: dict[str, Any] = {}
        for role in ROLES:
            # A role is scored at a point when no repeat's call failed there (each answered repeat is scored).
            ok_all = np.logical_and.reduce(point_ok[role]) if repeats > 1 else point_ok[role][0]
            scored[role] = ok_all
            if repeats == 1:  # one sample is its own score
                scores[role] = point_vals[role][0]
            else:
                folded = np.full((n, m), np.nan)
                for i in np.flatnonzero(ok_all).tolist():
                    folded[i] = _fold([tuple(point_vals[role][k][i].tolist()) for k in range(repeats)], step_m, binary)
                scores[role] = folded
        calls_seen: dict[tuple[CallStats, ...], tuple[CallStats, ...]] = {}  # equal figures share one tuple
        calls: dict[str, list[tuple[CallStats, ...]]] = {}
        for role in ROLES:
            per = [[reply.stats for reply in replies[role][k]] for k in range(repeats)]
            calls[role] = [calls_seen.setdefault(c, c) for c in zip(*per)]
        dead: dict[int, tuple[str, ...]] = {}
        clone0 = clone_source[0]
        for g, t in enumerate(trajectories):
            offered = t.tool_names  # once per trajectory, not once per point
            for i in range(bounds[g], bounds[g + 1]):
                a = clone0[i]
                if a is not None and a.tool_calls and (gone := _dead_tools(offered, a)):
                    dead[i] = gone
        has_points = [g for g in range(len(trajectories)) if bounds[g + 1] > bounds[g]]
        starts = np.asarray(bounds, dtype=np.int64)
        block = StepBlock(
            [trajectories[g].id for g in has_points], [tuple(trajectories[g].cohorts) for g in has_points],
            np.concatenate([[0], np.cumsum(np.diff(starts)[has_points])]),
            np.arange(n, dtype=np.int32) - np.repeat(starts[:-1], np.diff(starts)).astype(np.int32),
            step_m, scores, scored, point_errors,
            {"clone": clone0, "expert": [reply.action for reply in replies["expert"][0]]}, calls, dead,
            None if not flags else np.fromiter((f.is_ood for f in flags), dtype=np.int8, count=n),
            None if not flags else np.fromiter((f.distance for f in flags), dtype=np.float64, count=n),
            clone_cols if step_m else None, reason_at, [trajectories[g] for g in has_points],
        )
        # The block refers to the recording's own actions instead of holding them, and what the
        # kept scoring columns would rebuild a reason from is rebuilt when a reason is read:
        # every parsed recorded action, (point, action) pair and decision point of the run was
        # kept to the end otherwise (about 40% of a million-point gate's memory).
        block.compact_actions()
        clone_source[0] = block.actions["clone"]
        self.store.add_block(block)
        for g, t in enumerate(trajectories):
            first = bounds[g]
            steps = bounds[g + 1] - first
            costs = {r: self.trajectory_cost(t, r, [replies[r][0][first + k].stats for k in range(steps)])
                     for r in ROLES}
            self.store.put(_item_from_values(
                ItemKey("step", "trajectory", t.id), t.id, None, t.cohorts, traj_m,
                {r: [traj_vals[r][k][g] for k in range(repeats)] for r in ROLES}, binary,
                {r: errors[r].get(t.id) for r in ROLES}, traj_reasons.get(t.id),
                clone_cost=costs["clone"], expert_cost=costs["expert"],
            ))
        for t in trajectories:
            # The parsed recorded actions too, now that the block refers to them (parsed again,
            # equal, when a shown row reads one).
            t.forget_actions()

    def _fill_by_batch(self, points: Sequence[DecisionPoint]) -> None:
        """``--bclone-batch``: the cache misses of ``points`` go through the provider batch API first,
        so the replay that follows finds them in the cache (failed lines are then called live)."""
        import asyncio

        from .batch import fill_cache_by_batch

        states = [(p.state, r) for p in points for r in range(self.cfg.repeats)]
        show = self.progress if not isinstance(self.progress, bool) else None
        reports = asyncio.run(fill_cache_by_batch(self.agents(), states, poll_interval_s=self.cfg.batch_poll,
                                                  on_progress=None if show is None else show.note))
        self.batch_reports.extend(report.to_dict() for report in reports)

    def _env_factory(self) -> Callable[[Trajectory], Any]:
        hook = self._make_environment_hook
        if hook is None:
            raise GateError("rollout mode needs an environment: implement pytest_bclone_make_environment(trajectory)")

        def env_factory(trajectory: Trajectory) -> Any:
            env = hook(trajectory)
            if env is None:
                raise GateError(
                    f"rollout mode: no environment for trajectory {trajectory.id!r}: implement the hook "
                    "pytest_bclone_make_environment(trajectory) in your conftest.py to return one"
                )
            return env

        return env_factory

    def _rollout_replay(self, trajectories: list[Trajectory]) -> Any:
        """The one place rollout episodes are driven (``replay.run_rollouts``): agents, environment,
        concurrency, repeats, progress (and, when wired, the user simulator)."""
        from .agents.user import make_users
        from .replay import CallTotals, run_rollouts

        users = make_users(self.cfg.user, self.cfg, self._make_user_hook)
        result = run_rollouts(trajectories, self.agents(), self._env_factory(), concurrency=self.cfg.concurrency,
                              repeats=self.cfg.repeats, progress=self.progress, user_factory=users)
        self.user_mode = result.user if self.user_mode in (None, result.user) else f"{self.user_mode}, {result.user}"
        calls = sum(result.user_totals().values(), CallTotals.from_dict(self.user_calls))
        self.user_calls = calls.to_dict()
        return result

    def _run_rollouts(self, trajectories: list[Trajectory]) -> None:
        from .evaluators import score_episodes

        with timing.phase("replay"):
            result = self._rollout_replay(trajectories)
        _, _, metrics, binary = self._metrics()
        per: _PerRepeat = {r: {t.id: [] for t in trajectories} for r in ROLES}
        errors: dict[str, dict[str, str]] = {r: {} for r in ROLES}
        repeats = self.cfg.repeats
        for role in ROLES:
            for rep in range(repeats):
                eps = [(t, result.episode(role, t.id, rep)) for t in trajectories]
                for t, e in eps:
                    if e.error is not None:
                        errors[role].setdefault(t.id, e.error)
                ok = [(t, e) for t, e in eps if e.error is None]
                scored = score_episodes(self.registry, metrics, ok) if ok else {}
                by = {t.id: {m: scored[m][i] for m in metrics} for i, (t, _) in enumerate(ok)}
                for t in trajectories:
                    per[role][t.id].append(by.get(t.id))
        roll_m = tuple(metrics)
        for t in trajectories:
            ep0 = {r: result.episode(r, t.id, 0) for r in ROLES}
            costs = {r: self.trajectory_cost(t, r, [ep0[r].stats]) for r in ROLES}
            self.store.put(_item(
                ItemKey("rollout", "trajectory", t.id), t.id, None, t.cohorts, roll_m,
                {r: per[r][t.id] for r in ROLES}, binary, {r: errors[r].get(t.id) for r in ROLES},
                clone_cost=costs["clone"], expert_cost=costs["expert"],
                clone_episode=tuple(ep0["clone"].actions), expert_episode=tuple(ep0["expert"].actions),
                clone_truncated=any(result.episode("clone", t.id, k).truncated for k in range(repeats)),
                expert_truncated=any(result.episode("expert", t.id, k).truncated for k in range(repeats)),
                clone_calls=tuple(result.episode("clone", t.id, k).stats for k in range(repeats)),
                expert_calls=tuple(result.episode("expert", t.id, k).stats for k in range(repeats)),
            ))

    def _ood_flags(self, points: Sequence[DecisionPoint]) -> list[Any] | None:
        """Out-of-distribution flags of eval states against the train split (None without one)."""
        if self._shift is None:
            train = self.dataset.select("train")
            if not train:
                return None
            from .evaluators import DistributionShift

            self._shift = DistributionShift().fit(train)
            self.shift_threshold = self._shift.threshold
        return list(self._shift.flag(points))

    def ensure_judged(self, cohort: str, metric: str) -> None:
        """Score the step items of ``cohort`` with the LLM-judge ``metric`` (repeat 0's actions).

        Judge calls are made only for judge metrics a test asks for; a failed judge call is
        recorded on the item as an error for that metric (excluded and counted, never a score).
        """
        import asyncio

        from .evaluators import JudgeFailure, judge_steps, level_of

        if level_of(self.registry.get(metric)) != "judge":
            return
        todo = [it for it in self.store.cohort_items(cohort, "step", "step")
                if not it.judge_failed(metric) and any(
                    it.score(r, metric) is None and it.error(r) is None for r in ROLES)]
        results: dict[ItemKey, tuple[dict[str, float], dict[str, str]]] = {it.id: ({}, {}) for it in todo}
        for role in ROLES:
            pairs, owners = [], []
            for it in todo:
                action = it.action(role)
                if action is None or it.error(role) is not None:
                    continue
                assert it.step is not None
                point = self.by_id[it.trajectory_id].decision_points()[it.step]
                pairs.append((point, action))
                owners.append(it)
            if not pairs:
                continue
            judged = asyncio.run(judge_steps(self.registry, [metric], pairs, concurrency=self.cfg.concurrency))
            for it, result in zip(owners, judged[metric]):
                if isinstance(result, JudgeFailure):
                    results[it.id][1][role] = result.error
                else:
                    results[it.id][0][role] = result.value
        for it in todo:
            values, failures = results[it.id]
            self.store.put(it.with_judged(metric, values, failures))

    # -- cost ------------------------------------------------------------------------------------------
    def trajectory_cost(self, t: Trajectory, role: str, calls: Sequence[CallStats]) -> float | None:
        """What serving trajectory ``t`` cost ``role`` (its ``calls``, repeat 0); None when unknown.

        An agent that makes no model calls (the recorded expert) costs what its recording says: the
        trajectory's metadata ``expert_cost_usd``, or its ``expert_usage`` tokens at the
        ``--bclone-price`` of ``expert_model``."""
        from .agents.base import needs_calls

        agent = (self._agents or {}).get(role)
        if agent is not None and not needs_calls(agent):
            if role != "expert":
                return None  # a recording stands in for the clone: what serving it costs is unknown
            meta = t.metadata
            if "expert_cost_usd" in meta:
                return float(meta["expert_cost_usd"])
            usage, model = meta.get("expert_usage"), meta.get("expert_model")
            price = self.cfg.price.get(str(model)) if model else None
            if not isinstance(usage, Mapping) or price is None:
                return None
            return token_cost(float(usage.get("prompt_tokens", 0)), float(usage.get("completion_tokens", 0)), price)
        price = self.cfg.price.get(self.agent_names.get(role, ""))
        total = 0.0
        for stats in calls:
            cost = call_cost(stats, price)
            if cost is None:
                return None
            total += cost
        return total


class _Pairs(Sequence[Any]):
    """A list of ``(point, action)`` pairs (or of groups of them) handed to the scoring columns,
    which keep it to rebuild a reason on demand. Iterated at list speed while scoring; once
    :meth:`detach`-ed it holds no pair and rebuilds the one asked for."""

    __slots__ = ("_items", "_n", "_rebuild")

    def __init__(self, items: list[Any]) -> None:
        self._items: list[Any] | None = items
        self._n = len(items)
        self._rebuild: Callable[[int], Any] | None = None

    def detach(self, rebuild: Callable[[int], Any]) -> None:
        """Drop the pairs: entry ``i`` is ``rebuild(i)`` from now on (an equal value)."""
        self._items, self._rebuild = None, rebuild

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        if self._items is not None:
            return iter(self._items)
        return (self[i] for i in range(self._n))

    def __getitem__(self, i: Any) -> Any:
        if self._items is not None:
            return self._items[i]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        k = i + self._n if i < 0 else i
        if not 0 <= k < self._n:
            raise IndexError(i)
        assert self._rebuild is not None
        return self._rebuild(k)


def _detach(pairs: Any, groups: Any, gat: list[tuple[int, int]], ok: list[int] | None,
            trajectories: Sequence[Trajectory], bounds: list[int], source: list[Sequence[Action | None]]) -> None:
    """Detach the clone's scored pairs and trajectory groups (:class:`_Pairs`): each is rebuilt,
    equal to what was scored, from its trajectory's decision points and the clone's actions
    (``source[0]``: the replay's list, then the step block's column that replaces it)."""
    import numpy as np

    rows = None if ok is None else np.asarray(ok, dtype=np.int64)

    def pair(i: int) -> tuple[DecisionPoint, Action | None]:
        row = i if rows is None else int(rows[i])
        g = bisect_right(bounds, row) - 1
        return trajectories[g].decision_points()[row - bounds[g]], source[0][row]

    def group(k: int) -> list[tuple[DecisionPoint, Action | None]]:
        g, a = gat[k]
        actions = source[0]
        return [(p, actions[a + j]) for j, p in enumerate(trajectories[g].decision_points())]

    pairs.detach(pair)
    groups.detach(group)


def _fold(samples: Sequence[tuple[float, ...]], metrics: tuple[str, ...], binary: Mapping[str, bool]) -> tuple[float, ...]:
    """One score per metric from a role's repeats (each aligned with ``metrics``). Binary metrics
    use pass^k (every one of the k samples must succeed: a safety regression in any sample is a
    regression); graded metrics use the mean. One sample is its own score."""
    if len(samples) == 1:
        return samples[0]
    return tuple(min(values) if binary.get(metric) else sum(values) / len(values)
                 for metric, values in zip(metrics, zip(*samples, strict=True), strict=True))


def _item(
    key: ItemKey,
    trajectory_id: str,
    step: int | None,
    cohorts: tuple[str, ...],
    metrics: tuple[str, ...],
    per_repeat: Mapping[str, list[dict[str, Score] | None]],
    binary: Mapping[str, bool],
    errors: Mapping[str, str | None],
    **extra: Any,
) -> Item:
    """Fold a role's per-repeat scores into one score per metric and build the item."""
    scores = {role: _role_scores([None if r is None else tuple(r[m].value for m in metrics)
                                  for r in per_repeat[role]], errors[role], metrics, binary) for role in ROLES}
    first = per_repeat["clone"][0] if per_repeat["clone"] else None
    reasons = tuple(first[m].reason for m in metrics) if scores["clone"] is not None and first is not None else ()
    return Item(key, trajectory_id, step, tuple(cohorts), metrics, scores["clone"], scores["expert"],
                reasons, errors["clone"], errors["expert"], **extra)


def _role_scores(reps: Sequence[tuple[float, ...] | None], error: str | None, metrics: tuple[str, ...],
                 binary: Mapping[str, bool]) -> tuple[float, ...] | None:
    """One role's scores from its per-repeat values: None when a call failed or a repeat was not scored."""
    if error is not None or not reps or any(r is None for r in reps):
        return None
    return _fold([r for r in reps if r is not None], metrics, binary)


def _item_from_values(
    key: ItemKey,
    trajectory_id: str,
    step: int | None,
    cohorts: tuple[str, ...],
    metrics: tuple[str, ...],
    per_repeat: Mapping[str, list[tuple[float, ...] | None]],
    binary: Mapping[str, bool],
    errors: Mapping[str, str | None],
    reasons_at: tuple[Any, int] | None,
    **extra: Any,
) -> Item:
    """:func:`_item` for columnar scores: per role, per repeat, the values aligned with ``metrics``
    (None: not scored); ``reasons_at`` is where the clone's repeat-0 reasons are, (columns, index)."""
    scores = {role: _role_scores(per_repeat[role], errors[role], metrics, binary) for role in ROLES}
    reasons: Sequence[str] = ()
    if scores["clone"] is not None and reasons_at is not None and metrics:
        reasons = LazyReasons(*reasons_at)
    return Item(key, trajectory_id, step, tuple(cohorts), metrics, scores["clone"], scores["expert"],
                reasons, errors["clone"], errors["expert"], **extra)  # type: ignore[arg-type]


def _dead_tools(offered: frozenset[str], action: Action | None) -> tuple[str, ...]:
    """Tools ``action`` called that its state did not offer (``offered``: the trajectory's tool names)."""
    if action is None or not action.tool_calls:
        return ()
    return tuple(c.name for c in action.tool_calls if c.name not in offered)
