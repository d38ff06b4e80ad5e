"""What the ``bclone`` and ``bclone_case`` fixtures hand a test: read-only views of the session.

Everything here goes through the session's public accessors; items are handed to tests as plain
dicts (``key``, ``trajectory_id``, ``step``, ``cohorts``, ``scores`` {role: {metric: value}},
``errors``, ``actions``), a stable view however the store keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .results import ROLES

if TYPE_CHECKING:
    from .parity import Verdict
    from .records import Trajectory
    from .results import Item
    from .session import BcloneSession


def item_view(it: Item) -> dict[str, Any]:
    """A test's view of one item (JSON-able)."""
    actions = {r: (None if (a := it.action(r)) is None else a.to_dict()) for r in ROLES}
    return {"key": it.key, "mode": it.mode, "level": it.level, "trajectory_id": it.trajectory_id,
            "step": it.step, "cohorts": list(it.cohorts), "scores": {r: it.scores(r) for r in ROLES if it.scores(r)},
            "errors": it.errors(), "actions": actions}


class BcloneResults:
    """The session's results (the ``bclone`` fixture): per cohort, per metric, per item; routes."""

    def __init__(self, session: BcloneSession) -> None:
        self._session = session

    @property
    def cohorts(self) -> list[str]:
        """Cohorts of the evaluated split."""
        return self._session.cohorts

    def _items(self, cohort: str, metric: str, mode: str | None) -> list[Item]:
        s = self._session
        mode = mode or s.cfg.mode
        s.check_cohort(cohort, "bclone.items")
        s.ensure(cohort, mode)
        s.ensure_judged(cohort, metric)
        return s.cohort_items(cohort, metric, mode)

    def items(self, cohort: str, metric: str, mode: str | None = None) -> list[dict[str, Any]]:
        """Item records of ``cohort`` scored by ``metric`` (replaying first if needed): key,
        trajectory_id, step, cohorts, scores {role: {metric: value}}, errors, actions."""
        return [item_view(it) for it in self._items(cohort, metric, mode)]

    def scores(self, cohort: str, metric: str, mode: str | None = None) -> list[tuple[str, float, float]]:
        """``(item key, expert score, clone score)`` of every scored item (failed calls left out)."""
        return [(it.key, p[0], p[1]) for it in self._items(cohort, metric, mode) if (p := it.pair(metric)) is not None]

    def parity(self, cohort: str, within: float, metric: str | None = None, mode: str | None = None,
               confidence: float | None = None) -> Verdict:
        """The parity verdict without asserting it (nothing is recorded for the gate)."""
        s = self._session
        s.check_cohort(cohort, "bclone.parity")
        return s.parity(cohort, within, metric or s.default_metric(cohort), mode or s.cfg.mode, confidence)

    def routes(self) -> dict[str, str]:
        """Cohort -> ``clone`` / ``expert`` from the parity assertions recorded so far in this process."""
        return self._session.routes()


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
        return self._session.trajectory(self.trajectory_id)

    def score(self, role: str, metric: str) -> float | None:
        """``role``'s score on this trajectory (None when its model call failed). A step metric of a
        whole trajectory is the mean over its steps (failed steps left out)."""
        s = self._session
        s.ensure(self.cohort, self.mode)
        s.ensure_judged(self.cohort, metric)
        if s.metric_level(metric, self.mode) == "trajectory":
            it = s.store.trajectory_item(self.mode, self.trajectory_id)
            return None if it is None else it.score(role, metric)
        scored = [p for it in s.step_items(self.trajectory_id) if (p := it.pair(metric)) is not None]
        if not scored:
            return None
        i = 1 if role == "clone" else 0
        return sum(p[i] for p in scored) / len(scored)

    def clone_score(self, metric: str) -> float | None:
        return self.score("clone", metric)

    def expert_score(self, metric: str) -> float | None:
        return self.score("expert", metric)

    def steps(self) -> list[dict[str, Any]]:
        """The step records of this trajectory (step mode): actions and scores of both agents."""
        s = self._session
        s.ensure(self.cohort, "step")
        return [item_view(it) for it in s.step_items(self.trajectory_id)]
