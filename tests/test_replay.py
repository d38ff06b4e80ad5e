"""Step-mode replay: the engine over real litellm calls to the stub server, the cache, repeats, agents."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.agents import Agent, PythonAgent, RecordedAgent
from pytest_bclone.cache import ModelCache
from pytest_bclone.errors import AgentError, CacheMiss
from pytest_bclone.progress import Progress
from pytest_bclone.records import Action, AgentReply, CallStats, State, ToolCall
from pytest_bclone.replay import ReplayResult, run_replay
from pytest_bclone.testing import OpenAIServer, Reply, reply

from .replay_support import Script, last_user_text, make_clone, trajectory

pytest_plugins = ["tests.stub_server"]  # the stub server fixtures

TRAJECTORIES = [trajectory(i, cohorts=("long_tail",) if i % 2 else ("common_intents",)) for i in range(4)]
POINTS = [p for t in TRAJECTORIES for p in t.decision_points()]  # 3 per trajectory


def priced_clone(server: OpenAIServer, cache: ModelCache | None):  # type: ignore[no-untyped-def]
    return make_clone(server, cache, prices={"openai/stub": (1.0, 4.0)})


def by_state(request: dict) -> Reply:  # type: ignore[type-arg]
    """A deterministic answer per state: a tool call on the first step, text afterwards."""
    if request["messages"][-1]["role"] == "user" and len(request["messages"]) == 2:
        return reply(tool_calls=[("get_order", {"order_id": last_user_text(request).split()[-1].rstrip("?")})])
    return reply(f"answer to {len(request['messages'])} messages")


def test_each_point_gets_the_clone_and_the_recorded_expert_reply(server: OpenAIServer, script: Script,
                                                                  tmp_path: Path) -> None:
    script.default = by_state
    result = run_replay(POINTS, {"clone": priced_clone(server, ModelCache(tmp_path)),
                                 "expert": RecordedAgent(TRAJECTORIES)}, concurrency=4, progress=False)
    assert server.request_count == len(POINTS) == 12
    assert [i.key for i in result.items] == [p.key for p in POINTS]
    assert result.agents == {"clone": "openai/stub", "expert": "recorded"}
    for point, item in zip(POINTS, result.items, strict=True):
        assert item.replies["expert"].action == point.expert_action
        assert item.cohorts == point.cohorts
    first = result.reply("t2#0", "clone")
    assert first.action is not None and first.action.tool_calls[0] == ToolCall.parse(
        "get_order", {"order_id": "W2"}, "call_0")
    totals = result.totals()
    assert (totals["clone"].items, totals["clone"].failed, totals["clone"].cached) == (12, 0, 0)
    assert totals["clone"].prompt_tokens == 120 and totals["clone"].cost_usd == pytest.approx(12 * 30 / 1e6)
    assert totals["expert"].cost_usd == 0 and totals["expert"].items == 12
    # crosses the xdist channel unchanged
    again = ReplayResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.items == result.items and again.agents == result.agents


def test_a_warm_cache_sends_zero_requests_and_reproduces_the_figures(server: OpenAIServer, script: Script,
                                                                    tmp_path: Path) -> None:
    script.default = by_state
    agents = {"clone": priced_clone(server, ModelCache(tmp_path)), "expert": RecordedAgent(TRAJECTORIES)}
    cold = run_replay(POINTS, agents, progress=False)
    sent = server.request_count
    warm = run_replay(POINTS, {**agents, "clone": priced_clone(server, ModelCache(tmp_path, "none"))},
                      progress=False)
    assert server.request_count == sent == 12
    for c, w in zip(cold.items, warm.items, strict=True):
        cr, wr = c.replies["clone"], w.replies["clone"]
        assert wr.action == cr.action and wr.stats.cached and not cr.stats.cached
        assert (wr.stats.prompt_tokens, wr.stats.cost_usd) == (cr.stats.prompt_tokens, cr.stats.cost_usd)
        assert wr.stats.latency_s == 0.0
    assert warm.totals()["clone"].cached == 12


def test_cache_mode_none_fails_on_a_miss_naming_the_trajectory_and_the_recording_flag(
    server: OpenAIServer, tmp_path: Path
) -> None:
    agents: dict[str, Agent] = {"clone": make_clone(server, ModelCache(tmp_path, "none")),
                               "expert": RecordedAgent(TRAJECTORIES)}
    with pytest.raises(CacheMiss) as info:
        run_replay(POINTS[:1], agents, progress=False)
    assert str(info.value).startswith(
        "no recorded answer for trajectory 't0' step 0 repeat 0 (model openai/stub) in ")
    assert "rerun with --bclone-cache-mode=new_episodes to record it" in str(info.value)
    assert server.request_count == 0


def test_repeats_send_distinct_requests_per_state_and_replay_from_the_cache(server: OpenAIServer,
                                                                          tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    points = POINTS[:4]
    result = run_replay(points, {"clone": make_clone(server, cache)}, repeats=3, progress=False)
    per_state = Counter(json.dumps(r["messages"], sort_keys=True) for r in server.requests)
    assert sorted(per_state.values()) == [3, 3, 3, 3]
    assert len(list(tmp_path.rglob("*.json"))) == 12  # one entry per (state, repeat)
    assert [(i.key, i.repeat) for i in result.items] == [(p.key, r) for p in points for r in range(3)]
    rerun = run_replay(points, {"clone": make_clone(server, cache)}, repeats=3, progress=False)
    assert server.request_count == 12
    assert all(i.replies["clone"].stats.cached for i in rerun.items)


def test_failed_calls_are_counted_and_listed_never_raised(server: OpenAIServer, script: Script) -> None:
    def fail_on_t1(request: dict) -> Reply:  # type: ignore[type-arg]
        return Reply(status=400) if "W1" in last_user_text(request) else reply("ok")

    script.default = fail_on_t1
    result = run_replay(TRAJECTORIES[1].decision_points() + TRAJECTORIES[2].decision_points(),
                        {"clone": make_clone(server), "expert": RecordedAgent(TRAJECTORIES)}, progress=False)
    totals = result.totals()["clone"]
    assert (totals.items, totals.failed) == (6, 3) and totals.error_rate == 0.5
    errors = result.errors()
    assert [(k, r, role) for k, r, role, _ in errors] == [("t1#0", 0, "clone"), ("t1#1", 0, "clone"),
                                                          ("t1#2", 0, "clone")]
    assert "HTTP 400" in errors[0][3]
    assert result.reply("t1#0", "clone").action is None


def test_concurrency_bounds_calls_in_flight() -> None:
    in_flight = peak = 0

    async def slow(state: State) -> Action:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return Action(text="x")

    result = run_replay(POINTS, {"clone": PythonAgent(slow)}, concurrency=3, repeats=2, progress=False)
    assert peak == 3 and len(result.items) == 24


def test_python_agents_sync_async_and_every_return_form() -> None:
    def as_message(state: State) -> dict:  # type: ignore[type-arg]
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "refund", "arguments": '{"order_id": "W0"}'}}]}

    async def as_reply(state: State, repeat: int = 0) -> AgentReply:
        return AgentReply(Action(text=f"sample {repeat}"), CallStats(prompt_tokens=7, latency_s=0.5))

    def raises(state: State) -> Action:
        raise KeyError("boom")

    agents = {"message": PythonAgent(as_message), "reply": PythonAgent(as_reply), "raises": PythonAgent(raises)}
    result = run_replay(POINTS[:1], agents, repeats=2, progress=False)
    item0, item1 = result.items
    assert item0.replies["message"].action == Action((ToolCall.parse("refund", '{"order_id": "W0"}', "a"),))
    assert item1.replies["reply"].action == Action(text="sample 1")
    assert item1.replies["reply"].stats == CallStats(prompt_tokens=7, latency_s=0.5)
    failed = item0.replies["raises"]
    assert failed.failed and failed.stats.error is not None
    assert failed.stats.error.endswith(":test_python_agents_sync_async_and_every_return_form.<locals>.raises: "
                                       "raised KeyError: 'boom'")


def test_a_python_agent_returning_nonsense_is_an_agent_error() -> None:
    with pytest.raises(AgentError, match=r"python:m:bad at trajectory 't0' step 0 returned int 42; expected an "
                                         r"Action, an OpenAI assistant message dict"):
        run_replay(POINTS[:1], {"clone": PythonAgent(lambda s: 42, name="python:m:bad")}, progress=False)


def test_an_agent_that_raises_is_a_failed_reply_naming_it() -> None:
    class Broken:
        name = "broken"

        async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
            raise ValueError("oops")

    result = run_replay(POINTS[:1], {"clone": Broken()}, progress=False)
    error = result.reply("t0#0", "clone").stats.error
    assert error == ("agent 'broken' raised ValueError: oops at trajectory 't0' step 0 (act must return a "
                     "failed AgentReply instead)")


def test_run_replay_works_from_inside_a_running_event_loop() -> None:
    async def inside() -> ReplayResult:
        return run_replay(POINTS[:2], {"expert": RecordedAgent(TRAJECTORIES)}, progress=False)

    assert len(asyncio.run(inside()).items) == 2


def test_progress_line_shows_done_total_rate_and_eta_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Calling:  # an agent that makes calls (reading the recorded expert is not one)
        name = "calling"

        async def act(self, state: Any, *, repeat: int = 0) -> AgentReply:
            return AgentReply(Action(text="ok"), CallStats(cached=state.step == 0))

    tty = Tty()
    run_replay(POINTS, {"clone": Calling(), "expert": RecordedAgent(TRAJECTORIES)},
               progress=Progress(0, stream=tty, delay=0.0, interval=0.0))
    out = tty.getvalue()
    assert "\rbclone replay: 1/12 calls (8%), " in out and "/s, ETA " in out  # the recorded expert's 12 reads: no calls
    assert out.endswith("bclone replay: 12/12 calls (100%), " + out.rsplit("(100%), ", 1)[1])
    assert out.endswith("ETA 0s, 4 cached, 0 failed\x1b[K\n")  # step 0 of each of the 4 trajectories
    quiet = io.StringIO()  # not a terminal: nothing, however long the replay
    bar = Progress(12, stream=quiet, delay=0.0, interval=0.0)
    for _ in range(12):
        bar.advance()
    bar.close()
    assert quiet.getvalue() == "" and not bar.enabled


def test_the_recorded_expert_is_read_directly_and_answers_as_it_acts() -> None:
    """The replay reads the recorded expert without asking it through the pool: every reply, for
    every repeat, is what ``act`` answers (a state the recording lacks too), and the columns give
    the same replies as the records."""
    from pytest_bclone.replay import replay_columns

    class Asked(RecordedAgent):  # a subclass may override act: it is asked, not read
        pass

    recorded = RecordedAgent(TRAJECTORIES[:2])  # points of the other two are not in its recording
    agents = {"clone": PythonAgent(lambda s: Action(text=f"{s.trajectory_id}/{s.step}")), "expert": recorded,
              "asked": Asked(TRAJECTORIES[:2])}
    columns = replay_columns(POINTS, agents, repeats=2, progress=False)
    assert set(columns.replies) == {"clone", "expert", "asked"}
    for i, p in enumerate(POINTS):
        want = asyncio.run(recorded.act(p.state))
        for rep in range(2):
            assert columns.replies["expert"][rep][i] == want
            assert columns.replies["asked"][rep][i] == want
            assert columns.replies["clone"][rep][i].action == Action(text=f"{p.trajectory_id}/{p.step}")
    assert sum(r.failed for r in columns.replies["expert"][0]) == len(POINTS) // 2
    result = columns.to_result()
    assert [(it.key, it.repeat) for it in result.items] == [(p.key, r) for p in POINTS for r in range(2)]
    assert all(result.reply(p.key, role, r) == columns.replies[role][r][i]
               for i, p in enumerate(POINTS) for role in agents for r in range(2))


def test_a_replay_keeps_the_objects_it_found_out_of_full_collections_while_it_runs() -> None:
    class Old:  # a cycle created before the replay, garbage during it
        pass

    old = Old()
    old.self = old  # type: ignore[attr-defined]
    dead = weakref.ref(old)
    seen: list[tuple[int, bool]] = []

    def agent(state: State) -> Action:
        del_old()
        gc.collect()
        seen.append((gc.get_freeze_count(), dead() is not None))
        return Action(text="x")

    def del_old() -> None:
        nonlocal old
        old = None  # type: ignore[assignment]

    # A gate run earlier in this process froze what it keeps (runner.replay_trajectories): start
    # from a heap nobody froze, the case the replay freezes itself.
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    run_replay(POINTS[:2], {"clone": PythonAgent(agent)}, progress=False)
    assert seen and all(count > 0 for count, _ in seen)  # frozen during the replay...
    assert seen[0][1]  # ...so the old cycle was not collected then
    assert gc.get_freeze_count() == 0  # and unfrozen after it
    gc.collect()
    assert dead() is None  # collected as usual once the replay is over


def test_a_process_that_froze_objects_itself_keeps_them_frozen() -> None:
    gc.freeze()
    try:
        run_replay(POINTS[:2], {"clone": PythonAgent(lambda state: Action(text="x"))}, progress=False)
        # Still frozen (the count itself may shrink: frozen objects freed by reference counting).
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
