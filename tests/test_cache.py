"""The content-addressed cache: keys, atomic entries, corrupt entries, record modes, concurrent writers."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone import cache as cache_module
from pytest_bclone.cache import ModelCache, cache_key
from pytest_bclone.config import BcloneConfig
from pytest_bclone.errors import CacheMiss, CacheWarning, ConfigError

REQUEST: dict[str, Any] = {
    "model": "openai/clone",
    "messages": [{"role": "user", "content": "Where is W1?"}],
    "tools": [{"type": "function", "function": {"name": "get_order", "parameters": {"type": "object"}}}],
    "temperature": 0.0,
    "api_key": "sk-secret",
    "api_base": "http://127.0.0.1:1/v1",
}


class Counter:
    """An async call that counts how often it ran and answers with the count (after ``delay`` s)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        calls = self.calls
        if self.delay:
            await asyncio.sleep(self.delay)
        return {"message": {"role": "assistant", "content": f"answer {calls}"}}


def call(cache: ModelCache, counter: Counter, request: Mapping[str, Any] = REQUEST, repeat: int = 0) -> Any:
    return asyncio.run(cache.cached_call(request, counter, repeat=repeat, label="trajectory 't1' step 2"))


def test_key_is_canonical_and_ignores_transport_settings() -> None:
    reordered = dict(reversed(list(REQUEST.items())))
    moved = {**REQUEST, "api_key": "other", "api_base": "http://elsewhere/v1", "timeout": 3}
    assert cache_key(REQUEST) == cache_key(reordered) == cache_key(moved)
    as_tuples = {**REQUEST, "messages": tuple(REQUEST["messages"])}
    assert cache_key(as_tuples) == cache_key(REQUEST)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "openai/expert"},
        {"messages": [{"role": "user", "content": "Where is W2?"}]},
        {"tools": []},
        {"temperature": 0.7},
        {"seed": 1},
    ],
)
def test_key_covers_model_messages_tools_and_sampling(change: dict[str, Any]) -> None:
    assert cache_key({**REQUEST, **change}) != cache_key(REQUEST)


def test_each_repeat_index_has_its_own_key() -> None:
    assert len({cache_key(REQUEST, r) for r in range(3)}) == 3


def test_entries_are_sharded_files_holding_request_and_value_but_no_secret(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    result = call(cache, Counter())
    path = cache.path_for(result.key)
    assert path.parent.name == result.key[:2] and path.name == f"{result.key}.json"
    entry = json.loads(path.read_text())
    assert entry["value"] == {"message": {"role": "assistant", "content": "answer 1"}}
    assert entry["request"]["model"] == "openai/clone" and "api_key" not in entry["request"]
    assert "sk-secret" not in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_new_episodes_replays_hits_and_records_misses(tmp_path: Path) -> None:
    cache, counter = ModelCache(tmp_path), Counter()
    first, second = call(cache, counter), call(cache, counter)
    assert (first.cached, second.cached, counter.calls) == (False, True, 1)
    assert second.value == first.value
    assert call(cache, counter, repeat=1).cached is False  # another sample, another entry
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (1, 2, 2)


def test_mode_all_calls_again_and_rerecords(tmp_path: Path) -> None:
    call(ModelCache(tmp_path), Counter())
    counter = Counter()
    counter.calls = 10
    result = call(ModelCache(tmp_path, "all"), counter)
    assert not result.cached and counter.calls == 11
    assert call(ModelCache(tmp_path, "none"), Counter()).value["message"]["content"] == "answer 11"


def test_mode_off_never_touches_the_directory(tmp_path: Path) -> None:
    counter = Counter()
    cache = ModelCache(tmp_path / "cache", "off")
    call(cache, counter)
    call(cache, counter)
    assert counter.calls == 2 and not (tmp_path / "cache").exists()


def test_mode_none_replays_and_a_miss_names_the_call_and_the_flag_that_records_it(tmp_path: Path) -> None:
    call(ModelCache(tmp_path), Counter())
    counter = Counter()
    assert call(ModelCache(tmp_path, "none"), counter).cached and counter.calls == 0
    with pytest.raises(CacheMiss) as info:
        call(ModelCache(tmp_path, "none"), counter, repeat=1)
    msg = str(info.value)
    assert msg.startswith(f"no recorded answer for trajectory 't1' step 2 in {tmp_path} (key ")
    assert "--bclone-cache-mode=none forbids calling the model; rerun with --bclone-cache-mode=new_episodes " \
           "to record it" in msg
    assert counter.calls == 0


def test_a_failed_call_is_not_recorded(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)

    async def failing() -> Mapping[str, Any]:
        raise RuntimeError("server down")

    with pytest.raises(RuntimeError):
        asyncio.run(cache.cached_call(REQUEST, failing))
    assert not list(tmp_path.rglob("*.json"))
    assert call(cache, Counter()).cached is False


@pytest.mark.parametrize("garbage", [b"{\"key\": \"trunc", b"\xff\xfe\x00", b"[1, 2]", b'{"key": "other", "value": {}}'])
def test_a_corrupt_entry_is_a_miss_with_a_warning_and_is_recorded_again(tmp_path: Path, garbage: bytes) -> None:
    cache = ModelCache(tmp_path)
    key = call(cache, Counter()).key
    cache.path_for(key).write_bytes(garbage)
    counter = Counter()
    with pytest.warns(CacheWarning, match=r"bclone cache entry .* treated as a miss \(it is recorded again\)"):
        result = call(cache, counter)
    assert not result.cached and counter.calls == 1 and cache.stats.corrupt == 1
    assert call(cache, Counter()).cached  # repaired


def test_from_config_resolves_the_directory_against_the_rootdir(tmp_path: Path) -> None:
    cache = ModelCache.from_config(BcloneConfig(rootdir=str(tmp_path), cache_dir="c", cache_mode="none"))
    assert (cache.directory, cache.mode) == (tmp_path / "c", "none")
    absolute = ModelCache.from_config(BcloneConfig(rootdir="/nowhere", cache_dir=str(tmp_path)))
    assert absolute.directory == tmp_path


def test_an_unknown_mode_is_a_config_error_that_lists_the_modes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cache mode 'replay' is not one of none, new_episodes, all, off"):
        ModelCache(tmp_path, "replay")


def _writer(args: tuple[str, int]) -> None:
    directory, worker = args
    cache = ModelCache(directory)
    for i in range(40):
        # half the keys are shared by every worker: same-key races must stay atomic
        shared = i % 2 == 0
        request = {**REQUEST, "messages": [{"role": "user", "content": f"q{i}" if shared else f"w{worker}-q{i}"}]}
        cache.put(cache_key(request), {"message": {"content": "x" * 5000, "worker": worker}}, request=request)


def test_concurrent_writers_in_several_processes_leave_only_whole_entries(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), w) for w in range(4)])
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 20 + 4 * 20
    for f in files:
        assert json.loads(f.read_text())["value"]["message"]["content"] == "x" * 5000
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_cache_directory_removed_mid_run_is_recreated(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache")
    key = call(cache, Counter()).key
    shutil.rmtree(tmp_path / "cache")
    assert call(cache, Counter(), repeat=0).cached is False  # a miss, recorded again
    assert cache.get(key) is not None


def test_keys_of_caches_recorded_before_stay_valid() -> None:
    # The key is part of the on-disk format: entries recorded by an earlier version must still hit.
    assert cache_key(REQUEST) == "1be50c9043ea588122b671f2507718ecdf7f7d794e112af737f0accdd7c802d2"
    assert cache_key(REQUEST, 3) == "4b79a4ab1eca89350687163d44b64c639163839dd4ec0c86239eac93b04035d2"
    unicode = {"model": "m", "messages": [{"role": "user", "content": "é ✓"}]}
    assert cache_key(unicode) == "c9f2c53444aaad54d144c1c7ca71715f674fcad20b57997565c4683c0405ddc2"


def test_the_entry_holds_the_request_the_key_was_computed_from(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    result = call(cache, Counter())
    entry = json.loads(cache.path_for(result.key).read_text())
    assert cache_key(entry["request"]) == result.key == entry["key"]
    assert entry["label"] == "trajectory 't1' step 2" and entry["format"] == 1


LOCKS = [pytest.param(True, id="ofd-lock", marks=pytest.mark.skipif(not cache_module._OFD_SETLK, reason="no OFD locks")),
         pytest.param(False, id="per-key-lock-file")]


def _locks(cache: ModelCache, ofd: bool) -> ModelCache:
    cache._ofd = ofd
    return cache


@pytest.mark.parametrize("ofd", LOCKS)
def test_two_caches_on_one_directory_send_a_request_once(tmp_path: Path, ofd: bool) -> None:
    # Two ModelCache objects share no in-flight futures: the file lock alone keeps both from calling.
    caches = [_locks(ModelCache(tmp_path), ofd) for _ in range(2)]
    counter = Counter(delay=0.05)

    async def main() -> list[Any]:
        return await asyncio.gather(*(c.cached_call(REQUEST, counter) for c in caches for _ in range(3)))

    results = asyncio.run(main())
    assert counter.calls == 1
    assert sorted(r.cached for r in results) == [False] + [True] * 5
    assert {r.value["message"]["content"] for r in results} == {"answer 1"}
    assert not list(tmp_path.rglob("*.lock"))  # no lock file per key is left behind


HOLDER = """
import asyncio, sys
from pytest_bclone.cache import ModelCache
cache = ModelCache(sys.argv[1])
cache._ofd = sys.argv[2] == "ofd"

async def call():
    print("calling", flush=True)
    await asyncio.sleep(0.5)
    return {"message": {"role": "assistant", "content": "from the other process"}}

asyncio.run(cache.cached_call(REQUEST_LITERAL, call))
"""


@pytest.mark.parametrize("ofd", LOCKS)
def test_a_call_in_flight_in_another_process_is_waited_for_not_repeated(tmp_path: Path, ofd: bool) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace("REQUEST_LITERAL", repr(REQUEST)), str(tmp_path),
                               "ofd" if ofd else "file"], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "calling"
        counter = Counter()
        result = call(_locks(ModelCache(tmp_path), ofd), counter)
    finally:
        assert holder.wait(30) == 0
    assert counter.calls == 0 and result.cached
    assert result.value["message"]["content"] == "from the other process"


def _requests(n: int) -> list[dict[str, Any]]:
    return [{**REQUEST, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(n)]


def _record_all(cache: ModelCache, requests: list[dict[str, Any]]) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(*(cache.cached_call(r, Counter()) for r in requests), return_exceptions=True)

    return asyncio.run(main())


def test_one_filesystem_sync_serves_a_batch_and_precedes_every_rename(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    synced: set[str] = set()  # temporary files whose bytes a sync has covered
    syncs: list[int] = []
    renamed: list[str] = []
    real_replace = os.replace

    def syncfs(fd: int) -> int:
        syncs.append(fd)
        synced.update(str(p) for p in tmp_path.rglob(".*.tmp"))
        time.sleep(0.01)  # while it runs, more entries queue up for the next batch
        return 0

    def replace(src: str, dst: str) -> None:
        assert src in synced, f"{src} renamed into place before a sync covered it"
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(cache_module, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(cache_module.os, "replace", replace)
    monkeypatch.setattr(cache_module.os, "fsync", lambda fd: pytest.fail("fsync although syncfs worked"))
    results = _record_all(ModelCache(tmp_path), _requests(40))
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert all(r.cached is False for r in results)
    assert len(renamed) == 40 and len(list(tmp_path.rglob("*.json"))) == 40
    assert len(syncs) < 40 / 2  # the entries shared syncs rather than running one each
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("syncfs", [None, lambda fd: -1], ids=["no-syncfs", "syncfs-fails"])
def test_without_a_working_syncfs_each_entry_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         syncfs: Any) -> None:
    fsynced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(cache_module, "_syncfs", lambda: syncfs)
    monkeypatch.setattr(cache_module.os, "fsync", fsync)
    results = _record_all(ModelCache(tmp_path), _requests(12))
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert all(r.cached is False for r in results)
    assert len(fsynced) == 12 and len(list(tmp_path.rglob("*.json"))) == 12


def test_an_entry_that_cannot_be_written_fails_its_call_only(tmp_path: Path) -> None:
    requests = _requests(6)
    blocked = cache_key(requests[0])
    (tmp_path / blocked[:2]).write_text("a file where the shard directory should be")
    with pytest.warns(CacheWarning, match="cannot be read"):  # the lookup of the blocked entry
        results = _record_all(ModelCache(tmp_path), requests)
    assert isinstance(results[0], OSError)
    written = [r for r in results[1:] if not isinstance(r, BaseException) and r.key[:2] != blocked[:2]]
    assert written and all((tmp_path / r.key[:2] / f"{r.key}.json").exists() for r in written)


def test_calls_cancelled_while_their_entries_wait_to_be_written_still_record_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C cancels the replay's tasks: answers already received must still reach the disk, the
    # one being written and the one queued behind it alike.
    release = threading.Event()

    def syncfs(fd: int) -> int:
        release.wait(10)
        return 0

    monkeypatch.setattr(cache_module, "_syncfs", lambda: syncfs)
    cache = ModelCache(tmp_path)
    first, second = _requests(2)

    async def main() -> None:
        writing = asyncio.create_task(cache.cached_call(first, Counter()))
        while not list(tmp_path.rglob(".*.tmp")):  # the writer holds the first entry, in its sync
            await asyncio.sleep(0.005)
        queued = asyncio.create_task(cache.cached_call(second, Counter()))
        while not cache_module._writer()._queue:  # the second waits in the queue behind it
            await asyncio.sleep(0.005)
        for task in (writing, queued):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    release.set()
    for request in (first, second):
        path = cache.path_for(cache_key(request))
        for _ in range(500):
            if path.exists():
                break
            time.sleep(0.01)
        assert cache.get(cache_key(request)) == {"message": {"role": "assistant", "content": "answer 1"}}


def _record_in_child(directory: str) -> bool:
    counter = Counter()
    return bool(call(ModelCache(directory), counter, repeat=1).cached is False and counter.calls == 1)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_records_after_its_parent_did(tmp_path: Path) -> None:
    call(ModelCache(tmp_path), Counter())  # the parent's writer threads exist and are idle
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_record_in_child, (str(tmp_path),)).get(timeout=20)
    assert len(list(tmp_path.rglob("*.json"))) == 2
