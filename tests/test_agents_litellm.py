"""The litellm agent through real litellm over HTTP to the local stub server, and the agent factory."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_bclone.agents import LitellmAgent, PythonAgent, RecordedAgent, make_agent
from pytest_bclone.cache import ModelCache
from pytest_bclone.config import BcloneConfig
from pytest_bclone.errors import AgentError
from pytest_bclone.records import Action, AgentReply, State
from pytest_bclone.retry import RetryPolicy
from pytest_bclone.testing import OpenAIServer, Reply, reply

from .replay_support import FAST, Script, make_clone, trajectory

pytest_plugins = ["tests.stub_server"]  # the stub server fixtures

STATE = trajectory(1).decision_points()[0].state


def act(agent: LitellmAgent, state: State = STATE, repeat: int = 0) -> AgentReply:
    return asyncio.run(agent.act(state, repeat=repeat))


def test_parallel_tool_calls_are_parsed_and_the_request_carries_state_and_tools(server: OpenAIServer,
                                                                                script: Script) -> None:
    script.queue.append(reply(tool_calls=[("get_order", {"order_id": "W1"}), ("refund", {"order_id": "W2"})]))
    result = act(make_clone(server))
    assert result.action is not None
    assert result.action.tool_names == ("get_order", "refund")
    assert [c.arguments for c in result.action.tool_calls] == [{"order_id": "W1"}, {"order_id": "W2"}]
    request = server.requests[0]
    assert request["model"] == "stub"
    assert request["messages"] == list(STATE.messages)
    assert [t["function"]["name"] for t in request["tools"]] == ["get_order", "refund"]


def test_429_and_5xx_are_retried_until_an_answer(server: OpenAIServer, script: Script) -> None:
    script.queue += [Reply(status=429), Reply(status=500), Reply("<html>bad gateway</html>", status=502),
                     reply("fine")]
    result = act(make_clone(server, retry=RetryPolicy(max_retries=3, backoff_base=0.01)))
    assert server.request_count == 4
    assert result.action == Action(text="fine")
    assert result.stats.retries == 3 and result.stats.error is None


def test_a_call_that_keeps_failing_is_a_failed_reply_after_max_retries(server: OpenAIServer,
                                                                       script: Script) -> None:
    script.default = lambda _req: Reply(status=500)
    result = act(make_clone(server))  # FAST: max_retries=2
    assert server.request_count == 3
    assert result.failed and result.stats.retries == 2
    assert result.stats.error is not None
    assert ("trajectory 't1' step 0 repeat 0 (model openai/stub): failed after 3 attempts "
            "(--bclone-max-retries=2 reached): HTTP 500") in result.stats.error


def test_throttling_is_retried_until_the_time_budget_not_a_count(server: OpenAIServer, script: Script) -> None:
    # Ten 429/503 in a row are more than max_retries=2, yet within the budget: the call succeeds.
    script.queue += [Reply(status=429 if i % 2 else 503) for i in range(10)] + [reply("patience")]
    result = act(make_clone(server, retry=RetryPolicy(max_retries=2, backoff_base=0.005, backoff_max=0.02,
                                                      budget=30.0)))
    assert result.action == Action(text="patience") and result.stats.retries == 10
    assert server.request_count == 11


def test_beyond_the_budget_a_throttled_call_fails_and_says_which_budget(server: OpenAIServer,
                                                                       script: Script) -> None:
    script.default = lambda _req: Reply(status=429)
    start = time.monotonic()
    result = act(make_clone(server, retry=RetryPolicy(max_retries=2, backoff_base=0.05, backoff_max=0.1,
                                                      budget=0.6)))
    assert time.monotonic() - start < 0.6 + 0.5
    assert result.failed and result.stats.error is not None
    assert server.request_count > 3  # more than max_retries allows: throttling is bounded by time
    assert "(retry budget of 0.6 s spent, --bclone-retry-budget): HTTP 429 RateLimitError" in result.stats.error


def test_a_retry_after_beyond_the_budget_fails_at_once_instead_of_sleeping(server: OpenAIServer,
                                                                          script: Script) -> None:
    script.default = lambda _req: Reply(status=429, headers={"Retry-After": "3600"})
    start = time.monotonic()
    result = act(make_clone(server, retry=RetryPolicy(budget=5.0)))
    assert time.monotonic() - start < 3.0 and server.request_count == 1
    assert result.stats.error is not None
    assert "the server asked to wait 3600 s more" in result.stats.error


def test_a_400_is_not_retried(server: OpenAIServer, script: Script) -> None:
    script.queue.append(Reply({"error": {"message": "context too long"}}, status=400))
    result = act(make_clone(server))
    assert server.request_count == 1
    assert result.failed and result.stats.error is not None
    assert "failed after 1 attempt (not retryable): HTTP 400 BadRequestError" in result.stats.error
    assert "context too long" in result.stats.error


def test_a_hanging_response_times_out_and_is_reported_after_retries(server: OpenAIServer, script: Script) -> None:
    script.default = lambda _req: reply("too late", delay=10)
    agent = make_clone(server, retry=RetryPolicy(max_retries=1, timeout=1.0, backoff_base=0.01))
    start = time.monotonic()
    result = act(agent)
    elapsed = time.monotonic() - start
    assert result.failed and result.stats.error is not None
    assert "failed after 2 attempts (--bclone-max-retries=1 reached): timed out after 1 s (--bclone-timeout)" in result.stats.error
    assert server.request_count == 2
    assert elapsed < 4.0, f"two 1 s attempts took {elapsed:.1f} s"


def test_an_unreachable_server_is_retried_then_reported() -> None:
    with OpenAIServer() as srv:
        base = srv.base_url  # the port is free again once the server is closed
    agent = LitellmAgent("openai/stub", params={"api_base": base, "api_key": "k"}, retry=FAST)
    result = act(agent)
    assert result.failed and result.stats.retries == 2
    assert result.stats.error is not None and "failed after 3 attempts" in result.stats.error


def test_malformed_tool_arguments_give_an_unparseable_action_not_a_crash(server: OpenAIServer,
                                                                         script: Script) -> None:
    script.queue.append(reply(tool_calls=[("get_order", '{"order_id": "W1"'), ("refund", "[1, 2]")]))
    result = act(make_clone(server))
    assert result.action is not None and not result.failed
    assert result.action.unparseable
    first, second = result.action.tool_calls
    assert first.arguments is None and first.raw_arguments == '{"order_id": "W1"'
    assert first.error is not None and "not valid JSON" in first.error
    assert second.error == "arguments are JSON list, not an object"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<html>not json</html>", "malformed response body (not a chat completion)"),
        ({"id": "x", "object": "chat.completion"}, "malformed response body (not a chat completion)"),
        ({"id": "x", "object": "chat.completion", "choices": []}, "the response has no choices"),
    ],
)
def test_a_garbage_body_is_a_failed_reply_with_a_clear_error_and_is_not_retried(
    server: OpenAIServer, script: Script, body: object, expected: str
) -> None:
    script.default = lambda _req: Reply(body)  # type: ignore[arg-type]
    result = act(make_clone(server))
    assert result.failed and result.stats.error is not None
    assert expected in result.stats.error
    assert server.request_count == 1


def test_tokens_and_cost_with_a_price_override(server: OpenAIServer, script: Script) -> None:
    script.default = lambda _req: reply("x", prompt_tokens=1000, completion_tokens=500)
    priced = act(make_clone(server, prices={"openai/stub": (2.0, 8.0)}))
    assert (priced.stats.prompt_tokens, priced.stats.completion_tokens) == (1000, 500)
    assert priced.stats.cost_usd == pytest.approx(1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6)
    assert priced.stats.price_known
    unpriced = act(make_clone(server))  # the stub model is not in litellm's price map: no crash
    assert unpriced.stats.cost_usd == 0.0 and not unpriced.stats.price_known
    assert unpriced.stats.prompt_tokens == 1000


def test_a_mapped_model_is_priced_by_litellm(server: OpenAIServer, script: Script) -> None:
    script.default = lambda _req: reply("x", prompt_tokens=1000, completion_tokens=1000, model="gpt-4o-mini")
    result = act(make_clone(server, model="openai/gpt-4o-mini"))
    assert result.stats.price_known and result.stats.cost_usd > 0


def test_params_reach_the_server_and_the_api_key_never_reaches_the_cache(server: OpenAIServer,
                                                                         tmp_path: Path) -> None:
    act(make_clone(server, ModelCache(tmp_path), temperature=0.25, max_tokens=64))
    request = server.requests[0]
    assert (request["temperature"], request["max_tokens"]) == (0.25, 64)
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "sk-test-secret" not in text and server.base_url not in text
    assert json.loads(text)["request"]["temperature"] == 0.25


def test_litellm_environment_variables_work_without_params(server: OpenAIServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    result = act(LitellmAgent("openai/stub", retry=FAST))
    assert result.action == Action(text="ok")
    assert server.request_count == 1


# --------------------------------------------------------------------------- factory


def config(tmp_path: Path, **kw: object) -> BcloneConfig:
    return BcloneConfig(rootdir=str(tmp_path), **kw)  # type: ignore[arg-type]


def test_factory_builds_a_litellm_agent_with_role_params_cache_and_retry_from_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, clone_params={"api_base": "http://127.0.0.1:9/v1", "temperature": 0.0},
                 expert_params={"temperature": 1.0}, cache_mode="all", cache_dir="cache", timeout=7.0,
                 max_retries=1, price={"openai/clone": (1.0, 2.0)})
    clone = make_agent("clone", "openai/clone", cfg, [])
    assert isinstance(clone, LitellmAgent)
    assert clone.name == "openai/clone" and clone.params["temperature"] == 0.0
    assert clone.cache is not None and clone.cache.directory == tmp_path / "cache" and clone.cache.mode == "all"
    assert (clone.retry.timeout, clone.retry.max_retries) == (7.0, 1)
    assert clone.prices == {"openai/clone": (1.0, 2.0)}
    expert = make_agent("expert", "openai/expert", cfg, [])
    assert isinstance(expert, LitellmAgent) and expert.params == {"temperature": 1.0}


def test_factory_recorded_and_direct_callables(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert isinstance(make_agent("expert", "recorded", cfg, [trajectory(1)]), RecordedAgent)

    def clone(state: State) -> Action:
        return Action(text="hi")

    agent = make_agent("clone", clone, cfg, [])
    assert isinstance(agent, PythonAgent)
    assert agent.name.endswith(":test_factory_recorded_and_direct_callables.<locals>.clone")


def test_factory_python_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_agents.py").write_text(textwrap.dedent("""
        class Rules:
            @staticmethod
            def clone(state):
                return {"role": "assistant", "content": "rule " + state.trajectory_id}

        class Router:
            name = "router-v2"

            async def act(self, state, *, repeat=0):
                raise NotImplementedError

        router = Router()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    agent = make_agent("clone", "python:my_agents:Rules.clone", config(tmp_path), [])
    assert agent.name == "python:my_agents:Rules.clone"
    assert asyncio.run(agent.act(STATE)).action == Action(text="rule t1")
    router = make_agent("clone", "python:my_agents:router", config(tmp_path), [])  # an agent object: used as is
    assert router.name == "router-v2" and type(router).__name__ == "Router"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:no_such_module_xyz:fn",
         ("--bclone-clone='python:no_such_module_xyz:fn': cannot import module 'no_such_module_xyz' "
          "(ModuleNotFoundError: No module named 'no_such_module_xyz'); make it importable")),
        ("python:json:no_such_fn",
         "--bclone-clone='python:json:no_such_fn': module 'json' has no attribute 'no_such_fn'"),
        ("python:json", "--bclone-clone='python:json' is not a Python agent spec: expected python:MODULE:CALLABLE"),
        ("python:json:__name__", "'__name__' is a str, not a callable"),
    ],
)
def test_factory_bad_python_specs_say_what_and_how_to_fix(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(AgentError) as info:
        make_agent("clone", spec, config(tmp_path), [])
    assert message in str(info.value)


def test_factory_unknown_spec_names_the_spec_the_option_and_the_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(AgentError) as info:
        make_agent("expert", "my-clone-v3", config(tmp_path), [], hook=lambda role, spec: None)
    msg = str(info.value)
    assert msg.startswith("--bclone-expert='my-clone-v3' is not an agent spec (the pytest_bclone_make_agent hook "
                          "returned None): expected recorded (the dataset's expert actions, no calls), "
                          "python:MODULE:CALLABLE, a litellm model string such as openai/gpt-4o-mini")
    assert "litellm cannot route it (BadRequestError: LLM Provider NOT provided" in msg


def test_factory_missing_clone_and_bad_role(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"^no clone agent: pass --bclone-clone=SPEC, where SPEC is recorded"):
        make_agent("clone", None, config(tmp_path), [])
    with pytest.raises(AgentError, match=r"agent role 'judge' is not one of clone, expert"):
        make_agent("judge", "recorded", config(tmp_path), [])


def test_factory_asks_the_hook_first_and_checks_what_it_returns(tmp_path: Path) -> None:
    mine = PythonAgent(lambda state: Action(text="hook"), name="mine")
    seen: list[tuple[str, str]] = []

    def hook(role: str, spec: str) -> PythonAgent | None:
        seen.append((role, spec))
        return mine if spec == "router" else None

    assert make_agent("clone", "router", config(tmp_path), [], hook=hook) is mine
    assert isinstance(make_agent("expert", "recorded", config(tmp_path), [], hook=hook), RecordedAgent)
    assert seen == [("clone", "router"), ("expert", "recorded")]
    with pytest.raises(AgentError, match=r"pytest_bclone_make_agent returned str for --bclone-clone='x'; expected an "
                                         r"object with a `name` and `async def act"):
        make_agent("clone", "x", config(tmp_path), [], hook=lambda role, spec: "nonsense")  # type: ignore[arg-type,return-value]


def test_importing_agents_replay_and_cache_imports_neither_litellm_nor_pyarrow() -> None:
    code = ("import pytest_bclone.replay, pytest_bclone.agents, pytest_bclone.cache, sys; "
            "assert 'litellm' not in sys.modules, 'litellm'; assert 'pyarrow' not in sys.modules, 'pyarrow'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=3.0, jitter=0.5)
    rng = random.Random(1)
    for retry, full in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [policy.delay(retry, rng) for _ in range(200)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full * 0.3  # jittered, not constant


def test_retries_wait_between_attempts(server: OpenAIServer, script: Script) -> None:
    script.queue += [Reply(status=429), Reply(status=429)]
    start = time.monotonic()
    result = act(make_clone(server, retry=RetryPolicy(max_retries=2, backoff_base=0.2, jitter=0.0)))
    assert not result.failed and server.request_count == 3
    assert time.monotonic() - start >= 0.2 + 0.4


def test_a_429_with_retry_after_is_retried_no_sooner_than_the_server_asked(server: OpenAIServer,
                                                                           script: Script) -> None:
    script.queue += [Reply(status=429, headers={"Retry-After": "1"})]
    start = time.monotonic()
    result = act(make_clone(server, retry=RetryPolicy(max_retries=2, backoff_base=0.01, jitter=0.0)))
    elapsed = time.monotonic() - start
    assert not result.failed and server.request_count == 2
    assert elapsed >= 1.0  # our own backoff alone would have waited 0.01 s


def test_retry_after_forms_and_a_cap_on_bogus_values() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from pytest_bclone.retry import retry_after

    class Err(Exception):
        def __init__(self, headers: dict[str, str]) -> None:
            self.litellm_response_headers = headers

    assert retry_after(Err({"retry-after": "3"})) == 3.0
    assert retry_after(Err({"retry-after-ms": "250"})) == 0.25
    in_5s = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    assert 3.0 < (retry_after(Err({"retry-after": in_5s})) or 0) <= 5.0
    assert retry_after(Err({"retry-after": "soon"})) is None
    assert retry_after(Exception()) is None


# --------------------------------------------------------------------------- refused: stop, never retry


@pytest.mark.parametrize(
    ("answer", "said", "fix"),
    [
        (Reply({"error": {"message": "Incorrect API key provided: sk-wron*********1234"}}, status=401),
         "HTTP 401 AuthenticationError", "set a valid key in $OPENAI_API_KEY or as api_key in bclone_clone_params"),
        (Reply({"error": {"message": "not allowed"}}, status=403),
         "HTTP 403", "the key is not allowed to use openai/stub"),
        (Reply({"error": {"message": "The model `stub` does not exist"}}, status=404),
         "HTTP 404 NotFoundError", "the model or endpoint does not exist: check --bclone-clone=openai/stub"),
        # A proxy that reports a missing key as a server error: the body says what it is.
        (Reply({"error": {"message": "No API key provided in the request"}}, status=500),
         "HTTP 500", "set a valid key in $OPENAI_API_KEY"),
    ],
)
def test_authentication_and_not_found_stop_at_once_naming_the_agent_and_the_fix(
    server: OpenAIServer, script: Script, answer: Reply, said: str, fix: str
) -> None:
    from pytest_bclone.errors import ModelAccessError

    script.default = lambda _req: answer
    agent = LitellmAgent("openai/stub", params={"api_base": server.base_url, "api_key": "sk-test-secret"},
                         retry=RetryPolicy(max_retries=5, backoff_base=0.01), role="clone")
    with pytest.raises(ModelAccessError) as info:
        act(agent)
    message = str(info.value)
    assert server.request_count == 1  # never retried
    assert message.startswith(f"the clone openai/stub at {server.base_url} cannot be used: {said}")
    assert fix in message and "not retried" in message
    assert "sk-wron" not in message and "sk-test-secret" not in message
    with pytest.raises(ModelAccessError):  # every later call stops the same way, without asking again
        act(agent, trajectory(2).decision_points()[0].state)
    assert server.request_count == 1


def test_a_missing_api_key_stops_before_any_request(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_bclone.errors import ModelAccessError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    agent = LitellmAgent("openai/stub", params={"api_base": server.base_url}, retry=FAST, role="expert")
    with pytest.raises(ModelAccessError, match=r"^the expert openai/stub at .* cannot be used: .*\$OPENAI_API_KEY "
                                               r"or as api_key in bclone_expert_params"):
        act(agent)
    assert server.request_count == 0
