"""Benchmark: the whole gate through pytest at 10k, 100k and 1M decision points.

For each size it writes a synthetic version (trajectories of 10 assistant turns, three cohorts),
then runs, each in a fresh child process so CPU time and peak memory are its own:

  gate       ``pytest`` on a suite of 3 cohorts x 2 metrics (action_match, tool_selection), step
             mode, an instant Python clone (the expert's action, a text reply at every 20th state),
             with the JSON report written; ``-n 2`` too with ``--xdist``
  baseline   a bare ``pyarrow.parquet.read_table`` of the same files plus one pass over every
             decision point (the least any gate must do), and ``pytest`` on an empty test file
             (start-up)

and prints wall, CPU, peak RSS, decision points per second end to end, the ratios against the
baseline, and the gate's own phase split from its report (``run.phases_s``: load, replay,
scoring, shift check, statistics, report; ``rest`` is the wall time no phase covers: collection,
pytest's hooks, teardown and exit). Under ``-n 2`` the phases are the workers' seconds of work,
summed, so no ``rest`` is shown; below each ``-n 2`` run, its wall, CPU and peak against the serial
run of the same tree in this run (>1x: slower or larger than serial), and the peak RSS of each
process (the controller's, each worker's). The machine may be shared: compare CPU seconds and peak RSS.

    python bench/scale.py [--sizes 10000,100000,1000000] [--xdist] [--before DIR]

``--before DIR`` also runs the gate from an older source tree (e.g. ``git worktree add DIR <commit>``,
or ``git archive <commit> | tar -x -C DIR``), put first on ``PYTHONPATH``, beside this one on the
same dataset in the same run (with ``--xdist``, under ``-n 2`` too): the before/after figures of a change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STEPS = 10

CONFTEST = '''
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import Action, AgentReply, CallStats


class InstantClone:
    """The expert's recorded action, a text reply at every 20th state: no model, no wait."""

    name = "instant-clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        if (int(state.trajectory_id[1:]) * 7 + state.step) % 20 == 0:
            return AgentReply(Action(text="Let me check that."), CallStats())
        return await self.recorded.act(state, repeat=repeat)


def pytest_bclone_make_agent(role, spec, config):
    if spec == "instant":
        from pytest_bclone.plugin import bclone_session
        return InstantClone(bclone_session(config).dataset.trajectories)
'''

TESTS = '''
import pytest
from pytest_bclone import assert_parity

@pytest.mark.parametrize("metric", ["action_match", "tool_selection"])
@pytest.mark.parametrize("cohort", ["common_intents", "long_tail", "tool_heavy"])
def test_parity(cohort, metric):
    assert_parity(cohort, within=3, metric=metric, on_fail="warn", allow_inconclusive=True)
'''

BASELINE = r"""
import glob, json, sys, time
import pyarrow.parquet as pq
t0 = time.perf_counter()
points = 0
for path in sorted(glob.glob(sys.argv[1] + "/bench/v1/*.parquet")):
    table = pq.read_table(path, columns=["id", "step_indexes"]) if "step_indexes" in pq.read_schema(path).names \
        else pq.read_table(path)
    for steps in table.column(table.column_names[-1]).to_pylist():
        points += len(steps) if isinstance(steps, list) else 1
print(json.dumps({"points": points, "s": time.perf_counter() - t0}))
"""


BUILD = r"""
import json, sys
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.records import Trajectory

root, n = sys.argv[1], int(sys.argv[2])
tools = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
    "order_id": {"type": "string"}, "reason": {"type": "string", "default": "customer request"}}}}}
    for name in ("get_order", "get_customer", "cancel_order", "return_items", "exchange_items",
                 "change_address", "transfer_to_human_agents")]
COHORTS = (("common_intents",), ("long_tail",), ("tool_heavy", "common_intents"))


def trajectory(i):
    msgs = [{"role": "system", "content": "You are a retail support agent. Follow the policy."},
            {"role": "user", "content": f"Hi, I need help with order W{i:07d}."}]
    for step in range(9):
        name = tools[(i + step) % 6]["function"]["name"]
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{step}", "type": "function",
             "function": {"name": name, "arguments": json.dumps({"order_id": f"W{i:07d}"})}}]})
        msgs.append({"role": "tool", "tool_call_id": f"c{step}", "content": json.dumps({"status": "ok"})})
    msgs.append({"role": "assistant", "content": f"All done with W{i:07d}. Anything else?"})
    return Trajectory(f"b{i:07d}", COHORTS[i % 3], "eval", msgs, tools)


store = DatasetStore(root)
write = getattr(store, "write_version_stream", None)
rows = (trajectory(i) for i in range(n))
if write is not None:
    from pytest_bclone.dataset.schema import trajectory_to_row
    write("bench", "v1", (trajectory_to_row(t) for t in rows), source="bench/scale.py")
else:
    store.write_version("bench", "v1", rows, validate=False, source="bench/scale.py")
"""


def build(root: Path, trajectories: int) -> None:
    """Write the synthetic version in a child process (so this process stays small)."""
    subprocess.run([sys.executable, "-c", BUILD, str(root), str(trajectories)], check=True)


def measured(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` under a tiny wrapper that reports the child's own rusage (os.wait4), and the peak
    RSS of each process of its tree (polled: under ``-n 2``, the controller's and each worker's)."""
    wrapper = textwrap.dedent("""
        import json, os, subprocess, sys, threading, time
        t = time.perf_counter()
        p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peaks = {}

        def tree(pid, depth=0):
            yield pid, depth
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        for child in f.read().split():
                            yield from tree(int(child), depth + 1)
            except OSError:
                pass

        def poll():
            while p.poll() is None:
                for pid, depth in list(tree(p.pid)):
                    try:
                        with open(f"/proc/{pid}/status") as f:
                            hwm = int(f.read().split("VmHWM:")[1].split()[0]) / 1024
                    except (OSError, IndexError, ValueError):
                        continue
                    peaks[pid] = (depth, max(hwm, peaks.get(pid, (0, 0.0))[1]))
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True).start()
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        print(json.dumps({"wall": time.perf_counter() - t, "cpu": ru.ru_utime + ru.ru_stime,
                          "peak_mb": ru.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status),
                          "peaks": sorted(peaks.values()), "tail": out.decode(errors="replace")[-3000:]}))
    """)
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def project(work: Path, root: Path) -> Path:
    suite = work / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_gate.py").write_text(TESTS)
    (suite / "test_empty.py").write_text("def test_nothing():\n    pass\n")
    (suite / "pytest.ini").write_text(f"[pytest]\nbclone_dataset_root = {root}\nbclone_clone = instant\n")
    return suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="decision points per run, comma-separated")
    parser.add_argument("--xdist", action="store_true", help="also run the gate with -n 2")
    parser.add_argument("--before", metavar="DIR", help="also run the gate from the source tree DIR (same run)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # Every child then compiles (and pytest assertion-rewrites) every module it imports: the
        # start-up figures include it, for the gate and the bare pytest start alike.
        print("note: PYTHONDONTWRITEBYTECODE is set: start-up includes compiling every imported module")
    print(f"{'points':>9} {'run':<14} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'points/s':>10} {'vs base':>8}  phases")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bclone-scale-") as tmp:
            work = Path(tmp)
            root = work / "store"
            build(root, size // STEPS)
            suite = project(work, root)
            base = measured([sys.executable, "-c", BASELINE, str(root)], work)
            start = measured([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_empty.py"],
                             suite)
            runs: list[tuple[str, list[str], dict[str, str] | None]] = [("gate", [], None)]
            if args.xdist:
                runs.append(("gate -n 2", ["-n", "2"], None))
            if args.before:
                before_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (str(Path(args.before).resolve()), os.environ.get("PYTHONPATH")) if p)}
                runs[:0] = [("before", [], before_env)] + (
                    [("before -n 2", ["-n", "2"], before_env)] if args.xdist else [])
            serial: dict[str, dict[str, Any]] = {}  # per tree ("before", "gate"): its serial run, for -n 2's ratios
            for n_run, (label, extra, env) in enumerate(runs):
                report = work / f"report-{n_run}.json"
                res = measured([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gate.py",
                                "--bclone-dataset=bench@v1", f"--bclone-report-json={report}", *extra], suite, env)
                if res["rc"] not in (0, 1) or not report.exists():
                    print(f"gate failed (exit {res['rc']}):\n{res['tail']}")
                    continue
                summary = json.loads(report.read_text())
                points = summary["dataset"]["decision_points"]
                phases = summary["run"].get("phases_s") or {}
                # rest: what no phase covers (collection, pytest's own hooks, teardown and exit)
                rest = res["wall"] - sum(phases.values()) if phases and not extra else None
                phase_txt = " ".join(f"{k}={v:.1f}" for k, v in phases.items()) + (
                    "" if rest is None else f" rest={rest:.1f}")
                print(f"{points:>9} {label:<14} {res['wall']:>8.1f} {res['cpu']:>8.1f} {res['peak_mb']:>9.0f} "
                      f"{points / res['wall']:>10.0f} {res['wall'] / base['wall']:>7.1f}x  {phase_txt}")
                tree = label.split()[0]
                if not extra:
                    serial[tree] = res
                elif tree in serial:
                    # -n 2 against the serial run of the same tree, in this run: >1 is slower than serial.
                    s_run = serial[tree]
                    by_process = ", ".join(f"{'controller' if depth == 0 else 'worker'} {mb:.0f}"
                                           for depth, mb in res["peaks"] if depth <= 1)
                    print(f"{'':>9} {'':<14} -n 2 / serial: wall {res['wall'] / s_run['wall']:.2f}x, "
                          f"cpu {res['cpu'] / s_run['cpu']:.2f}x, peak {res['peak_mb'] / s_run['peak_mb']:.2f}x; "
                          f"peak MiB by process: {by_process}")
            print(f"{size:>9} {'base: read':<14} {base['wall']:>8.1f} {base['cpu']:>8.1f} {base['peak_mb']:>9.0f}")
            print(f"{size:>9} {'base: pytest':<14} {start['wall']:>8.1f} {start['cpu']:>8.1f} {start['peak_mb']:>9.0f}")
            sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
