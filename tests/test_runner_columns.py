"""The runner's columnar scoring gives every item exactly what the general per-pair path gives:
values and (lazily built) reasons of step items and step-mode trajectory items, for a clone that
copies, diverges, answers text and fails."""

from __future__ import annotations

import json

from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.config import build_config
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.evaluators import score_steps, score_trajectories
from pytest_bclone.records import Action, AgentReply, CallStats, ToolCall
from pytest_bclone.results import ItemKey
from pytest_bclone.session import BcloneSession

from .conftest import make_row


class MixedClone:
    """Copies the expert, except: a wrong tool at step 0 of every 3rd trajectory, a text reply at
    step 1 of every 4th, a failed call on every 7th."""

    name = "mixed-clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        n = int(state.trajectory_id[1:])
        if n % 7 == 0:
            return AgentReply(None, CallStats(error="HTTP 500"))
        if n % 3 == 0 and state.step == 0:
            call = ToolCall.parse("cancel_order", json.dumps({"order_id": f"W{n}"}), "c1")
            return AgentReply(Action(tool_calls=(call,)), CallStats())
        if n % 4 == 0 and state.step == 1:
            return AgentReply(Action(text="Let me check."), CallStats())
        return await self.recorded.act(state, repeat=repeat)


def _session(tmp_path, rows: int) -> BcloneSession:
    """A session over ``rows`` stored trajectories gating MixedClone, common_intents replayed."""
    DatasetStore(str(tmp_path)).write_version("support", "v1", [make_row(i) for i in range(1, rows + 1)])
    cfg = build_config({"clone": "mixed"}, {}, str(tmp_path))
    dataset = DatasetStore(str(tmp_path)).load("v1")
    session = BcloneSession(cfg, dataset, make_agent_hook=lambda role, spec: (
        MixedClone(dataset.trajectories) if spec == "mixed" else None), progress=False)
    session.ensure("common_intents", "step")
    return session


def test_columnar_items_equal_the_general_path(tmp_path):
    session = _session(tmp_path, 42)
    runner, reg = session.runner, session.registry
    step_m, traj_m, _, _ = runner._metrics()
    clone = runner.agents()["clone"]
    import asyncio

    checked = errors = 0
    for t in runner.eval_trajectories:
        pairs = []
        for p in t.decision_points():
            item = session.store.get(ItemKey("step", "step", p.key))
            reply = asyncio.run(clone.act(p.state))
            if reply.action is None:
                assert item.clone_scores is None and item.error("clone") == "HTTP 500"
                errors += 1
                continue
            pairs.append((p, reply.action))
            want = score_steps(reg, step_m, [(p, reply.action)])
            assert item.scores("clone") == {m: want[m][0].value for m in step_m}
            assert tuple(item.clone_reasons) == tuple(want[m][0].reason for m in step_m)
            assert [item.reason(m) for m in step_m] == [want[m][0].reason for m in step_m]
            checked += 1
        titem = session.store.get(ItemKey("step", "trajectory", t.id))
        if len(pairs) < len(t.decision_points()):
            assert titem.clone_scores is None
            continue
        want_t = score_trajectories(reg, traj_m, [pairs])
        assert titem.scores("clone") == {m: want_t[m][0].value for m in traj_m}
        assert tuple(titem.clone_reasons) == tuple(want_t[m][0].reason for m in traj_m)
    assert checked > 60 and errors > 0
    # the scores really differ between the kinds of states (the check above is not vacuous)
    values = {session.store.get(ItemKey("step", "step", f"t{n:04d}#0")).score("clone", "action_match")
              for n in (1, 3)}
    assert values == {0.0, 1.0}


def test_a_replay_keeps_no_parsed_messages(tmp_path):
    """A recorded expert and a clone that never reads the messages: the stored JSON of every
    trajectory stays unparsed after replay and scoring (a large gate's memory went there), and a
    state's messages, when read, equal the recorded prefix."""
    session = _session(tmp_path, 12)
    dataset = session.dataset
    replayed = [t for t in session.eval_trajectories if t.id in session.runner.replayed("step")]
    assert replayed and session.store.get(ItemKey("step", "step", f"{replayed[0].id}#0")) is not None
    assert all(t.messages._items is None for t in dataset.trajectories)  # LazyMessages still unparsed
    t = replayed[0]
    points = t.decision_points()
    state = points[-1].state
    recorded = json.loads(t.messages.text)
    assert state.messages == recorded[: points[-1].message_index]
    assert state.trajectory_id == t.id and state.step == len(points) - 1
    assert points[-1].expert_action == Action.from_message(recorded[points[-1].message_index])
