"""Shared pieces of the renderers: the report error, atomic writes and number formatting.

Everything here is pure and cheap to import (no pytest, no pyarrow, no jsonschema, no tabulate):
the plugin may import the report package at load time.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import BcloneError

SCHEMA_ID = "pytest-bclone/report/1"
"""The value of ``summary["schema"]``; bumped whenever a field changes meaning or disappears."""

DECISIONS = ("SHIP", "SHIP WITH HYBRID ROUTE", "BLOCKED", "NO DECISION")


class ReportError(BcloneError):
    """A report that cannot be written or read: bad summary, bad path, unknown extension, bad baseline.

    Like every pytest-bclone error, the message names the value, where it came from and the fix.
    """


# -- atomic writes ---------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, source: str) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``.

    A reader (a CI artifact upload, a router reloading its config) therefore sees either the old
    file or the complete new one, never a half-written file. Parent directories are created.
    ``source`` names where the path came from (e.g. ``--bclone-report-html``) for the error.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the target: os.replace is only atomic within one filesystem.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ReportError(
            f"{source}: cannot write {str(target)!r}: {exc.strerror or exc}; "
            "choose a path in a writable directory"
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _ordinary_permissions(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise ReportError(
            f"{source}: cannot write {str(target)!r}: {exc.strerror or exc}; "
            "choose a path in a writable directory (and not an existing directory)"
        ) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, source: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), source=source)


def temp_path_for(path: str | os.PathLike[str], *, source: str) -> tuple[Path, Path]:
    """A fresh temp path beside ``path`` for writers that need a file name (pyarrow).

    Returns ``(target, temp)``; the caller writes ``temp`` and calls :func:`finish_temp`.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise ReportError(
            f"{source}: cannot write {str(target)!r}: {exc.strerror or exc}; choose a path in a writable directory"
        ) from None
    return target, Path(tmp)


def finish_temp(target: Path, tmp: Path, *, source: str) -> Path:
    """Move a completely written temp file over ``target`` (atomic)."""
    try:
        _ordinary_permissions(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        _unlink_quietly(str(tmp))
        raise ReportError(
            f"{source}: cannot write {str(target)!r}: {exc.strerror or exc}; choose a path in a writable directory"
        ) from None
    return target


def _ordinary_permissions(path: str | os.PathLike[str]) -> None:
    """mkstemp creates 0600; a report is an ordinary file, readable as the umask allows (every
    artifact, JSON to Parquet, ends with the same mode)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -- reading the summary defensively ----------------------------------------------------------------
# Renderers never trust that optional parts are present or non-null: a run with no items, a run
# interrupted early, or a summary from a newer minor version must still render.


def section(summary: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``summary[key]`` when it is a dict, else an empty dict."""
    value = summary.get(key)
    return value if isinstance(value, Mapping) else {}


def rows(parent: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """``parent[key]`` as a list of dicts (non-dict entries and a null list are dropped)."""
    value = parent.get(key)
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def number(value: object) -> float | None:
    """A finite real number as float, else None (bools, NaN, strings and None are 'unknown')."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def integer(value: object) -> int | None:
    """An integral number as int, else None."""
    num = number(value)
    return int(num) if num is not None and num == int(num) else None


def text(value: object, default: str = "") -> str:
    """A value as display text; None becomes ``default``."""
    if value is None:
        return default
    return value if isinstance(value, str) else str(value)


# -- formatting ------------------------------------------------------------------------------------

NA = "n/a"


def fmt_points(value: object, *, signed: bool = True) -> str:
    """A difference already in points: ``-3.8``, ``+1.2``, ``0.0``; unknown -> ``n/a``."""
    num = number(value)
    if num is None:
        return NA
    out = f"{num:+.1f}" if signed else f"{num:.1f}"
    return "0.0" if out in ("-0.0", "+0.0") else out


def fmt_mean(value: object) -> str:
    """A mean score in [0, 1] shown in points (x100) so it reads on the same scale as the diff."""
    num = number(value)
    return NA if num is None else f"{num * 100:.1f}"


def fmt_interval(low: object, high: object) -> str:
    """``[-6.1, -1.5]`` in points; ``n/a`` when either end is unknown."""
    lo, hi = number(low), number(high)
    if lo is None or hi is None:
        return NA
    return f"[{fmt_points(lo)}, {fmt_points(hi)}]"


def fmt_margin(within: object) -> str:
    """The lowest acceptable difference: ``-3.0``; a zero margin is the exact zero-regression rule."""
    num = number(within)
    if num is None:
        return NA
    return "0 regr." if num == 0 else fmt_points(-num)


def fmt_pct(value: object, digits: int = 1) -> str:
    """A percentage that is already x100: ``61.3%``."""
    num = number(value)
    return NA if num is None else f"{num:.{digits}f}%"


def fmt_share(value: object, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage."""
    num = number(value)
    return NA if num is None else f"{num * 100:.{digits}f}%"


def fmt_usd(value: object, known: object = True) -> str:
    """Dollars with enough digits for sub-cent test runs; unknown prices say so."""
    num = number(value)
    if known is False:
        return "unpriced"
    if num is None:
        return NA
    if num == 0:
        return "$0"
    return f"${num:,.2f}" if abs(num) >= 1 else f"${num:.4f}"


def fmt_seconds(value: object) -> str:
    """Latency: ``0.3 ms`` below 10 ms (a sub-millisecond answer is not ``0 ms``), ``850 ms`` below
    a second, ``1.24 s`` above."""
    num = number(value)
    if num is None:
        return NA
    if num < 0.01:
        return f"{num * 1000:.1f} ms"
    return f"{num * 1000:.0f} ms" if num < 1 else f"{num:.2f} s"


def fmt_count(value: object) -> str:
    """An integer with thousands separators; unknown -> ``n/a``."""
    num = integer(value)
    return NA if num is None else f"{num:,}"


def fmt_n(verdict: Mapping[str, Any], unit: str = " traj.") -> str:
    """``412`` or ``412 (87 traj.)`` when the items were clustered by trajectory."""
    n = fmt_count(verdict.get("n"))
    clusters = integer(verdict.get("n_clusters"))
    return n if clusters is None else f"{n} ({clusters:,}{unit})"


def verdict_label(verdict: Mapping[str, Any], *, detail: bool = True) -> str:
    """``PASS``, ``FAIL (3 regr.)``, ``INCONCLUSIVE (need ~640)``: the status with its key figure.

    ``detail=False`` leaves out the items needed (narrow tables say it in a note instead).
    """
    status = text(verdict.get("status"), "unknown").upper()
    regressions = integer(verdict.get("regressions"))
    needed = integer(verdict.get("n_needed"))
    if status == "FAIL" and regressions and number(verdict.get("within")) == 0:
        return f"FAIL ({regressions} regr.)"
    if status == "INCONCLUSIVE" and needed and detail:
        return f"INCONCLUSIVE (need ~{needed:,})"
    return status


def recorded_expert(summary: Mapping[str, Any], cohort: object) -> str:
    """The dataset's own scores of the expert on ``cohort`` (``expert_scores`` as recorded, e.g. a
    tau-bench reward), shown beside the replayed figures: ``"task_completion 96.4 (n 28)"``; '' when
    the rows recorded none."""
    return "; ".join(f"{text(r.get('score'))} {fmt_mean(r.get('mean'))} (n {fmt_count(r.get('n'))})"
                     for r in rows(summary, "recorded_expert") if r.get("cohort") == cohort)


def score_diff_points(expert_mean: object, clone_mean: object) -> float | None:
    """Clone minus expert in points from two means in [0, 1]."""
    e, c = number(expert_mean), number(clone_mean)
    return None if e is None or c is None else (c - e) * 100


def confidence_label(summary: Mapping[str, Any]) -> str:
    """``95%``: the run's confidence level, for the interval column's header."""
    level = number(section(summary, "run").get("confidence"))
    if level is None:
        levels = {number(v.get("confidence")) for v in rows(summary, "verdicts")} - {None}
        level = levels.pop() if len(levels) == 1 else None
    return f"{level * 100:g}%" if level is not None else ""


def join_nonempty(parts: Iterable[str], sep: str = ", ") -> str:
    """Join the non-empty strings."""
    return sep.join(p for p in parts if p)


def cohort_counts(value: object) -> str:
    """``tool_heavy 5, long_tail 2`` from ``{cohort: count}``, largest first."""
    if not isinstance(value, Mapping):
        return ""
    items = sorted(((text(k), integer(v) or 0) for k, v in value.items()), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:,}" for k, v in items)


def action_text(value: object) -> str:
    """An action as readable text: strings as they are, dicts/lists as compact JSON."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    import json

    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def shorten(value: str, width: int) -> str:
    """Cut ``value`` to ``width`` characters (ASCII ``...`` marks the cut), on one line."""
    one_line = " ".join(value.split())
    return one_line if len(one_line) <= width else one_line[: max(1, width - 3)] + "..."


OVERLAP_NOTE = "cohorts overlap: a call counts in every cohort of its trajectory"
"""Said wherever per-cohort counts are shown beside a total they can sum past."""
