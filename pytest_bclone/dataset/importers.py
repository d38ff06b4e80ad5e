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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ImportFormatError


@dataclass(frozen=True)
class ImportOptions:
    """What every importer is told: default cohorts, a forced split, the eval share, strictness."""

    cohorts: tuple[str, ...] = ()
    split: str | None = None
    eval_fraction: float = 0.2
    strict: bool = False


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
