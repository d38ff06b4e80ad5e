"""Benchmark: load + verify + decision-point derivation of a large dataset version.

Builds 100,000 trajectories (10 assistant turns each: 1,000,000 decision points) in a temporary
store, then times, each in a fresh subprocess so peak memory is its own:

  ours       DatasetStore.load (read, sha256 of every file, Parquet parse, Trajectory objects)
             + every decision point derived
  ours+state the same, then every state's messages materialised (a full JSON parse)
  baseline   bare pyarrow.parquet.read_table of the same data files

and prints wall times, ratios against the baseline, and peak RSS.

    python bench/dataset_load.py [--trajectories 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time, glob
mode, root = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "baseline":
    import pyarrow.parquet as pq
    rows = sum(pq.read_table(p).num_rows for p in sorted(glob.glob(root + "/bench/v1/*.parquet")))
    points = None
else:
    from pytest_bclone.dataset.store import DatasetStore
    v = DatasetStore(root).load("bench@v1")
    points = [p for t in v.trajectories for p in t.decision_points()]
    if mode == "ours+state":
        n = sum(len(p.state.messages) for p in points)
    rows = len(v.trajectories)
elapsed = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent.
peak_mb = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
print(json.dumps({"rows": rows, "points": None if points is None else len(points), "s": elapsed, "peak_mb": peak_mb}))
"""


def build(root: str, n: int) -> float:
    """Write the synthetic version; returns seconds taken."""
    from pytest_bclone.dataset.store import DatasetStore
    from pytest_bclone.records import Trajectory

    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string"}, "reason": {"type": "string", "default": "customer request"}}}}}
        for name in ("get_order", "get_customer", "cancel_order", "return_items", "exchange_items",
                     "change_address", "transfer_to_human_agents")]

    def trajectory(i: int) -> Trajectory:
        msgs: list[dict] = [{"role": "system", "content": "You are a retail support agent. Follow the policy."},
                            {"role": "user", "content": f"Hi, I need help with order W{i:07d}."}]
        for step in range(9):
            name = tools[(i + step) % 6]["function"]["name"]
            cid = f"c{step}"
            msgs.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": cid, "type": "function",
                 "function": {"name": name, "arguments": json.dumps({"order_id": f"W{i:07d}"})}}]})
            msgs.append({"role": "tool", "tool_call_id": cid, "content": json.dumps({"status": "ok", "step": step})})
        msgs.append({"role": "assistant", "content": f"All done with W{i:07d}. Anything else?"})
        return Trajectory(f"b{i:07d}", ("common_intents",) if i % 5 else ("long_tail",),
                          "eval" if i % 5 == 0 else "train", msgs, tools)

    t0 = time.perf_counter()
    DatasetStore(root).write_version("bench", "v1", (trajectory(i) for i in range(n)), validate=False,
                                     source="bench")
    return time.perf_counter() - t0


def run_child(mode: str, root: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, root], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; the best time is kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        built = build(root, args.trajectories)
        size = sum(os.path.getsize(os.path.join(root, "bench/v1", f)) for f in os.listdir(os.path.join(root, "bench/v1")))
        print(f"built {args.trajectories} trajectories in {built:.1f} s; {size / 1e6:.1f} MB on disk")
        results = {}
        for mode in ("baseline", "ours", "ours+state"):
            runs = [run_child(mode, root) for _ in range(args.repeat)]
            results[mode] = min(runs, key=lambda r: r["s"])
        base = results["baseline"]["s"]
        print(f"{'mode':<12}{'seconds':>9}{'x baseline':>12}{'peak RSS MB':>13}{'decision points':>17}")
        for mode, r in results.items():
            print(f"{mode:<12}{r['s']:>9.2f}{r['s'] / base:>12.2f}{r['peak_mb']:>13.0f}{r['points'] or '-':>17}")


if __name__ == "__main__":
    main()
