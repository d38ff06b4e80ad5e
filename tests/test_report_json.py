"""The JSON report, baselines and drift."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pytest_bclone.report import (
    REPORT_SCHEMA,
    ReportError,
    compare_baseline,
    load_baseline,
    save_baseline,
    validate_summary,
    write_json,
)

from .test_report_fixtures import empty_summary, load_summary


def test_json_report_is_the_summary_and_validates_against_the_schema(tmp_path: Path) -> None:
    summary = load_summary()
    path = write_json(summary, tmp_path / "reports" / "bclone.json")  # parent directories are created
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == summary
    Draft202012Validator(REPORT_SCHEMA).validate(data)
    validate_summary(data)
    assert os.listdir(path.parent) == ["bclone.json"]  # no temp file left behind


def test_write_json_is_atomic_an_unwritable_target_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "bclone.json"
    path.write_text("old", encoding="utf-8")
    bad = load_summary()
    bad["run"]["wall_s"] = math.nan
    with pytest.raises(ReportError, match="not JSON-able.*numbers must be finite"):
        write_json(bad, path)
    assert path.read_text(encoding="utf-8") == "old"
    with pytest.raises(ReportError, match=r"--bclone-report-json: cannot write .*choose a path"):
        write_json(load_summary(), tmp_path)  # a directory
    assert sorted(os.listdir(tmp_path)) == ["bclone.json"]


def _with_clone_mean(summary: dict[str, Any], cohort: str, metric: str, mean: float) -> dict[str, Any]:
    for record in (*summary["verdicts"], *summary["scores"]):
        if record["cohort"] == cohort and record["metric"] == metric:
            record["clone_mean"] = mean
    return summary


def test_drift_flags_a_drop_beyond_the_margin_and_not_one_within_it() -> None:
    baseline = load_summary()
    now = load_summary()
    _with_clone_mean(baseline, "long_tail", "trajectory_score", 0.870)   # now 0.833: drop 3.7 > 2
    _with_clone_mean(baseline, "tool_heavy", "tool_selection_accuracy", 0.950)  # now 0.936: drop 1.4 <= 2
    _with_clone_mean(baseline, "common_intents", "task_completion", 0.928)  # now 0.908: drop exactly 2.0
    drift = compare_baseline(now, baseline, 2.0, baseline="reports/v7.json")
    by_key = {(r["cohort"], r["metric"]): r for r in drift["rows"]}
    assert drift["baseline"] == "reports/v7.json" and drift["margin"] == 2.0
    assert by_key[("long_tail", "trajectory_score")]["flagged"] is True
    assert by_key[("long_tail", "trajectory_score")]["drop"] == pytest.approx(3.7)
    assert by_key[("tool_heavy", "tool_selection_accuracy")]["flagged"] is False
    assert by_key[("tool_heavy", "tool_selection_accuracy")]["drop"] == pytest.approx(1.4)
    assert by_key[("common_intents", "task_completion")]["flagged"] is False  # at the margin: not beyond it
    assert [k for k, r in by_key.items() if r["flagged"]] == [("long_tail", "trajectory_score")]
    # Every (cohort, metric) present in both is compared, informational scores included.
    assert ("long_tail", "reasoning_quality") in by_key
    # The drift dict slots into the summary and keeps it valid.
    now["drift"] = drift
    validate_summary(now)


def test_drift_ignores_pairs_missing_on_one_side_and_never_flags_unknown_means() -> None:
    baseline = load_summary()
    baseline["scores"] = [s for s in baseline["scores"] if s["cohort"] != "safety"]
    baseline["verdicts"] = [v for v in baseline["verdicts"] if v["cohort"] != "safety"]
    drift = compare_baseline(empty_summary(), baseline, 2.0)
    assert drift["rows"] == [{"cohort": "common_intents", "metric": "task_completion", "baseline_clone": 0.908,
                              "clone": None, "drop": None, "flagged": False}]
    assert drift["baseline"] == "support@v8 (2026-05-14T09:41:27+00:00)"
    with pytest.raises(ReportError, match=r"drift margin -1: expected a number of points >= 0.*--bclone-drift-margin"):
        compare_baseline(load_summary(), baseline, -1)


def test_save_and_load_baseline_round_trip(tmp_path: Path) -> None:
    path = save_baseline(load_summary(), tmp_path / "baseline.json")
    assert load_baseline(path) == load_summary()
    bad = load_summary()
    del bad["gate"]
    with pytest.raises(ReportError, match="summary to save with --bclone-save-baseline does not match"):
        save_baseline(bad, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_load_baseline_errors_name_the_file_the_option_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ReportError, match=r"--bclone-baseline='.*nope.json': no such file: create a baseline with "
                                          r"--bclone-save-baseline="):
        load_baseline(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError, match=r"not JSON \(line 1, column 2: .*\): expected a report written by "
                                          r"--bclone-report-json"):
        load_baseline(garbage)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}), encoding="utf-8")
    with pytest.raises(ReportError, match=r"not a pytest-bclone report \(no 'schema' key"):
        load_baseline(other)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**load_summary(), "schema": "pytest-bclone/report/2"}), encoding="utf-8")
    with pytest.raises(ReportError, match=r"written with report schema 'pytest-bclone/report/2', this pytest-bclone "
                                          r"reads 'pytest-bclone/report/1': re-run"):
        load_baseline(newer)
    broken = tmp_path / "broken.json"
    data = load_summary()
    data["verdicts"][0]["status"] = "great"
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ReportError, match=r"baseline report --bclone-baseline='.*broken.json' does not match report "
                                          r"schema .* at verdicts.0.status"):
        load_baseline(broken)
