"""The Markdown report: a GitHub-flavoured page for PR comments and ``$GITHUB_STEP_SUMMARY``.

The decision comes first (a release manager reads the top and stops), then the routes and next
steps, then the evidence. Long tables (informational scores, examples) sit in ``<details>`` so the
page stays short on GitHub. Every cell is escaped: trajectory content is untrusted and GitHub
renders inline HTML.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..agents.user import user_line
from ._common import (
    NA,
    OVERLAP_NOTE,
    ReportError,
    action_text,
    atomic_write_text,
    cohort_counts,
    confidence_label,
    fmt_count,
    fmt_interval,
    fmt_margin,
    fmt_mean,
    fmt_n,
    fmt_pct,
    fmt_points,
    fmt_seconds,
    fmt_share,
    fmt_usd,
    integer,
    number,
    recorded_expert,
    rows,
    score_diff_points,
    section,
    shorten,
    text,
    verdict_label,
)

__all__ = ["append_github_step_summary", "markdown", "write_markdown"]

_ICON = {"SHIP": "✅", "SHIP WITH HYBRID ROUTE": "🔀", "BLOCKED": "⛔"}
_STATUS_ICON = {"pass": "✅", "fail": "❌", "inconclusive": "❔"}


# Markdown syntax that could restyle untrusted text (emphasis, code spans, strikethrough). Brackets
# stay: with newlines folded a link definition cannot start a line, and "[a, b]" is common.
_MD_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*~"})


def _md_text(value: object) -> str:
    """Untrusted text made inert: HTML escaped (GitHub renders inline HTML), Markdown specials
    backslash-escaped, pipes escaped (they would split a table cell), newlines folded."""
    out = html.escape(text(value), quote=False).translate(_MD_SPECIALS).replace("|", "\\|")
    return " ".join(out.split()) if "\n" in out or "\r" in out else out


def _cell(value: object) -> str:
    """A table cell or inline text from an untrusted value."""
    return _md_text(value)


def _code(value: object, width: int = 160) -> str:
    """An action or a name in monospace. ``<code>`` rather than backticks: a backtick inside the
    content would end a code span, and backslash escapes do not work inside one."""
    return f"<code>{_md_text(shorten(action_text(value), width))}</code>"


def _table(headers: Sequence[str], body: Sequence[Sequence[str]], align: str = "") -> list[str]:
    """A GFM table; ``align`` has one letter per column: l, r or c."""
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    sep = [marks.get(align[i] if i < len(align) else "l", "---") for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def markdown(summary: Mapping[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown (robust to nulls and empty lists)."""
    gate, ds, run = section(summary, "gate"), section(summary, "dataset"), section(summary, "run")
    decision = text(gate.get("decision"), "UNKNOWN")
    out: list[str] = [
        f"## {_ICON.get(decision, '')} bclone gate: {_cell(decision)}".replace("  ", " "),
        "",
        f"**{_code(text(gate.get('line')) or 'BCLONE GATE: ' + decision, 400)}**",
        "",
        (f"Clone {_code(run.get('clone') or NA)} vs expert {_code(run.get('expert') or NA)} on dataset "
        f"{_code(ds.get('ref') or NA)} (split {_cell(ds.get('split') or NA)}, "
        f"{fmt_count(ds.get('trajectories'))} trajectories, {fmt_count(ds.get('decision_points'))} decision points, "
        f"sha256 {_code(text(ds.get('fingerprint'))[:12] or NA)})."),
        "",
    ]
    rollouts = summary.get("rollouts")
    if isinstance(rollouts, Mapping) and isinstance(rollouts.get("user"), Mapping):
        out += [_cell(user_line(rollouts["user"])), ""]
    out += _routes(gate)
    out += _next_steps(gate)
    out += _verdicts(summary)
    out += _sequential(summary)
    out += _agents(summary)
    out += _confusions(summary)
    out += _dead_tools(summary)
    out += _shift(summary)
    out += _drift(summary)
    out += _errors(summary)
    out += _divergences(summary)
    out += _scores(summary)
    created = text(summary.get("created"))
    out.append(f"<sub>pytest-bclone · {_cell(summary.get('schema') or '')}"
               + (f" · {_cell(created)}" if created else "") + "</sub>")
    return "\n".join(out) + "\n"


def _routes(gate: Mapping[str, Any]) -> list[str]:
    routes = gate.get("routes")
    out: list[str] = []
    if isinstance(routes, Mapping) and routes:
        clone = [_cell(c) for c, r in routes.items() if r == "clone"]
        expert = [_cell(c) for c, r in routes.items() if r == "expert"]
        out.append(f"- **Clone serves:** {', '.join(clone) or '(nothing)'}")
        out.append(f"- **Expert keeps:** {', '.join(expert) or '(nothing)'}")
    blocking = gate.get("blocking")
    if isinstance(blocking, list) and blocking:
        out.append(f"- **Blocking:** {', '.join(_cell(b) for b in blocking)}")
    traffic, saving = number(gate.get("traffic_on_clone_pct")), number(gate.get("estimated_saving_pct"))
    if traffic is not None or saving is not None:
        out.append(f"- **Traffic on the clone:** {fmt_pct(traffic, 0)} · **estimated saving:** {fmt_pct(saving, 0)}")
    return out + [""] if out else []


def _next_steps(gate: Mapping[str, Any]) -> list[str]:
    steps = rows(gate, "next_steps")
    if not steps:
        return []
    return ["### Next steps", "", *[f"1. {_cell(s.get('text'))}" for s in steps], ""]


def _verdicts(summary: Mapping[str, Any]) -> list[str]:
    verdicts = rows(summary, "verdicts")
    out = ["### Parity per cohort", ""]
    if not verdicts:
        return out + ["No parity assertions ran.", ""]
    level = confidence_label(summary)
    body = [
        [_cell(v.get("cohort")), _cell(v.get("metric")), _cell(v.get("mode") or NA), _cell(fmt_n(v)),
         fmt_mean(v.get("expert_mean")), fmt_mean(v.get("clone_mean")), fmt_points(v.get("diff")),
         fmt_interval(v.get("ci_low"), v.get("ci_high")), fmt_margin(v.get("within")),
         f"{_STATUS_ICON.get(text(v.get('status')), '')} {html.escape(verdict_label(v))}".strip(),
         _cell(v.get("action") or NA)]
        for v in verdicts
    ]
    headers = ["cohort", "metric", "mode", "n", "expert", "clone", "diff", f"{level} CI".strip(), "margin",
               "verdict", "action"]
    out += _table(headers, body, "lllrrrrlrll")
    out += ["", "Means and differences in points (x100); pass when the interval's lower end is above the margin.",
            ""]
    recorded = [(c, r) for c in dict.fromkeys(text(v.get("cohort")) for v in verdicts)
                if (r := recorded_expert(summary, c))]
    if recorded:
        out += ["Recorded expert scores (from the dataset, beside the replayed expert above):", ""]
        out += [f"- {_cell(c)}: {_cell(r)}" for c, r in recorded] + [""]
    worst = [v for v in verdicts if v.get("status") != "pass" and rows(v, "worst")]
    if worst:
        out += ["<details><summary>Worst items of failing and undecided cohorts</summary>", ""]
        body = []
        for v in worst:
            for w in rows(v, "worst"):
                body.append([f"{_cell(v.get('cohort'))}/{_cell(v.get('metric'))}", _where(w),
                             _code(w.get("expert_action")), _code(w.get("clone_action"))])
        out += _table(["verdict", "where", "expert", "clone"], body)
        out += ["", "</details>", ""]
    return out


def _where(example: Mapping[str, Any]) -> str:
    step = integer(example.get("step"))
    return _cell(text(example.get("trajectory_id"), "?") + (f" step {step}" if step is not None else ""))


def _agents(summary: Mapping[str, Any]) -> list[str]:
    agents = section(summary, "agents")
    body = []
    for role in ("clone", "expert"):
        a = agents.get(role)
        if isinstance(a, Mapping):
            body.append([role, _code(a.get('name') or NA), fmt_count(a.get("calls")),
                         fmt_count(a.get("cached")), fmt_count(a.get("failed")), fmt_count(a.get("retries")),
                         fmt_count(a.get("prompt_tokens")), fmt_count(a.get("completion_tokens")),
                         fmt_usd(a.get("cost_usd"), a.get("price_known"))
                         + (" (recorded)" if a.get("cost_source") == "recorded" else ""),
                         fmt_seconds(a.get("latency_p50_s")),
                         fmt_seconds(a.get("latency_p95_s"))])
    if not body:
        return []
    headers = ["role", "agent", "calls", "cached", "failed", "retries", "tokens in", "tokens out", "cost", "p50",
               "p95"]
    return ["### Cost and latency", "", *_table(headers, body, "llrrrrrrrrr"), ""]


def _confusions(summary: Mapping[str, Any]) -> list[str]:
    confusions = sorted(rows(summary, "tool_confusions"), key=lambda r: -(integer(r.get("count")) or 0))
    if not confusions:
        return []
    body = [[_code(r.get('expert_tool')), _code(r.get('clone_tool')), fmt_count(r.get("count"))]
            for r in confusions[:20]]
    out = ["### Tool confusions", "", *_table(["expert tool", "clone tool", "count"], body, "llr")]
    if len(confusions) > 20:
        out.append(f"\n…and {len(confusions) - 20} more in the JSON report.")
    return out + [""]


def _dead_tools(summary: Mapping[str, Any]) -> list[str]:
    dead = rows(summary, "dead_tools")
    if not dead:
        return []
    body = [[_code(d.get('tool')), fmt_count(d.get("count")), _cell(cohort_counts(d.get("cohorts")))]
            for d in dead]
    intro = f"The clone called tools that are not in the dataset's toolset ({OVERLAP_NOTE})."
    return ["### Dead-tool calls", "", intro, "", *_table(["tool", "calls", "cohorts"], body, "lrl"), ""]


def _shift(summary: Mapping[str, Any]) -> list[str]:
    shift = summary.get("distribution_shift")
    if not isinstance(shift, Mapping):
        return []
    body = []
    for label, key in (("in distribution", "in_distribution"), ("out of distribution", "out_of_distribution")):
        side = section(shift, key)
        body.append([label, fmt_count(side.get("n")), fmt_mean(side.get("expert_mean")),
                     fmt_mean(side.get("clone_mean")),
                     fmt_points(score_diff_points(side.get("expert_mean"), side.get("clone_mean")))])
    return ["### Distribution shift", "",
            (f"{fmt_share(shift.get('ood_share'))} of eval states (decision points) are out of distribution (shift score > "
            f"{_cell(shift.get('threshold') if shift.get('threshold') is not None else NA)}); "
            f"{_code(shift.get('metric') or 'score')} by side:"), "",
            *_table(["side", "n", "expert", "clone", "diff"], body, "lrrrr"), ""]


def _drift(summary: Mapping[str, Any]) -> list[str]:
    drift = summary.get("drift")
    if not isinstance(drift, Mapping):
        return []
    drift_rows = rows(drift, "rows")
    flagged = sum(1 for r in drift_rows if r.get("flagged"))
    body = [[_cell(r.get("cohort")), _cell(r.get("metric")), fmt_mean(r.get("baseline_clone")),
             fmt_mean(r.get("clone")), fmt_points(r.get("drop")), "⚠️ drift" if r.get("flagged") else "ok"]
            for r in drift_rows]
    return ["### Drift against the baseline", "",
            (f"Baseline {_code(drift.get('baseline') or NA)}, margin {fmt_points(drift.get('margin'), signed=False)}"
            f" points: **{flagged} of {len(drift_rows)} flagged**."), "",
            *(_table(["cohort", "metric", "baseline clone", "clone", "drop", ""], body, "llrrrl") if body else []),
            ""]


def _errors(summary: Mapping[str, Any]) -> list[str]:
    errors, cache = section(summary, "errors"), section(summary, "cache")
    by_role = section(errors, "by_role")
    roles = ", ".join(f"{_cell(k)} {fmt_count(v)}" for k, v in sorted(by_role.items()))
    hits, misses = integer(cache.get("hits")) or 0, integer(cache.get("misses")) or 0
    out = ["### Errors and cache", "",
           f"Failed model calls: **{fmt_count(errors.get('count') or 0)}**" + (f" ({roles})" if roles else "")
           + " — excluded from scores, never counted as clone mistakes. "
           + f"Cache: {hits:,} hits, {misses:,} misses.", ""]
    examples = rows(errors, "examples")
    if examples:
        body = [[_cell(e.get("role")), _code(e.get('key')), _cell(shorten(text(e.get("error")), 200))]
                for e in examples]
        out += _table(["role", "call", "error"], body) + [""]
    return out


def _divergences(summary: Mapping[str, Any]) -> list[str]:
    div = section(summary, "divergences")
    if not integer(div.get("count")) and not integer(div.get("states")):
        return []
    out = ["### Divergent states", "",
           (f"{fmt_count(div.get('count'))} of {fmt_count(div.get('states'))} step-mode decision points "
           f"({fmt_share(div.get('rate'))}) where the clone's action differs from the expert's."), ""]
    examples = rows(div, "examples")
    if examples:
        body = [[_where(e), _cell(", ".join(text(c) for c in e.get("cohorts") or [])),
                 _code(e.get("expert_action")), _code(e.get("clone_action"))] for e in examples]
        out += ["<details><summary>Examples</summary>", "",
                *_table(["where", "cohorts", "expert", "clone"], body), "", "</details>", ""]
    return out


def _scores(summary: Mapping[str, Any]) -> list[str]:
    scores = rows(summary, "scores")
    if not scores:
        return []
    body = []
    for s in scores:
        diff = number(s.get("diff"))
        diff = score_diff_points(s.get("expert_mean"), s.get("clone_mean")) if diff is None else diff
        body.append([_cell(s.get("cohort")), _cell(s.get("metric")), _cell(s.get("mode") or NA),
                     fmt_count(s.get("n")), fmt_mean(s.get("expert_mean")), fmt_mean(s.get("clone_mean")),
                     fmt_points(diff)])
    return ["<details><summary>All scores (informational, not gated)</summary>", "",
            *_table(["cohort", "metric", "mode", "n", "expert", "clone", "diff"], body, "lllrrrr"),
            "", "</details>", ""]


def write_markdown(summary: Mapping[str, Any], path: str | os.PathLike[str], *,
                   source: str = "--bclone-report-md") -> Path:
    """Write :func:`markdown` to ``path`` atomically."""
    return atomic_write_text(path, markdown(summary), source=source)


def append_github_step_summary(summary: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Path | None:
    """Append the Markdown report to ``$GITHUB_STEP_SUMMARY`` when set; return its path, else None.

    GitHub Actions gives each step that file and concatenates what steps append, so this appends
    (one write) rather than replacing. ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    target = env.get("GITHUB_STEP_SUMMARY", "").strip()
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown(summary) + "\n")
    except OSError as exc:
        raise ReportError(
            f"GITHUB_STEP_SUMMARY={target!r} (environment): cannot append the report ({exc.strerror or exc}); "
            "unset the variable outside GitHub Actions or point it at a writable file"
        ) from None
    return Path(target)


def _sequential(summary: Mapping[str, Any]) -> list[str]:
    """``--bclone-sequential``: the terminal's lines as a list (one source for the figures)."""
    from .terminal import sequential_lines

    lines = [line for line in sequential_lines(summary) if line]
    if not lines:
        return []
    return ["### Sequential replay", ""] + [f"- {_cell(line.strip())}" for line in lines[1:]] + [""]
