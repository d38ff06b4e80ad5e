"""One gate run in one pytest process: the dataset, the runner, the results store and the verdicts.

A thin facade over the data flow (runner -> results store -> parity -> gate -> report): the
pytest edges (plugin.py, assertions.py, cases.py) talk to a :class:`BcloneSession` and it
delegates. Every verdict an assertion produces is recorded here (:meth:`BcloneSession.record`), in
whichever process it ran; a pytest-xdist worker ships its verdicts and items to the controller
(:meth:`export` / :meth:`merge`), which alone decides and reports.

This module never imports pytest.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import timing
from .config import BcloneConfig
from .errors import GateError
from .gate import Decision, GateTest, RecordedVerdict, TrajectoryCost, action_for, apply_holm, decide
from .records import Trajectory
from .results import Item, ResultsStore

if TYPE_CHECKING:
    from .agents.base import Agent
    from .dataset.store import DatasetVersion
    from .evaluators import EvaluatorRegistry
    from .parity import Verdict
    from .sequential_gate import SequentialRun

__all__ = ["BcloneSession", "RecordedVerdict", "action_for"]


class BcloneSession:
    """The gate's state for one pytest process.

    ``make_agent_hook(role, spec)`` and ``make_environment_hook(trajectory)`` are the plugin's
    firstresult hooks; ``register_evaluators(registry)`` feeds the user's evaluators in.
    ``process`` names this process in verdict ids (``main``, or the xdist worker id).
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
        process: str = "main",
        make_user_hook: Callable[[Trajectory], Any] | None = None,
    ) -> None:
        from .runner import Runner

        self.cfg = cfg
        self.dataset = dataset
        self.store = ResultsStore()
        self.runner = Runner(cfg, dataset, self.store, make_agent_hook=make_agent_hook,
                             make_environment_hook=make_environment_hook, register_evaluators=register_evaluators,
                             progress=progress, make_user_hook=make_user_hook)
        self.verdicts: list[RecordedVerdict] = []
        # Gate tests collected in this process (node id -> test), and how each ended (the controller).
        self.gate_tests: dict[str, GateTest] = {}
        self.outcomes: dict[str, str] = {}
        self._process = process
        self.sequential_runs: list[SequentialRun] = []  # --bclone-sequential: how each cohort stopped
        self._seq = itertools.count(1)

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def eval_trajectories(self) -> list[Trajectory]:
        return self.runner.eval_trajectories

    @property
    def declared_cohorts(self) -> dict[str, set[str]]:
        return self.runner.declared_cohorts

    @property
    def agent_names(self) -> dict[str, str]:
        return self.runner.agent_names

    def trajectory(self, trajectory_id: str) -> Trajectory:
        """An evaluated trajectory by id (KeyError when it is not in the evaluated split)."""
        return self.runner.by_id[trajectory_id]

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
        return self.runner.registry

    def agents(self) -> dict[str, Agent]:
        return self.runner.agents()

    # -- replay, scoring, items ---------------------------------------------------------------------
    def ensure(self, cohort: str, mode: str) -> None:
        """Replay and score every trajectory of ``cohort`` (and of the declared cohorts) in ``mode``."""
        self.runner.ensure(cohort, mode)

    def ensure_judged(self, cohort: str, metric: str) -> None:
        self.runner.ensure_judged(cohort, metric)

    def metric_level(self, metric: str, mode: str) -> str:
        return self.runner.metric_level(metric, mode)

    def cohort_items(self, cohort: str, metric: str, mode: str, only: set[str] | None = None) -> list[Item]:
        """Items of ``cohort`` that ``metric`` scores in ``mode``, in a stable order (``only``: of
        those trajectories)."""
        return self.store.cohort_items(cohort, mode, self.metric_level(metric, mode), only)

    def step_items(self, trajectory_id: str) -> list[Item]:
        """The step-mode items of one trajectory, in step order."""
        t = self.runner.by_id.get(trajectory_id)
        if t is None:
            return []
        return self.store.step_items(trajectory_id, len(t.assistant_indexes()))

    def parity(self, cohort: str, within: float, metric: str, mode: str, confidence: float | None = None) -> Verdict:
        """The verdict of one (cohort, metric) parity check (replaying first if needed).

        With ``--bclone-sequential`` the cohort is replayed in seeded rounds until an
        anytime-valid confidence sequence settles it (:mod:`pytest_bclone.sequential_gate`)."""
        if self.cfg.sequential:
            from .sequential_gate import sequential_parity

            verdict, run = sequential_parity(self, cohort, within, metric, mode, confidence or self.cfg.confidence)
            self.sequential_runs.append(run)
            return verdict
        self.ensure(cohort, mode)
        return self.fixed_parity(cohort, within, metric, mode, confidence)

    def fixed_parity(self, cohort: str, within: float, metric: str, mode: str, confidence: float | None = None,
                     *, only: set[str] | None = None) -> Verdict:
        """The fixed-n verdict on the items replayed so far (``only``: of those trajectories)."""
        from .parity import parity_verdict

        self.ensure_judged(cohort, metric)
        with timing.phase("statistics"):
            # Read from the store's columns: no item record is built for a verdict.
            expert, clone, clusters, total = self.store.cohort_pairs(
                cohort, mode, self.metric_level(metric, mode), metric, only)
            return parity_verdict(
                cohort, metric, expert, clone,
                within=within, clusters=clusters, errors=total - len(expert),
                total=total, confidence=confidence or self.cfg.confidence, resamples=self.cfg.bootstrap,
                seed=self.cfg.seed, max_error_rate=self.cfg.max_error_rate,
            )

    def worst_divergences(self, cohort: str, metric: str, mode: str, k: int = 3) -> list[dict[str, Any]]:
        """The ``k`` items where the clone lost most against the expert, as readable step records."""
        from .report.summary import worst_items

        candidates = self.store.worst_candidates(cohort, mode, self.metric_level(metric, mode), metric, k)
        return worst_items(candidates, metric, self.step_items, k)

    def _cohort_union(self) -> tuple[Callable[[str], str], Callable[[str, str], None]]:
        """Union-find over the evaluated cohorts, seeded with the dataset's overlaps: (find, union).
        Cohorts that share a trajectory are one set (their tests must replay on one worker)."""
        parent: dict[str, str] = {}

        def find(c: str) -> str:
            while parent.setdefault(c, c) != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        def union(a: str, b: str) -> None:
            a, b = find(a), find(b)
            if a != b:
                parent[max(a, b)] = min(a, b)

        for t in self.eval_trajectories:
            for c in t.cohorts[1:]:
                union(t.cohorts[0], c)
        return find, union

    def _id_cohort(self) -> Callable[[str], str | None]:
        """A test's node id -> the cohort its parameter ids name (or the first cohort of the
        trajectory a ``bclone_case`` id names); None when they name none."""
        names = sorted(self.cohorts, key=lambda c: (-len(c), c))  # the longest name first: 'a-b' before 'a'

        def cohort(nodeid: str) -> str | None:
            at = nodeid.find("[", nodeid.rfind("::"))
            if at < 0 or not nodeid.endswith("]"):
                return None
            params = f"-{nodeid[at + 1:-1]}-"
            for c in names:
                if f"-{c}-" in params:
                    return c
            t = self.runner.by_id.get(params[1:-1])
            return t.cohorts[0] if t is not None and t.cohorts else None

        return cohort

    def work_group(self) -> Callable[[str], str | None]:
        """For scheduling tests on xdist workers from node ids alone (what the controller sees when
        no worker sent :meth:`work_groups`): a test's node id -> the group of the cohort its
        parameters name (or of the trajectory a ``bclone_case`` id names), None when they name
        none. Cohorts that share a trajectory are one group: a worker running a group's tests
        replays each of its trajectories, and no other worker replays them again."""
        find, _ = self._cohort_union()
        named = self._id_cohort()

        def group(nodeid: str) -> str | None:
            c = named(nodeid)
            return None if c is None else f"bclone-cohorts:{find(c)}"

        return group

    def work_groups(self, tests: Mapping[str, str | None]) -> tuple[dict[str, str], dict[str, int]]:
        """For scheduling tests on xdist workers, from a worker's collection (node id -> the cohort
        its ``@pytest.mark.bclone`` names, or None): (node id -> group, group -> weight).

        A test's cohorts are its marker's and the one its parameter ids name (:meth:`work_group`);
        cohorts that share a trajectory, or that one test names together, are one group, so each
        trajectory is replayed by the one worker that runs the group. A group's weight is its
        decision points (what replaying it costs, for balancing the workers). Tests that name no
        evaluated cohort are left out (each is its own scope)."""
        find, union = self._cohort_union()
        named = self._id_cohort()
        known = set(self.cohorts)
        first: dict[str, str] = {}
        for nodeid, marker_cohort in tests.items():
            cohorts = [c for c in (marker_cohort, named(nodeid)) if c is not None and c in known]
            if cohorts:
                first[nodeid] = cohorts[0]
                if len(cohorts) == 2:
                    union(*cohorts)
        groups = {nodeid: f"bclone-cohorts:{find(c)}" for nodeid, c in first.items()}
        used = set(groups.values())
        weights: dict[str, int] = {}
        for t in self.eval_trajectories:
            if t.cohorts and (g := f"bclone-cohorts:{find(t.cohorts[0])}") in used:
                weights[g] = weights.get(g, 0) + len(t.assistant_indexes())
        return groups, weights

    # -- verdicts ------------------------------------------------------------------------------------
    def record(self, verdict: Verdict, *, mode: str, on_fail: str, test: str, worst: Sequence[Mapping[str, Any]],
               allow_inconclusive: bool = False, remedy: str | None = None) -> RecordedVerdict:
        """Record a verdict for the gate (every assertion calls this, wherever it runs)."""
        action, outcome = action_for(verdict.status, on_fail, allow_inconclusive=allow_inconclusive)
        rec = RecordedVerdict(verdict.to_dict(), mode, on_fail, test, outcome, action, tuple(worst), remedy,
                              f"{self._process}-{next(self._seq)}")
        self.verdicts.append(rec)
        return rec

    def add_verdicts(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Add verdict records from another channel (a test report, a worker), once per ``uid``."""
        seen = {r.uid for r in self.verdicts}
        for d in records:
            rec = RecordedVerdict.from_dict(d)
            if rec.uid and rec.uid in seen:
                continue
            seen.add(rec.uid)
            self.verdicts.append(rec)

    def routes(self) -> dict[str, str]:
        """Cohort -> ``clone`` / ``expert`` from the verdicts recorded so far in this process."""
        return dict(decide(self.verdicts).routes)

    # -- xdist ---------------------------------------------------------------------------------------
    def export(self, *, objects: bool = False) -> dict[str, Any]:
        """What a worker sends the controller: JSON-able but for the blocks' bytes, or with
        ``objects`` the results store's items as records (for a pickle; see ResultsStore.export)."""
        r = self.runner
        return {"items": self.store.export(objects=objects), "verdicts": [v.to_dict() for v in self.verdicts],
                "gate_tests": {t.nodeid: t.cohort for t in self.gate_tests.values()},
                "agents": r.agent_names, "wall_s": r.wall_s, "cache": dict(r.cache_counts),
                "user": {"mode": r.user_mode, "calls": r.user_calls}, "shift_threshold": r.shift_threshold, "sequential": [run.to_dict() for run in self.sequential_runs],
                "batch": list(r.batch_reports), "phases_s": timing.snapshot()}

    def merge(self, data: Mapping[str, Any]) -> None:
        """Merge a worker's export (items once per key, verdicts once per uid)."""
        r = self.runner
        self.store.merge(data.get("items") or (), r.by_id)
        self.add_verdicts(data.get("verdicts") or ())
        for nodeid, cohort in (data.get("gate_tests") or {}).items():
            self.gate_tests.setdefault(nodeid, GateTest(nodeid, cohort))
        r.agent_names.update(data.get("agents") or {})
        for k, v in (data.get("cache") or {}).items():
            r.cache_counts[k] = r.cache_counts.get(k, 0) + int(v)
        if data.get("shift_threshold") is not None:
            r.shift_threshold = float(data["shift_threshold"])
        r.wall_s = max(r.wall_s, float(data.get("wall_s") or 0.0))
        user = data.get("user") or {}
        if user.get("mode"):
            modes = dict.fromkeys([*(r.user_mode or "").split(", "), *str(user["mode"]).split(", ")])
            r.user_mode = ", ".join(m for m in modes if m)
        if user.get("calls"):
            from .replay import CallTotals

            r.user_calls = (CallTotals.from_dict(r.user_calls) + CallTotals.from_dict(user["calls"])).to_dict()
        from .sequential_gate import SequentialRun

        self.sequential_runs.extend(SequentialRun(**run) for run in data.get("sequential") or ())
        r.batch_reports.extend(data.get("batch") or ())
        timing.merge(data.get("phases_s") or {})  # the worker's seconds of work, added per phase

    # -- the decision and the report ------------------------------------------------------------------
    def final_verdicts(self) -> list[RecordedVerdict]:
        """The run's verdicts in a stable order (by test, cohort, metric), Holm-corrected when asked."""
        records = sorted(self.verdicts, key=lambda v: (v.test, v.cohort, v.metric, v.uid))
        return apply_holm(records) if self.cfg.holm else records

    def decide(self, *, track_outcomes: bool = False) -> Decision:
        """The gate's decision over the verdicts recorded (and merged) so far. With ``track_outcomes``
        (the controller at the end of the run) a gate test without a verdict blocks."""
        costs = [TrajectoryCost(it.trajectory_id, it.cohorts, it.cost("clone"), it.cost("expert"))
                 for it in self.store.trajectory_items()]
        return decide(self.final_verdicts(), gate_tests=list(self.gate_tests.values()),
                      outcomes=self.outcomes if track_outcomes else None, trajectories=costs)

    def summary(self, *, track_outcomes: bool = False) -> dict[str, Any]:
        """The run's report as one JSON-able dict (schema: pytest_bclone.report.schema)."""
        from .report.summary import RunInfo, build_summary

        r = self.runner
        records = self.final_verdicts()
        gate = self.decide(track_outcomes=track_outcomes)
        info = RunInfo(
            dataset={"name": self.dataset.name, "version": self.dataset.version, "ref": self.dataset.ref,
                     "fingerprint": self.dataset.fingerprint, "split": self.cfg.split},
            clone=r.agent_names.get("clone", self.cfg.clone or ""), expert=r.agent_names.get("expert", self.cfg.expert),
            repeats=self.cfg.repeats, seed=self.cfg.seed, confidence=self.cfg.confidence, holm=self.cfg.holm,
            wall_s=r.wall_s, prices=self.cfg.price, cache=r.cache_counts, shift_threshold=r.shift_threshold,
            user=r.user_mode, user_calls=r.user_calls,
        )
        # A verdict's uid is the channel's bookkeeping (which process recorded it), not a figure.
        verdicts = [{k: v for k, v in rec.to_dict().items() if k != "uid"} for rec in records]
        summary = build_summary(self.store, verdicts, gate.to_dict(), info, r.by_id)
        if self.cfg.sequential:
            from .sequential_gate import savings

            summary["sequential"] = savings(self)
        if self.cfg.batch:
            summary["batch"] = list(r.batch_reports)
        return summary

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
        from .report.summary import divergence_records

        return divergence_records(self.store)
