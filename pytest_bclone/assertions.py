"""``assert_parity`` and ``assert_no_regression``: the gate's assertions, usable in any test while
the plugin is active.

They turn a :class:`~pytest_bclone.parity.Verdict` into a test outcome following the user's
release policy (:mod:`pytest_bclone.policy`): ``on_fail="block"`` fails the test, ``"route"``
routes the cohort to the expert and reports the test as xfail, ``"warn"`` only reports. The failure message is built explicitly:
cohort, metric, n, expert, clone, difference, interval, margin and the three worst divergences.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .config import MODES
from .errors import BcloneError, BcloneWarning, GateError

if TYPE_CHECKING:
    from .parity import Verdict
    from .session import BcloneSession

_ACTIVE: list[Any] = []  # stack of (session, current-item getter); nested pytester runs push/pop


def activate(session: BcloneSession, current_item: Any) -> None:
    """Called by the plugin at configure time."""
    _ACTIVE.append((session, current_item))


def deactivate(session: BcloneSession) -> None:
    """Called by the plugin at unconfigure time."""
    for i in range(len(_ACTIVE) - 1, -1, -1):
        if _ACTIVE[i][0] is session:
            del _ACTIVE[i]
            break


def _active() -> tuple[BcloneSession, Any]:
    if not _ACTIVE:
        raise GateError(
            "assert_parity needs an active pytest-bclone run: pass --bclone-dataset=v8 (or set bclone_dataset "
            "in your ini file), and make sure the plugin is not disabled with -p no:bclone"
        )
    return _ACTIVE[-1]  # type: ignore[no-any-return]


def assert_parity(
    cohort: str,
    within: float,
    metric: str | None = None,
    *,
    confidence: float | None = None,
    on_fail: str | None = None,
    remedy: str | None = None,
    mode: str | None = None,
    allow_inconclusive: bool = False,
) -> Verdict:
    """Assert the clone is no worse than the expert on ``cohort`` by more than ``within`` points.

    Parity is paired (the same items, clone minus expert) and decided on the confidence interval
    of the difference, not the point estimate (see :func:`pytest_bclone.parity.parity_verdict`).
    ``within=0`` on a binary metric means zero regression. An inconclusive verdict fails unless
    ``allow_inconclusive`` (then it warns, and the cohort stays on the expert). ``metric`` defaults
    to the cohort's entry in ini ``bclone_cohort_metrics``; ``confidence`` to
    ``--bclone-confidence``; ``mode`` (``step`` or ``rollout``) to ``--bclone-mode``.

    The release policy: ``on_fail`` (``block`` fails the test and blocks the release, ``route``
    keeps the cohort on the expert and reports xfail, ``warn`` only reports) and ``remedy`` (the
    next step printed when the cohort fails) default to the cohort's line in ini
    ``bclone_policy``, then to ``block`` and advice by metric.

    Works anywhere while the plugin is active: a test body, a fixture's setup or teardown, a helper.
    The verdict is recorded on the session (and shipped to the controller under xdist) whatever
    the test does next. Returns the verdict (also when it passes).
    """
    __tracebackhide__ = True
    import pytest

    from .policy import ON_FAIL, resolve

    try:
        session, current_item = _active()
        if on_fail is not None and on_fail not in ON_FAIL:
            raise GateError(f"on_fail={on_fail!r} is not one of {', '.join(ON_FAIL)}; use 'block' (fail the test), "
                            "'route' (send the cohort to the expert, xfail) or 'warn' (report only)")
        if mode is not None and mode not in MODES:
            raise GateError(f"mode={mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(within, (int, float)) or within < 0:
            raise GateError(f"within={within!r} must be a number of points >= 0 (e.g. within=3 for 3 points)")
        if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, (int, float))
                                       or not 0.5 <= confidence < 1):
            raise GateError(f"confidence={confidence!r} must be a level from 0.5 up to (not including) 1, such as "
                            "0.95; leave it out to use --bclone-confidence")
        session.check_cohort(cohort, f"assert_parity(cohort={cohort!r})")
        on_fail, remedy = resolve(session.cfg.policy, cohort, on_fail, remedy)
        metric = metric or session.default_metric(cohort)
        mode = mode or session.cfg.mode
        verdict = session.parity(cohort, float(within), metric, mode, confidence)
        worst = session.worst_divergences(cohort, metric, mode) if not verdict.passed else []
    except BcloneError as exc:
        from .errors import ModelAccessError

        if isinstance(exc, ModelAccessError):
            # A refused key or an unknown model will refuse every later call too: stop the run
            # after this test (one failure naming the agent and the fix, not one per test).
            failing = current_item()
            if failing is not None:
                failing.session.shouldstop = f"bclone: {exc}"
        pytest.fail(f"bclone: {exc}", pytrace=False)
    item = current_item()
    rec = session.record(verdict, mode=mode, on_fail=on_fail, test=item.nodeid if item is not None else "",
                         worst=worst, allow_inconclusive=allow_inconclusive, remedy=remedy)
    if item is not None:
        import json

        from .report.junit import junit_properties

        item.user_properties.extend(junit_properties(rec.to_dict()))
        # The record also rides on the test report (JSON), so a verdict reaches the controller even
        # when its xdist worker dies before shipping its output.
        item.user_properties.append(("bclone_record", json.dumps(rec.to_dict(), default=str)))
    if verdict.passed:
        return verdict
    message = failure_message(verdict, worst, on_fail)
    if rec.outcome == "failed":
        pytest.fail(message, pytrace=False)
    if rec.outcome == "xfailed":
        pytest.xfail(f"routed to the expert: {message}")
    warnings.warn(BcloneWarning(message), stacklevel=2)
    return verdict


def assert_no_regression(cohort: str, metric: str | None = None, **kwargs: Any) -> Verdict:
    """Zero regression: no item where the expert succeeds and the clone fails (``within=0`` on a
    binary metric such as ``safety_refusal``). Same keywords as :func:`assert_parity`."""
    __tracebackhide__ = True
    return assert_parity(cohort, 0, metric, **kwargs)


def failure_message(verdict: Verdict, worst: list[dict[str, Any]], on_fail: str) -> str:
    """The explicit failure message: the verdict lines, then the worst divergences."""
    from .parity import format_verdict

    lines = format_verdict(verdict)
    if worst:
        lines.append("worst divergences (trajectory, step: expert -> clone):")
        for w in worst:
            lines.append(f"  {w['trajectory_id']} step {w['step']}: {w['expert_action']} -> {w['clone_action']}"
                         + (f"  [{w['reason']}]" if w.get("reason") else ""))
    if on_fail == "route":
        lines.append("action: this cohort's traffic stays on the expert (hybrid route)")
    return "\n".join(lines)
