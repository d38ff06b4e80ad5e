"""The terminal summary: plain text lines the plugin writes in ``pytest_terminal_summary``.

Layout, top to bottom: what was gated, the verdict table, cost and latency per agent, tool
confusions, dead-tool calls, distribution shift, drift, errors / retries / cache, and last the
``BCLONE GATE: ...`` line followed by the next step for each failing cohort. The gate line is
last on purpose: it is what a CI log is scrolled to, and ``grep 'BCLONE GATE'`` finds it.

Verbosity follows pytest: ``-q`` (< 0) keeps a compact verdict table, the gate line and the next
steps; ``-v`` (> 0) adds the informational scores, every confusion, divergence and error examples,
and every drift row. Output is ASCII so it survives any CI log encoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..agents.user import user_line
from ._common import (
    NA,
    OVERLAP_NOTE,
    action_text,
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

__all__ = ["TOP_CONFUSIONS", "terminal_lines"]

TOP_CONFUSIONS = 10
"""Tool confusions shown without ``-v`` (all of them with ``-v``)."""

_EXAMPLES_V = 5  # divergence / error examples shown with -v
_ACTION_WIDTH = 70  # characters of an action shown per side in an example


def _table(body: Sequence[Sequence[Any]], headers: Sequence[str], align: Sequence[str] | None = None) -> list[str]:
    """A ``tabulate`` table (imported lazily: the report package stays cheap to import)."""
    from tabulate import tabulate  # type: ignore[import-untyped,unused-ignore]  # stubs: types-tabulate

    rendered: str = tabulate(
        [list(r) for r in body], headers=list(headers), tablefmt="simple", disable_numparse=True,
        colalign=list(align) if align else None,
    )
    return ["  " + line for line in rendered.splitlines()]


def terminal_lines(summary: Mapping[str, Any], verbosity: int = 0) -> list[str]:
    """The report as terminal lines; the last block is the gate line and the next steps.

    ``verbosity`` is pytest's (``config.get_verbosity()``): < 0 compact, 0 default, > 0 verbose.
    Robust to nulls and empty lists: an interrupted run or one with no items still renders.
    """
    lines: list[str] = []
    if verbosity >= 0:
        lines += _header(summary)
    lines += _verdicts(summary, verbosity)
    lines += sequential_lines(summary)
    lines += batch_lines(summary)
    if verbosity >= 0:
        if verbosity > 0:
            lines += _scores(summary)
        lines += _agents(summary)
        lines += _confusions(summary, verbosity)
        lines += _dead_tools(summary)
        lines += _shift(summary)
        lines += _drift(summary, verbosity)
        lines += _divergences(summary, verbosity)
        lines += _rollouts(summary)
        lines += _malformed(summary)
        lines += _errors(summary, verbosity)
    lines += _gate(summary)
    return lines


def _header(summary: Mapping[str, Any]) -> list[str]:
    ds, run = section(summary, "dataset"), section(summary, "run")
    fingerprint = text(ds.get("fingerprint"))
    modes = ", ".join(text(m) for m in run.get("modes") or []) or NA
    wall = number(run.get("wall_s"))
    return [
        (f"dataset {text(ds.get('ref'), NA)} (sha256 {fingerprint[:12] or NA}), split {text(ds.get('split'), NA)}: "
        f"{fmt_count(ds.get('trajectories'))} trajectories, {fmt_count(ds.get('decision_points'))} decision points"),
        f"clone {text(run.get('clone'), NA)} vs expert {text(run.get('expert'), NA)}; mode {modes}, "
        f"repeats {fmt_count(run.get('repeats'))}, seed {text(run.get('seed'), NA)}"
        + (", Holm-corrected" if run.get("holm") else "")
        + (f", {wall:.0f} s" if wall is not None else ""),
        "",
    ]


def _verdicts(summary: Mapping[str, Any], verbosity: int) -> list[str]:
    verdicts = rows(summary, "verdicts")
    level = confidence_label(summary)
    title = "parity (clone - expert, points; means x100)"
    if not verdicts:
        return [title + ": no parity assertions ran", ""]
    if verbosity < 0:
        body = [
            [text(v.get("cohort")), text(v.get("metric")), fmt_points(v.get("diff")),
             fmt_interval(v.get("ci_low"), v.get("ci_high")), fmt_margin(v.get("within")), verdict_label(v),
             text(v.get("action"), NA)]
            for v in verdicts
        ]
        headers = ["cohort", "metric", "diff", f"{level} CI".strip(), "margin", "verdict", "action"]
        return [title + ":", *_table(body, headers, ["left", "left", "right", "left", "right", "left", "left"]), ""]
    body = [
        [text(v.get("cohort")), text(v.get("metric")) + (f" ({text(v.get('mode'))})" if v.get("mode") else ""),
         fmt_n(v, unit=""), fmt_mean(v.get("expert_mean")), fmt_mean(v.get("clone_mean")),
         fmt_points(v.get("diff")), fmt_interval(v.get("ci_low"), v.get("ci_high")), fmt_margin(v.get("within")),
         verdict_label(v, detail=False),
         text(v.get("action"), NA)]
        for v in verdicts
    ]
    headers = ["cohort", "metric", "n (traj.)", "expert", "clone", "diff", f"{level} CI".strip(), "margin",
               "verdict", "action"]
    align = ["left", "left", "right", "right", "right", "right", "left", "right", "left", "left"]
    out = [title + ":", *_table(body, headers, align)]
    # What the narrow table leaves out goes in notes under it: how many items an undecided
    # cohort needs, and failed model calls (they change how far a verdict can be trusted).
    for v in verdicts:
        needed = integer(v.get("n_needed"))
        if v.get("status") == "inconclusive" and needed:
            clustered = integer(v.get("n_clusters")) is not None
            have = integer(v.get("n_clusters")) if clustered else integer(v.get("n"))
            out.append(
                f"  note: {text(v.get('cohort'))}/{text(v.get('metric'))}: too few to decide; about {needed:,} "
                f"{'trajectories' if clustered else 'items'} needed (have {fmt_count(have)})"
            )
    for cohort in dict.fromkeys(text(v.get("cohort")) for v in verdicts):
        recorded = recorded_expert(summary, cohort)
        if recorded:
            out.append(f"  recorded expert (dataset): {cohort}: {recorded}")
    for v in verdicts:
        if (integer(v.get("errors")) or 0) <= 0:
            continue
        out.append(
            f"  note: {text(v.get('cohort'))}/{text(v.get('metric'))}: {fmt_count(v.get('errors'))} of "
            f"{fmt_count(v.get('total'))} items lost to failed calls ({fmt_share(v.get('error_rate'))}), excluded"
        )
    if verbosity > 0:
        for v in verdicts:
            if v.get("status") == "pass" or not rows(v, "worst"):
                continue
            out.append(f"  worst items of {text(v.get('cohort'))}/{text(v.get('metric'))}:")
            out += _example_lines(rows(v, "worst"))
    return out + [""]


def _example_lines(examples: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for ex in examples:
        step = integer(ex.get("step"))
        where = text(ex.get("trajectory_id"), "?") + (f" step {step}" if step is not None else "")
        cohorts = ex.get("cohorts")
        if isinstance(cohorts, list) and cohorts:
            where += f" [{', '.join(text(c) for c in cohorts)}]"
        out.append(f"    {where}")
        out.append(f"      expert: {shorten(action_text(ex.get('expert_action')), _ACTION_WIDTH)}")
        out.append(f"      clone:  {shorten(action_text(ex.get('clone_action')), _ACTION_WIDTH)}")
    return out


def _scores(summary: Mapping[str, Any]) -> list[str]:
    scores = rows(summary, "scores")
    if not scores:
        return []
    body = []
    for s in scores:
        diff = number(s.get("diff"))
        if diff is None:
            diff = score_diff_points(s.get("expert_mean"), s.get("clone_mean"))
        body.append([text(s.get("cohort")), text(s.get("metric")), text(s.get("mode"), NA), fmt_count(s.get("n")),
                     fmt_mean(s.get("expert_mean")), fmt_mean(s.get("clone_mean")), fmt_points(diff)])
    headers = ["cohort", "metric", "mode", "n", "expert", "clone", "diff"]
    align = ["left", "left", "left", "right", "right", "right", "right"]
    return ["all scores (informational, not gated):", *_table(body, headers, align), ""]


def _agents(summary: Mapping[str, Any]) -> list[str]:
    agents = section(summary, "agents")
    body = []
    for role in ("clone", "expert"):
        a = agents.get(role)
        if not isinstance(a, Mapping):
            continue
        body.append([
            role, shorten(text(a.get("name"), NA), 36), fmt_count(a.get("calls")), fmt_count(a.get("cached")),
            fmt_count(a.get("failed")), fmt_count(a.get("retries")),
            f"{fmt_count(a.get('prompt_tokens'))} / {fmt_count(a.get('completion_tokens'))}",
            fmt_usd(a.get("cost_usd"), a.get("price_known"))
            + (" (recorded)" if a.get("cost_source") == "recorded" else ""),
            f"{fmt_seconds(a.get('latency_p50_s'))} / {fmt_seconds(a.get('latency_p95_s'))}",
        ])
    if not body:
        return []
    headers = ["role", "agent", "calls", "cached", "failed", "retries", "tokens in / out", "cost", "p50 / p95"]
    align = ["left", "left", "right", "right", "right", "right", "right", "right", "right"]
    out = ["cost and latency:", *_table(body, headers, align)]
    out += [f"  {line}" for line in _saving_lines(summary)]
    return out + [""]


def _saving_lines(summary: Mapping[str, Any]) -> list[str]:
    """The gate's estimated saving, and the observed clone/expert cost ratio when both are priced."""
    gate, agents = section(summary, "gate"), section(summary, "agents")
    out = []
    saving = number(gate.get("estimated_saving_pct"))
    traffic = number(gate.get("traffic_on_clone_pct"))
    if saving is not None or traffic is not None:
        out.append(
            f"estimated saving with this routing: {fmt_pct(saving, 0)} of inference cost "
            f"({fmt_pct(traffic, 0)} of traffic on the clone)"
        )
    clone, expert = agents.get("clone"), agents.get("expert")
    if isinstance(clone, Mapping) and isinstance(expert, Mapping):
        c, e = number(clone.get("cost_usd")), number(expert.get("cost_usd"))
        priced = clone.get("price_known") is not False and expert.get("price_known") is not False
        if priced and c is not None and e:
            out.append(f"this run: the clone cost {fmt_usd(c)} vs the expert's {fmt_usd(e)} "
                       f"({(1 - c / e) * 100:.0f}% less)")
        for role, a in (("clone", clone), ("expert", expert)):
            if a.get("price_known") is False:
                out.append(f"{role} {text(a.get('name'))}: no known price; pass --bclone-price "
                           f"{text(a.get('name'))}=IN/OUT (USD per million tokens)")
    return out


def _confusions(summary: Mapping[str, Any], verbosity: int) -> list[str]:
    confusions = sorted(rows(summary, "tool_confusions"), key=lambda r: -(integer(r.get("count")) or 0))
    if not confusions:
        return []
    shown = confusions if verbosity > 0 else confusions[:TOP_CONFUSIONS]
    body = [[text(r.get("expert_tool")), "->", text(r.get("clone_tool")), fmt_count(r.get("count"))] for r in shown]
    out = ["tool confusions (expert tool -> clone tool at the same state):",
           *_table(body, ["expert", "", "clone", "count"], ["left", "center", "left", "right"])]
    if len(shown) < len(confusions):
        out.append(f"  ... {len(confusions) - len(shown)} more (-v shows all)")
    return out + [""]


def _dead_tools(summary: Mapping[str, Any]) -> list[str]:
    dead = rows(summary, "dead_tools")
    if not dead:
        return []
    out = ["dead-tool calls (the clone called tools that are not in the dataset's toolset):"]
    for d in sorted(dead, key=lambda r: -(integer(r.get("count")) or 0)):
        where = cohort_counts(d.get("cohorts"))
        out.append(f"  {text(d.get('tool'))}: {fmt_count(d.get('count'))} calls" + (f" ({where})" if where else ""))
    if any(sum((d.get("cohorts") or {}).values()) > (integer(d.get("count")) or 0) for d in dead):
        out.append(f"  ({OVERLAP_NOTE})")
    return out + [""]


def _shift(summary: Mapping[str, Any]) -> list[str]:
    shift = summary.get("distribution_shift")
    if not isinstance(shift, Mapping):
        return []
    out = [
        (f"distribution shift: {fmt_share(shift.get('ood_share'))} of eval states out of distribution "
        f"(shift score > {text(shift.get('threshold'), NA)}); {text(shift.get('metric'), 'score')} by side:")
    ]
    for label, key in (("in distribution", "in_distribution"), ("out of distribution", "out_of_distribution")):
        side = section(shift, key)
        diff = score_diff_points(side.get("expert_mean"), side.get("clone_mean"))
        out.append(f"  {label:<20} n={fmt_count(side.get('n')):>7}  expert {fmt_mean(side.get('expert_mean'))}  "
                   f"clone {fmt_mean(side.get('clone_mean'))}  diff {fmt_points(diff)}")
    return out + [""]


def _drift(summary: Mapping[str, Any], verbosity: int) -> list[str]:
    drift = summary.get("drift")
    if not isinstance(drift, Mapping):
        return []
    all_rows = rows(drift, "rows")
    flagged = [r for r in all_rows if r.get("flagged")]
    head = (f"drift vs baseline {text(drift.get('baseline'), NA)} (margin {fmt_points(drift.get('margin'), signed=False)}"
            f" points): {len(flagged)} of {len(all_rows)} flagged")
    shown = all_rows if verbosity > 0 else flagged
    if not shown:
        return [head, ""]
    body = [[text(r.get("cohort")), text(r.get("metric")), fmt_mean(r.get("baseline_clone")),
             fmt_mean(r.get("clone")), fmt_points(r.get("drop")), "DRIFT" if r.get("flagged") else "ok"]
            for r in shown]
    headers = ["cohort", "metric", "baseline clone", "clone", "drop", ""]
    return [head + ":", *_table(body, headers, ["left", "left", "right", "right", "right", "left"]), ""]


def _divergences(summary: Mapping[str, Any], verbosity: int) -> list[str]:
    div = section(summary, "divergences")
    count, states = integer(div.get("count")), integer(div.get("states"))
    if not count and not states:
        return []
    out = [(f"divergent states: {fmt_count(count)} of {fmt_count(states)} step-mode decision points "
           f"({fmt_share(div.get('rate'))}) where the clone's action differs from the expert's")]
    if verbosity > 0:
        out += _example_lines(rows(div, "examples")[:_EXAMPLES_V])
    return out + [""]


def _rollouts(summary: Mapping[str, Any]) -> list[str]:
    ro = summary.get("rollouts")
    if not isinstance(ro, Mapping):
        return []
    cut = section(ro, "truncated")
    examples = ", ".join(text(e) for e in ro.get("examples") or [])
    return [
        f"rollouts: {fmt_count(ro.get('episodes') or 0)} episodes per agent; stopped at the step cap (still acting): "
        f"clone {fmt_count(cut.get('clone') or 0)}, expert {fmt_count(cut.get('expert') or 0)}"
        + (f" (e.g. {examples})" if examples else ""),
        *([user_line(ro["user"])] if isinstance(ro.get("user"), Mapping) else []),
        "",
    ]


def sequential_lines(summary: Mapping[str, Any]) -> list[str]:
    """``--bclone-sequential``: what each cohort replayed and why it stopped, and what was saved."""
    seq = summary.get("sequential")
    if not isinstance(seq, Mapping):
        return []
    out = ["sequential replay (stops a cohort once an anytime-valid confidence sequence settles it):"]
    for run in seq.get("cohorts") or []:
        stopped = {"pass": "settled: pass", "fail": "settled: fail", "full": "full replay",
                   "too small": "stopped at half"}.get(
            text(run.get("stopped")), text(run.get("stopped")))
        out.append(f"  {text(run.get('cohort'))}/{text(run.get('metric'))}: {fmt_count(run.get('replayed') or 0)} of "
                   f"{fmt_count(run.get('total') or 0)} trajectories in {fmt_count(run.get('rounds') or 0)} "
                   f"round{'' if run.get('rounds') == 1 else 's'}, "
                   f"{stopped} ({text(run.get('reason'))})")
    usd = seq.get("saved_usd")
    money = "unknown (see --bclone-price)" if usd is None else f"${usd:,.4f}"
    out.append(f"  saved against a full replay: {fmt_count(seq.get('saved_trajectories') or 0)} trajectories, "
               f"{fmt_count(seq.get('saved_calls') or 0)} {text(seq.get('saved_unit'), 'calls')}, {money}")
    out.append("")
    return out


def _malformed(summary: Mapping[str, Any]) -> list[str]:
    bad = summary.get("malformed_arguments")
    if not isinstance(bad, Mapping) or not any(integer(v) for v in bad.values()):
        return []
    line = (f"malformed tool-call arguments (not a JSON object; scored as wrong): "
            f"clone {fmt_count(bad.get('clone') or 0)}, expert {fmt_count(bad.get('expert') or 0)}")
    return [line, ""]


def batch_lines(summary: Mapping[str, Any]) -> list[str]:
    """``--bclone-batch``: what each agent's batch sent, got back, and left to live calls."""
    batches = summary.get("batch")
    if not isinstance(batches, list) or not batches:
        return []
    out = []
    for b in batches:
        if not isinstance(b, Mapping):
            continue
        ids = ", ".join(text(i) for i in b.get("batch_ids") or []) or "none"
        out.append(f"batch API ({text(b.get('agent'))}): {fmt_count(b.get('requests') or 0)} requests sent"
                   f"{' (resumed)' if b.get('resumed') else ''}, {fmt_count(b.get('answered') or 0)} answered at batch "
                   f"price, {fmt_count(b.get('failed') or 0)} failed and {fmt_count(b.get('unanswered') or 0)} "
                   f"unanswered (called live), {fmt_count(b.get('already_cached') or 0)} already cached; "
                   f"status {text(b.get('status'))}; batch {ids}")
    return out + [""] if out else []


def _errors(summary: Mapping[str, Any], verbosity: int) -> list[str]:
    errors, cache, agents = section(summary, "errors"), section(summary, "cache"), section(summary, "agents")
    by_role = section(errors, "by_role")
    roles = ", ".join(f"{k} {fmt_count(v)}" for k, v in sorted(by_role.items()))
    retries = ", ".join(
        f"{role} {fmt_count(a.get('retries'))}" for role in ("clone", "expert")
        if isinstance(a := agents.get(role), Mapping)
    )
    hits, misses = integer(cache.get("hits")) or 0, integer(cache.get("misses")) or 0
    hit_rate = f" ({hits / (hits + misses):.1%} hits)" if hits + misses else ""
    out = [
        f"failed model calls: {fmt_count(errors.get('count') or 0)}" + (f" ({roles})" if roles else "")
        + " - excluded from scores, never counted as clone mistakes"
        + (f"; retries: {retries}" if retries else "")
        + f"; cache: {hits:,} hits, {misses:,} misses{hit_rate}"
    ]
    examples = rows(errors, "examples")
    if verbosity == 0 and examples:
        # The cause at default verbosity: the first failure's first line (-v lists more).
        ex = examples[0]
        first = text(ex.get("error")).splitlines()[0] if text(ex.get("error")) else "?"
        out.append(f"  first failure: {text(ex.get('role'), '?')} {text(ex.get('key'), '?')}: {shorten(first, 140)}"
                   + ("  (-v lists more)" if len(examples) > 1 else ""))
    if verbosity > 0:
        for ex in examples[:_EXAMPLES_V]:
            out.append(f"  {text(ex.get('role'), '?')} {text(ex.get('key'), '?')}: "
                       f"{shorten(text(ex.get('error')), 110)}")
    return out + [""]


def _gate(summary: Mapping[str, Any]) -> list[str]:
    gate = section(summary, "gate")
    line = text(gate.get("line")) or f"BCLONE GATE: {text(gate.get('decision'), 'UNKNOWN')}"
    out = [line]
    for step in rows(gate, "next_steps"):
        out.append(f"  next: {text(step.get('text'))}")
    return out
