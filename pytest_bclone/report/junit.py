"""JUnit XML properties of one parity test.

The plugin appends these pairs to ``item.user_properties``; pytest's ``--junitxml`` writes them as
``<property name="bclone_diff" value="-4.1"/>`` under the test case, so CI dashboards (GitLab,
Jenkins, Azure) can chart the figures of each cohort without parsing logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._common import integer, number, text

__all__ = ["JUNIT_FIELDS", "junit_properties"]

JUNIT_FIELDS: tuple[tuple[str, str], ...] = (
    ("bclone_cohort", "cohort"),
    ("bclone_metric", "metric"),
    ("bclone_mode", "mode"),
    ("bclone_n", "n"),
    ("bclone_n_clusters", "n_clusters"),
    ("bclone_expert", "expert_mean"),
    ("bclone_clone", "clone_mean"),
    ("bclone_diff", "diff"),
    ("bclone_ci_low", "ci_low"),
    ("bclone_ci_high", "ci_high"),
    ("bclone_confidence", "confidence"),
    ("bclone_within", "within"),
    ("bclone_status", "status"),
    ("bclone_reason", "reason"),
    ("bclone_n_needed", "n_needed"),
    ("bclone_regressions", "regressions"),
    ("bclone_errors", "errors"),
    ("bclone_total", "total"),
    ("bclone_error_rate", "error_rate"),
    ("bclone_p_value", "p_value"),
    ("bclone_p_adjusted", "p_adjusted"),
    ("bclone_on_fail", "on_fail"),
    ("bclone_action", "action"),
)
"""(property name, verdict record key), in the order they are written."""


def _value(value: object) -> str:
    """A property value: numbers without float noise (``-4.1``, not ``-4.100000000000001``)."""
    if value is None:
        return ""  # same property set on every test case; empty means unknown
    if isinstance(value, bool):
        return "true" if value else "false"
    as_int = integer(value)
    if as_int is not None and not isinstance(value, float):
        return str(as_int)
    num = number(value)
    if num is not None:
        return format(num, ".6g")
    return text(value)


def junit_properties(verdict_record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The figures of one parity test as ``(name, value)`` pairs for ``item.user_properties``.

    Every pair is present on every test (values are ``""`` when unknown), so a dashboard column
    never disappears for an inconclusive cohort.
    """
    return [(name, _value(verdict_record.get(key))) for name, key in JUNIT_FIELDS]
