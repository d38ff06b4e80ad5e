"""Content-addressed record/replay of model calls.

The key of a call is the sha256 of the canonical JSON of its request (model, messages, tools and
sampling parameters, without transport settings such as ``api_key`` or ``api_base``) and the
repeat index, so each of the K samples of a state has its own entry. One file per entry::

    <cache_dir>/<key[:2]>/<key>.json   {"format": 1, "key", "label", "created", "request", "value"}

Entries are written atomically (temporary file in the same directory, fsync, ``os.replace``):
several pytest-xdist workers may write at once, and a run interrupted mid-write leaves the old
entry or none, never half of one. An entry that cannot be read is a miss with a
:class:`~pytest_bclone.errors.CacheWarning`, never a crash.

Modes follow pytest-recording (``--bclone-cache-mode``):

``none``          replay only; a miss raises :class:`~pytest_bclone.errors.CacheMiss`
``new_episodes``  replay hits, record misses (the default)
``all``           always call, and re-record
``off``           always call, record nothing

Each distinct request is sent once, also across pytest-xdist workers and concurrent runs sharing
the directory (single-flight per key): the first caller of a missing key takes a lock (a future
other tasks of the process wait on; across processes, a one-byte open-file-description lock at the
key's offset in ``<cache_dir>/.single-flight``, or where those are unavailable ``flock`` on
``<key[:2]>/.<key>.lock``), calls and records; the others wait and then read its entry. A lock dies
with its process, so a killed run never blocks the next one. In mode ``all`` an entry written after this cache was opened counts as
this run's recording and is not re-recorded a second time.

Any async call can go through :meth:`ModelCache.cached_call` (agents, judge evaluators). Stdlib
only: importing this module imports neither litellm nor pyarrow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import os
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CacheMiss, CacheWarning, ConfigError

if TYPE_CHECKING:
    from .config import BcloneConfig

try:
    import fcntl
except ImportError:  # Windows: single-flight within the process only
    fcntl = None  # type: ignore[assignment]

# Open-file-description locks (Linux): byte-range locks owned by an open file, not a process, so
# they exclude other opens of the file in this process too, as flock does. One lock file for the
# whole cache and one byte per key replace a lock file created and unlinked per call: creating
# files in a shard directory while the writer threads fsync entries into it cost ~0.2 ms of the
# event loop thread's CPU per call. The ``struct flock`` layout below is the 64-bit Linux one.
_OFD_SETLK: int | None = (
    getattr(fcntl, "F_OFD_SETLK", None) if fcntl is not None and sys.platform == "linux" and sys.maxsize > 2**32
    else None
)
LOCK_FILE = ".single-flight"
"""The cache's lock file (never removed: one empty file per cache directory)."""

_SYNCFS: Callable[[int], int] | None = None
_SYNCFS_LOOKED_UP = False


def _syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux; it releases the GIL while it runs), or None where it is missing."""
    global _SYNCFS, _SYNCFS_LOOKED_UP
    if not _SYNCFS_LOOKED_UP:
        _SYNCFS_LOOKED_UP = True
        if sys.platform == "linux":
            import ctypes  # here, not at import: loading the plugin does not pay for it

            try:
                _SYNCFS = ctypes.CDLL(None, use_errno=True).syncfs
            except (OSError, AttributeError):
                pass
    return _SYNCFS


_Job = tuple["ModelCache", str, bytes, asyncio.AbstractEventLoop, "asyncio.Future[None]"]
_BATCH_MAX = 256
"""Most entries one batch stages (their temporary files stay open until the batch's sync)."""


class _Writer:
    """The thread that writes entries, in batches: it takes every entry queued since its last
    batch, creates and writes their temporary files, makes them durable with one ``syncfs`` per
    cache directory (or an fsync per file where ``syncfs`` is missing or fails), renames them into
    place and wakes the waiting event loop(s) once.

    Why one thread and batches: each system call of a writer thread releases the GIL and takes it
    back from the event loop, which runs litellm and is never idle in a large replay. With 3 ms of
    Python per call standing in for litellm, 32 threads each syncing and waking the loop per entry
    cost ~0.5 ms of process CPU per call, this writer ~0.19 ms (most of it creating the files); in
    the replay bench, cold/bare process CPU went from 1.26x to 1.19x (5 alternating rounds). A
    batch pays the sync, the queue hand-off and the wake-up once. Its own pool, not the
    loop's default executor: litellm's work there never queues behind a write. The interpreter
    finishes the pool's work, hence every queued entry, before it exits, also after Ctrl-C."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Job] = []
        self._busy = False  # a drain is submitted or running: it will take what is queued
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bclone-cache-write")

    def submit(self, job: _Job) -> None:
        """Queue ``job``; its future is resolved (on its loop) once the entry is in place."""
        with self._lock:
            self._queue.append(job)
            if self._busy:
                return
            self._busy = True
        try:
            self._pool.submit(self._drain)
        except BaseException:  # the interpreter is shutting down: say so rather than lose the entry
            with self._lock:
                self._busy = False
                self._queue.remove(job)
            raise

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue[:_BATCH_MAX], self._queue[_BATCH_MAX:]
                if not batch:
                    self._busy = False
                    return
            try:
                errors = _write_batch([(cache, key, data) for cache, key, data, _, _ in batch])
            except BaseException as exc:  # noqa: BLE001 (a bug here must fail the calls, not hang them)
                errors = [exc] * len(batch)
            settle: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
            for (_, _, _, loop, done), error in zip(batch, errors, strict=True):
                settle.setdefault(loop, []).append((done, error))
            for loop, outcomes in settle.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, error in outcomes:
        if not done.done():  # a cancelled waiter (Ctrl-C) no longer wants to know
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)


def _write_batch(items: list[tuple[ModelCache, str, bytes]]) -> list[BaseException | None]:
    """Write the entries ``(cache, key, data)`` atomically and durably; per entry, its error or None."""
    errors: list[BaseException | None] = [None] * len(items)
    staged: list[tuple[int, int, str, str]] = []  # (index, fd, temporary path, path)
    try:
        for i, (cache, key, data) in enumerate(items):
            try:
                fd, tmp, path = cache._stage(key, data)
            except Exception as exc:  # noqa: BLE001 (reported to the entry's caller)
                errors[i] = exc
            else:
                staged.append((i, fd, tmp, path))
        # The bytes are on disk before the names point at them: one syncfs per cache directory
        # (its shards are on its filesystem) serves every entry of the batch written there.
        syncfs = _syncfs()
        synced: dict[str, bool] = {}
        for i, fd, _, _ in staged:
            root = items[i][0]._root
            if syncfs is not None and root not in synced:
                synced[root] = syncfs(fd) == 0
            if not synced.get(root):
                try:
                    os.fsync(fd)
                except OSError as exc:
                    errors[i] = exc
    finally:
        for _, fd, _, _ in staged:
            os.close(fd)
    for i, _, tmp, path in staged:
        try:
            if errors[i] is None:
                os.replace(tmp, path)
                continue
        except OSError as exc:
            errors[i] = exc
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return errors


_WRITER: tuple[int, _Writer] | None = None


def _writer() -> _Writer:
    """This process's writer (a forked child must not inherit its parent's queue or thread)."""
    global _WRITER
    pid = os.getpid()
    if _WRITER is None or _WRITER[0] != pid:
        _WRITER = (pid, _Writer())
    return _WRITER[1]


def drain_writes() -> None:
    """Return once every entry queued in this process is in place.

    The interpreter waits for the writer thread when it exits normally; a process that ends with
    ``os._exit`` (the plugin's fast exit of a large gate) must call this first, or an entry queued
    by a call cancelled at Ctrl-C could be lost. The writer is one thread taking its jobs in order,
    so a no-op submitted now runs after every batch queued before it."""
    writer = _WRITER
    if writer is not None and writer[0] == os.getpid():
        writer[1]._pool.submit(_no_op).result()


def _no_op() -> None:
    pass


_POLL_FIRST, _POLL_MAX = 0.002, 0.05
"""Seconds between attempts to take a key's file lock held by another process (doubling)."""

__all__ = ["CACHE_MODES", "TRANSPORT_PARAMS", "CacheResult", "CacheStats", "ModelCache", "cache_key"]

CACHE_MODES = ("none", "new_episodes", "all", "off")
FORMAT = 1
_TMP_COUNTER = itertools.count()

TRANSPORT_PARAMS = frozenset(
    {
        "api_key", "api_base", "base_url", "api_version", "organization", "timeout", "request_timeout",
        "num_retries", "max_retries", "extra_headers", "headers", "metadata", "client",
    }
)
"""Request fields that say *how* to reach a model, not *what* to ask it: left out of the key (so
moving a server does not invalidate a cache) and never written to disk (so no secret is)."""


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, tuples as lists: equal requests give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"cannot put {type(value).__name__} {value!r} in a cache key: use JSON types")


def key_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a request that identifies it: everything but :data:`TRANSPORT_PARAMS`."""
    return {k: v for k, v in request.items() if k not in TRANSPORT_PARAMS}


def cache_key(request: Mapping[str, Any], repeat: int = 0) -> str:
    """sha256 (hex) of the canonical JSON of the request's identifying part and the repeat index."""
    return _key_of(canonical_json(key_request(request)), repeat)


def _key_of(request_json: str, repeat: int) -> str:
    # The canonical JSON of {"format", "repeat", "request"} (keys in sorted order) spelled out, so
    # that the request's text, encoded once, also goes into the entry.
    payload = f'{{"format":{FORMAT},"repeat":{int(repeat)},"request":{request_json}}}'
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheStats:
    """Counters of one :class:`ModelCache` (one process; xdist workers count separately)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupt: int = 0
    waited: int = 0
    """Hits that waited for another task or process to record the entry (single-flight)."""

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "writes": self.writes, "corrupt": self.corrupt,
                "waited": self.waited}


@dataclass(frozen=True)
class CacheResult:
    """The answer of :meth:`ModelCache.cached_call`: the value and whether it came from disk."""

    value: dict[str, Any]
    cached: bool
    key: str


class ModelCache:
    """A directory of recorded model answers, addressed by :func:`cache_key`.

    ``directory`` is created on the first write; with mode ``off`` it is never touched.
    """

    def __init__(self, directory: str | os.PathLike[str], mode: str = "new_episodes") -> None:
        if mode not in CACHE_MODES:
            raise ConfigError(
                f"cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}; "
                "pass --bclone-cache-mode=new_episodes (the default) or another of those"
            )
        self.directory = Path(directory)
        self.mode = mode
        self.stats = CacheStats()
        # Paths are plain strings on the per-call path: a pathlib join costs ~3 us, and a call made ~10.
        self._root = os.fspath(self.directory)
        self._made_dirs: set[str] = set()
        self._opened = time.time()
        # key -> future of the task calling for it: other tasks of this process wait on it, so
        # only one of them takes the cross-process lock and calls.
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._lock_fd: int | None = None  # the open LOCK_FILE (OFD locks), opened on the first miss
        self._ofd = _OFD_SETLK is not None  # False once the filesystem refused an OFD lock

    @classmethod
    def from_config(cls, config: BcloneConfig) -> ModelCache:
        """The cache of ``--bclone-cache-dir`` (relative to the rootdir) in ``--bclone-cache-mode``."""
        directory = Path(config.cache_dir)
        if not directory.is_absolute():
            directory = Path(config.rootdir) / directory
        return cls(directory, config.cache_mode)

    def path_for(self, key: str) -> Path:
        """Where the entry of ``key`` lives (sharded by the first two hex digits)."""
        return Path(self._path(key))

    def _path(self, key: str) -> str:
        return f"{self._root}{os.sep}{key[:2]}{os.sep}{key}.json"

    def get(self, key: str, *, quiet: bool = False) -> dict[str, Any] | None:
        """The recorded value of ``key``, or ``None`` when absent or unreadable (with a warning,
        unless ``quiet``: the second look of a single-flight does not report the same entry twice)."""
        path = self._path(key)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not quiet:
                self._corrupt(path, f"cannot be read ({exc})")
            return None
        try:
            entry = json.loads(data)  # bytes: a bad encoding is a ValueError here too
        except ValueError as exc:
            if not quiet:
                self._corrupt(path, f"is not valid JSON ({exc})")
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("value"), dict):
            if not quiet:
                self._corrupt(path, "is not a cache entry for this key")
            return None
        value: dict[str, Any] = entry["value"]
        return value

    def _corrupt(self, path: str, why: str) -> None:
        self.stats.corrupt += 1
        fix = (
            "it is recorded again" if self.mode != "none"
            else "rerun with --bclone-cache-mode=new_episodes to record it again"
        )
        warnings.warn(f"bclone cache entry {path} {why}; treated as a miss ({fix})", CacheWarning, stacklevel=3)

    def put(self, key: str, value: Mapping[str, Any], *, request: Mapping[str, Any] | None = None,
            label: str = "") -> Path:
        """Write the entry of ``key`` atomically and durably (synchronously); return its path."""
        request_json = None if request is None else canonical_json(key_request(request))
        path = self._write(key, self._encode(key, value, request_json, label))
        self.stats.writes += 1
        return Path(path)

    @staticmethod
    def _encode(key: str, value: Mapping[str, Any], request_json: str | None, label: str) -> bytes:
        """The entry's bytes; ``request_json`` is the canonical JSON the key was hashed from, spliced
        in rather than encoded a second time."""
        head = json.dumps(
            {"format": FORMAT, "key": key, "label": label, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            ensure_ascii=False,
        )
        body = json.dumps(dict(value), ensure_ascii=False, default=_jsonable)
        request = "null" if request_json is None else request_json
        return f'{head[:-1]}, "request": {request}, "value": {body}}}'.encode()

    def _shard(self, key: str) -> str:
        """The shard directory of ``key``, created if need be (once per process: a failed mkdir
        per write costs ~0.5 ms)."""
        directory = f"{self._root}{os.sep}{key[:2]}"
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        return directory

    def _stage(self, key: str, data: bytes) -> tuple[int, str, str]:
        """Create and fill the temporary file of ``key``'s entry; return (its open fd, its path,
        the entry's path). The caller makes it durable, closes it and renames it into place."""
        directory = self._shard(key)
        path = f"{directory}{os.sep}{key}.json"
        # Temporary file in the same directory (os.replace is atomic only within one filesystem),
        # named by process, thread and a counter so concurrent writers never share one. Raw os
        # calls rather than tempfile/open: they hold the GIL for less time.
        tmp = f"{directory}{os.sep}.{key[:16]}.{os.getpid()}.{threading.get_ident()}.{next(_TMP_COUNTER)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the shard directory was removed under us (a cache cleared mid-run)
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, tmp, path

    def _write(self, key: str, data: bytes) -> str:
        """Write the entry of ``key`` now, on this thread (fsync, then rename)."""
        fd, tmp, path = self._stage(key, data)
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    async def cached_call(
        self,
        request: Mapping[str, Any],
        call: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        repeat: int = 0,
        label: str = "",
    ) -> CacheResult:
        """Replay the recorded answer of ``request`` or ``await call()`` and record it, per the mode.

        ``call`` returns a JSON-able mapping (the whole answer a replay must reproduce: message,
        usage, cost...). If it raises, nothing is recorded and the exception propagates, so a failed
        call is retried on the next run. ``label`` (e.g. ``trajectory 't1' step 3 repeat 0 (model
        openai/clone)``) is what a :class:`~pytest_bclone.errors.CacheMiss` names.
        """
        request_json = canonical_json(key_request(request))
        key = _key_of(request_json, repeat)
        if self.mode in ("none", "new_episodes"):
            recorded = self.get(key)
            if recorded is not None:
                self.stats.hits += 1
                return CacheResult(recorded, True, key)
        if self.mode == "none":
            self.stats.misses += 1
            raise CacheMiss(
                f"no recorded answer for {label or 'a model call'} in {self.directory} (key {key[:16]}...) "
                "and --bclone-cache-mode=none forbids calling the model; rerun with "
                "--bclone-cache-mode=new_episodes to record it (if it was recorded before, the prompt, "
                "tools or sampling parameters have changed since)"
            )
        if self.mode == "off":
            self.stats.misses += 1
            return CacheResult(dict(await call()), False, key)
        # Single-flight: tasks of this process asking for a key already in flight wait for its
        # owner (no lock object, no syscall); the owner takes the cross-process lock.
        while (owner := self._inflight.get(key)) is not None:
            await asyncio.shield(owner)  # the owner's outcome, success or failure, is not ours to raise
            recorded = self.get(key, quiet=True) if self.mode == "new_episodes" else self._this_run(key)
            if recorded is not None:
                self.stats.hits += 1
                self.stats.waited += 1
                return CacheResult(recorded, True, key)
        done = self._inflight[key] = asyncio.get_running_loop().create_future()
        release: Callable[[bool], None] | None = None
        written = False
        try:
            release = await self._lock(key)
            # Another process may have recorded it while we waited for (or before we took) the lock.
            recorded = self.get(key, quiet=True) if self.mode == "new_episodes" else self._this_run(key)
            if recorded is not None:
                self.stats.hits += 1
                self.stats.waited += 1
                return CacheResult(recorded, True, key)
            self.stats.misses += 1
            value = dict(await call())
            await self._record(key, value, request_json, label)
            written = True
            return CacheResult(value, False, key)
        finally:
            if release is not None:
                release(written)
            del self._inflight[key]
            done.set_result(None)

    def _this_run(self, key: str) -> dict[str, Any] | None:
        """Mode ``all``: the entry of ``key`` if it was written since this cache was opened (by
        another worker of the same run), else None (an older recording is re-recorded)."""
        try:
            if os.stat(self._path(key)).st_mtime < self._opened:
                return None
        except OSError:
            return None
        return self.get(key, quiet=True)

    async def _lock(self, key: str) -> Callable[[bool], None] | None:
        """Take the cross-process lock of ``key`` (polling: a blocking lock would hold a thread) and
        return what releases it, given whether the entry was written; None where locks are
        unavailable or the directory cannot be written (a read-only cache: the call still works)."""
        if self._ofd:
            lock_fd = self._lock_fd if self._lock_fd is not None else self._open_lock_file()
            if lock_fd is not None:
                offset = int(key[:15], 16)  # 60 bits of the key: a collision only makes two keys wait in turn
                try:
                    await self._poll(lambda: _range_lock(lock_fd, offset, fcntl.F_WRLCK))
                except OSError:  # the filesystem has no OFD locks (EINVAL): per-key lock files instead
                    self._ofd = False
                else:
                    return lambda _written: _range_lock(lock_fd, offset, fcntl.F_UNLCK)
        if fcntl is None:
            return None
        path = self._shard_lock_path(key)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            await self._poll(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
        except BaseException:
            os.close(fd)
            raise

        def release(written: bool) -> None:
            if written:
                # Removed while still held: whoever opened it, or creates it anew, finds the entry
                # once it gets the lock. After a failed call it stays (harmless).
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(fd)  # releases the flock

        return release

    def _shard_lock_path(self, key: str) -> str | None:
        try:
            return f"{self._shard(key)}{os.sep}.{key}.lock"
        except OSError:
            return None

    def _open_lock_file(self) -> int | None:
        try:
            os.makedirs(self._root, exist_ok=True)
            fd = os.open(os.path.join(self._root, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        self._lock_fd = fd
        weakref.finalize(self, os.close, fd)  # closing it releases whatever this cache still held
        return fd

    @staticmethod
    async def _poll(try_lock: Callable[[], object]) -> None:
        """Call ``try_lock`` until it stops raising "held by another" (EAGAIN, EACCES)."""
        delay = _POLL_FIRST
        while True:
            try:
                try_lock()
                return
            except (BlockingIOError, PermissionError):
                await asyncio.sleep(delay)
                delay = min(_POLL_MAX, delay * 2)

    async def _record(self, key: str, value: Mapping[str, Any], request_json: str, label: str) -> None:
        """Write the entry on the writer thread (:class:`_Writer`), in a way that Ctrl-C cannot lose.

        Why a thread: creating and syncing a file costs 0.1-1 ms of mostly kernel time and
        milliseconds of waiting, which would otherwise stall every call in flight (litellm keeps the
        event loop thread busy). Why it loses nothing: the entry is queued before the first
        ``await``, so cancelling this task (Ctrl-C) cannot withdraw it, and the interpreter finishes
        the writer's queued work before it exits. So an answer is on disk by the time the call
        returns, or else by the time the process ends.
        """
        # Encode here: the writer thread then only makes system calls, which release the GIL, so it
        # does not compete with the event loop for it.
        data = self._encode(key, value, request_json, label)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        _writer().submit((self, key, data, loop, done))
        await done
        self.stats.writes += 1  # counted on the loop thread: counters are not thread-safe


def _range_lock(fd: int, offset: int, kind: int) -> None:
    """Take (``F_WRLCK``) or release (``F_UNLCK``) the OFD lock of the byte at ``offset``, without
    waiting: raises BlockingIOError or PermissionError when another open file holds it. The
    ``struct flock`` is the 64-bit Linux layout; ``l_pid`` must be 0 for an OFD lock."""
    assert fcntl is not None and _OFD_SETLK is not None
    fcntl.fcntl(fd, _OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0))
