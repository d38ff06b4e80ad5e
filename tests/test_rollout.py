"""Rollout mode: agents drive episodes in the suite's environment, user turns replayed from the recording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_bclone.agents import Agent, PythonAgent, RecordedAgent
from pytest_bclone.cache import ModelCache
from pytest_bclone.records import Action, AgentReply, CallStats, Episode, State, ToolCall, Trajectory
from pytest_bclone.replay import Environment, RolloutResult, run_rollouts
from pytest_bclone.testing import OpenAIServer, Reply, reply

from .replay_support import TOOLS, Script, make_clone, trajectory

pytest_plugins = ["tests.stub_server"]  # the stub server fixtures

TRAJECTORIES = [trajectory(i) for i in range(3)]


class Shop:
    """A tiny environment: orders can be looked up and refunded; the expected end state has no refund."""

    def __init__(self, trajectory: Trajectory) -> None:
        self.tools = TOOLS
        self.trajectory_id = trajectory.id
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refunded: set[str] = set()

    def execute(self, call: ToolCall) -> Any:
        assert call.arguments is not None
        self.calls.append((call.name, dict(call.arguments)))
        order = call.arguments["order_id"]
        if not order.startswith("W"):
            raise KeyError(f"no order {order}")
        if call.name == "refund":
            self.refunded.add(order)
            return "refunded"
        return {"order_id": order, "status": "shipped"}  # not a str: sent to the agent as JSON

    def final_state_ok(self) -> bool:
        return not self.refunded


class Envs:
    """An environment factory that remembers every environment it made."""

    def __init__(self) -> None:
        self.made: list[Shop] = []

    def __call__(self, trajectory: Trajectory) -> Shop:
        self.made.append(Shop(trajectory))
        return self.made[-1]


def follows_the_script(state: State) -> Action:
    """Look the order up, answer, and say goodbye after the user's second turn."""
    last = state.messages[-1]
    if last["role"] == "tool":
        return Action(text=f"It says: {last['content']}")
    if state.step == 0:
        order = last["content"].split()[-1].rstrip("?")
        return Action((ToolCall.parse("get_order", {"order_id": order}, "q1"),))
    return Action(text="Goodbye!")


def test_environment_protocol_is_runtime_checkable() -> None:
    assert isinstance(Shop(TRAJECTORIES[0]), Environment)


def test_the_recorded_expert_episode_is_its_recording_and_its_tools_run_in_the_environment() -> None:
    envs = Envs()
    result = run_rollouts(TRAJECTORIES, {"expert": RecordedAgent(TRAJECTORIES)}, envs, progress=False)
    for t in TRAJECTORIES:
        episode = result.episode("expert", t.id)
        assert episode.actions == tuple(p.expert_action for p in t.decision_points())
        assert episode.messages == tuple(t.messages)
        assert episode.error is None and episode.final_state_ok is True
    assert [env.calls for env in envs.made] == [[("get_order", {"order_id": f"W{i}"})] for i in range(3)]


def test_a_live_agent_drives_the_episode_with_tool_results_and_replayed_user_turns() -> None:
    envs = Envs()
    result = run_rollouts(TRAJECTORIES[:1], {"clone": PythonAgent(follows_the_script)}, envs, progress=False)
    episode = result.episode("clone", "t0")
    recorded = TRAJECTORIES[0].messages
    assert [m["role"] for m in episode.messages] == ["system", "user", "assistant", "tool", "assistant", "user",
                                                     "assistant"]
    assert episode.messages[:2] == tuple(recorded[:2])
    assert episode.messages[3] == {"role": "tool", "tool_call_id": "q1",
                                   "content": '{"order_id": "W0", "status": "shipped"}'}
    assert episode.messages[5] == recorded[5]  # the recorded user turn, replayed
    assert [a.describe() for a in episode.actions] == [
        "get_order(order_id='W0')", "'It says: {\"order_id\": \"W0\", \"status\": \"shipped\"}'", "'Goodbye!'"]
    assert episode.error is None and episode.final_state_ok is True
    assert envs.made[0].calls == [("get_order", {"order_id": "W0"})]


def test_an_agent_that_never_stops_is_cut_at_the_step_cap() -> None:
    def loops(state: State) -> Action:
        return Action((ToolCall.parse("get_order", {"order_id": "W0"}),))

    result = run_rollouts(TRAJECTORIES[:1], {"clone": PythonAgent(loops)}, Envs(), progress=False)
    assert len(result.episode("clone", "t0").actions) == 3 * 3 + 5
    capped = run_rollouts(TRAJECTORIES[:1], {"clone": PythonAgent(loops)}, Envs(), max_steps=4, progress=False)
    assert len(capped.episode("clone", "t0").actions) == 4
    assert capped.episode("clone", "t0").truncated and capped.episode("clone", "t0").error is None
    # An episode that ends on its own is not truncated, and the flag survives the xdist channel.
    assert not episode_that_ends().truncated
    assert type(capped).from_dict(capped.to_dict()).episode("clone", "t0").truncated


def episode_that_ends() -> Episode:
    result = run_rollouts(TRAJECTORIES[:1], {"expert": RecordedAgent(TRAJECTORIES)}, Envs(), progress=False)
    return result.episode("expert", "t0")


def test_a_failed_call_ends_the_episode_with_an_error_that_is_counted() -> None:
    def fails_second(state: State) -> AgentReply:
        if state.step == 1:
            return AgentReply(None, CallStats(error="HTTP 503 after 5 attempts"))
        return AgentReply(follows_the_script(state), CallStats(prompt_tokens=10, cost_usd=0.5))

    result = run_rollouts(TRAJECTORIES[:2], {"clone": PythonAgent(fails_second)}, Envs(), progress=False)
    episode = result.episode("clone", "t1")
    assert episode.error == "HTTP 503 after 5 attempts" and len(episode.actions) == 1
    assert episode.stats.prompt_tokens == 10 and episode.stats.cost_usd == 0.5
    totals = result.totals()["clone"]
    assert (totals.items, totals.failed) == (2, 2)


def test_unparseable_arguments_and_tool_errors_are_shown_to_the_agent_not_raised() -> None:
    def clumsy(state: State) -> Action:
        if state.step == 0:
            return Action((ToolCall.parse("get_order", '{"order_id": ', "a"),
                           ToolCall.parse("refund", {"order_id": "X9"}, "b")))
        return Action(text="sorry")

    envs = Envs()
    episode = run_rollouts(TRAJECTORIES[:1], {"clone": PythonAgent(clumsy)}, envs,
                           progress=False).episode("clone", "t0")
    first, second = episode.messages[3], episode.messages[4]
    assert first["tool_call_id"] == "a" and first["content"].startswith(
        "Error: the arguments of get_order could not be read: arguments are not valid JSON")
    assert second == {"role": "tool", "tool_call_id": "b", "content": "Error: KeyError: 'no order X9'"}
    assert envs.made[0].calls == [("refund", {"order_id": "X9"})]  # the unparseable call never ran
    assert episode.error is None


def test_a_litellm_clone_rollout_with_repeats_replays_from_the_cache(server: OpenAIServer, script: Script,
                                                                      tmp_path: Path) -> None:
    def responder(request: dict[str, Any]) -> Reply:
        last = request["messages"][-1]
        if last["role"] == "tool":
            return reply("It has shipped.")
        if len(request["messages"]) == 2:
            return reply(tool_calls=[("get_order", {"order_id": "W0"}), ("get_order", {"order_id": "W0b"})])
        return reply("Bye.")

    script.default = responder
    envs = Envs()
    agents: dict[str, Agent] = {"clone": make_clone(server, ModelCache(tmp_path)),
                               "expert": RecordedAgent(TRAJECTORIES)}
    cold = run_rollouts(TRAJECTORIES[:1], agents, envs, repeats=2, progress=False)
    assert server.request_count == 2 * 3  # two episodes of three model calls
    assert len(envs.made) == 4  # a fresh environment per episode (2 repeats x 2 roles)
    episode = cold.episode("clone", "t0", repeat=1)
    assert [len(a.tool_calls) for a in episode.actions] == [2, 0, 0]
    assert [m["role"] for m in episode.messages].count("tool") == 2
    assert episode.stats.prompt_tokens == 30 and not episode.stats.cached and episode.repeat == 1
    warm = run_rollouts(TRAJECTORIES[:1], agents, Envs(), repeats=2, progress=False)
    assert server.request_count == 6
    assert warm.episode("clone", "t0", 1).actions == episode.actions
    assert warm.episode("clone", "t0", 1).stats.cached
    assert warm.totals()["clone"].cached == 2


def test_rollout_results_cross_the_xdist_channel_and_merge() -> None:
    agents: dict[str, Agent] = {"clone": PythonAgent(follows_the_script), "expert": RecordedAgent(TRAJECTORIES)}
    part1 = run_rollouts(TRAJECTORIES[:1], agents, Envs(), progress=False)
    part2 = run_rollouts(TRAJECTORIES[1:], agents, Envs(), progress=False)
    merged = RolloutResult.merge(
        RolloutResult.from_dict(json.loads(json.dumps(p.to_dict()))) for p in (part1, part2))
    whole = run_rollouts(TRAJECTORIES, agents, Envs(), progress=False)
    assert merged.episodes.keys() == whole.episodes.keys()
    for role in whole.episodes:
        assert [(e.trajectory_id, e.actions, e.messages) for e in merged.episodes[role]] == \
               [(e.trajectory_id, e.actions, e.messages) for e in whole.episodes[role]]
