"""The former OpenInference importer, now one convention of :mod:`pytest_bclone.dataset.otel`.

Kept so ``from pytest_bclone.dataset.openinference import read_openinference`` still works; the
``otel`` importer reads OpenInference, traceAI, the GenAI semantic conventions and OpenLLMetry.
"""

from __future__ import annotations

from .otel import STEP_ATTRIBUTE, Span, iter_rows, read_openinference

__all__ = ["STEP_ATTRIBUTE", "Span", "iter_rows", "read_openinference"]
