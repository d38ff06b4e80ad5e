"""The controller's end of a run: gather verdicts, decide, write every requested artifact, print.

Called from plugin.py's controller hooks only (never on an xdist worker). Nothing here raises
into pytest: a report that cannot be written is printed as an error and fails the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BcloneError

if TYPE_CHECKING:
    import pytest

    from .session import BcloneSession


@dataclass(frozen=True)
class FinishedRun:
    """What the terminal section prints: the summary, and the artifacts that could not be written."""

    summary: dict[str, Any]
    problems: list[str]


def finish(bsession: BcloneSession, session: pytest.Session, config: pytest.Config) -> FinishedRun | None:
    """Decide over every verdict the run recorded (this process's, the test reports', the xdist
    workers'), write the artifacts, and set the exit status when the gate blocks.

    Returns None (no section, no files) when nothing was gated, replayed or run: a run that only
    named a dataset (or only collected) gets no report it did not ask for."""
    from .signals import interrupted_by, mark_incomplete

    interrupted = interrupted_by()  # SIGTERM / Ctrl-C / a dead controller: report, marked incomplete
    if not interrupted and not bsession.verdicts and not bsession.store and not any(
            t in bsession.outcomes for t in bsession.gate_tests) and "crashed" not in bsession.outcomes.values():
        return None
    from .redact import redact_obj

    # No report may carry a secret (an error body that echoed the request's headers, a key in a
    # message): every artifact below, and the terminal section, are written from this copy.
    summary = redact_obj(bsession.summary(track_outcomes=True))
    if interrupted:
        mark_incomplete(summary, interrupted)  # the gate line says so, and BLOCKS
    from . import timing

    # Where the run's time went so far (this process plus its xdist workers' work), up to now.
    summary["run"]["phases_s"] = timing.snapshot()
    cfg = bsession.cfg
    problems: list[str] = []

    def attempt(what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (BcloneError, OSError, ValueError) as exc:
            problems.append(f"bclone: could not write {what}: {exc}")

    if cfg.baseline:
        from .report.drift import compare_baseline, load_baseline

        try:
            summary["drift"] = compare_baseline(summary, load_baseline(cfg.baseline), cfg.drift_margin)
            summary["drift"]["baseline"] = cfg.baseline
        except (BcloneError, OSError, ValueError) as exc:
            problems.append(f"bclone: could not compare with baseline {cfg.baseline!r}: {exc}")
    root = str(config.rootpath)

    def path(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(root, p)

    from . import report

    if cfg.report_json:
        attempt(f"JSON report {cfg.report_json}", report.write_json, summary, path(cfg.report_json))
    if cfg.save_baseline:
        attempt(f"baseline {cfg.save_baseline}", report.save_baseline, summary, path(cfg.save_baseline))
    if cfg.report_md:
        attempt(f"Markdown report {cfg.report_md}", report.write_markdown, summary, path(cfg.report_md))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        attempt("$GITHUB_STEP_SUMMARY", report.append_github_step_summary, summary, os.environ)
    if cfg.report_html:
        attempt(f"HTML report {cfg.report_html}", report.write_html, summary, path(cfg.report_html))
    if cfg.routes:
        attempt(f"routes {cfg.routes}", report.write_routes, summary, path(cfg.routes),
                summary["run"]["clone"], bsession.expert_model())
    if cfg.divergences:
        attempt(f"divergences {cfg.divergences}", report.write_divergences,
                redact_obj(bsession.divergence_records()), path(cfg.divergences))
    # A session-level failure (a Holm correction that overturns a pass, a report that could not be
    # written) sets the exit status explicitly; the terminal prints the gate line that says why.
    if (summary["gate"]["decision"] == "BLOCKED" or problems) and session.exitstatus == 0:
        session.exitstatus = 1
    return FinishedRun(summary, problems)


def terminal(terminalreporter: Any, run: FinishedRun, verbosity: int) -> None:
    """Print the bclone section; the last line is the ``BCLONE GATE:`` decision and next steps."""
    from .report import terminal_lines

    tr = terminalreporter
    tr.write_sep("=", "bclone release gate")
    summary, problems = run.summary, run.problems
    for line in terminal_lines(summary, verbosity):
        markup = {}
        if line.startswith("BCLONE GATE:"):
            decision = summary["gate"]["decision"]
            markup = {"green": True, "bold": True} if decision == "SHIP" else (
                {"yellow": True, "bold": True} if decision.startswith("SHIP") else {"red": True, "bold": True})
        tr.write_line(line, **markup)
    for line in problems:
        tr.write_line(line, red=True)
