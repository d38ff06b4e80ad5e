"""SIGTERM to a gate run (how CI cancels a job): every worker and call stops, the reports are written
and say the run is incomplete, and the gate blocks. Driven as CI does: a pytest process, a signal."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the run's processes")

from pytest_bclone.testing import OpenAIServer, Reply

from .runtime_support import expert_like, make_project

SLOW_S = 0.25
"""Each answer takes this long: the run is mid-replay when the signal comes."""


def _slow(request: dict[str, Any]) -> Reply:
    answer = expert_like(request)
    answer.delay = SLOW_S
    return answer


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of the run's process group remains (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":  # state, ppid, pgrp
            return True
    return False


def _sigterm_mid_replay(pytester: pytest.Pytester, *args: str) -> tuple[subprocess.Popen[str], str, OpenAIServer]:
    server = OpenAIServer(_slow).start()
    make_project(pytester, server.base_url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    # A session of its own: the test can tell when every process of the run (workers too) is gone.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--bclone-concurrency=2",
                             "--bclone-report-json=report.json", "--bclone-report-md=report.md", *args],
                            cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while server.request_count < 6:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the run never started replaying"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        server.close()
        raise
    return proc, out, server


def _assert_gone_and_quiet(proc: subprocess.Popen[str] | subprocess.Popen[bytes], server: OpenAIServer,
                           alive: str) -> int:
    """Every process of the run's group is gone within 10 s, and no model call follows for 1.5 s;
    returns the requests the server had by then."""
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), alive
    sent = server.request_count
    time.sleep(1.5)
    assert server.request_count == sent, f"{server.request_count - sent} calls after the run ended"
    return sent


def _assert_stopped_and_reported_incomplete(pytester: pytest.Pytester, proc: subprocess.Popen[str], out: str,
                                            server: OpenAIServer) -> None:
    try:
        sent = _assert_gone_and_quiet(proc, server, "a worker outlived its controller")
        assert sent < 2 * (16 + 12 + 3), "the run was not interrupted mid-replay"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        server.close()
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["gate"]["decision"] == "BLOCKED", report["gate"]
    assert report["run"].get("interrupted") == "SIGTERM", report["run"]
    gate_line = next(line for line in out.splitlines() if line.startswith("BCLONE GATE:"))
    assert gate_line.startswith("BCLONE GATE: BLOCKED") and "incomplete" in gate_line and "SIGTERM" in gate_line
    assert "incomplete" in (pytester.path / "report.md").read_text()


def test_sigterm_under_xdist_stops_every_worker_and_call_and_reports_incomplete(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    proc, out, server = _sigterm_mid_replay(pytester, "-n", "2")
    _assert_stopped_and_reported_incomplete(pytester, proc, out, server)


def test_sigterm_without_xdist_stops_the_calls_in_flight_and_reports_incomplete(pytester: pytest.Pytester) -> None:
    proc, out, server = _sigterm_mid_replay(pytester, "-p", "no:xdist")
    _assert_stopped_and_reported_incomplete(pytester, proc, out, server)


def test_a_worker_whose_controller_is_killed_stops_calling(pytester: pytest.Pytester) -> None:
    """SIGKILL cannot be handled: the workers notice their parent is gone and stop themselves."""
    pytest.importorskip("xdist")
    server = OpenAIServer(_slow).start()
    try:
        make_project(pytester, server.base_url)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                            os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
                                 "--bclone-concurrency=2"], cwd=pytester.path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while server.request_count < 6:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        _assert_gone_and_quiet(proc, server, "an orphaned worker is still running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        server.close()
