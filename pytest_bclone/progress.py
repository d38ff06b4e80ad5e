"""A one-line progress display on stderr for long replays: done/total, rate, ETA.

It stays silent for replays that finish within ``delay`` seconds, when the stream is not a
terminal (CI logs, captured output), and when disabled; it redraws at most every ``interval``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _duration(secs: float) -> str:
    seconds = round(secs)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts finished units of work and redraws one status line.

    ``enabled=None`` means "when ``stream`` is a terminal" (the default stream is stderr).
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "bclone replay",
        unit: str = "calls",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        delay: float = 2.0,
        interval: float = 0.2,
    ) -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.delay = delay
        self.interval = interval
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._shown = False

    def line(self, now: float | None = None) -> str:
        """The status text, e.g. ``bclone replay: 120/2000 calls (6%), 45.3/s, ETA 41s``."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100 * self.done // self.total if self.total else 100
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct}%), {rate:.1f}/s, ETA {eta}"

    def advance(self, n: int = 1) -> None:
        """Count ``n`` finished units and redraw if it is time to."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._shown = True
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """End the status line (only if one was drawn): a final count and a newline."""
        if self._shown:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
            self._shown = False
