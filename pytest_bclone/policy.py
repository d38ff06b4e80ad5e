"""The release policy the user declares: per cohort, what a failing verdict does and what to do next.

The policy is data, not code in the core: ``assert_parity(..., on_fail=..., remedy=...)`` per
assertion, or per cohort in the ini key ``bclone_policy``, one line per cohort::

    bclone_policy =
        common_intents = block | retrain the clone with more common-intent rows
        long_tail      = route | keep long-tail traffic on the expert; add long-tail rows
        safety         = block | block the deploy: the clone regressed on refusal states

``on_fail`` is ``block`` (fail the test, block the release), ``route`` (keep the cohort on the
expert, report the test as xfail) or ``warn`` (report only). The remedy is free text printed as
the cohort's next step when it fails; either part may be left empty (``long_tail = route``,
``safety = | page the safety team``). An assertion's own arguments win over the ini line.

Cheap to import (config.py parses the ini key with :func:`parse_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_ON_FAIL", "ON_FAIL", "CohortPolicy", "parse_policy", "resolve"]

ON_FAIL = ("block", "route", "warn")
DEFAULT_ON_FAIL = "block"


@dataclass(frozen=True, slots=True)
class CohortPolicy:
    """One cohort's line of the policy: ``on_fail`` and ``remedy`` (None where not declared)."""

    on_fail: str | None = None
    remedy: str | None = None


def parse_policy(lines: list[str]) -> dict[str, CohortPolicy]:
    """Parse ``bclone_policy`` lines ``COHORT = ON_FAIL | REMEDY``; ValueError naming the bad line."""
    policy: dict[str, CohortPolicy] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cohort, sep, rest = line.partition("=")
        cohort = cohort.strip()
        on_fail, _, remedy = rest.partition("|")
        on_fail, remedy = on_fail.strip(), remedy.strip()
        if not sep or not cohort or " " in cohort:
            raise ValueError(f"{line!r} is not COHORT = ON_FAIL | REMEDY, e.g. 'long_tail = route | add long-tail rows'")
        if on_fail and on_fail not in ON_FAIL:
            raise ValueError(f"{line!r}: on_fail {on_fail!r} is not one of {', '.join(ON_FAIL)}")
        if cohort in policy:
            raise ValueError(f"{line!r}: cohort {cohort!r} has two lines; keep one")
        policy[cohort] = CohortPolicy(on_fail or None, remedy or None)
    return policy


def resolve(policy: Mapping[str, CohortPolicy], cohort: str, on_fail: str | None,
            remedy: str | None) -> tuple[str, str | None]:
    """The ``(on_fail, remedy)`` that apply to an assertion on ``cohort``: its own arguments, else the
    cohort's policy line, else ``block`` and no remedy."""
    line = policy.get(cohort, CohortPolicy())
    return (on_fail or line.on_fail or DEFAULT_ON_FAIL), (remedy or line.remedy)
