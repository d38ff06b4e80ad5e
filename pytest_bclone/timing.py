"""A process-wide phase timer: where a gate run's wall time goes (``run.phases_s``, ``--bclone-profile``).

The gate's stages are wrapped at their boundaries (load in the plugin's configure; replay,
scoring and the shift check in the runner; statistics in the session's parity; report in the
controller's finish)::

    with timing.phase("replay"):
        ...

Phases may nest: time spent in an inner phase is counted there only (the outer phase gets its
own, exclusive time), so the phases add up to the time spent inside any of them and nothing is
counted twice. ``startup`` is the time from the process's start to :func:`mark_startup` (the
plugin's configure: interpreter, pytest and plugin import), read from ``/proc`` (absent
elsewhere). What a run spends after the report (pytest's unconfigure, freeing memory, interpreter
exit) is its teardown: the wall time minus the phases.

Timing costs two ``perf_counter`` calls per phase entered: phases wrap whole stages, never items.
Pure: no pytest, no third-party import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

__all__ = ["ORDER", "format_line", "mark_startup", "merge", "phase", "reset", "snapshot"]

ORDER = ("startup", "load", "replay", "scoring", "shift", "statistics", "report")
"""The gate's phases in run order (others, e.g. a user's, follow in name order)."""

_totals: dict[str, float] = {}
_stack: list[tuple[str, list[float]]] = []  # per open phase: name, [start, seconds in phases nested inside]


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the time spent inside the block to phase ``name`` (exclusive of nested phases)."""
    frame = [time.perf_counter(), 0.0]
    _stack.append((name, frame))
    try:
        yield
    finally:
        _stack.pop()
        spent = time.perf_counter() - frame[0]
        _totals[name] = _totals.get(name, 0.0) + spent - frame[1]
        if _stack:
            _stack[-1][1][1] += spent


def _process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), None where it cannot be read."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        # The command name (field 2) may hold spaces: fields are counted after its closing ")".
        start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return age if age >= 0 else None


def mark_startup() -> None:
    """Record ``startup``: the time from the process's start to now (once per process)."""
    if "startup" not in _totals:
        age = _process_age()
        if age is not None:
            _totals["startup"] = age


def snapshot() -> dict[str, float]:
    """Seconds per phase so far, in :data:`ORDER`, rounded to milliseconds. Phases still open
    count up to now (the report's own phase is written into the report while it runs)."""
    totals = dict(_totals)
    now = time.perf_counter()
    inner = 0.0
    for name, (start, nested) in reversed(_stack):  # innermost first: its time is its parent's nested
        spent = now - start
        totals[name] = totals.get(name, 0.0) + spent - nested - inner
        inner = spent
    names = [n for n in ORDER if n in totals] + sorted(n for n in totals if n not in ORDER)
    return {n: round(totals[n], 3) for n in names}


def merge(phases: Mapping[str, float]) -> None:
    """Add another process's phases (an xdist worker's) to this process's: summed per phase, so
    under ``-n`` the figures are seconds of work, not of wall time."""
    for name, seconds in phases.items():
        _totals[name] = _totals.get(name, 0.0) + float(seconds)


def reset() -> None:
    """Forget every phase (tests; a process that runs two gates)."""
    _totals.clear()
    _stack.clear()


def format_line(phases: Mapping[str, float], wall_s: float | None = None) -> str:
    """One terminal line: ``bclone profile: load 1.20s  replay 3.40s ... (total 5.10s)``."""
    parts = [f"{name} {seconds:.2f}s" for name, seconds in phases.items()]
    total = sum(phases.values())
    tail = f"total {total:.2f}s" + ("" if wall_s is None else f" of {wall_s:.2f}s wall")
    return "bclone profile: " + "  ".join(parts) + f"  ({tail})"
