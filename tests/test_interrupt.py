"""Ctrl-C loses nothing already answered: every answer is in the cache the moment it arrives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from pytest_bclone.agents import LitellmAgent
from pytest_bclone.cache import ModelCache
from pytest_bclone.records import DecisionPoint, Trajectory
from pytest_bclone.replay import run_replay
from pytest_bclone.retry import RetryPolicy
from pytest_bclone.testing import OpenAIServer, Reply, reply

from .replay_support import last_user_text

STATES, ANSWERED, CONCURRENCY = 40, 12, 4

CHILD = textwrap.dedent("""
    import sys
    from pytest_bclone.agents import LitellmAgent
    from pytest_bclone.cache import ModelCache
    from pytest_bclone.records import Trajectory
    from pytest_bclone.replay import run_replay
    from pytest_bclone.retry import RetryPolicy

    base_url, cache_dir, states, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    trajectories = [Trajectory(f"t{i}", ("c",), "eval", [{"role": "user", "content": f"question {i}"},
                                                         {"role": "assistant", "content": "a"}], [])
                    for i in range(states)]
    points = [p for t in trajectories for p in t.decision_points()]
    clone = LitellmAgent("openai/stub", params={"api_base": base_url, "api_key": "k"},
                         cache=ModelCache(cache_dir), retry=RetryPolicy(max_retries=0, timeout=120))
    run_replay(points, {"clone": clone}, concurrency=concurrency, progress=False)
    print("finished")
""")


def points(states: int) -> list[DecisionPoint]:
    """The same states the child builds: one question per trajectory."""
    trajectories = [Trajectory(f"t{i}", ("c",), "eval", [{"role": "user", "content": f"question {i}"},
                                                         {"role": "assistant", "content": "a"}], [])
                    for i in range(states)]
    return [p for t in trajectories for p in t.decision_points()]


class SlowsDown:
    """Answers the first ``fast`` requests at once, then hangs (the run is interrupted mid-replay)."""

    def __init__(self, fast: int) -> None:
        self.fast = fast
        self.answered: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            if len(self.answered) < self.fast:
                self.answered.append(last_user_text(request))
                return reply(f"answer to {last_user_text(request)}")
        return reply("too late", delay=60)


def test_an_interrupted_replay_keeps_every_answer_it_received_and_a_rerun_replays_them(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    responder = SlowsDown(ANSWERED)
    with OpenAIServer(responder) as server:
        proc = subprocess.Popen(
            [sys.executable, str(script), server.base_url, str(cache_dir), str(STATES), str(CONCURRENCY)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # With a pool of CONCURRENCY workers, request number ANSWERED + CONCURRENCY is only sent once
            # ANSWERED calls have fully completed: then the run is mid-replay with every worker waiting.
            deadline = time.monotonic() + 60
            while server.request_count < ANSWERED + CONCURRENCY:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the child replay never got going"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0 and "finished" not in out
        assert "KeyboardInterrupt" in err
        assert "Unclosed" not in err and "Task was destroyed" not in err, err
        assert server.request_count == ANSWERED + CONCURRENCY  # nothing was sent after the interrupt

        # No cache file is corrupt (all parse) and none is left half-written.
        entries = [json.loads(p.read_text()) for p in cache_dir.rglob("*.json")]
        assert len(entries) == ANSWERED
        assert sorted(e["value"]["message"]["content"] for e in entries) == sorted(
            f"answer to {q}" for q in responder.answered)
        assert not list(cache_dir.rglob("*.tmp"))

        # The rerun asks the server only for what it never answered.
        with server._lock:
            server.requests.clear()
        responder.fast = STATES * 2
        answered_before = list(responder.answered)
        clone = LitellmAgent("openai/stub", params={"api_base": server.base_url, "api_key": "k"},
                             cache=ModelCache(cache_dir), retry=RetryPolicy(max_retries=0))
        result = run_replay(points(STATES), {"clone": clone}, concurrency=CONCURRENCY, progress=False)
    asked_again = {last_user_text(r) for r in server.requests}
    assert len(server.requests) == STATES - ANSWERED
    assert asked_again.isdisjoint(answered_before)
    for question in answered_before:  # "question 7" -> point t7#0, replayed from the cache
        replied = result.reply(f"t{question.split()[-1]}#0", "clone")
        assert replied.stats.cached and replied.action is not None
        assert replied.action.text == f"answer to {question}"
    assert result.totals()["clone"].failed == 0
