"""Replay throughput: the bclone engine against a bare litellm loop, and a warm cache against a cold one.

2,000 states (synthetic trajectories built in memory) against the local stub server answering
after 50 ms, at concurrency 64, all in one run so both sides see the same machine and server:

* ``bare``:  ``litellm.acompletion`` under an ``asyncio.Semaphore(64)``: no cache, no retries wrapper.
* ``cold``:  ``run_replay`` with an empty cache (every call goes out and is recorded, fsync'd).
* ``warm``:  ``run_replay`` again on that cache (no call goes out).
* ``off``:   ``run_replay`` with ``--bclone-cache-mode=off`` (what the engine costs without recording).
* ``tuned``: the bare loop with the per-call settings available to a caller of litellm: message
  logging off, no callbacks, ``drop_params``. Its CPU per call against ``bare`` is the part of
  litellm's per-call CPU that how we call it can avoid.
* ``client``: ``tuned`` plus one reused ``openai.AsyncOpenAI`` passed as ``client=`` (litellm
  otherwise looks its cached client up on every call).

Each line reports the CPU of the event-loop thread per call (``thread_time``): litellm's own cost
per call, steadier than wall time when other processes share the machine.

Goals: cold/bare <= 1.10, cold/warm >= 20. Run: ``.venv/bin/python bench/replay_throughput.py``
(``--states``, ``--concurrency``, ``--latency``, ``--rounds`` to vary). The stub server (a
ThreadingHTTPServer) runs in its own process, as a model server would: in-process, its threads
would compete with the client for the GIL. When it or litellm's per-call overhead is the
bottleneck, it is so for both ``bare`` and ``cold``: they alternate in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
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


def bare(points: list[DecisionPoint], base_url: str, concurrency: int, *, tuned: bool = False,
         client: bool = False) -> float:
    """The baseline: litellm.acompletion under a semaphore, nothing else (``tuned``: with every
    per-call saving a caller can choose, see the module docstring)."""
    litellm = import_litellm()
    saved = {name: getattr(litellm, name) for name in (
        "turn_off_message_logging", "drop_params", "callbacks", "success_callback", "failure_callback",
        "_async_success_callback", "_async_failure_callback")}
    if tuned:
        litellm.turn_off_message_logging = True
        litellm.drop_params = True
        for name in ("callbacks", "success_callback", "failure_callback", "_async_success_callback",
                     "_async_failure_callback"):
            setattr(litellm, name, [])

    async def main() -> list[Any]:
        sem = asyncio.Semaphore(concurrency)
        extra: dict[str, Any] = {}
        if client:
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

    start = time.perf_counter()
    try:
        asyncio.run(main())
    finally:
        for name, value in saved.items():
            setattr(litellm, name, value)
    return time.perf_counter() - start


def ours(points: list[DecisionPoint], base_url: str, concurrency: int, cache_dir: str,
         mode: str = "new_episodes") -> tuple[float, int, int]:
    """run_replay with the litellm agent and the cache; returns (wall, failed, cached)."""
    agent = LitellmAgent("openai/stub", params={"api_base": base_url, "api_key": "k"},
                         cache=ModelCache(cache_dir, mode), retry=RetryPolicy(timeout=60))
    start = time.perf_counter()
    result = run_replay(points, {"clone": agent}, concurrency=concurrency, progress=False)
    wall = time.perf_counter() - start
    totals = result.totals()["clone"]
    return wall, totals.failed, totals.cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05, help="server delay per answer, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/cold/warm rounds (median kept)")
    args = parser.parse_args()

    points = build_points(args.states)
    root = str(Path(__file__).resolve().parents[1])
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=root)
    assert server.stdin is not None and server.stdout is not None
    base_url = server.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory(prefix="bclone-bench-") as tmp:
            # Warm up once (litellm import, first-call initialisation) so that neither side pays it.
            bare(points[:8], base_url, args.concurrency)
            walls: dict[str, list[float]] = {"bare": [], "tuned": [], "client": [], "cold": [], "warm": [], "off": []}
            cpus: dict[str, list[float]] = {k: [] for k in walls}
            for r in range(args.rounds):
                cache_dir = str(Path(tmp) / f"round{r}")
                cpu = time.thread_time()
                walls["bare"].append(bare(points, base_url, args.concurrency))
                cpus["bare"].append(time.thread_time() - cpu)
                cpu = time.thread_time()
                walls["tuned"].append(bare(points, base_url, args.concurrency, tuned=True))
                cpus["tuned"].append(time.thread_time() - cpu)
                cpu = time.thread_time()
                walls["client"].append(bare(points, base_url, args.concurrency, tuned=True, client=True))
                cpus["client"].append(time.thread_time() - cpu)
                cpu = time.thread_time()
                cold, failed, cached = ours(points, base_url, args.concurrency, cache_dir)
                cpus["cold"].append(time.thread_time() - cpu)
                assert failed == 0 and cached == 0, (failed, cached)
                walls["cold"].append(cold)
                cpu = time.thread_time()
                warm, failed, cached = ours(points, base_url, args.concurrency, cache_dir)
                cpus["warm"].append(time.thread_time() - cpu)
                assert failed == 0 and cached == len(points), (failed, cached)
                walls["warm"].append(warm)
                cpu = time.thread_time()
                off, failed, cached = ours(points, base_url, args.concurrency, cache_dir, "off")
                cpus["off"].append(time.thread_time() - cpu)
                assert failed == 0 and cached == 0, (failed, cached)
                walls["off"].append(off)
    finally:
        server.stdin.close()
        requests = server.stdout.readline().strip()
        server.wait(10)

    med = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    paired = statistics.median(c / b for c, b in zip(walls["cold"], walls["bare"], strict=True))
    ideal = len(points) / args.concurrency * args.latency
    print(f"{len(points)} states, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, "
          f"{args.rounds} rounds (median); ideal wall {ideal:.2f} s; {requests} requests served")
    print(f"{'run':<28}{'wall s':>9}{'states/s':>11}{'loop cpu s':>12}{'cpu ms/call':>13}   wall of each round")
    for name, label in (("bare", "bare litellm + semaphore"), ("tuned", "bare litellm, tuned settings"),
                        ("client", "tuned + reused client="),
                        ("cold", "run_replay, cold cache"), ("warm", "run_replay, warm cache"),
                        ("off", "run_replay, cache off")):
        rounds = ", ".join(f"{w:.2f}" for w in walls[name])
        per_call = med_cpu[name] / len(points) * 1000
        print(f"{label:<28}{med[name]:>9.2f}{len(points) / med[name]:>11.0f}{med_cpu[name]:>12.2f}{per_call:>13.2f}"
              f"   {rounds}")
    print(f"{'cold / bare, wall':<28}{med['cold'] / med['bare']:>9.3f}x   goal <= 1.10x "
          f"(median of per-round ratios {paired:.3f}x)")
    print(f"{'off / bare, wall':<28}{med['off'] / med['bare']:>9.3f}x")
    print(f"{'cold / bare, loop cpu':<28}{med_cpu['cold'] / med_cpu['bare']:>9.3f}x   (CPU of the event loop "
          "thread: steadier than wall when other processes share the machine)")
    print(f"{'tuned / bare, loop cpu':<28}{med_cpu['tuned'] / med_cpu['bare']:>9.3f}x   (the share of litellm's "
          f"per-call CPU avoidable by these settings: {1 - med_cpu['tuned'] / med_cpu['bare']:.0%})")
    print(f"{'client / bare, loop cpu':<28}{med_cpu['client'] / med_cpu['bare']:>9.3f}x")
    print(f"{'cold / warm (speed-up)':<28}{med['cold'] / med['warm']:>9.1f}x   goal >= 20x")

if __name__ == "__main__":
    main()
