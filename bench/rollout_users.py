"""Rollout users: what answering the clone costs, against replaying the recorded user turns.

The example's behaviour-cloned clone (trained on retail@v7's train split) drives every episode of
retail@v8's eval ``multi_turn_refunds`` cohort, four ways, in one run (same machine, same clone):

* ``recorded``: the recorded user turns, replayed whatever the clone says (the baseline);
* ``scripted``: the example's scripted customer (``ScriptedCustomer``), answering what it is asked;
* ``llm cold``: an LLM user through litellm against the local stub server (its own process, 20 ms per
  answer), empty cache;
* ``llm warm``: the same again on that cache (goal: zero requests).

It prints wall time per way as a ratio to ``recorded``, the clone's task completion under each
user, and the requests the stub server saw. Run: ``.venv/bin/python bench/rollout_users.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from example_suite.retail.clone import train_clone
from example_suite.retail.env import RetailEnvironment
from example_suite.retail.user import ScriptedCustomer
from pytest_bclone.agents.user import Users, make_users
from pytest_bclone.config import BcloneConfig
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.evaluators import TaskCompletion
from pytest_bclone.replay import RolloutResult, run_rollouts
from pytest_bclone.retry import RetryPolicy

SERVER = """
import json, sys
from pytest_bclone.testing import OpenAIServer, reply

def answer(request):
    last = request["messages"][-1]["content"]
    said = json.loads(last.removeprefix("AGENT: ")) if last.startswith("AGENT: ") else ""
    if "anything else" in said.lower() or "great day" in said.lower():
        return reply("That's all, thanks. ###STOP###", delay=float(sys.argv[1]))
    return reply("Yes, please.", delay=float(sys.argv[1]))

with OpenAIServer(answer) as server:
    print(server.base_url, flush=True)
    sys.stdin.read()
    print(server.request_count, flush=True)
"""


def completion(result: RolloutResult, trajectories: list[Any]) -> float:
    evaluator = TaskCompletion()
    scores = [evaluator.score_episode(t, result.episode("clone", t.id)).value for t in trajectories
              if result.episode("clone", t.id).error is None]
    return 100 * sum(scores) / len(scores) if scores else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.02, help="stub server seconds per answer")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    store = DatasetStore(str(ROOT / "example_suite" / "bclone_datasets"))
    trajectories = [t for t in store.load("retail@v8").select("eval") if "multi_turn_refunds" in t.cohorts]
    clone = train_clone(store.load("retail@v7").select("train"), "bc-clone@v7")
    agents = {"clone": clone}
    env = RetailEnvironment.for_trajectory

    def run(user_factory: Any) -> tuple[float, RolloutResult]:
        start = time.perf_counter()
        result = run_rollouts(trajectories, agents, env, concurrency=args.concurrency, user_factory=user_factory,
                              progress=False)
        return time.perf_counter() - start, result

    rows: list[tuple[str, float, RolloutResult]] = []
    wall, res = run(None)
    rows.append(("recorded", wall, res))
    wall, res = run(Users("scripted", ScriptedCustomer.for_trajectory))
    rows.append(("scripted", wall, res))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert server.stdout is not None and server.stdin is not None
    base_url = server.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as cache:
        config = BcloneConfig(rootdir=cache, cache_dir="c", user_params={"api_base": base_url, "api_key": "x"})
        retry = RetryPolicy(max_retries=2, timeout=10.0)
        make_users("openai/user-sim", config, retry=retry)  # import litellm outside the timed runs
        wall, res = run(make_users("openai/user-sim", config, retry=retry))
        rows.append(("llm cold", wall, res))
        wall, res = run(make_users("openai/user-sim", config, retry=retry))
        rows.append(("llm warm", wall, res))
    server.stdin.close()
    requests = int(server.stdout.readline() or 0)
    server.wait(timeout=10)
    base = rows[0][1]
    print(f"{len(trajectories)} episodes of retail@v8 eval multi_turn_refunds, bc-clone@v7, "
          f"concurrency {args.concurrency}, stub latency {args.latency * 1000:.0f} ms")
    print(f"{'user':<10} {'wall s':>8} {'x recorded':>11} {'clone task_completion':>22} {'user calls':>11} "
          f"{'cached':>7}")
    for name, wall, res in rows:
        totals = res.user_totals()["clone"]
        print(f"{name:<10} {wall:>8.3f} {wall / base:>11.2f} {completion(res, trajectories):>21.1f}% "
              f"{totals.items:>11} {totals.cached:>7}")
    cold = rows[2][2].user_totals()["clone"]
    print(f"stub server requests: {requests}; the cold LLM run sent {cold.items - cold.cached} (the rest of its "
          f"calls repeated an identical request: cache hits), the warm run {requests - (cold.items - cold.cached)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
