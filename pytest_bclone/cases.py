"""What the ``bclone`` and ``bclone_case`` fixtures hand a test: read-only views of the session."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parity import Verdict
    from .records import Trajectory
    from .session import BcloneSession


class BcloneResults:
    """The session's results (the ``bclone`` fixture): per cohort, per metric, per item; routes."""

    def __init__(self, session: BcloneSession) -> None:
        self._session = session

    @property
    def cohorts(self) -> list[str]:
        """Cohorts of the evaluated split."""
        return self._session.cohorts

    def items(self, cohort: str, metric: str, mode: str | None = None) -> list[dict[str, Any]]:
        """Item records of ``cohort`` scored by ``metric`` (replaying first if needed): key,
        trajectory_id, step, cohorts, scores {role: {metric: value}}, errors, actions."""
        mode = mode or self._session.cfg.mode
        self._session.check_cohort(cohort, "bclone.items")
        self._session.ensure(cohort, mode)
        self._session.ensure_judged(cohort, metric)
        return self._session.cohort_items(cohort, metric, mode)

    def scores(self, cohort: str, metric: str, mode: str | None = None) -> list[tuple[str, float, float]]:
        """``(item key, expert score, clone score)`` of every scored item (failed calls left out)."""
        return [(it["key"], it["scores"]["expert"][metric], it["scores"]["clone"][metric])
                for it in self.items(cohort, metric, mode)
                if metric in it["scores"].get("expert", {}) and metric in it["scores"].get("clone", {})]

    def parity(self, cohort: str, within: float, metric: str | None = None, mode: str | None = None,
               confidence: float | None = None) -> Verdict:
        """The parity verdict without asserting it (nothing is recorded for the gate)."""
        s = self._session
        s.check_cohort(cohort, "bclone.parity")
        return s.parity(cohort, within, metric or s.default_metric(cohort), mode or s.cfg.mode, confidence)

    def routes(self) -> dict[str, str]:
        """Cohort -> ``clone`` / ``expert`` from the parity assertions recorded so far in this process."""
        return dict(self._session._decide(self._session.verdicts)["routes"])


class BcloneCase:
    """One trajectory of a cohort (the ``bclone_case`` fixture): its recording and both agents' scores."""

    def __init__(self, session: BcloneSession, trajectory_id: str, cohort: str, mode: str | None) -> None:
        self._session = session
        self.trajectory_id = trajectory_id
        self.cohort = cohort
        self.mode = mode or session.cfg.mode

    def __repr__(self) -> str:  # shown in test ids and failure messages
        return f"BcloneCase({self.trajectory_id!r}, cohort={self.cohort!r})"

    @property
    def trajectory(self) -> Trajectory:
        return self._session._by_id[self.trajectory_id]

    def _item(self, metric: str) -> dict[str, Any]:
        s = self._session
        s.ensure(self.cohort, self.mode)
        s.ensure_judged(self.cohort, metric)
        level = s.metric_level(metric, self.mode)
        if level == "trajectory":
            return s.items[f"{self.mode}|trajectory|{self.trajectory_id}"]
        steps = s.step_items(self.trajectory_id)
        # A step metric of a whole trajectory: the mean over its steps (failed steps left out).
        scored = [it for it in steps if metric in it["scores"].get("clone", {})
                  and metric in it["scores"].get("expert", {})]
        return {"scores": {r: {metric: sum(it["scores"][r][metric] for it in scored) / len(scored)}
                           for r in ("clone", "expert")} if scored else {},
                "errors": {r: e for it in steps for r, e in it["errors"].items()}}

    def score(self, role: str, metric: str) -> float | None:
        """``role``'s score on this trajectory (None when its model call failed)."""
        value = self._item(metric)["scores"].get(role, {}).get(metric)
        return None if value is None else float(value)

    def clone_score(self, metric: str) -> float | None:
        return self.score("clone", metric)

    def expert_score(self, metric: str) -> float | None:
        return self.score("expert", metric)

    def steps(self) -> list[dict[str, Any]]:
        """The step records of this trajectory (step mode): actions and scores of both agents."""
        s = self._session
        s.ensure(self.cohort, "step")
        return s.step_items(self.trajectory_id)
