"""SIGTERM stops a gate run the way Ctrl-C does, and no xdist worker outlives its controller.

CI systems cancel a job with SIGTERM (then SIGKILL after a grace period). Python's default is to
die on the spot: no report, and pytest-xdist workers, orphaned in the middle of a replay, keep
calling the model. :func:`install` (called from ``pytest_configure`` when the gate is active):

* controller: the first SIGTERM is forwarded to the worker processes (so their in-flight calls
  stop now, not after xdist's 10 s teardown) and raised as ``KeyboardInterrupt``: pytest unwinds,
  the event loop cancels every call in flight, xdist tears the workers down, and the controller
  still writes every report, marked incomplete (:func:`interrupted_by` says why; the gate BLOCKS).
  A second SIGTERM while the reports are being written is not raised again, so they are whole.
* worker: SIGTERM is raised as ``KeyboardInterrupt`` too, and the worker dies with its controller:
  ``prctl(PR_SET_PDEATHSIG)`` on Linux, and a watchdog thread that notices the parent process change
  (any POSIX system; a SIGKILLed controller included) and stops the worker, hard after a grace period.

SIGINT is left to pytest (as before); :func:`note_interrupt` records it for the report.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

__all__ = [
    "PARENT_POLL_S", "WORKER_GRACE_S", "install", "interrupted_by", "mark_incomplete", "note_interrupt", "reset",
]

PARENT_POLL_S = 0.2
"""How often a worker checks that its controller is still its parent (seconds)."""
WORKER_GRACE_S = 3.0
"""How long an orphaned worker may take to unwind before it exits hard (seconds)."""

_interrupted: str | None = None
_lock = threading.Lock()


def interrupted_by() -> str | None:
    """``"SIGTERM"``, ``"SIGINT"`` or ``"controller gone"`` once the run was interrupted, else None.

    A run interrupted this way is incomplete: its reports say so and the gate blocks."""
    return _interrupted


def note_interrupt(cause: str) -> bool:
    """Record why the run stops (the first cause wins); True when this was the first."""
    global _interrupted
    with _lock:
        if _interrupted is not None:
            return False
        _interrupted = cause
        return True


def reset() -> None:
    """Forget a recorded interruption (the next in-process run, e.g. under pytester)."""
    global _interrupted
    with _lock:
        _interrupted = None


def install(config: Any) -> None:
    """Install the SIGTERM handling of this process (controller or xdist worker, told apart by
    ``config.workerinput``); undone by ``config.add_cleanup`` when the run ends."""
    reset()
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    worker = hasattr(config, "workerinput")
    previous = signal.getsignal(signal.SIGTERM)

    raised: list[int] = []

    parent = os.getppid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        note_interrupt("SIGTERM")
        if not worker:
            _signal_children(signal.SIGTERM)
        elif os.getppid() != parent:  # PR_SET_PDEATHSIG: the controller died
            _end_orphan()
        if not raised:
            raised.append(signum)
            raise KeyboardInterrupt("SIGTERM")
        # A repeated SIGTERM: the run is already unwinding and writing its reports; let it finish
        # (a CI runner sends SIGKILL after its grace period anyway).

    signal.signal(signal.SIGTERM, on_sigterm)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))
    if worker:
        _die_with_parent()
        # Watches until the process ends (a daemon thread), not until the run's cleanups: an
        # orphan that already unwound (PDEATHSIG) can still hang on its channel to the controller.
        threading.Thread(target=_watch_parent, args=(parent,), name="bclone-parent-watch", daemon=True).start()


def _die_with_parent() -> None:
    """Linux: ask the kernel to send SIGTERM when the parent (the xdist controller) dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):  # no libc, no prctl: the watchdog thread still covers it
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    """Stop this worker when its controller is gone (the worker is re-parented)."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            note_interrupt("controller gone")
            _end_orphan()
            with contextlib.suppress(OSError):
                os.kill(os.getpid(), signal.SIGTERM)  # unwinds the main thread: calls are cancelled
            time.sleep(WORKER_GRACE_S)
            os._exit(3)  # if the alarm could not be set


def _end_orphan() -> None:
    """Nobody is left to receive this worker's results: make sure it ends within the grace period
    whatever it is doing. SIGALRM's default action ends the process in the kernel, so it works even
    when the interpreter is stuck finalizing (daemon threads, this watchdog included, can no longer
    run then); ``os._exit`` from a thread would not."""
    with contextlib.suppress(Exception):
        signal.alarm(max(1, int(WORKER_GRACE_S)))


def _signal_children(signum: int) -> None:
    """Send ``signum`` to this process's direct children (the xdist workers). Linux ``/proc`` only;
    elsewhere xdist's teardown stops them (after its timeout)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ")".
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signum)


def mark_incomplete(summary: dict[str, Any], cause: str) -> dict[str, Any]:
    """Mark a run's report summary as incomplete (interrupted by ``cause``): the run section says
    so, and the gate BLOCKS whatever the verdicts gathered so far say, because the cohorts that
    never got their verdict were not gated. Returns ``summary`` (changed in place)."""
    run = summary.setdefault("run", {})
    run["interrupted"] = cause
    run["incomplete"] = True
    gate = summary.setdefault("gate", {})
    previous = str(gate.get("line") or "")
    before = previous.partition("(")[2].rstrip(")") if previous.startswith("BCLONE GATE: BLOCKED (") else ""
    gate["decision"] = "BLOCKED"
    gate["line"] = (f"BCLONE GATE: BLOCKED (run incomplete: interrupted by {cause}, rerun it to completion; "
                    f"{before or 'the cohorts without a verdict were not gated'})")
    # Nothing ships from a run that did not finish: all traffic stays on the expert.
    gate["routes"] = {cohort: "expert" for cohort in (gate.get("routes") or {})}
    gate["traffic_on_clone_pct"] = 0.0
    gate["estimated_saving_pct"] = None
    return summary
