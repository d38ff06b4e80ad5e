"""Replay throughput: the bclone engine against a bare litellm loop, and a warm cache against a cold one.

2,000 states (synthetic trajectories built in memory) against the local stub server answering
after 50 ms, at concurrency 64, all in one run so both sides see the same machine and server:

* ``bare``:  ``litellm.acompletion`` under an ``asyncio.Semaphore(64)``: no cache, no retries wrapper.
* ``cold``:  ``run_replay`` with an empty cache (every call goes out and is recorded, fsync'd).
* ``warm``:  ``run_replay`` again on that cache (no call goes out).
* ``off``:   ``run_replay`` with ``--bclone-cache-mode=off`` (what the engine costs without recording).
* ``cold``, no gc.freeze: ``cold`` with the engine's freeze of the heap it found turned off (its
  share: a full collection walks litellm's modules, ~0.2 s each; the bare loop pays them too).

A full collection runs before each measured run, so none inherits the garbage of the one before.

Each line reports the CPU per call of the event-loop thread (``thread_time``: litellm and bclone
both run there) and of the whole process (``process_time``: also litellm's logging threads and
the cache's writer threads), steadier than wall time when other processes share the machine; the
summary gives both for ``bare`` and ``cold`` and their ratio, as medians of per-round ratios.

A second block measures the litellm settings a caller can choose (:data:`SETTINGS`: callbacks off,
message logging off, ``drop_params``, ``no-log``, token counter off, the httpx transport, a reused
``client=``), each alone against the bare loop, alternating: the share of litellm's per-call CPU
that how we call it can avoid.

Goals: cold/bare <= 1.10, cold/warm >= 20. Run: ``.venv/bin/python bench/replay_throughput.py``
(``--states``, ``--concurrency``, ``--latency``, ``--rounds``, ``--settings-states`` to vary). The
stub server (a ThreadingHTTPServer) runs in its own process, as a model server would: in-process,
its threads would compete with the client for the GIL. When it or litellm's per-call overhead is
the bottleneck, it is so for both ``bare`` and ``cold``: they alternate in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_bclone.agents import LitellmAgent
from pytest_bclone.agents.litellm_agent import import_litellm
from pytest_bclone.cache import ModelCache
from pytest_bclone.records import DecisionPoint, Trajectory
from pytest_bclone.replay import run_replay
from pytest_bclone.retry import RetryPolicy

TOOLS = [{"type": "function", "function": {"name": "get_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


SERVER = """
import sys
from pytest_bclone.testing import OpenAIServer, reply
answer = reply(tool_calls=[("get_order", {"order_id": "W1"})], delay=float(sys.argv[1]))
with OpenAIServer(lambda _req: answer) as server:
    print(server.base_url, flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    print(server.request_count, flush=True)
"""


def build_points(states: int) -> list[DecisionPoint]:
    """``states`` decision points: trajectories of two assistant turns each, in memory."""
    points: list[DecisionPoint] = []
    for i in range((states + 1) // 2):
        order = f"W{i:05d}"
        t = Trajectory(f"t{i}", ("common_intents",), "eval", [
            {"role": "system", "content": "You are a retail support agent."},
            {"role": "user", "content": f"Where is order {order}?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "get_order", "arguments": f'{{"order_id": "{order}"}}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
            {"role": "assistant", "content": f"{order} has shipped."},
        ], TOOLS)
        points.extend(t.decision_points())
    return points[:states]


SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # label: (litellm module settings, extra per-call arguments)
    "callbacks off": ({name: [] for name in ("callbacks", "success_callback", "failure_callback",
                                             "_async_success_callback", "_async_failure_callback",
                                             "service_callback")}, {}),
    "message logging off": ({"turn_off_message_logging": True}, {}),
    "drop_params": ({"drop_params": True}, {}),
    "no-log per call": ({}, {"no-log": True}),
    "token counter off": ({"disable_token_counter": True}, {}),
    "httpx transport": ({"disable_aiohttp_transport": True}, {}),
    "reused client=": ({}, {"client": True}),
}
"""What a caller of litellm can choose per call or per process, each measured alone against the
bare loop (a reused ``openai.AsyncOpenAI`` is passed as ``client=``; litellm otherwise looks its
cached client up on every call)."""


def bare(points: list[DecisionPoint], base_url: str, concurrency: int, setting: str | None = None) -> float:
    """The baseline: litellm.acompletion under a semaphore, nothing else (``setting``: with one of
    :data:`SETTINGS`, restored afterwards)."""
    litellm = import_litellm()
    module, per_call = SETTINGS[setting] if setting else ({}, {})
    saved = {name: getattr(litellm, name) for name in module}
    for name, value in module.items():
        setattr(litellm, name, value)

    async def main() -> list[Any]:
        sem = asyncio.Semaphore(concurrency)
        extra = dict(per_call)
        if extra.get("client"):
            import openai

            extra["client"] = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=60)

        async def one(p: DecisionPoint) -> Any:
            async with sem:
                state = p.state
                return await litellm.acompletion(
                    model="openai/stub", messages=list(state.messages), tools=list(state.tools),
                    api_base=base_url, api_key="k", timeout=60, num_retries=0, max_retries=0, **extra)

        try:
            return await asyncio.gather(*(one(p) for p in points))
        finally:
            if "client" in extra:
                await extra["client"].close()
            await litellm.close_litellm_async_clients()
            # Closed clients stay in litellm's client cache; an httpx one would be reused closed.
            litellm.in_memory_llm_clients_cache.flush_cache()

    start = time.perf_counter()
    try:
        asyncio.run(main())
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
    return time.perf_counter() - start


def ours(points: list[DecisionPoint], base_url: str, concurrency: int, cache_dir: str,
         mode: str = "new_episodes", freeze: bool = True) -> tuple[float, int, int]:
    """run_replay with the litellm agent and the cache; returns (wall, failed, cached).
    ``freeze=False``: without the engine's :func:`gc.freeze` of the heap it found (to show its share)."""
    agent = LitellmAgent("openai/stub", params={"api_base": base_url, "api_key": "k"},
                         cache=ModelCache(cache_dir, mode), retry=RetryPolicy(timeout=60))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not freeze:
            stack.enter_context(_unfrozen())
        result = run_replay(points, {"clone": agent}, concurrency=concurrency, progress=False)
    wall = time.perf_counter() - start
    totals = result.totals()["clone"]
    return wall, totals.failed, totals.cached



@contextlib.contextmanager
def _unfrozen() -> Any:
    """The engine with its heap freeze turned off (a measurement device, not an option)."""
    from pytest_bclone import replay

    saved = replay._frozen_heap
    replay._frozen_heap = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        replay._frozen_heap = saved


class Meter:
    """Wall, event-loop thread CPU and process CPU of repeated runs, per named line."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.loop: dict[str, list[float]] = {}
        self.proc: dict[str, list[float]] = {}

    def run(self, name: str, fn: Callable[[], object]) -> Any:
        gc.collect()  # no run inherits the garbage (or the collector's counts) of the one before it
        loop, proc, start = time.thread_time(), time.process_time(), time.perf_counter()
        out = fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - start)
        self.loop.setdefault(name, []).append(time.thread_time() - loop)
        self.proc.setdefault(name, []).append(time.process_time() - proc)
        return out

    def med(self, series: dict[str, list[float]], name: str) -> float:
        return statistics.median(series[name])

    def paired(self, series: dict[str, list[float]], name: str, base: str) -> float:
        """Median over rounds of this round's ``name`` / this round's ``base``."""
        return statistics.median(a / b for a, b in zip(series[name], series[base], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="server delay per answer, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--settings-states", type=int, default=600,
                        help="states per run of the litellm settings block (0: skip it)")
    args = parser.parse_args()

    points = build_points(args.states)
    root = str(Path(__file__).resolve().parents[1])
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=root)
    assert server.stdin is not None and server.stdout is not None
    base_url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory(prefix="bclone-bench-") as tmp:
            # Warm up both sides once (litellm import, first-call initialisation) so neither pays it.
            bare(points[:8], base_url, args.concurrency)
            ours(points[:8], base_url, args.concurrency, str(Path(tmp) / "warmup"))
            meter = Meter()
            for r in range(args.rounds):
                cache_dir = str(Path(tmp) / f"round{r}")
                meter.run("bare", partial(bare, points, base_url, args.concurrency))
                _, failed, cached = meter.run("cold", partial(ours, points, base_url, args.concurrency, cache_dir))
                assert failed == 0 and cached == 0, (failed, cached)
                _, failed, cached = meter.run("cold unfrozen", partial(
                    ours, points, base_url, args.concurrency, cache_dir + "-unfrozen", freeze=False))
                assert failed == 0 and cached == 0, (failed, cached)
                _, failed, cached = meter.run("warm", partial(ours, points, base_url, args.concurrency, cache_dir))
                assert failed == 0 and cached == len(points), (failed, cached)
                _, failed, cached = meter.run("off", partial(ours, points, base_url, args.concurrency, cache_dir, "off"))
                assert failed == 0 and cached == 0, (failed, cached)
            report_main(meter, len(points), args)
        few = points[: args.settings_states]
        if few:
            meter = Meter()
            for _ in range(args.rounds):
                meter.run("bare", partial(bare, few, base_url, args.concurrency))
                for setting in SETTINGS:
                    meter.run(setting, partial(bare, few, base_url, args.concurrency, setting))
            report_settings(meter, len(few))
    finally:
        server.stdin.close()
        print(f"{server.stdout.readline().strip()} requests served in all")
        server.wait(10)


def report_main(meter: Meter, n: int, args: argparse.Namespace) -> None:
    ideal = n / args.concurrency * args.latency
    print(f"{n} states, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, "
          f"{args.rounds} rounds (median); ideal wall {ideal:.2f} s")
    print("CPU per call: of the event loop thread (litellm and bclone run there) and of the whole process "
          "(also litellm's logging threads and the cache's writer threads); the server is another process.")
    print(f"{'run':<28}{'wall s':>9}{'states/s':>10}{'loop ms/call':>14}{'proc ms/call':>14}   wall of each round")
    for name, label in (("bare", "bare litellm + semaphore"), ("cold", "run_replay, cold cache"),
                        ("cold unfrozen", "  the same, no gc.freeze"),
                        ("warm", "run_replay, warm cache"), ("off", "run_replay, cache off")):
        wall = meter.med(meter.wall, name)
        rounds = ", ".join(f"{w:.2f}" for w in meter.wall[name])
        print(f"{label:<28}{wall:>9.2f}{n / wall:>10.0f}{meter.med(meter.loop, name) / n * 1000:>14.3f}"
              f"{meter.med(meter.proc, name) / n * 1000:>14.3f}   {rounds}")
    loop_bare, loop_cold = (meter.med(meter.loop, k) / n * 1000 for k in ("bare", "cold"))
    proc_bare, proc_cold = (meter.med(meter.proc, k) / n * 1000 for k in ("bare", "cold"))
    print(f"per-call CPU, loop thread: bare litellm {loop_bare:.3f} ms, run_replay cold {loop_cold:.3f} ms "
          f"(+{loop_cold - loop_bare:.3f} ms): {meter.paired(meter.loop, 'cold', 'bare'):.3f}x   goal <= 1.10x")
    print(f"per-call CPU, process:     bare litellm {proc_bare:.3f} ms, run_replay cold {proc_cold:.3f} ms "
          f"(+{proc_cold - proc_bare:.3f} ms): {meter.paired(meter.proc, 'cold', 'bare'):.3f}x")
    print(f"{'cold / bare, wall':<28}{meter.paired(meter.wall, 'cold', 'bare'):>9.3f}x   goal <= 1.10x "
          "(median of per-round ratios; wall also counts other processes' load on the machine)")
    print(f"{'cold no gc.freeze / bare':<28}{meter.paired(meter.loop, 'cold unfrozen', 'bare'):>9.3f}x loop, "
          f"{meter.paired(meter.proc, 'cold unfrozen', 'bare'):.3f}x process, "
          f"{meter.paired(meter.wall, 'cold unfrozen', 'bare'):.3f}x wall (the engine's heap freeze turned off)")
    print(f"{'off / bare, wall':<28}{meter.paired(meter.wall, 'off', 'bare'):>9.3f}x")
    print(f"{'cold / warm (speed-up)':<28}{meter.med(meter.wall, 'cold') / meter.med(meter.wall, 'warm'):>9.1f}x"
          "   goal >= 20x", flush=True)


def report_settings(meter: Meter, k: int) -> None:
    print(f"\nlitellm settings, each alone against the bare loop ({k} states a run, alternating; "
          "below 1.00x it saves CPU):")
    print(f"{'setting':<28}{'loop ms/call':>14}{'proc ms/call':>14}{'loop vs bare':>14}{'proc vs bare':>14}")
    for name in ("bare", *SETTINGS):
        print(f"{name:<28}{meter.med(meter.loop, name) / k * 1000:>14.3f}{meter.med(meter.proc, name) / k * 1000:>14.3f}"
              f"{meter.paired(meter.loop, name, 'bare'):>13.3f}x{meter.paired(meter.proc, name, 'bare'):>13.3f}x")

if __name__ == "__main__":
    main()
