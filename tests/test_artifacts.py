"""Artifacts as a user meets them: paths given on the command line land where pytest would put
``--junitxml`` (the invocation directory), the baseline round trip works from there, and every
artifact is written with the same ordinary permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_bclone.dataset.store import DatasetStore

from .conftest import make_row

CONFTEST = '''
from pytest_bclone.agents.recorded import RecordedAgent
from pytest_bclone.records import Action, AgentReply, CallStats


class Clone:
    """The expert's action, except a text reply at step 0 of every 5th trajectory."""

    name = "clone"

    def __init__(self, trajectories):
        self.recorded = RecordedAgent(trajectories)

    async def act(self, state, *, repeat=0):
        if int(state.trajectory_id.split("-")[1]) % 5 == 0 and state.step == 0:
            return AgentReply(Action(text="Let me check."), CallStats())
        reply = await self.recorded.act(state, repeat=repeat)
        return AgentReply(reply.action, CallStats())


def pytest_bclone_make_agent(role, spec, config):
    if spec == "clone":
        from pytest_bclone.plugin import bclone_session
        return Clone(bclone_session(config).dataset.trajectories)
'''

TEST = '''
from pytest_bclone import assert_parity

def test_gate():
    assert_parity("c", within=30, metric="action_match", on_fail="warn")
'''

ARTIFACTS = {
    "--bclone-report-json": "out/report.json",
    "--bclone-report-md": "out/report.md",
    "--bclone-report-html": "out/report.html",
    "--bclone-routes": "out/routes.json",
    "--bclone-divergences": "out/divergences.parquet",
    "--bclone-save-baseline": "out/base.json",
    "--junitxml": "out/junit.xml",
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    rows = []
    for i in range(40):
        row = make_row(i, cohorts=("c",), split="eval")
        row["id"] = f"c-{i:04d}"
        rows.append(row)
    DatasetStore(str(tmp_path / "bclone_datasets")).write_version("support", "v1", rows)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_gate.py").write_text(TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nbclone_dataset = support@v1\nbclone_clone = clone\n")
    (tmp_path / "ci").mkdir()
    return tmp_path


def pytest_in(cwd: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(project / "pytest.ini"),
                           "--rootdir", str(project), str(project / "test_gate.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_artifacts_land_in_the_invocation_directory_with_one_mode(project: Path) -> None:
    ci = project / "ci"
    proc = pytest_in(ci, project, *(f"{flag}={path}" for flag, path in ARTIFACTS.items()))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "could not write" not in proc.stdout, proc.stdout
    modes = {}
    for path in ARTIFACTS.values():
        target = ci / path
        assert target.is_file(), f"{path} not written under the invocation directory: {proc.stdout}"
        assert not (project / path).exists()  # not under the rootdir
        modes[path] = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes  # the Parquet file too (it was 0600)
    assert json.loads((ci / "out" / "report.json").read_text())["verdicts"]


def test_the_baseline_round_trip_works_from_the_same_directory(project: Path) -> None:
    ci = project / "ci"
    first = pytest_in(ci, project, "--bclone-save-baseline=base.json")
    assert (ci / "base.json").is_file(), first.stdout
    second = pytest_in(ci, project, "--bclone-baseline=base.json", "--bclone-report-json=report.json")
    assert "could not" not in second.stdout, second.stdout
    drift = json.loads((ci / "report.json").read_text())["drift"]
    assert drift is not None and drift["baseline"] == str(ci / "base.json")
