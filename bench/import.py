"""Benchmark: `bclone dataset import` of a large OpenAI JSONL file, against a bare json.loads loop.

Writes N trajectories (system, user, an assistant turn with two parallel tool calls, two tool
results, a final reply; a 5-tool toolset) to a JSONL file in a temporary directory, then runs,
each in a fresh subprocess so that peak memory is its own (VmHWM):

  baseline   for line in file: json.loads(line)                      (nothing kept)
  validate   openai_jsonl.iter_rows: parse, normalise, validate every row (no write)
  import     the whole CLI: `bclone dataset import FILE --format openai-jsonl` (Parquet + manifest)

at two sizes (default 50,000 and 200,000), so that memory can be seen not to grow with rows.
The requirement (issue 13) is an import of >= 5,000 rows per CPU second; each size ends with
that figure beside the same run's bare json.loads loop. It also times the row check itself on
5,000 rows: the hand-written fast path against jsonschema (which the import now runs only to
word the error of a bad row).

    python bench/import.py [--sizes 50000 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REQUIRED_ROWS_PER_CPU_S = 5_000

CHILD = r"""
import json, os, sys, time
mode, path, root = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
c0 = os.times()
if mode == "baseline":
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            json.loads(line)
            n += 1
elif mode == "validate":
    from pytest_bclone.dataset.importers import ImportOptions
    from pytest_bclone.dataset.openai_jsonl import iter_rows
    n = sum(1 for _ in iter_rows(path, ImportOptions(), []))
else:
    from pytest_bclone.cli import main
    code = main(["dataset", "--root", root, "import", path, "--name", "bench", "--version", "v1",
                 "--format", "openai-jsonl"])
    assert code == 0, code
    n = json.load(open(root + "/bench/v1/manifest.json"))["counts"]["trajectories"]
elapsed = time.perf_counter() - t0
c1 = os.times()
cpu = (c1.user - c0.user) + (c1.system - c0.system)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent.
peak_mb = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
print(json.dumps({"rows": n, "s": elapsed, "cpu": cpu, "peak_mb": peak_mb}))
"""

TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} tool", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
    for name in ("get_order", "get_customer", "cancel_order", "return_items", "transfer_to_human_agents")]


def line(i: int) -> dict:
    """One trajectory line, distinct per i."""
    order = f"W{i:07d}"
    return {
        "id": f"t{i:07d}",
        "cohorts": ["common_intents"] if i % 10 else ["long_tail"],
        "messages": [
            {"role": "system", "content": "You are a retail support agent. Follow the policy."},
            {"role": "user", "content": f"Where are my orders {order} and {order}b? I am in a hurry."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_order",
                                                              "arguments": json.dumps({"order_id": order})}},
                {"id": "c2", "type": "function", "function": {"name": "get_order",
                                                              "arguments": json.dumps({"order_id": order + "b"})}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"order_id": order, "status": "shipped"})},
            {"role": "tool", "tool_call_id": "c2", "content": json.dumps({"order_id": order + "b", "status": "pending"})},
            {"role": "assistant", "content": f"{order} has shipped; {order}b is still pending."},
        ],
        "tools": TOOLS,
        "expert_scores": {"task_completion": 1.0, "tool_selection": 0.95},
        "metadata": {"channel": "chat", "timestamp": "2025-06-01T12:00:00Z"},
    }


def run(mode: str, path: str, root: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, path, root], capture_output=True, text=True,
                         check=True)
    out: dict = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def check_speed(n: int = 5000) -> tuple[float, float]:
    """Rows per CPU second of the fast path and of jsonschema on the same rows."""
    import jsonschema

    from pytest_bclone.dataset.schema import ROW_SCHEMA, fast_valid, validate_row

    rows = [{**line(i), "split": "train"} for i in range(n)]
    t0 = time.process_time()
    for r in rows:
        validate_row(r, "bench")
    fast = n / (time.process_time() - t0)
    assert all(fast_valid(r) for r in rows)
    v = jsonschema.Draft202012Validator(ROW_SCHEMA)
    t0 = time.process_time()
    for r in rows:
        v.validate(r)
    slow = n / (time.process_time() - t0)
    return fast, slow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    args = ap.parse_args()
    fast, slow = check_speed()
    print(f"row check on 5,000 rows: fast path {fast:,.0f} rows/CPU-s, jsonschema {slow:,.0f} rows/CPU-s "
          f"({fast / slow:.0f}x)")
    # CPU seconds beside wall: on a shared machine the wall clock also measures the neighbours.
    print(f"{'rows':>8} {'mode':>9} {'wall s':>8} {'cpu s':>7} {'rows/cpu-s':>10} {'cpu x bare':>10} "
          f"{'peak MB':>8} {'x bare':>7}")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trajectories.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line(i)) + "\n" for i in range(n))
            size_mb = os.path.getsize(path) / 2**20
            base = run("baseline", path, os.path.join(tmp, "unused"))
            for mode in ("baseline", "validate", "import"):
                r = base if mode == "baseline" else run(mode, path, os.path.join(tmp, f"store-{mode}"))
                assert r["rows"] == n, r
                print(f"{n:>8} {mode:>9} {r['s']:>8.2f} {r['cpu']:>7.2f} {n / r['cpu']:>10,.0f} "
                      f"{r['cpu'] / base['cpu']:>10.2f} {r['peak_mb']:>8.0f} {r['peak_mb'] / base['peak_mb']:>7.2f}")
                if mode == "import":
                    rate = n / r["cpu"]
                    verdict = "met" if rate >= REQUIRED_ROWS_PER_CPU_S else "NOT met"
                    summary = (f"{'':>8} import: {rate:,.0f} rows/CPU-s (>= {REQUIRED_ROWS_PER_CPU_S:,} required: "
                               f"{verdict}), {r['cpu'] / base['cpu']:.2f}x the CPU of a bare json.loads loop "
                               f"({n / base['cpu']:,.0f} rows/CPU-s) on the same file; peak {r['peak_mb']:.0f} MB")
            print(summary)
            print(f"{'':>8} (file: {size_mb:.0f} MB)")


if __name__ == "__main__":
    main()
