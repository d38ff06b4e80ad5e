"""The worst divergences a report shows are the same whatever order the trajectories were replayed
in: the clone's largest losses first, ties broken by item key. Many equal losses make the tie-break
decide every pick, so an unstable sort (numpy's default introsort on more than 16 rows) or a
selection in storage order fails here."""

from __future__ import annotations

import pytest

from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.config import build_config
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.records import Action, AgentReply, CallStats
from pytest_bclone.session import BcloneSession

from .conftest import make_row

TRAJECTORIES = 120


class TextAtFirstStep:
    """Copies the expert, except a text reply at step 0 of every even trajectory: 60 equal losses
    of one point on ``action_match``."""

    name = "text-at-first-step"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        if int(state.trajectory_id[1:]) % 2 == 0 and state.step == 0:
            return AgentReply(Action(text="Let me check."), CallStats())
        return await self.recorded.act(state, repeat=repeat)


def _session(tmp_path, order: str) -> BcloneSession:
    DatasetStore(str(tmp_path)).write_version(
        "support", "v1", [make_row(i) for i in range(1, TRAJECTORIES + 1)])
    cfg = build_config({"clone": "text"}, {}, str(tmp_path))
    dataset = DatasetStore(str(tmp_path)).load("v1")
    session = BcloneSession(cfg, dataset, make_agent_hook=lambda role, spec: (
        TextAtFirstStep(dataset.trajectories) if spec == "text" else None), progress=False)
    ts = list(session.runner.eval_trajectories)
    if order == "reversed":
        ts.reverse()
    elif order == "interleaved":
        ts = ts[1::2] + ts[0::2]
    # Three replay rounds: three step blocks whose rows are not in key order.
    third = len(ts) // 3
    for part in (ts[:third], ts[third:2 * third], ts[2 * third:]):
        session.runner.replay_trajectories("step", part)
    return session


@pytest.mark.parametrize("order", ["key", "reversed", "interleaved"])
def test_ties_among_the_worst_are_broken_by_key_whatever_the_replay_order(tmp_path, order):
    session = _session(tmp_path, order)
    losers = [f"t{i:04d}#0" for i in range(2, TRAJECTORIES + 1, 2)]  # key order
    for k in (1, 5, 17, 60):
        got = session.store.worst_candidates("common_intents", "step", "step", "action_match", k)
        assert [it.key for it in got] == losers[:k]
        assert all(it.pair("action_match") == (1.0, 0.0) for it in got)
    shown = session.worst_divergences("common_intents", "action_match", "step", k=3)
    assert [d["trajectory_id"] for d in shown] == ["t0002", "t0004", "t0006"]
