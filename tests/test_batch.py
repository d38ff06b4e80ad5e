"""``--bclone-batch``: the cache filled through the provider batch API (litellm over HTTP to the
local server's /v1/files and /v1/batches), then replayed like any recorded run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.agents import LitellmAgent
from pytest_bclone.batch import BatchError, fill_cache_by_batch
from pytest_bclone.cache import ModelCache
from pytest_bclone.records import State
from pytest_bclone.replay import run_replay
from pytest_bclone.testing import BatchScript, OpenAIServer, Reply, reply

from .replay_support import FAST, last_user_text, trajectory

# A batch run prints no warning about litellm's internals (its files API used to leave a
# coroutine unawaited in every download): any such warning fails the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning",
                                        "error::RuntimeWarning")

TRAJECTORIES = [trajectory(i) for i in range(6)]
POINTS = [p for t in TRAJECTORIES for p in t.decision_points()]


def answer(request: dict[str, Any]) -> Reply:
    """Deterministic per state: the tool call for the trajectory's order, or a text."""
    text = last_user_text(request)
    order = text.split("order ")[-1].rstrip("?") if "Where is my order" in text else None
    if order and request["messages"][-1]["role"] == "user":
        return reply(tool_calls=[("get_order", {"order_id": order})])
    return reply(f"answer to {text}")


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(answer) as srv:
        srv.batch_script = BatchScript(polls_in_progress=2)
        yield srv


def clone(server: OpenAIServer, cache_dir: Path, mode: str = "new_episodes") -> LitellmAgent:
    return LitellmAgent("openai/stub", params={"api_base": server.base_url, "api_key": "sk-test"},
                        cache=ModelCache(cache_dir, mode), retry=FAST, name="openai/stub")


def states(repeats: int = 1) -> list[tuple[State, int]]:
    return [(p.state, r) for p in POINTS for r in range(repeats)]


def fill(agent: LitellmAgent, *, max_wait_s: float = 30.0, repeats: int = 1,
         progress: list[str] | None = None) -> Any:
    reports = asyncio.run(fill_cache_by_batch({"clone": agent}, states(repeats), poll_interval_s=0.01,
                                              max_wait_s=max_wait_s,
                                              on_progress=None if progress is None else progress.append))
    assert len(reports) == 1
    return reports[0]


def test_a_batch_filled_cache_is_replayed_with_zero_live_requests(server: OpenAIServer, tmp_path: Path) -> None:
    progress: list[str] = []
    report = fill(clone(server, tmp_path), progress=progress)
    assert (report.requests, report.answered, report.failed, report.status) == (len(POINTS), len(POINTS), 0,
                                                                               "completed")
    assert server.batch_creates == 1 and server.request_count == 0  # no live chat call yet
    assert any("in_progress" in line for line in progress) and "completed" in progress[-1]
    # An ordinary run in replay-only mode: every answer comes from the batch, no live request.
    live = run_replay(POINTS, {"clone": clone(server, tmp_path, "none")}, concurrency=4, progress=False)
    assert server.request_count == 0
    replies = [live.reply(p.key, "clone") for p in POINTS]
    assert all(r.action is not None and r.stats.cached for r in replies)
    # ... and the same answers a live run records.
    fresh = run_replay(POINTS, {"clone": clone(server, tmp_path / "live")}, concurrency=4, progress=False)
    assert [fresh.reply(p.key, "clone").action for p in POINTS] == [r.action for r in replies]
    # A second fill finds everything cached and sends nothing.
    again = fill(clone(server, tmp_path))
    assert (again.requests, again.already_cached, server.batch_creates) == (0, len(POINTS), 1)


def test_repeats_are_separate_batch_lines_under_the_live_cache_keys(server: OpenAIServer, tmp_path: Path) -> None:
    report = fill(clone(server, tmp_path), repeats=3)
    assert report.answered == 3 * len(POINTS)
    live = run_replay(POINTS, {"clone": clone(server, tmp_path, "none")}, concurrency=4, repeats=3, progress=False)
    assert server.request_count == 0
    assert all(live.reply(p.key, "clone", k).stats.cached for p in POINTS for k in range(3))


def test_lines_the_batch_failed_are_left_for_a_live_call(tmp_path: Path) -> None:
    def flaky(request: dict[str, Any]) -> Reply:
        if "t2" in json.dumps(request["messages"]) or "W2" in json.dumps(request["messages"]):
            return Reply({"error": {"message": "overloaded"}}, status=500)
        return answer(request)

    with OpenAIServer(flaky) as server:
        report = fill(clone(server, tmp_path))
        n_t2 = len(TRAJECTORIES[2].decision_points())
        assert (report.failed, report.answered) == (n_t2, len(POINTS) - n_t2)
        assert report.errors and "overloaded" in report.errors[0]
        # The replay calls exactly the failed states live (they fail again here: counted, not scored).
        result = run_replay(POINTS, {"clone": clone(server, tmp_path)}, concurrency=4, progress=False)
        assert server.request_count == n_t2 * (1 + FAST.max_retries)
        failed = [p.key for p in POINTS if result.reply(p.key, "clone").failed]
        assert failed == [p.key for p in TRAJECTORIES[2].decision_points()]


def test_an_expired_batch_keeps_what_it_answered_and_the_rest_goes_live(server: OpenAIServer,
                                                                       tmp_path: Path) -> None:
    server.batch_script = BatchScript(polls_in_progress=0, outcome="expired", expire_after_lines=5)
    report = fill(clone(server, tmp_path))
    assert (report.status, report.answered, report.unanswered) == ("expired", 5, len(POINTS) - 5)
    run_replay(POINTS, {"clone": clone(server, tmp_path)}, concurrency=4, progress=False)
    assert server.request_count == len(POINTS) - 5


def test_a_failed_batch_caches_nothing(server: OpenAIServer, tmp_path: Path) -> None:
    server.batch_script = BatchScript(polls_in_progress=0, outcome="failed")
    report = fill(clone(server, tmp_path))
    assert (report.status, report.answered, report.unanswered) == ("failed", 0, len(POINTS))


def test_an_interrupted_poll_is_resumed_without_resubmitting(server: OpenAIServer, tmp_path: Path) -> None:
    server.batch_script = BatchScript(polls_in_progress=10_000)
    first = fill(clone(server, tmp_path), max_wait_s=0.05)  # gives up polling: the CI job was killed
    assert first.status.startswith("still running") and server.batch_creates == 1
    assert list((tmp_path / "batches").glob("*.json")), "the batch id must be kept for the next run"
    server.batch_script.polls_in_progress = 0
    second = fill(clone(server, tmp_path))
    assert second.resumed and second.batch_ids == first.batch_ids
    assert server.batch_creates == 1  # resumed, not paid for twice
    assert second.answered == len(POINTS)
    assert not list((tmp_path / "batches").glob("*.json"))


def test_batch_answers_are_marked_and_priced_as_batch_calls(server: OpenAIServer, tmp_path: Path) -> None:
    agent = LitellmAgent("openai/gpt-4o-mini", params={"api_base": server.base_url, "api_key": "sk-test"},
                         cache=ModelCache(tmp_path, "new_episodes"), retry=FAST)
    fill(agent)
    entry = next(iter(tmp_path.glob("??/*.json")))
    value = json.loads(entry.read_text())["value"]
    assert value["batch"] is True
    # litellm's batch price of gpt-4o-mini: half its live price for these tokens (10 in, 5 out).
    assert value["litellm_cost_usd"] == pytest.approx(10 * 0.075e-6 + 5 * 0.3e-6)


def test_a_provider_without_a_batch_api_is_one_clear_error(tmp_path: Path) -> None:
    agent = LitellmAgent("ollama/llama3", params={"api_base": "http://127.0.0.1:9"},
                         cache=ModelCache(tmp_path, "new_episodes"), retry=FAST)
    with pytest.raises(BatchError, match=r"provider 'ollama' has no OpenAI-style batch API"):
        asyncio.run(fill_cache_by_batch({"clone": agent}, states()))


PLUGIN_TEST = '''
from pytest_bclone import assert_parity

def test_gate():
    assert_parity("common_intents", within=50, metric="action_match", on_fail="warn", allow_inconclusive=True)
'''


def test_the_gate_with_bclone_batch_fills_the_cache_then_replays_it(pytester: pytest.Pytester,
                                                                    server: OpenAIServer) -> None:
    from pytest_bclone.dataset.store import DatasetStore

    from .conftest import make_row

    DatasetStore(str(pytester.path / "bclone_datasets")).write_version(
        "support", "v1", [make_row(i, split="eval") for i in range(8)])
    pytester.makepyfile(test_gate=PLUGIN_TEST)
    params = json.dumps({"api_base": server.base_url, "api_key": "sk-batch-test"})
    pytester.makeini(f"[pytest]\nbclone_dataset = support@v1\nbclone_clone = openai/stub\n"
                     f"bclone_clone_params = {params}\n")
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bclone-batch", "--bclone-batch-poll=0.01",
                                          "--bclone-report-json=report.json")
    assert first.ret in (0, 1) and "BCLONE GATE" in first.stdout.str(), first.stdout.str()
    assert server.batch_creates == 1 and server.request_count == 0  # every answer came from the batch
    batch = json.loads((pytester.path / "report.json").read_text())["batch"]
    assert batch[0]["requests"] == 16 and batch[0]["answered"] == 16  # 8 trajectories x 2 decision points
    first.stdout.fnmatch_lines(["*batch API (openai/stub): 16 requests sent, 16 answered at batch price*"])
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bclone-cache-mode=none")
    assert again.ret == first.ret, again.stdout.str()
    assert server.request_count == 0 and server.batch_creates == 1
