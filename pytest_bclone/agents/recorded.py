"""The recorded expert: the expert's own actions from the dataset, no model calls."""

from __future__ import annotations

from collections.abc import Iterable

from ..records import Action, AgentReply, CallStats, State, Trajectory

__all__ = ["RecordedAgent"]


class RecordedAgent:
    """Answers a recorded state with the action the expert took there.

    The action is looked up by ``(state.trajectory_id, state.step)``; a state that is not in the
    recording gets a failed reply (``action=None``) that says so, never an exception. Nothing is
    copied up front: actions are read from the trajectories on demand.
    """

    name = "recorded"
    needs_calls = False  # see agents.base.needs_calls: the actions come from the dataset

    def __init__(self, trajectories: Iterable[Trajectory]) -> None:
        self._trajectories: dict[str, Trajectory] = {t.id: t for t in trajectories}
        self._indexes: dict[str, list[int]] = {}

    def recording(self, trajectory_id: str) -> Trajectory | None:
        """The recorded trajectory of ``trajectory_id`` (``None`` when unknown)."""
        return self._trajectories.get(trajectory_id)

    def action_at(self, trajectory_id: str, step: int) -> Action | str:
        """The recorded action at ``step``, or a message saying why there is none."""
        trajectory = self._trajectories.get(trajectory_id)
        if trajectory is None:
            return (
                f"the recorded expert has no trajectory {trajectory_id!r} (it knows the "
                f"{len(self._trajectories)} trajectories it was built from)"
            )
        indexes = self._indexes.get(trajectory_id)
        if indexes is None:
            indexes = self._indexes[trajectory_id] = trajectory.assistant_indexes()
        if not 0 <= step < len(indexes):
            return (
                f"trajectory {trajectory_id!r} has {len(indexes)} recorded assistant turns; "
                f"there is no recorded action at step {step}"
            )
        # Parsed once per load and shared with the evaluators' expert side (records.Trajectory).
        return trajectory.expert_actions()[step]

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
        """The recorded action (the same for every repeat: the recording is one sample)."""
        found = self.action_at(state.trajectory_id, state.step)
        if isinstance(found, str):
            return AgentReply(None, CallStats(error=found, calls=0))
        return AgentReply(found, CallStats(calls=0))  # read from the dataset: no model call
