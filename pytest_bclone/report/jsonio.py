"""The JSON report: the summary dict itself, written atomically.

The JSON report *is* the summary (schema :data:`~pytest_bclone.report.REPORT_SCHEMA`), so a later
run can load it as its baseline (:mod:`pytest_bclone.report.drift`) and dashboards can read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._common import ReportError, atomic_write_text

__all__ = ["dumps", "write_json"]


def dumps(summary: Mapping[str, Any]) -> str:
    """The summary as pretty, stable JSON text (NaN/inf are refused: they are not JSON)."""
    try:
        return json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ReportError(
            f"the report summary is not JSON-able ({exc}): every value must be a str, number, bool, null, "
            "list or dict, and numbers must be finite (use null for unknown)"
        ) from None


def write_json(summary: Mapping[str, Any], path: str | os.PathLike[str], *,
               source: str = "--bclone-report-json") -> Path:
    """Write the summary as the JSON report, atomically (temp file + ``os.replace``)."""
    return atomic_write_text(path, dumps(summary), source=source)
