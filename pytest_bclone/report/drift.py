"""Baselines and drift: compare this run's clone with an earlier report, cohort by cohort.

A retrained clone that silently drops on one cohort is the failure mode the brief warns about
("silent quality drift after each retraining cycle"): the gate may still pass it against the
expert while it got worse than the clone already in production. ``--bclone-save-baseline`` keeps a
run's report; ``--bclone-baseline`` loads it and :func:`compare_baseline` flags every
(cohort, metric) whose clone mean dropped by more than ``--bclone-drift-margin`` points.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._common import SCHEMA_ID, ReportError, number, rows, section, text
from .jsonio import write_json
from .schema import validate_summary

__all__ = ["compare_baseline", "load_baseline", "save_baseline"]


def save_baseline(summary: Mapping[str, Any], path: str | os.PathLike[str], *,
                  source: str = "--bclone-save-baseline") -> Path:
    """Save this run's report as the next run's baseline (validated first, so it loads later)."""
    validate_summary(summary, source=f"the report summary to save with {source}")
    return write_json(summary, path, source=source)


def load_baseline(path: str | os.PathLike[str], *, source: str = "--bclone-baseline") -> dict[str, Any]:
    """Load and validate a baseline report; clear errors for a missing file, non-JSON, wrong schema."""
    where = f"{source}={str(path)!r}"
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(
            f"{where}: no such file: create a baseline with --bclone-save-baseline={path} (or "
            "--bclone-report-json) on the run you want to compare against, or drop the option"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{where}: cannot read the baseline ({exc}); pass a readable JSON report") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): expected a report written "
            "by --bclone-report-json or --bclone-save-baseline"
        ) from None
    if not isinstance(data, dict) or "schema" not in data:
        raise ReportError(
            f"{where}: not a pytest-bclone report (no 'schema' key at the top level): expected a file written "
            "by --bclone-report-json or --bclone-save-baseline"
        )
    if data["schema"] != SCHEMA_ID:
        raise ReportError(
            f"{where}: written with report schema {data['schema']!r}, this pytest-bclone reads {SCHEMA_ID!r}: "
            "re-run the baseline's clone with this version and --bclone-save-baseline to refresh it"
        )
    validate_summary(data, source=f"baseline report {where}")
    return data


def _clone_means(summary: Mapping[str, Any]) -> dict[tuple[str, str], float | None]:
    """(cohort, metric) -> clone mean; verdicts override scores (they are what was gated).

    When a metric was computed in several modes, the step-mode figure is kept for scores (its
    items are teacher-forced and most stable) unless a verdict names the pair.
    """
    means: dict[tuple[str, str], float | None] = {}
    modes: dict[tuple[str, str], str] = {}
    for s in rows(summary, "scores"):
        key = (text(s.get("cohort")), text(s.get("metric")))
        if key in means and modes.get(key) == "step":
            continue
        means[key] = number(s.get("clone_mean"))
        modes[key] = text(s.get("mode"))
    for v in rows(summary, "verdicts"):
        means[(text(v.get("cohort")), text(v.get("metric")))] = number(v.get("clone_mean"))
    return means


def compare_baseline(summary: Mapping[str, Any], baseline_summary: Mapping[str, Any], margin: float,
                     *, baseline: str | None = None) -> dict[str, Any]:
    """Drift of the clone against a baseline report: one row per (cohort, metric) present in both.

    ``drop = (baseline clone mean - current clone mean) * 100`` points, positive when the clone got
    worse; a row is flagged when ``drop > margin``. Pairs with an unknown mean on either side are
    listed with ``drop = null`` and never flagged. ``baseline`` names the baseline in the report
    (default: its dataset reference and creation time).
    """
    m = number(margin)
    if m is None or m < 0:
        raise ReportError(
            f"drift margin {margin!r}: expected a number of points >= 0 such as 2 "
            "(--bclone-drift-margin)"
        )
    now, before = _clone_means(summary), _clone_means(baseline_summary)
    out_rows: list[dict[str, Any]] = []
    for key in [k for k in now if k in before]:
        clone, base = now[key], before[key]
        drop = None if clone is None or base is None else round((base - clone) * 100, 6)
        out_rows.append({
            "cohort": key[0], "metric": key[1], "baseline_clone": base, "clone": clone, "drop": drop,
            # A tolerance keeps float noise exactly at the margin from flagging (0.9 - 0.88 != 0.02).
            "flagged": drop is not None and drop > m + 1e-9 and math.isfinite(drop),
        })
    if baseline is None:
        ds = section(baseline_summary, "dataset")
        baseline = f"{text(ds.get('ref'), 'unknown dataset')} ({text(baseline_summary.get('created'), 'undated')})"
    return {"baseline": baseline, "margin": m, "rows": out_rows}
