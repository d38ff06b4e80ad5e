"""The HTML parity chart scales each row on its own, so a cohort 60 points down does not shrink
the 1-3 point margins of the others to a few pixels."""

from __future__ import annotations

import re

from pytest_bclone.report.html_report import _chart_svg

from .test_report_fixtures import load_summary


def _rows(svg: str) -> list[dict[str, float]]:
    """Per row: the x of its zero line and of its dashed margin line, in SVG units."""
    zeros = [float(x) for x in re.findall(r'<line x1="([\d.]+)" y1="[\d.]+" x2="\1" y2="[\d.]+" stroke="#1f2328"', svg)]
    margins = [float(x) for x in re.findall(r'<line x1="([\d.]+)"[^>]*stroke-dasharray', svg)]
    return [{"zero": z, "margin": m} for z, m in zip(zeros, margins, strict=True)]


def test_a_small_margin_stays_readable_beside_a_large_regression() -> None:
    summary = load_summary()
    base = summary["verdicts"][0]
    summary["verdicts"] = [
        {**base, "cohort": "multi_turn_refunds", "diff": -62.9, "ci_low": -72.9, "ci_high": -50.0, "within": 2.0,
         "status": "fail"},
        {**base, "cohort": "common_intents", "diff": -0.3, "ci_low": -1.9, "ci_high": 0.0, "within": 1.0,
         "status": "inconclusive"},
    ]
    rows = _rows(_chart_svg(summary))
    assert len(rows) == 2
    # The 1-point margin of common_intents spans a readable share of the 598-unit plot (a shared
    # axis from -75 to 0 gave it about 8 units).
    assert rows[1]["zero"] - rows[1]["margin"] > 100
    # Each row has its own ticks: one-point steps for the small row, tens for the large one (a
    # shared axis had one step, 10 points, for both).
    labels = re.findall(r'text-anchor="middle">([-+]?\d+(?:\.\d+)?)</text>', _chart_svg(summary))
    assert {"-1", "-2"} <= set(labels) and {"-60", "-40"} <= set(labels), labels
