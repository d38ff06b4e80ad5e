"""Each distinct request is sent once: across tasks, xdist workers and concurrent runs sharing a cache.

Counted at the server: the stub server logs every request it receives.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cache import ModelCache
from pytest_bclone.testing import OpenAIServer, Reply

from .runtime_support import TESTS, expert_like, make_project, request_id, verdict_table

REQUEST: dict[str, Any] = {"model": "openai/clone", "messages": [{"role": "user", "content": "Where is W1?"}]}


def test_concurrent_tasks_asking_for_one_key_call_once_and_share_the_answer(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    calls = 0

    async def slow_call() -> Mapping[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"message": {"role": "assistant", "content": f"answer {calls}"}}

    async def main() -> list[Any]:
        return await asyncio.gather(*(cache.cached_call(REQUEST, slow_call) for _ in range(8)))

    results = asyncio.run(main())
    assert calls == 1
    assert {r.value["message"]["content"] for r in results} == {"answer 1"}
    assert sorted(r.cached for r in results) == [False] + [True] * 7
    assert (cache.stats.misses, cache.stats.hits, cache.stats.waited) == (1, 7, 7)
    assert not list(tmp_path.rglob("*.lock"))  # the lock file goes once the entry is written


def test_a_failed_call_releases_the_key_and_the_next_waiter_calls(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    attempts = 0

    async def flaky() -> Mapping[str, Any]:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise RuntimeError("server down")
        return {"message": {"content": "second time lucky"}}

    async def main() -> list[Any]:
        return await asyncio.gather(*(cache.cached_call(REQUEST, flaky) for _ in range(3)), return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert isinstance(first, RuntimeError)
    assert second.value["message"]["content"] == third.value["message"]["content"] == "second time lucky"
    assert attempts == 2


def _distinct(server: OpenAIServer) -> collections.Counter[str]:
    with server._lock:
        return collections.Counter(request_id(r) for r in server.requests)


def test_xdist_sends_exactly_the_requests_of_the_serial_run(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    # The two tests of cohort common are in two xdist groups, so --dist loadgroup runs them on two
    # workers: both need the common trajectories.
    tests = {name: f"import pytest\npytestmark = pytest.mark.xdist_group({'one' if name == 'test_common.py' else 'two'!r})\n"
             + textwrap.dedent(source) for name, source in TESTS.items()}
    with OpenAIServer(lambda r: _delayed(r, 0.02)) as server:
        make_project(pytester, server.base_url, tests=tests)
        serial = pytester.runpytest_subprocess("--bclone-cache-dir=cache-serial", "--bclone-report-json=serial.json")
        serial.assert_outcomes(passed=4)
        serial_count = server.request_count
        assert max(_distinct(server).values()) == 1 and serial_count == 2 * (16 + 12 + 3)
        with server._lock:
            server.requests.clear()
        dist = pytester.runpytest_subprocess("-n", "2", "--dist=loadgroup", "-v", "--bclone-cache-dir=cache-dist",
                                             "--bclone-report-json=dist.json")
        dist.assert_outcomes(passed=4)
        repeated = {k: n for k, n in _distinct(server).items() if n > 1}
        assert not repeated, f"{len(repeated)} requests were sent more than once under -n 2"
        assert server.request_count == serial_count
    workers = {line.split("[")[1].split("]")[0] for line in dist.stdout.lines
               if "PASSED" in line and "test_common" in line and "[gw" in line}
    assert workers == {"gw0", "gw1"}  # the common cohort was asked for by both workers
    tables = [verdict_table(json.loads((pytester.path / f).read_text())) for f in ("serial.json", "dist.json")]
    assert tables[0] == tables[1]


def _delayed(request: dict[str, Any], delay: float) -> Reply:
    answer = expert_like(request)
    answer.delay = delay
    return answer


def test_two_runs_sharing_a_cache_directory_send_each_request_once(pytester: pytest.Pytester) -> None:
    # Each answer takes 50 ms, so the two runs are in flight together for most of their replay.
    with OpenAIServer(lambda r: _delayed(r, 0.05)) as server:
        make_project(pytester, server.base_url)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        runs = [subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                                  "--bclone-concurrency=4", f"--bclone-report-json=run{i}.json"],
                                 cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
                for i in range(2)]
        outputs = [r.communicate(timeout=600)[0] for r in runs]
        assert [r.returncode for r in runs] == [0, 0], outputs
        repeated = {k: n for k, n in _distinct(server).items() if n > 1}
        assert not repeated, f"{len(repeated)} requests were sent by both runs"
        assert server.request_count == 2 * (16 + 12 + 3)
    reports = [json.loads((pytester.path / f"run{i}.json").read_text()) for i in range(2)]
    assert verdict_table(reports[0]) == verdict_table(reports[1])
    # Between them the two runs called the model once per request; the rest came from the cache.
    assert sum(r["cache"]["misses"] for r in reports) == 2 * (16 + 12 + 3)
