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


def _two_block_session(tmp_path) -> BcloneSession:
    """MixedClone over 42 trajectories replayed in two rounds (odd ones first): two step blocks
    whose rows interleave in key order."""
    DatasetStore(str(tmp_path)).write_version("support", "v1", [
        make_row(i, cohorts=("common_intents",) if i % 2 else ("common_intents", "long_tail")) for i in range(1, 43)])
    cfg = build_config({"clone": "mixed"}, {}, str(tmp_path))
    dataset = DatasetStore(str(tmp_path)).load("v1")
    session = BcloneSession(cfg, dataset, make_agent_hook=lambda role, spec: (
        MixedClone(dataset.trajectories) if spec == "mixed" else None), progress=False)
    ts = session.runner.eval_trajectories
    session.runner.replay_trajectories("step", ts[1::2])
    session.runner.replay_trajectories("step", ts[0::2])
    return session


def _pairs_from_items(items, cohort, metric, only=None):
    mine = [it for it in items if cohort in it.cohorts and (only is None or it.trajectory_id in only)]
    scored = [(it, p) for it in mine if (p := it.pair(metric)) is not None]
    return [p[0] for _, p in scored], [p[1] for _, p in scored], [it.trajectory_id for it, _ in scored], len(mine)


def test_step_columns_give_what_the_items_give(tmp_path):
    session = _two_block_session(tmp_path)
    store = session.store
    assert store.step_table() is not None  # the decision points are held in columns
    items = store.items("step", "step")
    assert [it.id for it in items] == sorted(it.id for it in items) and len(items) == 42 * 2
    assert len(store) == 42 * 3  # decision points and trajectory items
    step_m = session.runner._metrics()[0]
    only = {t.id for t in session.runner.eval_trajectories[::3]}
    for cohort in ("common_intents", "long_tail"):
        assert [it.id for it in store.cohort_items(cohort, "step", "step")] == [
            it.id for it in items if cohort in it.cohorts]
        for metric in step_m:
            assert store.cohort_pairs(cohort, "step", "step", metric) == _pairs_from_items(items, cohort, metric)
            assert store.cohort_pairs(cohort, "step", "step", metric, only) == _pairs_from_items(
                items, cohort, metric, only)
            worst = sorted((p[1] - p[0], it.key) for it in items if cohort in it.cohorts
                            and (p := it.pair(metric)) is not None)[:3]
            got = store.worst_candidates(cohort, "step", "step", metric, 3)
            assert [(it.pair(metric)[1] - it.pair(metric)[0], it.key) for it in got] == worst
    for t in session.runner.eval_trajectories[:5]:
        assert store.step_items(t.id, 2) == [it for it in items if it.trajectory_id == t.id]
        assert store.get(ItemKey("step", "step", f"{t.id}#1")) == items[[it.key for it in items].index(f"{t.id}#1")]
    assert store.get(ItemKey("step", "step", "t0001#7")) is None
    # calls in storing order: the odd trajectories' points first, as they were replayed
    calls = list(store.role_calls("clone"))
    assert len(calls) == len(store) and calls[0] == store.get(ItemKey("step", "step", "t0002#0")).calls("clone")


def test_step_blocks_cross_the_xdist_channel_compactly(tmp_path):
    from dataclasses import replace

    from pytest_bclone.results import ResultsStore

    session = _two_block_session(tmp_path)
    exported = session.store.export()
    blocks = [row for row in exported if row.get("block")]
    # one block of columns, the 42 trajectory items as one JSON text: a few objects on the channel
    assert len(blocks) == 1 and len(exported) == 2 and len(json.loads(exported[1]["items_json"])) == 42
    assert all(isinstance(v, (bytes, str, list, dict, int, type(None))) for v in blocks[0].values())
    # the recorded expert's actions travel as references, but where the clone's action differs
    table0 = session.store.step_table()
    assert len(blocks[0]["actions"]["expert"]["table"]) == len(table0.differing_rows()) < len(table0)
    # The controller loads its own copy of the dataset: no recorded action is parsed to merge,
    # order, count malformed arguments or find the states where the actions differ.
    fresh = {t.id: t for t in DatasetStore(str(tmp_path)).load("v1").select("eval")}
    controller = ResultsStore()
    controller.merge(exported, fresh)
    controller.merge(exported, fresh)  # a second worker's copy is kept once
    table = controller.step_table()
    assert [table.unparseable_count(r) for r in ("clone", "expert")] == [
        session.store.step_table().unparseable_count(r) for r in ("clone", "expert")]
    assert table.differing_rows() == session.store.step_table().differing_rows() != []
    assert not any(t._actions is not None for t in fresh.values())
    # ... nor to show the actions where the agents differ (the expert's travel there)
    assert [(table.actions["expert"][r], table.actions["clone"][r]) for r in table.differing_rows()] == [
        (session.store.step_table().actions["expert"][r], session.store.step_table().actions["clone"][r])
        for r in table.differing_rows()]
    assert not any(t._actions is not None for t in fresh.values())
    # Reading one row's action parses that trajectory's recording only.
    assert table.actions["expert"][0] == session.store.step_table().actions["expert"][0]
    assert [t.id for t in fresh.values() if t._actions is not None] == [table.tids[0]]
    assert len(controller) == len(session.store)
    # Everything but the reasons (read on the worker that scored them) arrives unchanged.
    assert [replace(it, clone_reasons=()) for it in controller.items()] == [
        replace(it, clone_reasons=()) for it in session.store.items()]
    from collections import Counter

    assert Counter(controller.role_calls("expert")) == Counter(session.store.role_calls("expert"))


def test_a_step_item_put_alone_turns_the_columns_into_items(tmp_path):
    session = _two_block_session(tmp_path)
    store = session.store
    before = store.items()
    old = before[5]
    new = old.with_judged("judge_x", {"clone": 0.5}, {"expert": "timeout"})
    store.put(new)
    assert store.step_table() is None
    assert store.items() == [new if it.id == old.id else it for it in before]
    assert len(store) == len(before)


def test_step_rows_are_in_key_order_with_ten_steps_and_odd_ids():
    import numpy as np

    from pytest_bclone.records import Action
    from pytest_bclone.results import StepBlock

    def block(tids, steps_per):
        starts = np.concatenate([[0], np.cumsum(steps_per)])
        step = np.concatenate([np.arange(k) for k in steps_per])
        n = int(starts[-1])
        acts = [Action(text=str(i)) for i in range(n)]
        return StepBlock(tids, [("c",)] * len(tids), starts, step, ("m",),
                         {r: np.arange(n, dtype=float).reshape(n, 1) for r in ("clone", "expert")},
                         {r: np.ones(n, dtype=bool) for r in ("clone", "expert")},
                         {"clone": {3: "boom"}, "expert": {}}, {"clone": acts, "expert": list(acts)},
                         {r: [()] * n for r in ("clone", "expert")}, {n - 1: ("x",)})

    b = block(["b", "a", "a!"], [12, 3, 2])
    want = sorted(range(len(b)), key=b.key)
    got = b.reordered(b.key_order())
    assert [got.key(r) for r in range(len(got))] == [b.key(r) for r in want]
    assert [got.item(r) for r in range(len(got))] == [b.item(r) for r in want]  # errors, dead tools follow
    # A '#' in an id interleaves trajectories in key order: the store keeps such points as items.
    from pytest_bclone.results import ResultsStore

    store = ResultsStore()
    odd = block(["a#1", "a", "a#0"], [12, 3, 2])
    store.add_block(odd)
    assert store.step_table() is None
    assert store.items() == sorted(odd.items(), key=lambda it: it.id) and len(store) == len(odd)


def test_scored_trajectories_keep_no_evaluator_memo(tmp_path):
    session = _session(tmp_path, 12)
    ts = session.runner.eval_trajectories
    assert ts and all(t._memo is None for t in ts)  # released once scored
    item = session.store.get(ItemKey("step", "step", f"{ts[2].id}#0"))
    assert isinstance(item.reason("action_match"), str)  # a reason read later derives them again


def test_scored_steps_keep_no_parsed_action_pair_or_point(tmp_path):
    """Once a replay is scored, the run holds no parsed recorded action, no decision point and no
    (point, action) pair (at a million points they were about 40% of the gate's memory): the block
    refers to the recording's own actions, and the clone's scoring columns rebuild what a reason
    needs. Read back, actions and reasons are the recorded ones and the general path's."""
    import gc

    from pytest_bclone.records import DecisionPoint
    from pytest_bclone.results import ActionColumn

    session = _session(tmp_path, 42)  # MixedClone: copies, diverges, answers text, fails
    ts = session.runner.eval_trajectories
    assert all(t._actions is None for t in ts)
    table = session.store.step_table()
    assert table is not None and all(isinstance(a, ActionColumn) for a in table.actions.values())
    copied = int((table.actions["clone"].codes == -2).sum())
    assert copied > len(table) // 2  # the recording's own actions are references
    gc.unfreeze()  # the runner froze what it keeps: gc.get_objects() lists no frozen object
    gc.collect()
    # This session's points only: other tests in the process may still hold points of their own.
    mine = {id(t) for t in ts}
    assert not [o for o in gc.get_objects() if isinstance(o, DecisionPoint) and id(o.trajectory) in mine]
    # Read back (in the other test too): each row's actions and the clone's reasons.
    reg = session.registry
    step_m, _, _, _ = session.runner._metrics()
    diverging = 0
    for t in ts:
        recorded = json.loads(t.messages.text)
        for p in t.decision_points():
            item = session.store.get(ItemKey("step", "step", p.key))
            if item is None:
                continue
            assert item.action("expert") == Action.from_message(recorded[p.message_index])
            clone = item.action("clone")
            if clone is None:
                continue
            diverging += clone != item.action("expert")
            want = score_steps(reg, step_m, [(p, clone)])
            assert tuple(item.clone_reasons) == tuple(want[m][0].reason for m in step_m)
    assert diverging
