"""A one-line, in-place progress display for long replays: calls done, rate, ETA, cache hits and
failures.

The replay runs inside the first gate test, whose output pytest captures; so under pytest the
line goes through pytest's own terminal writer with capture suspended, the way pytest's live
logging does (:func:`terminal_progress`), on its own line so it never overwrites the test file's
name. Outside pytest it goes to stderr. It stays silent for replays that finish within ``delay``
seconds, when the output is not a terminal (CI logs), with ``-q``, and when disabled; it redraws
at most every ``interval`` seconds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "terminal_progress"]

Draw = Callable[[str, bool], None]
"""``draw(text, final)``: show ``text`` in place of the previous status; ``final`` ends the line."""


def _duration(secs: float) -> str:
    seconds = round(secs)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts finished units of work (and how many were cache hits or failed) and redraws one
    status line.

    ``enabled=None`` means "when ``stream`` is a terminal" (the default stream is stderr).
    ``draw`` replaces the stream: the plugin passes one that writes through pytest's terminal
    writer. One instance may serve several replays of a run (:meth:`restart`).
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
        draw: Draw | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = draw is not None or bool(isatty and isatty())
        self.enabled = enabled
        self.delay = delay
        self.interval = interval
        self._draw = draw or self._draw_stream
        self.restart(total, label, unit)

    def restart(self, total: int, label: str | None = None, unit: str | None = None) -> None:
        """Start counting a new replay of ``total`` units (keeps the display settings)."""
        self.total = total
        self.done = self.cached = self.failed = 0
        self.label = label or getattr(self, "label", "bclone replay")
        self.unit = unit or getattr(self, "unit", "calls")
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._shown = False

    def line(self, now: float | None = None) -> str:
        """The status text, e.g. ``bclone replay: 120/2000 calls (6%), 45.3/s, ETA 41s, 80 cached, 0 failed``."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100 * self.done // self.total if self.total else 100
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct}%), {rate:.1f}/s, ETA {eta}, "
                f"{self.cached} cached, {self.failed} failed")

    def advance(self, n: int = 1, *, cached: int = 0, failed: int = 0) -> None:
        """Count ``n`` finished units (``cached`` of them answered by the cache, ``failed`` failed)
        and redraw if it is time to."""
        self.done += n
        self.cached += cached
        self.failed += failed
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.start < self.delay or now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self._shown = True
        self._draw(self.line(now), False)

    def close(self) -> None:
        """End the status line (only if one was drawn): a final count and a newline."""
        if self._shown:
            self._draw(self.line(), True)
            self._shown = False

    def note(self, text: str) -> None:
        """Show one line of news (e.g. a batch's status) where the status line goes, if enabled."""
        if self.enabled:
            self._draw(text, True)

    def _draw_stream(self, text: str, final: bool) -> None:
        self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
        self.stream.flush()


def terminal_progress(config: Any) -> Progress | None:
    """A :class:`Progress` that draws through pytest's terminal writer, or None when it must stay
    quiet: not a terminal, ``-q``, or an xdist worker (whose output the controller does not show).

    Drawing suspends pytest's output capture (the replay runs inside a test) and starts on a
    fresh line, then makes the reporter write the test file's name again before the next result,
    so ``-s`` output and the file name are never overwritten.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or hasattr(config, "workerinput") or config.option.verbose < 0:
        return None
    if not getattr(reporter, "isatty", False):
        return None
    writer = reporter._tw  # pytest's terminal writer: how its own live logging writes

    def draw(text: str, final: bool) -> None:
        def write() -> None:
            if writer.width_of_current_line and not getattr(draw, "started", False):
                writer.line()  # leave "test_x.py ..." intact
            draw.started = True  # type: ignore[attr-defined]
            width = max(20, writer.fullwidth - 1)
            writer.write("\r" + text[:width] + "\x1b[K", flush=True)
            if final:
                draw.started = False  # type: ignore[attr-defined]
                # The test's result is still to come: write its file name again on a new line (as
                # pytest does at a test's start), so the result is not left under the status line.
                reporter.currentfspath = -2
                nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
                if nodeid and config.option.verbose <= 0:
                    reporter.write_fspath_result(nodeid, "")
                else:
                    writer.line()  # -v writes the test's location line itself

        if capman is not None:
            with capman.global_and_fixture_disabled():
                write()
        else:
            write()

    return Progress(0, draw=draw)
