"""A large gate ends with ``os._exit`` (the plugin's fast exit), which skips the interpreter's wait
for the cache's writer thread: the entry of a call cancelled at Ctrl-C, queued but not yet written,
must still reach the disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pytest_bclone.cache import ModelCache, cache_key

SCRIPT = textwrap.dedent("""
    import asyncio, contextlib, sys, time
    from pytest_bclone import cache as c
    from pytest_bclone.plugin import fast_exit

    cache = c.ModelCache(sys.argv[1])
    write_batch = c._write_batch

    def slow(items):  # a slow disk: the batch is still being written when the process ends
        time.sleep(0.5)
        return write_batch(items)

    c._write_batch = slow

    async def cancelled_call():
        # What ModelCache._record does before its first await; the caller is then cancelled and
        # nobody waits for the write.
        loop = asyncio.get_running_loop()
        c._writer().submit((cache, sys.argv[2], b'{"answer": 1}', loop, loop.create_future()))

    asyncio.run(cancelled_call())

    class Config:
        _cleanup_stack = contextlib.ExitStack()

    fast_exit(Config(), 0)
""")


def test_the_fast_exit_waits_for_queued_cache_writes(tmp_path):
    key = cache_key({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), key], capture_output=True, text=True, check=False,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    path = ModelCache(str(tmp_path)).path_for(key)
    assert path.read_bytes() == b'{"answer": 1}'
