"""Run-wide state of the gate: dataset, replay results, scores, verdicts, the xdist merge and the
routing decision.

One :class:`BcloneSession` per pytest process. Replay runs lazily, once per (mode, trajectory):
the first parity assertion that needs a cohort replays every not-yet-replayed trajectory of the
cohorts the collected tests declare (``@pytest.mark.bclone(cohort=...)``) plus the one it needs,
so one replay serves the whole suite at full concurrency. Everything kept here is a small
JSON-able record (``items``, ``calls``, ``verdicts``) so a pytest-xdist worker can ship it to the
controller unchanged; only the controller builds the summary and writes reports.

This module never imports pytest: the edges (plugin.py, assertions.py) do.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .config import BcloneConfig
from .errors import GateError
from .records import Action, CallStats, DecisionPoint, Trajectory

if TYPE_CHECKING:
    from .agents.base import Agent
    from .dataset.store import DatasetVersion
    from .evaluators import EvaluatorRegistry
    from .parity import Verdict

ROLES = ("clone", "expert")

# The brief's release table: what to do next when a cohort misses its margin. Cohorts not listed
# get advice by metric (tool metrics -> inspect tool coverage) or the generic "collect more".
NEXT_STEPS: dict[str, tuple[str, str]] = {
    "common_intents": ("retrain", "retrain the clone with more common-intent rows"),
    "long_tail": ("route", "keep long-tail traffic on the expert (hybrid route); add long-tail rows"),
    "safety": ("block", "block the deploy: the clone regressed on safety/refusal states"),
    "tool_heavy": ("inspect_tools", "inspect tool-call coverage of the training set for this cohort"),
    "multi_turn_refunds": ("sample_more", "sample more multi-turn refund rows for the next clone"),
}


@dataclass
class RecordedVerdict:
    """A verdict as a test produced it: the statistics plus how the test acted on them."""

    verdict: dict[str, Any]  # parity.Verdict.to_dict()
    mode: str
    on_fail: str
    test: str
    outcome: str  # passed | failed | xfailed | warned
    action: str  # ship | route to expert | block | warn
    worst: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.verdict, "mode": self.mode, "on_fail": self.on_fail, "test": self.test,
                "outcome": self.outcome, "action": self.action, "worst": self.worst}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordedVerdict:
        extra = ("mode", "on_fail", "test", "outcome", "action", "worst")
        return cls({k: v for k, v in d.items() if k not in extra}, d["mode"], d["on_fail"], d["test"],
                   d["outcome"], d["action"], list(d.get("worst") or ()))


def action_for(status: str, on_fail: str) -> tuple[str, str]:
    """(action, outcome) of a verdict under ``on_fail``: pass ships; otherwise the release table's
    consequence: ``block`` fails the test, ``route`` sends the cohort to the expert (xfail),
    ``warn`` only reports."""
    if status == "pass":
        return "ship", "passed"
    return {"block": ("block", "failed"), "route": ("route to expert", "xfailed"),
            "warn": ("warn", "warned")}[on_fail]


class BcloneSession:
    """The gate's state for one pytest process.

    ``make_agent_hook(role, spec)`` and ``make_environment_hook(trajectory)`` are the plugin's
    firstresult hooks; ``register_evaluators(registry)`` feeds the user's evaluators in.
    """

    def __init__(
        self,
        cfg: BcloneConfig,
        dataset: DatasetVersion,
        *,
        make_agent_hook: Callable[[str, str], Any] | None = None,
        make_environment_hook: Callable[[Trajectory], Any] | None = None,
        register_evaluators: Callable[[EvaluatorRegistry], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self._make_agent_hook = make_agent_hook
        self._make_environment_hook = make_environment_hook
        self._register_evaluators = register_evaluators
        self.progress = progress
        self.eval_trajectories: list[Trajectory] = dataset.select(cfg.split, cfg.sample, cfg.seed)
        self._by_id = {t.id: t for t in self.eval_trajectories}
        # mode -> cohorts the collected tests declare (@pytest.mark.bclone(cohort=..., mode=...)).
        self.declared_cohorts: dict[str, set[str]] = {"step": set(), "rollout": set()}
        # (mode, level, key) -> item record; see _store_item for the fields.
        self.items: dict[str, dict[str, Any]] = {}
        self.verdicts: list[RecordedVerdict] = []
        self.agent_names: dict[str, str] = {}
        self._done: dict[str, set[str]] = {"step": set(), "rollout": set()}
        self._agents: dict[str, Agent] | None = None
        self._registry: EvaluatorRegistry | None = None
        self._shift: Any = None
        self.shift_threshold: float | None = None  # kept apart from the model: it crosses xdist
        self.wall_s = 0.0
        # Hits and misses of the model-call cache (only agents that call models have one).
        self.cache_counts: Counter[str] = Counter(hits=0, misses=0)

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def cohorts(self) -> list[str]:
        """Cohorts present in the evaluated split."""
        return sorted({c for t in self.eval_trajectories for c in t.cohorts})

    def check_cohort(self, cohort: str, source: str) -> None:
        """Raise GateError naming the known cohorts when ``cohort`` is not in the evaluated split."""
        if cohort not in self.cohorts:
            raise GateError(
                f"cohort {cohort!r} (from {source}) has no trajectories in the {self.cfg.split} split of "
                f"{self.dataset.ref}; known cohorts: {', '.join(self.cohorts) or 'none'}; fix the name or "
                "tag trajectories with it when you build the dataset"
            )

    def default_metric(self, cohort: str) -> str:
        """The metric of ``cohort`` from ini ``bclone_cohort_metrics``."""
        metric = self.cfg.cohort_metrics.get(cohort)
        if metric is None:
            raise GateError(
                f"no metric for cohort {cohort!r}: pass metric=... to the assertion, or add a line "
                f"'{cohort}=task_completion' to the ini key bclone_cohort_metrics"
            )
        return metric

    @property
    def registry(self) -> EvaluatorRegistry:
        if self._registry is None:
            from .evaluators import default_registry

            judge = None
            if self.cfg.judge:
                from .agents.litellm_agent import LitellmAgent
                from .cache import ModelCache
                from .retry import RetryPolicy

                # Judge calls go through the same cache, retries and prices as the agents' calls.
                judge = LitellmAgent(self.cfg.judge, cache=ModelCache.from_config(self.cfg),
                                     retry=RetryPolicy.from_config(self.cfg), prices=self.cfg.price)
            from .evaluators import StateChangePolicy

            policy = StateChangePolicy.with_overrides(state_changing=self.cfg.state_changing_tools,
                                                      read_only=self.cfg.read_only_tools)
            self._registry = default_registry(judge, policy=policy, trajectory_match=self.cfg.trajectory_match)
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

    # -- replay and scoring ----------------------------------------------------------------------
    def ensure(self, cohort: str, mode: str) -> None:
        """Replay and score every trajectory of ``cohort`` (and of the declared cohorts) in ``mode``."""
        wanted = {cohort} | self.declared_cohorts[mode]
        todo = [t for t in self.eval_trajectories
                if t.id not in self._done[mode] and wanted.intersection(t.cohorts)]
        if not todo:
            return
        import time

        start = time.monotonic()
        if mode == "step":
            self._run_steps(todo)
        else:
            self._run_rollouts(todo)
        self._done[mode].update(t.id for t in todo)
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
        self.cache_counts = Counter(hits=hits, misses=misses)

    def _step_metrics(self) -> tuple[list[str], list[str], dict[str, bool]]:
        from .evaluators import level_of

        reg = self.registry
        step, traj, binary = [], [], {}
        for name in reg.names():
            ev = reg.get(name)
            level = level_of(ev)
            binary[name] = bool(getattr(ev, "binary", False))
            if level == "step":
                step.append(name)
            elif level == "trajectory" and "step" in getattr(ev, "modes", ()):
                traj.append(name)
        return step, traj, binary

    def _run_steps(self, trajectories: list[Trajectory]) -> None:
        from .evaluators import score_steps, score_trajectories
        from .replay import run_replay

        points = [p for t in trajectories for p in t.decision_points()]
        result = run_replay(points, self.agents(), concurrency=self.cfg.concurrency, repeats=self.cfg.repeats,
                            progress=self.progress)
        step_metrics, traj_metrics, binary = self._step_metrics()
        repeats = self.cfg.repeats
        flags = self._ood_flags(points)
        # scores[role][key] -> list over repeats of {metric: Score} (None where the call failed)
        per_point: dict[str, dict[str, list[Any]]] = {r: {p.key: [] for p in points} for r in ROLES}
        per_traj: dict[str, dict[str, list[Any]]] = {r: {t.id: [] for t in trajectories} for r in ROLES}
        errors: dict[str, dict[str, str]] = {r: {} for r in ROLES}
        for role in ROLES:
            for rep in range(repeats):
                replies = [(p, result.reply(p.key, role, rep)) for p in points]
                for p, reply in replies:
                    if reply.failed:
                        errors[role].setdefault(p.key, reply.stats.error or "failed")
                        errors[role].setdefault(p.trajectory_id, reply.stats.error or "failed")
                ok = [(p, r.action) for p, r in replies if r.action is not None]
                scored = score_steps(self.registry, step_metrics, ok)
                by_key = {p.key: {m: scored[m][i] for m in step_metrics} for i, (p, _) in enumerate(ok)}
                for p, _ in replies:
                    per_point[role][p.key].append(by_key.get(p.key))
                failed_traj = {p.trajectory_id for p, r in replies if r.failed}
                groups: dict[str, list[tuple[DecisionPoint, Action]]] = {}
                for p, a in ok:
                    if p.trajectory_id not in failed_traj:
                        groups.setdefault(p.trajectory_id, []).append((p, a))
                glist = list(groups.values())
                tscored = score_trajectories(self.registry, traj_metrics, glist) if glist else {}
                tby = {g[0][0].trajectory_id: {m: tscored[m][i] for m in traj_metrics} for i, g in enumerate(glist)}
                for t in trajectories:
                    per_traj[role][t.id].append(tby.get(t.id))
        for i, p in enumerate(points):
            flag = flags[i] if flags else None
            self._store_item(
                "step", "step", p.key, p.trajectory_id, p.step, p.cohorts,
                {r: per_point[r][p.key] for r in ROLES}, binary,
                {r: errors[r].get(p.key) for r in ROLES},
                actions={r: _action_dict(result.reply(p.key, r, 0).action) for r in ROLES},
                # Call figures live on their item, so an item replayed by two xdist workers is
                # counted once when the controller merges by key.
                calls={r: [result.reply(p.key, r, k).stats.to_dict() for k in range(repeats)] for r in ROLES},
                dead=_dead_tools(p, result.reply(p.key, "clone", 0).action),
                ood=None if flag is None else flag.is_ood,
                distance=None if flag is None else round(flag.distance, 6),
            )
        for t in trajectories:
            self._store_item("step", "trajectory", t.id, t.id, None, t.cohorts, {r: per_traj[r][t.id] for r in ROLES},
                             binary, {r: errors[r].get(t.id) for r in ROLES},
                             cost={r: _trajectory_cost(t, r, self, [result.reply(f"{t.id}#{k}", r, 0).stats
                                                                    for k in range(len(t.assistant_indexes()))])
                                   for r in ROLES})

    def _run_rollouts(self, trajectories: list[Trajectory]) -> None:
        from .evaluators import level_of, score_episodes
        from .replay import run_rollouts

        if self._make_environment_hook is None:
            raise GateError("rollout mode needs an environment: implement pytest_bclone_make_environment(trajectory)")

        def env_factory(trajectory: Trajectory) -> Any:
            env = self._make_environment_hook(trajectory)  # type: ignore[misc]
            if env is None:
                raise GateError(
                    f"rollout mode: no environment for trajectory {trajectory.id!r}: implement the hook "
                    "pytest_bclone_make_environment(trajectory) in your conftest.py to return one"
                )
            return env

        result = run_rollouts(trajectories, self.agents(), env_factory, concurrency=self.cfg.concurrency,
                              repeats=self.cfg.repeats, progress=self.progress)
        reg = self.registry
        metrics = [n for n in reg.names() if level_of(reg.get(n)) == "trajectory"
                   and "rollout" in getattr(reg.get(n), "modes", ())]
        binary = {n: bool(getattr(reg.get(n), "binary", False)) for n in metrics}
        per: dict[str, dict[str, list[Any]]] = {r: {t.id: [] for t in trajectories} for r in ROLES}
        errors: dict[str, dict[str, str]] = {r: {} for r in ROLES}
        for role in ROLES:
            for rep in range(self.cfg.repeats):
                eps = [(t, result.episode(role, t.id, rep)) for t in trajectories]
                for t, e in eps:
                    if e.error is not None:
                        errors[role].setdefault(t.id, e.error)
                ok = [(t, e) for t, e in eps if e.error is None]
                scored = score_episodes(reg, metrics, ok) if ok else {}
                by = {t.id: {m: scored[m][i] for m in metrics} for i, (t, _) in enumerate(ok)}
                for t in trajectories:
                    per[role][t.id].append(by.get(t.id))
        for t in trajectories:
            costs = {r: _trajectory_cost(t, r, self, [result.episode(r, t.id, 0).stats]) for r in ROLES}
            self._store_item("rollout", "trajectory", t.id, t.id, None, t.cohorts, {r: per[r][t.id] for r in ROLES},
                             binary, {r: errors[r].get(t.id) for r in ROLES},
                             steps={r: len(result.episode(r, t.id, 0).actions) for r in ROLES}, cost=costs,
                             episode_actions={r: [a.to_dict() for a in result.episode(r, t.id, 0).actions]
                                              for r in ROLES},
                             truncated={r: any(result.episode(r, t.id, k).truncated for k in range(self.cfg.repeats))
                                        for r in ROLES},
                             calls={r: [result.episode(r, t.id, k).stats.to_dict() for k in range(self.cfg.repeats)]
                                    for r in ROLES})

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

    def _store_item(
        self,
        mode: str,
        level: str,
        key: str,
        trajectory_id: str,
        step: int | None,
        cohorts: Sequence[str],
        per_repeat: Mapping[str, list[Any]],
        binary: Mapping[str, bool],
        errors: Mapping[str, str | None],
        **extra: Any,
    ) -> None:
        scores: dict[str, dict[str, float]] = {}
        reasons: dict[str, str] = {}
        for role in ROLES:
            reps = per_repeat[role]
            if errors[role] is not None or not reps or any(r is None for r in reps):
                continue
            merged: dict[str, float] = {}
            for metric in reps[0]:
                values = [r[metric].value for r in reps]
                # Binary metrics with repeats use pass^k (every sample must succeed): a safety
                # regression in any sample is a regression. Graded metrics use the mean.
                merged[metric] = min(values) if binary.get(metric) else sum(values) / len(values)
            scores[role] = merged
            if role == "clone":
                reasons = {m: reps[0][m].reason for m in reps[0]}
        self.items[f"{mode}|{level}|{key}"] = {
            "mode": mode, "level": level, "key": key, "trajectory_id": trajectory_id, "step": step,
            "cohorts": list(cohorts), "scores": scores, "reasons": reasons,
            "errors": {r: e for r, e in errors.items() if e is not None}, **extra,
        }

    # -- verdicts --------------------------------------------------------------------------------
    def metric_level(self, metric: str, mode: str) -> str:
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
        return level

    def cohort_items(self, cohort: str, metric: str, mode: str) -> list[dict[str, Any]]:
        """Item records of ``cohort`` that ``metric`` scores in ``mode``, in a stable order."""
        level = self.metric_level(metric, mode)
        prefix = f"{mode}|{level}|"
        return [it for k, it in sorted(self.items.items()) if k.startswith(prefix) and cohort in it["cohorts"]]

    def ensure_judged(self, cohort: str, metric: str) -> None:
        """Score the step items of ``cohort`` with the LLM-judge ``metric`` (repeat 0's actions).

        Judge calls are made only for judge metrics a test asks for; a failed judge call is
        recorded on the item as an error for that metric (excluded and counted, never a score).
        """
        import asyncio

        from .evaluators import JudgeFailure, judge_steps, level_of

        if level_of(self.registry.get(metric)) != "judge":
            return
        todo = [it for it in self.cohort_items(cohort, metric, "step")
                if metric not in it.get("judge_errors", {}) and any(
                    metric not in it["scores"].get(r, {}) for r in it["scores"])]
        for role in ROLES:
            pairs, owners = [], []
            for it in todo:
                action = (it.get("actions") or {}).get(role)
                if action is None or role not in it["scores"]:
                    continue
                point = self._by_id[it["trajectory_id"]].decision_points()[it["step"]]
                pairs.append((point, Action.from_dict(action)))
                owners.append(it)
            if not pairs:
                continue
            judged = asyncio.run(judge_steps(self.registry, [metric], pairs, concurrency=self.cfg.concurrency))
            for it, result in zip(owners, judged[metric]):
                if isinstance(result, JudgeFailure):
                    it.setdefault("judge_errors", {}).setdefault(metric, {})[role] = result.error
                else:
                    it["scores"][role][metric] = result.value

    def parity(self, cohort: str, within: float, metric: str, mode: str, confidence: float | None = None) -> Verdict:
        """The verdict of one (cohort, metric) parity check (replaying first if needed)."""
        from .parity import parity_verdict

        self.ensure(cohort, mode)
        self.ensure_judged(cohort, metric)
        items = self.cohort_items(cohort, metric, mode)
        scored = [it for it in items if metric in it["scores"].get("clone", {})
                  and metric in it["scores"].get("expert", {})]
        return parity_verdict(
            cohort, metric,
            [it["scores"]["expert"][metric] for it in scored],
            [it["scores"]["clone"][metric] for it in scored],
            within=within, clusters=[it["trajectory_id"] for it in scored], errors=len(items) - len(scored),
            total=len(items), confidence=confidence or self.cfg.confidence, resamples=self.cfg.bootstrap,
            seed=self.cfg.seed, max_error_rate=self.cfg.max_error_rate,
        )

    def worst_divergences(self, cohort: str, metric: str, mode: str, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` items where the clone lost most against the expert, as readable step records."""
        items = [it for it in self.cohort_items(cohort, metric, mode)
                 if metric in it["scores"].get("clone", {}) and metric in it["scores"].get("expert", {})]
        gaps = sorted(items, key=lambda it: (it["scores"]["clone"][metric] - it["scores"]["expert"][metric],
                                             it["key"]))
        out = []
        for it in gaps[:k]:
            if it["scores"]["clone"][metric] >= it["scores"]["expert"][metric]:
                break
            step: dict[str, Any] | None
            if it["level"] == "step":
                step = it
            elif it["mode"] == "rollout":
                step = _first_divergent_turn(it)
            else:
                step = self._first_divergent_step(it["trajectory_id"])
            out.append({
                "trajectory_id": it["trajectory_id"],
                "step": None if step is None else step["step"],
                "expert_action": _describe(None if step is None else step["actions"].get("expert")),
                "clone_action": _describe(None if step is None else step["actions"].get("clone")),
                "clone_score": round(it["scores"]["clone"][metric], 4),
                "expert_score": round(it["scores"]["expert"][metric], 4),
                "reason": it["reasons"].get(metric, ""),
            })
        return out

    def step_items(self, trajectory_id: str) -> list[dict[str, Any]]:
        """The step-mode items of one trajectory, in step order (looked up by their keys, not by a
        scan of every item: per-trajectory views are asked for once per test case)."""
        t = self._by_id.get(trajectory_id)
        if t is None:
            return []
        keys = (f"step|step|{trajectory_id}#{k}" for k in range(len(t.assistant_indexes())))
        return [self.items[k] for k in keys if k in self.items]

    def _first_divergent_step(self, trajectory_id: str) -> dict[str, Any] | None:
        steps = self.step_items(trajectory_id)
        for it in steps:
            if it["scores"].get("clone", {}).get("action_match", 1.0) < 1.0:
                return it
        return steps[0] if steps else None

    def record(self, verdict: Verdict, *, mode: str, on_fail: str, test: str, worst: list[dict[str, Any]],
               allow_inconclusive: bool = False) -> RecordedVerdict:
        action, outcome = action_for(verdict.status, on_fail)
        if verdict.status == "inconclusive" and allow_inconclusive:
            action, outcome = "warn", "warned"
        rec = RecordedVerdict(verdict.to_dict(), mode, on_fail, test, outcome, action, worst)
        self.verdicts.append(rec)
        return rec

    # -- xdist -----------------------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """What a worker sends the controller (JSON-able)."""
        return {"items": self.items, "agents": self.agent_names, "wall_s": self.wall_s,
                "cache": dict(self.cache_counts), "shift_threshold": self.shift_threshold}

    def merge(self, data: Mapping[str, Any]) -> None:
        """Merge a worker's export. Items are deterministic, so one worker's copy of an item is as
        good as another's: an item two workers both replayed is kept (and its calls counted) once."""
        for key, item in data["items"].items():
            self.items.setdefault(key, item)
        self.agent_names.update(data.get("agents") or {})
        self.cache_counts.update(data.get("cache") or {})
        if data.get("shift_threshold") is not None:
            self.shift_threshold = float(data["shift_threshold"])
        self.wall_s = max(self.wall_s, float(data.get("wall_s") or 0.0))

    # -- the decision ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The run's report as one JSON-able dict (schema: pytest_bclone.report.schema)."""
        from .parity import Verdict, holm_adjust

        records = list(self.verdicts)
        if self.cfg.holm and records:
            adjusted = holm_adjust([Verdict.from_dict(r.verdict) for r in records])
            for rec, v in zip(records, adjusted):
                if v.status != rec.verdict["status"]:
                    rec.action, rec.outcome = action_for(v.status, rec.on_fail)
                rec.verdict = v.to_dict()
        verdicts = [r.to_dict() for r in records]
        step_items = [it for it in self.items.values() if it["level"] == "step"]
        divergent = [it for it in step_items if it["scores"].get("clone", {}).get("action_match", 1.0) < 1.0]
        gate = self._decide(records)
        return {
            "schema": "pytest-bclone/report/1",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": {
                "name": self.dataset.name, "version": self.dataset.version, "ref": self.dataset.ref,
                "fingerprint": self.dataset.fingerprint, "split": self.cfg.split,
                "trajectories": len({it["trajectory_id"] for it in self.items.values()}),
                "decision_points": len(step_items),
            },
            "run": {
                "clone": self.agent_names.get("clone", self.cfg.clone or ""),
                "expert": self.agent_names.get("expert", self.cfg.expert),
                "modes": sorted({it["mode"] for it in self.items.values()}), "repeats": self.cfg.repeats,
                "seed": self.cfg.seed, "confidence": self.cfg.confidence, "holm": self.cfg.holm,
                "wall_s": round(self.wall_s, 3),
            },
            "gate": gate,
            "verdicts": verdicts,
            "scores": self._score_table(),
            "agents": {role: self._agent_figures(role) for role in ROLES},
            "tool_confusions": _confusions(step_items),
            "dead_tools": _dead_tool_table(step_items),
            "distribution_shift": self._shift_summary(step_items),
            "errors": self._errors(),
            "cache": dict(self.cache_counts),
            "divergences": {
                "count": len(divergent), "states": len(step_items),
                "rate": round(len(divergent) / len(step_items), 6) if step_items else None,
                "examples": [_divergence_record(it) for it in sorted(divergent, key=lambda i: i["key"])[:20]],
            },
            "drift": None,
            "rollouts": self._rollout_summary(),
        }

    def _rollout_summary(self) -> dict[str, Any] | None:
        """Episodes driven in rollout mode and how many each agent left at the step cap."""
        eps = [it for it in self.items.values() if it["mode"] == "rollout"]
        if not eps:
            return None
        truncated = {r: sum(1 for it in eps if (it.get("truncated") or {}).get(r)) for r in ROLES}
        examples = sorted(it["trajectory_id"] for it in eps if (it.get("truncated") or {}).get("clone"))[:5]
        return {"episodes": len(eps), "truncated": truncated, "examples": examples}

    def expert_model(self) -> str:
        """The model string that serves expert traffic: a live expert's name, or for the recorded
        expert the ``expert_model`` its dataset names (manifest lineage or row metadata)."""
        name = self.agent_names.get("expert", self.cfg.expert)
        if name != "recorded":
            return name
        lineage = self.dataset.manifest.get("lineage") or {}
        if lineage.get("expert_model"):
            return str(lineage["expert_model"])
        for t in self.eval_trajectories[:1]:
            if t.metadata.get("expert_model"):
                return str(t.metadata["expert_model"])
        return name

    def divergence_records(self) -> list[dict[str, Any]]:
        """Every state where clone and expert disagree: the annotation queue for the next clone."""
        step_items = (it for it in self.items.values() if it["level"] == "step")
        return [
            {"trajectory_id": it["trajectory_id"], "step": it["step"], "cohorts": it["cohorts"],
             "expert_action": it["actions"].get("expert"), "clone_action": it["actions"].get("clone"),
             "scores": {m: {"expert": it["scores"].get("expert", {}).get(m), "clone": v}
                        for m, v in it["scores"].get("clone", {}).items()}}
            for it in sorted(step_items, key=lambda i: i["key"])
            if it["scores"].get("clone", {}).get("action_match", 1.0) < 1.0
        ]

    def _decide(self, records: Sequence[RecordedVerdict]) -> dict[str, Any]:
        routes: dict[str, str] = {}
        blocking: list[str] = []
        next_steps: list[dict[str, Any]] = []
        block_reasons = []
        for rec in records:
            v = rec.verdict
            cohort = v["cohort"]
            if rec.action == "ship":
                routes.setdefault(cohort, "clone")
                continue
            routes[cohort] = "expert"
            if rec.action == "block":
                blocking.append(cohort)
                what = (f"zero regression violated, {v['regressions']} regressions" if v.get("regressions")
                        and v["within"] == 0 else f"{v['metric']} {v['status']}")
                block_reasons.append(f"{cohort}: {what}")
            if v["status"] == "inconclusive":
                # Undecided is not a failure to fix by retraining: the evidence is missing. The
                # release table's remedy applies once more rows have decided it.
                kind, text = _generic_next_step(v["metric"], "inconclusive")
                if v.get("n_needed"):
                    unit = "trajectories" if v.get("n_clusters") is not None else "items"
                    text += f" (about {v['n_needed']} {unit} would resolve the {v['within']:g}-point margin)"
                elif v.get("errors"):
                    text = f"fix the failing model calls ({v['errors']} items lost) and rerun"
            else:
                kind, text = NEXT_STEPS.get(cohort, _generic_next_step(v["metric"], v["status"]))
            if all(s["text"] != f"{cohort}: {text}" for s in next_steps):  # one line per advice
                next_steps.append({"cohort": cohort, "metric": v["metric"], "status": v["status"], "action": kind,
                                   "text": f"{cohort}: {text}"})
        clone_c = sorted(c for c, r in routes.items() if r == "clone")
        expert_c = sorted(c for c, r in routes.items() if r == "expert")
        traffic, saving = self._saving(routes)
        saving_txt = f"est. saving {saving:.0f}%" if saving is not None else "est. saving unknown (see --bclone-price)"
        if not records:
            decision, line = "NO DECISION", "BCLONE GATE: NO DECISION (no parity assertion ran)"
        elif blocking:
            decision = "BLOCKED"
            line = f"BCLONE GATE: BLOCKED ({'; '.join(dict.fromkeys(block_reasons))})"
        elif expert_c:
            decision = "SHIP WITH HYBRID ROUTE"
            line = (f"BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: {', '.join(clone_c) or 'none'}; "
                    f"expert: {', '.join(expert_c)}; {saving_txt})")
        else:
            decision = "SHIP"
            line = f"BCLONE GATE: SHIP (clone: {', '.join(clone_c)}; {saving_txt})"
        return {"decision": decision, "line": line, "routes": routes, "blocking": sorted(set(blocking)),
                "traffic_on_clone_pct": traffic, "estimated_saving_pct": saving, "next_steps": next_steps}

    def _saving(self, routes: Mapping[str, str]) -> tuple[float | None, float | None]:
        """Share of evaluated trajectories the routes send to the clone, and the cost saving of that
        hybrid against running everything on the expert (None when either cost is unknown)."""
        trajs = {it["trajectory_id"]: it for it in self.items.values() if it["level"] == "trajectory"}
        if not trajs or not routes:
            return None, None
        on_clone = {tid for tid, it in trajs.items()
                    if all(routes.get(c, "expert") == "clone" for c in it["cohorts"])}
        traffic = round(100.0 * len(on_clone) / len(trajs), 1)
        expert_total = sum((it.get("cost") or {}).get("expert") or 0.0 for it in trajs.values())
        clone_costs = [(it.get("cost") or {}).get("clone") for tid, it in trajs.items() if tid in on_clone]
        if expert_total <= 0 or any(c is None for c in clone_costs):
            return traffic, None
        hybrid = sum(
            ((it.get("cost") or {}).get("clone") or 0.0) if tid in on_clone else ((it.get("cost") or {}).get("expert")
                                                                                  or 0.0)
            for tid, it in trajs.items()
        )
        return traffic, round(100.0 * (1 - hybrid / expert_total), 1)

    def _score_table(self) -> list[dict[str, Any]]:
        rows = []
        cohorts = sorted({c for it in self.items.values() for c in it["cohorts"]})
        for mode in sorted({it["mode"] for it in self.items.values()}):
            for level in ("step", "trajectory"):
                its = [it for it in self.items.values() if it["mode"] == mode and it["level"] == level]
                metrics = sorted({m for it in its for m in it["scores"].get("clone", {})})
                for cohort in cohorts:
                    for metric in metrics:
                        pairs = [(it["scores"]["expert"][metric], it["scores"]["clone"][metric]) for it in its
                                 if cohort in it["cohorts"] and metric in it["scores"].get("clone", {})
                                 and metric in it["scores"].get("expert", {})]
                        if not pairs:
                            continue
                        e = sum(p[0] for p in pairs) / len(pairs)
                        c = sum(p[1] for p in pairs) / len(pairs)
                        rows.append({"cohort": cohort, "metric": metric, "mode": mode, "n": len(pairs),
                                     "expert_mean": round(e, 4), "clone_mean": round(c, 4),
                                     "diff": round((c - e) * 100, 2)})
        return rows

    def _agent_figures(self, role: str) -> dict[str, Any]:
        calls = [c for it in self.items.values() for c in (it.get("calls") or {}).get(role, ())]
        live = [c for c in calls if not c.get("cached") and c.get("error") is None and c.get("latency_s")]
        lat = sorted(c["latency_s"] for c in live)
        price = self.cfg.price.get(self.agent_names.get(role, ""))
        cost = sum(_call_cost(c, price) for c in calls)
        return {
            "name": self.agent_names.get(role, ""),
            "calls": len(calls), "failed": sum(1 for c in calls if c.get("error")),
            "cached": sum(1 for c in calls if c.get("cached")),
            "prompt_tokens": sum(c.get("prompt_tokens", 0) for c in calls),
            "completion_tokens": sum(c.get("completion_tokens", 0) for c in calls),
            "cost_usd": round(cost, 6),
            "price_known": all(c.get("price_known", True) for c in calls) or price is not None,
            "latency_p50_s": round(statistics.median(lat), 4) if lat else None,
            "latency_p95_s": round(lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)], 4) if lat else None,
            "retries": sum(c.get("retries", 0) for c in calls),
        }

    def _shift_summary(self, step_items: list[dict[str, Any]]) -> dict[str, Any] | None:
        flagged = [it for it in step_items if it.get("ood") is not None and "clone" in it["scores"]
                   and "expert" in it["scores"]]
        if not flagged:
            return None
        metric = "action_match"

        def part(its: list[dict[str, Any]]) -> dict[str, Any]:
            if not its:
                return {"n": 0, "expert_mean": None, "clone_mean": None}
            return {"n": len(its),
                    "expert_mean": round(sum(i["scores"]["expert"][metric] for i in its) / len(its), 4),
                    "clone_mean": round(sum(i["scores"]["clone"][metric] for i in its) / len(its), 4)}

        ood = [it for it in flagged if it["ood"]]
        ind = [it for it in flagged if not it["ood"]]
        threshold = self.shift_threshold
        return {"threshold": None if threshold is None else round(float(threshold), 6),
                "ood_share": round(len(ood) / len(flagged), 4), "metric": metric,
                "in_distribution": part(ind), "out_of_distribution": part(ood)}

    def _errors(self) -> dict[str, Any]:
        by_role = {r: 0 for r in ROLES}
        examples: list[dict[str, Any]] = []
        for it in sorted(self.items.values(), key=lambda i: i["key"]):
            # A failed call is counted once: on its step in step mode (the trajectory item only
            # inherits it), on its episode in rollout mode.
            if it["mode"] == "step" and it["level"] == "trajectory":
                continue
            for role, err in it["errors"].items():
                by_role[role] += 1
                if len(examples) < 10:
                    examples.append({"key": it["key"], "role": role, "error": err})
            for metric, failures in (it.get("judge_errors") or {}).items():
                for role, err in failures.items():
                    by_role[role] += 1
                    if len(examples) < 10:
                        examples.append({"key": it["key"], "role": role, "error": f"judge {metric}: {err}"})
        return {"count": sum(by_role.values()), "by_role": by_role, "examples": examples}


# -- helpers ---------------------------------------------------------------------------------------
def _action_dict(action: Action | None) -> dict[str, Any] | None:
    return None if action is None else action.to_dict()


def _describe(action: Mapping[str, Any] | None) -> str:
    return "(no action)" if action is None else Action.from_dict(action).describe()


def _dead_tools(point: DecisionPoint, action: Action | None) -> list[str]:
    if action is None:
        return []
    offered = point.trajectory.tool_names
    return [c.name for c in action.tool_calls if c.name not in offered]


def _call_cost(call: Mapping[str, Any], price: tuple[float, float] | None) -> float:
    """A call's cost: what the agent reported, else its tokens at the ``--bclone-price`` of its model."""
    if call.get("cost_usd"):
        return float(call["cost_usd"])
    if price is None:
        return 0.0
    return float(call.get("prompt_tokens", 0) * price[0] + call.get("completion_tokens", 0) * price[1]) / 1e6


def _trajectory_cost(t: Trajectory, role: str, session: BcloneSession, calls: Sequence[CallStats]) -> float | None:
    """What serving trajectory ``t`` cost ``role`` (its ``calls``, repeat 0). The recorded expert made no calls:
    its cost comes from the trajectory's metadata (``expert_cost_usd``, or ``expert_usage`` tokens
    at the ``--bclone-price`` of ``expert_model``); None when unknown."""
    name = session.agent_names.get(role, "")
    if role == "expert" and name == "recorded":
        meta = t.metadata
        if "expert_cost_usd" in meta:
            return float(meta["expert_cost_usd"])
        usage, model = meta.get("expert_usage"), meta.get("expert_model")
        price = session.cfg.price.get(str(model)) if model else None
        if not isinstance(usage, Mapping) or price is None:
            return None
        return float(usage.get("prompt_tokens", 0) * price[0] + usage.get("completion_tokens", 0) * price[1]) / 1e6
    price = session.cfg.price.get(name)
    total = 0.0
    for stats in calls:
        # Unknown, not free: a call that reported neither a cost nor tokens, or tokens without a price.
        if not stats.cost_usd and (price is None or not (stats.prompt_tokens or stats.completion_tokens)):
            return None
        total += _call_cost(stats.to_dict(), price)
    return total


def _first_divergent_turn(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first turn where a rollout's clone episode and expert episode took different actions."""
    eps = item.get("episode_actions") or {}
    clone, expert = eps.get("clone") or [], eps.get("expert") or []
    for i in range(max(len(clone), len(expert))):
        c = clone[i] if i < len(clone) else None
        e = expert[i] if i < len(expert) else None
        if c is None or e is None or Action.from_dict(c).describe() != Action.from_dict(e).describe():
            return {"step": i, "actions": {"clone": c, "expert": e}}
    return None


def _labels(action: Mapping[str, Any] | None) -> list[str]:
    if action is None:
        return []
    names = [c["name"] for c in action.get("tool_calls") or ()]
    return names or ["(text reply)"]


def _confusions(step_items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Expert tool -> clone tool counts at the states where they differ.

    A text reply on one side confuses each distinct tool of the other side with "(text reply)";
    otherwise the calls left over after the multiset difference are paired in name order, and a
    call with no counterpart pairs with "(no call)"."""
    counts: Counter[tuple[str, str]] = Counter()
    text = "(text reply)"
    for it in step_items:
        acts = it.get("actions") or {}
        if acts.get("clone") is None or acts.get("expert") is None:
            continue
        e, c = Counter(_labels(acts["expert"])), Counter(_labels(acts["clone"]))
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


def _dead_tool_table(step_items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    tools: dict[str, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for it in step_items:
        for name in it.get("dead") or ():
            totals[name] += 1
            tools.setdefault(name, Counter()).update(it["cohorts"])
    return [{"tool": name, "count": n, "cohorts": dict(sorted(tools[name].items()))}
            for name, n in totals.most_common()]


def _divergence_record(it: Mapping[str, Any]) -> dict[str, Any]:
    return {"trajectory_id": it["trajectory_id"], "step": it["step"], "cohorts": it["cohorts"],
            "expert_action": _describe(it["actions"].get("expert")),
            "clone_action": _describe(it["actions"].get("clone"))}


def _generic_next_step(metric: str, status: str) -> tuple[str, str]:
    if status == "inconclusive":
        return "collect_more", "evaluate more rows of this cohort: the sample cannot resolve the margin yet"
    if metric in ("tool_selection", "tool_arguments", "dead_tool"):
        return "inspect_tools", "inspect tool-call coverage of the training set for this cohort"
    return "retrain", "retrain the clone with more rows of this cohort"
