"""The phase split of a gate run: exclusive nested phases, open phases counted up to now, workers'
phases added, and ``run.phases_s`` / ``--bclone-profile`` through a real pytester gate."""

from __future__ import annotations

import json
import time

import pytest

from pytest_bclone import timing
from pytest_bclone.dataset.store import DatasetStore

from .test_gate_plugin import CONFTEST, INI, _rows


@pytest.fixture(autouse=True)
def _fresh() -> None:
    timing.reset()


def test_nested_phases_are_exclusive_and_add_up():
    start = time.perf_counter()
    with timing.phase("scoring"):
        time.sleep(0.02)
        with timing.phase("replay"):
            time.sleep(0.05)
        with timing.phase("shift"):
            time.sleep(0.01)
    total = time.perf_counter() - start
    got = timing.snapshot()
    assert list(got) == ["replay", "scoring", "shift"]  # run order, not entry order
    assert got["replay"] >= 0.05 and got["shift"] >= 0.01
    # the outer phase keeps only its own time: the inner sleeps are not counted twice
    assert 0.02 <= got["scoring"] < 0.05
    assert sum(got.values()) == pytest.approx(total, abs=0.005)


def test_an_open_phase_counts_up_to_now_and_workers_are_added():
    with timing.phase("report"):
        with timing.phase("statistics"):
            time.sleep(0.02)
            inside = timing.snapshot()
        time.sleep(0.01)
        outer = timing.snapshot()
    assert inside["statistics"] >= 0.02 and inside["report"] < 0.01
    assert outer["statistics"] == pytest.approx(inside["statistics"], abs=0.005)
    assert outer["report"] >= 0.01
    timing.merge({"replay": 1.5, "report": 2.0})
    done = timing.snapshot()
    assert done["replay"] == 1.5 and done["report"] >= 2.01
    assert timing.format_line({"load": 1.0, "replay": 2.5}) == "bclone profile: load 1.00s  replay 2.50s  (total 3.50s)"


def test_the_report_and_the_profile_line_split_a_gate_run(pytester: pytest.Pytester):
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", _rows())
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_cohorts="""
        from pytest_bclone import assert_parity

        def test_good():
            assert_parity(cohort="good", within=2)
    """)
    start = time.perf_counter()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--bclone-profile", "--bclone-report-json=r.json")
    wall = time.perf_counter() - start
    result.assert_outcomes(passed=1)
    phases = json.loads((pytester.path / "r.json").read_text())["run"]["phases_s"]
    assert list(phases) == ["startup", "load", "replay", "scoring", "shift", "statistics", "report"]
    assert all(v >= 0 for v in phases.values()) and phases["replay"] > 0 and phases["statistics"] > 0
    assert sum(phases.values()) < wall  # exclusive phases of one process: never more than its wall time
    line = next(line for line in result.stdout.lines if line.startswith("bclone profile: "))
    assert "load " in line and "replay " in line and "statistics " in line and "report " in line
    # without the flag: the report still has the split, the terminal no line
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert not any(line.startswith("bclone profile:") for line in plain.stdout.lines)
