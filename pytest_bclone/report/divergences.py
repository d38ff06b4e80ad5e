"""Every divergent state (clone action != expert action) to Parquet or JSONL.

This is the active-learning queue of the brief: reviewers label the states where the clone left
the expert's path, and the labels feed the next clone. Parquet keeps the nested fields
(``expert_action``, ``clone_action``, ``scores``) as JSON strings, so the file has one flat,
stable schema whatever the tools' arguments look like; ``cohorts`` stays a list of strings so it
can be filtered on. JSONL keeps everything nested, one state per line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._common import ReportError, atomic_write_text, finish_temp, integer, temp_path_for, text

__all__ = ["DIVERGENCE_COLUMNS", "write_divergences"]

DIVERGENCE_COLUMNS = ("trajectory_id", "step", "cohorts", "expert_action", "clone_action", "scores")
_JSON_COLUMNS = ("expert_action", "clone_action", "scores")


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _check(records: Iterable[Mapping[str, Any]], source: str) -> list[Mapping[str, Any]]:
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ReportError(
                f"{source}: divergence record {i} is a {type(rec).__name__}: expected a dict with "
                f"{', '.join(DIVERGENCE_COLUMNS)}"
            )
        missing = [c for c in ("trajectory_id", "expert_action", "clone_action") if c not in rec]
        if missing:
            raise ReportError(
                f"{source}: divergence record {i} ({text(rec.get('trajectory_id'), '?')}) lacks "
                f"{', '.join(missing)}: every record needs {', '.join(DIVERGENCE_COLUMNS)}"
            )
        out.append(rec)
    return out


def write_divergences(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *,
                      source: str = "--bclone-divergences") -> Path:
    """Write the divergent states to ``.parquet`` or ``.jsonl`` (by extension), atomically.

    Each record: ``trajectory_id``, ``step`` (int or None), ``cohorts`` (list of str),
    ``expert_action`` and ``clone_action`` (dicts), ``scores`` (metric -> {expert, clone}).
    Keys beyond these are kept (as JSON strings in Parquet).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in (".parquet", ".jsonl"):
        raise ReportError(
            f"{source}={str(path)!r}: unknown extension {suffix or '(none)'!r}: divergences are written as "
            ".parquet or .jsonl; name the file e.g. divergences.parquet"
        )
    recs = _check(records, source)
    if suffix == ".jsonl":
        body = "".join(_json({**{c: rec.get(c) for c in DIVERGENCE_COLUMNS}, **rec}) + "\n" for rec in recs)
        return atomic_write_text(path, body, source=source)
    return _write_parquet(recs, path, source)


def _write_parquet(recs: list[Mapping[str, Any]], path: str | os.PathLike[str], source: str) -> Path:
    # pyarrow only here: importing the report package must stay cheap (DESIGN: no pyarrow at load).
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]

    extra = sorted({k for rec in recs for k in rec} - set(DIVERGENCE_COLUMNS))
    columns: dict[str, Any] = {
        "trajectory_id": pa.array([text(r.get("trajectory_id")) for r in recs], pa.string()),
        "step": pa.array([integer(r.get("step")) for r in recs], pa.int64()),
        "cohorts": pa.array([[text(c) for c in (r.get("cohorts") or [])] for r in recs], pa.list_(pa.string())),
    }
    for col in (*_JSON_COLUMNS, *extra):
        columns[col] = pa.array([_json(r.get(col, None)) for r in recs], pa.string())
    table = pa.table(columns)
    target, tmp = temp_path_for(path, source=source)
    try:
        pq.write_table(table, tmp)
    except (OSError, pa.ArrowException) as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{source}={str(path)!r}: cannot write Parquet ({exc}); choose a writable path") from None
    return finish_temp(target, tmp, source=source)
