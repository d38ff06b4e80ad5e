"""Live replay progress as a user sees it: pytest in a pseudo-terminal shows an in-place status
line (calls done, rate, ETA, cache hits, failures) through its terminal writer, without wiping
the test file's name; a non-terminal run and ``-q`` show none."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.progress import Progress

from .conftest import make_row

CONFTEST = '''
import asyncio
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import AgentReply, CallStats


class SlowClone:
    """The expert's action after a short wait; every 10th trajectory's call fails."""

    name = "slow-clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        await asyncio.sleep(0.06)
        if int(state.trajectory_id.split("-")[1]) % 10 == 0:
            return AgentReply(None, CallStats(error="HTTP 500"))
        reply = await self.recorded.act(state, repeat=repeat)
        return AgentReply(reply.action, CallStats())


def pytest_bclone_make_agent(role, spec, config):
    if spec == "slow":
        from pytest_bclone.plugin import bclone_session
        return SlowClone(bclone_session(config).dataset.trajectories)
'''

TEST = '''
from pytest_bclone import assert_parity

def test_gate():
    print("OUTPUT-OF-THE-TEST")
    assert_parity("c", within=50, metric="action_match", on_fail="warn")
'''


RESULT_LINE = re.compile(r"^test_gate\.py \.", re.MULTILINE)


def plain(text: str) -> str:
    """Terminal output without colour codes, with carriage-return redraws as line breaks."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r\n", "\n").replace("\r", "\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    rows = []
    for i in range(120):
        row = make_row(i, cohorts=("c",), split="eval")
        row["id"] = f"c-{i:04d}"
        rows.append(row)
    DatasetStore(str(tmp_path / "bclone_datasets")).write_version("support", "v1", rows)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_gate.py").write_text(TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nbclone_dataset = support@v1\nbclone_clone = slow\n"
                                         "bclone_concurrency = 4\n")
    return tmp_path


def run_in_pty(cwd: Path, *args: str, timeout: float = 180.0) -> tuple[int, str]:
    """Run pytest with its stdout and stderr on a pseudo-terminal; return (exit code, everything shown)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks: list[bytes] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_a_terminal_run_shows_live_progress_in_place_and_keeps_the_file_name(project: Path) -> None:
    code, shown = run_in_pty(project)
    assert code == 1 and "BCLONE GATE: BLOCKED" in shown, shown  # the failed calls leave no cohort passed
    status = [part for part in shown.split("\r") if part.startswith("bclone replay:")]
    assert len(status) >= 2, shown  # drawn more than once, in place (carriage returns)
    final = status[-1].split("\x1b[K")[0]
    assert "240/240 calls (100%)" in final and "/s, ETA" in final
    assert "0 cached" in final and "24 failed" in final  # 12 trajectories x 2 steps fail
    # The status line starts on a line of its own and the test file's name is shown again for the
    # result, so neither is overwritten.
    assert RESULT_LINE.search(plain(shown.split("bclone replay:")[-1])), shown


def test_with_s_the_test_output_and_file_name_survive(project: Path) -> None:
    code, shown = run_in_pty(project, "-s")
    assert code == 1 and "BCLONE GATE: BLOCKED" in shown, shown  # the failed calls leave no cohort passed
    head, _, tail = shown.partition("bclone replay:")
    assert "test_gate.py" in head and "OUTPUT-OF-THE-TEST" in head  # neither wiped by the status line
    assert RESULT_LINE.search(plain(tail)), shown  # the result is written under its file name again


def test_quiet_and_non_terminal_runs_show_no_progress(project: Path) -> None:
    code, shown = run_in_pty(project, "-q")
    assert code == 1 and "bclone replay:" not in shown
    piped = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True, timeout=180, check=False)
    assert piped.returncode == 1 and "bclone replay:" not in piped.stdout + piped.stderr


def test_progress_line_counts_cache_hits_and_failures() -> None:
    drawn: list[tuple[str, bool]] = []
    bar = Progress(4, delay=0.0, interval=0.0, draw=lambda text, final: drawn.append((text, final)))
    bar.advance(cached=1)
    bar.advance(failed=1)
    bar.advance(2, cached=1)
    bar.close()
    assert drawn[-1][1] is True
    assert drawn[-1][0].startswith("bclone replay: 4/4 calls (100%)")
    assert drawn[-1][0].endswith("ETA 0s, 2 cached, 1 failed")
    bar.restart(10, "bclone rollout", "episodes")
    assert bar.line().startswith("bclone rollout: 0/10 episodes (0%)") and bar.line().endswith("0 cached, 0 failed")
