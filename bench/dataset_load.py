"""Benchmark: load + verify + decision-point derivation of a large dataset version.

Builds 100,000 trajectories (10 assistant turns each: 1,000,000 decision points) in a temporary
store, then times, each in a fresh subprocess so peak memory is its own, modes alternating:

  baseline     bare ``pyarrow.parquet.read_table`` of the same data files, every table kept (the
               dataset in memory: what a load has to hold at the end)
  base-stream  the same, each table dropped after reading (the older, smaller baseline: the peak
               of one file)
  ours         DatasetStore.load (read, sha256 of every file, manifest fingerprint, Parquet parse,
               schema/row/count/toolset checks, Trajectory records) + every decision point derived
               (``store.all_decision_points``: the cyclic GC paused)
  ours-loop    the same, points derived by a plain comprehension with the cyclic GC on (what
               runner.py does unless it uses ``all_decision_points``)
  ours-load    DatasetStore.load alone
  ours+state   ours, then every state's messages materialised (a full JSON parse)

and prints the best wall time of ``--repeat`` runs, ratios against both baselines, and peak RSS.

    python bench/dataset_load.py [--trajectories 100000] [--repeat 3] [--root DIR]

Measured 2026-12-02 on the shared 2-core machine (load average 7-10, so absolute seconds are
noisy; ratios are from the same run, modes alternating), 100k trajectories, 1M decision points:

    run  ours / baseline   ours / base-stream   peak ours / baseline   peak ours / base-stream
    1         1.77x              3.19x                 0.87x                   1.19x
    2         2.06x              3.03x                 0.87x                   1.25x
    3         1.47x              2.44x                 0.89x                   1.11x   (records built per column)
    (ours-loop, the plain comprehension with the GC on: 2.53x / 4.58x in run 1, 1.98x / 3.28x in run 3;
    run 3: baseline 2.38 s, base-stream 1.44 s, ours 3.50 s, ours-load 3.13 s; 589 / 471 / 524 MB)
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
points = None
if mode in ("baseline", "base-stream"):
    import pyarrow.parquet as pq
    files = sorted(glob.glob(root + "/bench/v1/*.parquet"))
    if mode == "baseline":
        tables = [pq.read_table(p) for p in files]
        rows = sum(t.num_rows for t in tables)
    else:
        rows = sum(pq.read_table(p).num_rows for p in files)
else:
    from pytest_bclone.dataset.store import DatasetStore, all_decision_points
    v = DatasetStore(root).load("bench@v1")
    if mode == "ours-loop":
        points = [p for t in v.trajectories for p in t.decision_points()]
    elif mode != "ours-load":
        points = all_decision_points(v.trajectories)
    if mode == "ours+state":
        n = sum(len(p.state.messages) for p in points)
    rows = len(v.trajectories)
elapsed = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent.
peak_mb = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
print(json.dumps({"rows": rows, "points": None if points is None else len(points), "s": elapsed, "peak_mb": peak_mb}))
"""

MODES = ("baseline", "base-stream", "ours", "ours-loop", "ours-load", "ours+state")


def build(root: str, n: int) -> float:
    """Write the synthetic version; returns seconds taken."""
    from pytest_bclone.dataset.store import DatasetStore

    tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        "order_id": {"type": "string"}, "reason": {"type": "string", "default": "customer request"}}}}}
        for name in ("get_order", "get_customer", "cancel_order", "return_items", "exchange_items",
                     "change_address", "transfer_to_human_agents")]

    def trajectory(i: int) -> dict:
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
        return {"id": f"b{i:07d}", "cohorts": ["common_intents"] if i % 5 else ["long_tail"],
                "split": "eval" if i % 5 == 0 else "train", "messages": msgs, "tools": tools}

    t0 = time.perf_counter()
    DatasetStore(root).write_version_stream("bench", "v1", (trajectory(i) for i in range(n)), source="bench")
    return time.perf_counter() - t0


def run_child(mode: str, root: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, root], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode, modes alternating; the best time is kept")
    ap.add_argument("--root", default=None, help="reuse (or build once into) this directory instead of a temp dir")
    ap.add_argument("--skip-state", action="store_true", help="skip the slow ours+state mode")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        if not os.path.exists(os.path.join(root, "bench", "v1", "manifest.json")):
            built = build(root, args.trajectories)
            print(f"built {args.trajectories} trajectories in {built:.1f} s")
        vdir = os.path.join(root, "bench/v1")
        size = sum(os.path.getsize(os.path.join(vdir, f)) for f in os.listdir(vdir))
        print(f"{size / 1e6:.1f} MB on disk")
        modes = [m for m in MODES if not (args.skip_state and m == "ours+state")]
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # alternate, so a burst of load on a shared machine hits every mode
            for mode in modes:
                runs[mode].append(run_child(mode, root))
        results = {m: min(r, key=lambda x: x["s"]) for m, r in runs.items()}
        peaks = {m: min(x["peak_mb"] for x in r) for m, r in runs.items()}
        base, stream = results["baseline"], results["base-stream"]
        print(f"{'mode':<12}{'seconds':>9}{'x baseline':>12}{'x stream':>10}{'peak RSS MB':>13}{'x base':>8}"
              f"{'x stream':>10}{'decision points':>17}")
        for mode, r in results.items():
            print(f"{mode:<12}{r['s']:>9.2f}{r['s'] / base['s']:>12.2f}{r['s'] / stream['s']:>10.2f}"
                  f"{peaks[mode]:>13.0f}{peaks[mode] / peaks['baseline']:>8.2f}{peaks[mode] / peaks['base-stream']:>10.2f}"
                  f"{r['points'] or '-':>17}")


if __name__ == "__main__":
    main()
