"""One importer interface for ``bclone dataset import --format ...``.

An importer is a function ``(path, options, skipped) -> Iterator[row]``: it streams dataset rows
(the schema of :mod:`pytest_bclone.dataset.schema`, one per trajectory) so memory stays bounded
whatever the file size, and appends a :class:`SkippedSource` to ``skipped`` for each unit of the
input (a trace, a run, a line) that it could not read, unless ``options.strict`` is set, in which
case it raises the :class:`~pytest_bclone.errors.BcloneError` instead. Importers are looked up
by name in :data:`FORMATS` and imported lazily, so ``bclone --help`` stays cheap.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BcloneError, ImportFormatError


@dataclass(frozen=True)
class ImportOptions:
    """What every importer is told: default cohorts, a forced split, the eval share, strictness."""

    cohorts: tuple[str, ...] = ()
    split: str | None = None
    eval_fraction: float = 0.2
    strict: bool = False
    keep_unknown_keys: bool = False  # unknown row keys are refused unless this is set


@dataclass(frozen=True)
class SkippedSource:
    """A unit of input an importer could not read: where (``file:line``, ``trace <hex id>``...)
    and why. Reported in the import summary; never silently dropped."""

    where: str
    reason: str


Importer = Callable[[str, ImportOptions, list[SkippedSource]], Iterator[dict[str, Any]]]

# format name -> "module:function" (relative to pytest_bclone.dataset), imported on first use.
FORMATS: dict[str, str] = {
    "openai-jsonl": "openai_jsonl:iter_rows",
    "tau-bench": "tau_bench:iter_rows",
    "otel": "otel:iter_rows",
    "openinference": "otel:iter_rows",  # the OpenInference convention is read by the otel importer
    "langfuse": "langfuse:iter_rows",
}


def get_importer(fmt: str) -> Importer:
    """The importer of ``fmt``; raises ImportFormatError naming the known formats."""
    target = FORMATS.get(fmt)
    if target is None:
        raise ImportFormatError(f"unknown import format {fmt!r}; known formats: {', '.join(sorted(FORMATS))}")
    module, _, func = target.partition(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    fn: Importer = getattr(mod, func)
    return fn


# ---------------------------------------------------------------------------------------------
# Helpers shared by importers
# ---------------------------------------------------------------------------------------------
PARQUET_MAGIC = b"PAR1"


def skip_or_raise(error: BcloneError, where: str, options: ImportOptions, skipped: list[SkippedSource]) -> None:
    """Record ``error`` as a skipped source, or raise it under ``options.strict``."""
    if options.strict:
        raise error
    reason = str(error)
    if reason.startswith(where + ": "):  # the summary prints where, then the reason: say it once
        reason = reason[len(where) + 2:]
    skipped.append(SkippedSource(where, reason))


def open_checked(path: str, what: str) -> Any:
    """Open ``path`` for binary reading; one clear error for a missing file, a directory, a Parquet file."""
    if os.path.isdir(path):
        raise ImportFormatError(f"{path} is a directory; give the {what} file itself")
    try:
        f = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {path!r}: {exc.strerror}; check the path") from None
    if f.read(4) == PARQUET_MAGIC:
        f.close()
        raise ImportFormatError(
            f"{path} is a Parquet file, not {what}; a Phoenix span dataframe imports with --format otel, "
            "anything else must be exported as JSON lines first"
        )
    f.seek(0)
    return f


def iter_text_lines(
    path: str, what: str = "JSON lines", on_error: Callable[[BcloneError], None] | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of ``path``, decoded as UTF-8, streamed.

    A line with NUL bytes or invalid UTF-8 is an :class:`ImportFormatError` naming the file, line
    and column; with ``on_error`` it is reported there and the line skipped (``validate`` lists
    every bad line).
    """
    with open_checked(path, what) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                if b"\x00" in raw:
                    raise ImportFormatError(
                        f"{path}:{lineno}: binary data (a NUL byte at column {raw.index(0) + 1}); expected {what} "
                        "as UTF-8 text: is this the right file?"
                    )
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ImportFormatError(
                        f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                        f"expected {what} encoded as UTF-8: re-export the file as UTF-8"
                    ) from None
            except ImportFormatError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            if text and not text.isspace():  # not text.strip(): that copies every line
                yield lineno, text


def sniff_format(path: str) -> str:
    """The import format of ``path`` when it is unambiguous (``--format auto``), from its first bytes.

    Raises ImportFormatError naming what was seen and the formats to choose from otherwise.
    """
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tasks.json")):
            return "tau-bench"
        raise ImportFormatError(f"{path} is a directory without tasks.json; give a file, or --format")
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {path!r}: {exc.strerror}; check the path") from None
    if head.startswith(PARQUET_MAGIC):
        return "otel"  # the only Parquet input we read: a Phoenix span dataframe
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) < 65536 or exc.start < len(head) - 4:  # not a multi-byte character cut by the 64 KiB read
            line = head.count(b"\n", 0, exc.start) + 1
            col = exc.start - (head.rfind(b"\n", 0, exc.start) + 1) + 1
            raise ImportFormatError(
                f"{path}:{line}: not UTF-8 text (byte 0x{head[exc.start]:02x} at column {col}); every import format "
                "but a Parquet span dataframe is UTF-8 text: is this the right file? (re-export it as UTF-8)"
            ) from None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if os.path.basename(path) == "tasks.json":
        return "tau-bench"
    first_line = text.split("\n", 1)[0]
    try:
        first: Any = json.loads(first_line)
    except ValueError:
        first = None
    keys = set(first) if isinstance(first, dict) else set()
    if "messages" in keys and not keys & {"traceId", "simulations"}:
        return "openai-jsonl"
    if keys & {"resourceSpans", "context", "span_id", "trace_id", "attributes", "context.trace_id"}:
        return "otel"
    if "traceId" in keys and (first.get("type") in {"GENERATION", "SPAN", "EVENT"} or "observations" in keys
                              or "value" in keys):
        return "langfuse"
    if text.startswith("[") and ('"traj"' in text or '"task_id"' in text):
        return "tau-bench"
    if text.startswith("{") and '"simulations"' in text:
        return "tau-bench"
    if text.startswith("{") and ('"resourceSpans"' in text or '"span_id"' in text):
        return "otel"
    raise ImportFormatError(
        f"cannot tell the format of {path} from its start ({text[:60]!r}...); pass --format with one of "
        f"{', '.join(sorted(FORMATS))}"
    )
