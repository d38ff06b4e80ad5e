"""The HTML report: one self-contained file (inline CSS, inline SVG, no scripts, no network).

What a release manager sees, top to bottom: the decision in a band coloured by it (green SHIP,
amber SHIP WITH HYBRID ROUTE, red BLOCKED) with the exact gate line and the key figures; where
each cohort's traffic goes and the next steps; one chart of every verdict's difference and
confidence interval against its margin; then the evidence tables and the divergent examples with
the expert's and the clone's action side by side.

Every piece of text goes through :func:`html.escape`: trajectory content (actions, tool names,
error messages, even cohort names) is untrusted and must never become markup. The file loads
nothing: no ``src``/``href`` to any URL, so it renders the same offline, as a CI artifact, or
attached to a ticket.
"""

from __future__ import annotations

import html as _html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import (
    NA,
    OVERLAP_NOTE,
    action_text,
    atomic_write_text,
    cohort_counts,
    confidence_label,
    fmt_count,
    fmt_interval,
    fmt_margin,
    fmt_mean,
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
    text,
    verdict_label,
)

__all__ = ["html", "write_html"]

STATUS_COLORS = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#bf8700"}
_UNKNOWN_COLOR = "#6e7781"
DECISION_CLASS = {"SHIP": "ship", "SHIP WITH HYBRID ROUTE": "hybrid", "BLOCKED": "blocked"}
_DECISION_BLURB = {
    "SHIP": "The clone may serve all gated traffic.",
    "SHIP WITH HYBRID ROUTE": "The clone may serve the cohorts it passed; the others stay on the expert.",
    "BLOCKED": "The clone must not be deployed.",
}


def e(value: object) -> str:
    """Escape any value for HTML text and attributes (None -> empty)."""
    return _html.escape(text(value), quote=True)


def wb(value: object) -> str:
    """Escaped text with line-break opportunities after ``_ / .`` (long tool and model names wrap
    at word-like boundaries instead of overflowing their table)."""
    out = e(value)
    for sep in ("_", "/", "."):
        out = out.replace(sep, sep + "<wbr>")
    return out


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#f6f8fa;--card:#fff;--pass:#1a7f37;--fail:#cf222e;
--inc:#bf8700;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans",sans-serif}
header.decision{color:#fff;padding:28px 40px 24px}
header.ship{background:linear-gradient(135deg,#1a7f37,#116329)}
header.hybrid{background:linear-gradient(135deg,#9a6700,#7d4e00)}
header.blocked{background:linear-gradient(135deg,#cf222e,#a40e26)}
header.unknown{background:#57606a}
.eyebrow{font-size:13px;opacity:.85;letter-spacing:.02em}
h1{font-size:40px;line-height:1.1;margin:6px 0 4px;letter-spacing:.01em}
.blurb{font-size:16px;margin:0 0 12px;opacity:.95}
.gate-line{font:13px/1.4 var(--mono);background:rgba(0,0,0,.22);padding:8px 12px;border-radius:6px;
display:inline-block;max-width:100%;overflow-wrap:anywhere}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.kpi{background:rgba(255,255,255,.14);border:1px solid rgba(255,255,255,.28);border-radius:8px;padding:8px 14px;
min-width:150px}
.kpi b{display:block;font-size:22px;line-height:1.2}
.kpi span{font-size:12px;opacity:.9}
main{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:0 0 18px;
min-width:0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
.grid>.card{margin:0 0 18px}
@media (max-width:900px){.grid{grid-template-columns:1fr}}
h2{font-size:17px;margin:0 0 10px}
h2.gap{margin-top:22px}
h2 small{font-weight:normal;color:var(--muted);font-size:13px;margin-left:6px}
p.note{color:var(--muted);font-size:12.5px;margin:8px 0 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #eef1f4;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600;border-bottom:1px solid var(--line);white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:hover td{background:#f6f8fa}
.scroll{overflow-x:auto}
.nowrap{white-space:nowrap}
table.verdicts tr.main td{border-bottom:none;padding-bottom:1px}
table.verdicts tr.why td{color:var(--muted);font-size:12.5px;padding-top:0;padding-bottom:8px}
table.verdicts tr.why .test{font-family:var(--mono);font-size:11.5px;color:#8c959f;margin-left:6px}
table.verdicts tr:hover td{background:none}
code,.mono{font-family:var(--mono);font-size:12.5px}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;color:#fff;
white-space:nowrap}
.pill.pass{background:var(--pass)}.pill.fail{background:var(--fail)}.pill.inconclusive{background:var(--inc)}
.pill.unknown{background:#6e7781}
.pill.clone{background:#0969da}.pill.expert{background:#6639ba}
.pill.light{background:#eaeef2;color:var(--fg);font-weight:500}
.pill.drift{background:var(--fail)}
ol.steps{margin:0;padding-left:20px}ol.steps li{margin:0 0 8px}
.bar{background:#54aeff;height:10px;border-radius:3px;min-width:2px;margin-top:5px}
td.barcell{width:18%}
.ex{border:1px solid var(--line);border-radius:8px;margin:0 0 12px;overflow:hidden}
.ex-h{background:#f6f8fa;padding:6px 12px;font-size:12.5px;color:var(--muted);border-bottom:1px solid var(--line)}
.ex-h b{color:var(--fg)}
.ex-b{display:grid;grid-template-columns:1fr 1fr}
.ex-b>div{padding:8px 12px;min-width:0}
.ex-b>div+div{border-left:1px solid var(--line)}
.ex-b .who{font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.06em}
.ex-b .expert .who{color:var(--pass)}.ex-b .clone .who{color:var(--fail)}
pre{margin:4px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;font:12.5px/1.45 var(--mono)}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0;font-size:13px}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0;overflow-wrap:anywhere}
details summary{cursor:pointer;font-weight:600;font-size:15px}
.chart{width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:18px;font-size:12.5px;color:var(--muted);margin-top:6px}
.legend i{display:inline-block;vertical-align:middle;margin-right:6px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 30px}
@media print{header.decision{-webkit-print-color-adjust:exact;print-color-adjust:exact}.card{break-inside:avoid}}
"""


def html(summary: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML document (robust to nulls and empty lists)."""
    gate, ds = section(summary, "gate"), section(summary, "dataset")
    decision = text(gate.get("decision"), "UNKNOWN")
    title = f"bclone gate: {decision} · {text(ds.get('ref'), 'dataset')}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        # No network: the report must render offline and can never leak that it was opened.
        ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"),
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        _header(summary),
        "<main>",
        '<div class="grid">', _routes_card(summary), _next_steps_card(summary), "</div>",
        _chart_card(summary),
        _sequential_card(summary),
        _verdicts_card(summary),
        _worst_card(summary),
        _agents_card(summary),
        '<div class="grid">', _confusions_card(summary), _dead_and_shift_card(summary), "</div>",
        _drift_card(summary),
        _errors_card(summary),
        _divergences_card(summary),
        _scores_card(summary),
        _meta_card(summary),
        "</main>",
        (f"<footer>pytest-bclone · report schema {e(summary.get('schema'))} · created {e(summary.get('created'))}"
        "</footer>"),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_html(summary: Mapping[str, Any], path: str | os.PathLike[str], *,
               source: str = "--bclone-report-html") -> Path:
    """Write :func:`html` to ``path`` atomically."""
    return atomic_write_text(path, html(summary), source=source)


# -- header ----------------------------------------------------------------------------------------


def _header(summary: Mapping[str, Any]) -> str:
    gate, ds, run = section(summary, "gate"), section(summary, "dataset"), section(summary, "run")
    decision = text(gate.get("decision"), "UNKNOWN")
    klass = DECISION_CLASS.get(decision, "unknown")
    line = text(gate.get("line")) or f"BCLONE GATE: {decision}"
    verdicts = rows(summary, "verdicts")
    counts = {s: sum(1 for v in verdicts if v.get("status") == s) for s in ("pass", "fail", "inconclusive")}
    div = section(summary, "divergences")
    drift = summary.get("drift")
    # The gate's own figures, as every other format shows them (a blocked gate's are 0).
    traffic, saving = fmt_pct(gate.get("traffic_on_clone_pct"), 0), fmt_pct(gate.get("estimated_saving_pct"), 0)
    kpis = [
        (traffic, "of traffic on the clone"),
        (saving, "estimated cost saving"),
        (f"{counts['pass']} / {counts['fail']} / {counts['inconclusive']}", "verdicts pass / fail / undecided"),
        (", ".join(text(b) for b in gate.get("blocking") or []) or "none", "blocking cohorts"),
        (fmt_share(div.get("rate")), "divergent decision points"),
    ]
    if isinstance(drift, Mapping):
        drows = rows(drift, "rows")
        kpis.append((f"{sum(1 for r in drows if r.get('flagged'))} of {len(drows)}", "cohorts drifted vs baseline"))
    eyebrow = (f"pytest-bclone release gate · clone {text(run.get('clone'), NA)} vs expert "
               f"{text(run.get('expert'), NA)} · dataset {text(ds.get('ref'), NA)} ({text(ds.get('split'), NA)} split)"
               f" · {text(summary.get('created'), '')}")
    return (
        f'<header class="decision {klass}"><div class="eyebrow">{e(eyebrow)}</div>'
        f"<h1>{e(decision)}</h1><p class=\"blurb\">{e(_DECISION_BLURB.get(decision, ''))}</p>"
        f'<div class="gate-line">{e(line)}</div><div class="kpis">'
        + "".join(f"<div class=\"kpi\"><b>{e(v)}</b><span>{e(label)}</span></div>" for v, label in kpis)
        + "</div></header>"
    )


# -- routing and next steps ------------------------------------------------------------------------


def _routes_card(summary: Mapping[str, Any]) -> str:
    gate = section(summary, "gate")
    routes = section(gate, "routes")
    blocking = {text(b) for b in gate.get("blocking") or []}
    by_cohort: dict[str, list[Mapping[str, Any]]] = {}
    for v in rows(summary, "verdicts"):
        by_cohort.setdefault(text(v.get("cohort")), []).append(v)
    cohorts = list(dict.fromkeys([*routes, *by_cohort]))
    if not cohorts:
        return '<section class="card"><h2>Routing</h2><p class="note">No cohorts were gated.</p></section>'
    body = []
    for cohort in cohorts:
        where = text(routes.get(cohort), "")
        route = f'<span class="pill {e(where)}">{e(where)}</span>' if where in ("clone", "expert") else NA
        if cohort in blocking:
            route += ' <span class="pill fail">blocks release</span>'
        checks = " ".join(
            f'<span class="pill {_status_class(v)}" title="{e(v.get("reason"))}">{e(v.get("metric"))}</span>'
            for v in by_cohort.get(cohort, [])
        )
        body.append(f"<tr><td><b>{e(cohort)}</b></td><td>{route}</td><td>{checks}</td></tr>")
    return ('<section class="card"><h2>Routing <small>where each cohort\'s traffic goes</small></h2>'
            "<table><thead><tr><th>cohort</th><th>route</th><th>checks</th></tr></thead><tbody>"
            + "".join(body) + "</tbody></table></section>")


_ACTION_LABEL = {"retrain": "retrain", "route": "route", "block": "block", "inspect_tools": "inspect tools",
                 "sample_more": "sample more", "collect_more": "collect more"}


def _next_steps_card(summary: Mapping[str, Any]) -> str:
    steps = rows(section(summary, "gate"), "next_steps")
    if not steps:
        done = text(section(summary, "gate").get("decision")) == "SHIP"
        return ('<section class="card"><h2>Next steps</h2><p class="note">'
                + ("Nothing to do: every gated cohort passed." if done else "No next steps were recorded.")
                + "</p></section>")
    items = "".join(
        f'<li><span class="pill {"fail" if s.get("action") == "block" else "light"}">'
        f'{e(_ACTION_LABEL.get(text(s.get("action")), text(s.get("action"))))}</span> {e(s.get("text"))}</li>'
        for s in steps
    )
    return f'<section class="card"><h2>Next steps</h2><ol class="steps">{items}</ol></section>'


def _status_class(verdict: Mapping[str, Any]) -> str:
    status = text(verdict.get("status"))
    return status if status in STATUS_COLORS else "unknown"


# -- the chart -------------------------------------------------------------------------------------

_W = 1160  # SVG user units; the SVG scales to the card's width
_LABEL_W = 250
_PLOT_X0, _PLOT_X1 = 262, 860
_ROW_H = 70
_TOP, _BOTTOM = 26, 30


def _nice_step(span: float, ticks: int = 8) -> float:
    """A tick step from 1-2-2.5-5 x 10^k giving about ``ticks`` to ``1.25 x ticks`` ticks over ``span``."""
    raw = span / ticks
    power: float = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _tick_label(tick: float, step: float) -> str:
    """``-2.5``, ``+5``, ``0``: just enough decimals for the step (0.25 steps need two)."""
    decimals = next((d for d in (0, 1, 2, 3) if abs(step * 10**d - round(step * 10**d)) < 1e-9), 3)
    value = round(tick, decimals)
    if value == 0:
        return "0"
    return f"{value:+.{decimals}f}" if value > 0 else f"{value:.{decimals}f}"


def _domain(verdicts: Sequence[Mapping[str, Any]], ticks: int = 8) -> tuple[float, float, float]:
    values = [0.0]
    for v in verdicts:
        for key in ("ci_low", "ci_high", "diff"):
            num = number(v.get(key))
            if num is not None:
                values.append(num)
        within = number(v.get("within"))
        if within is not None:
            values.append(-within)
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.5)
    lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, ticks)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, step


def _chart_svg(summary: Mapping[str, Any]) -> str:
    """One row per verdict, each on its own scale.

    A shared axis would let one cohort 60 points down shrink every 1-3 point margin to a few
    pixels; so each row spans its own interval, difference, margin and zero, with its own ticks,
    and the numbers are printed beside it. Rows are not compared by length, only each against
    its own margin."""
    verdicts = rows(summary, "verdicts")
    height = _TOP + _ROW_H * len(verdicts) + _BOTTOM
    plot_bottom = _TOP + _ROW_H * len(verdicts)
    level = confidence_label(summary) or "confidence"
    out = [
        (f'<svg class="chart" viewBox="0 0 {_W} {height}" role="img" '
        f'aria-label="{e("difference clone - expert with " + level + " intervals against each margin")}" '
        'font-family="system-ui,-apple-system,Segoe UI,Roboto,Arial,sans-serif">'),
        (f'<text x="{_PLOT_X1 + 16}" y="16" font-size="12" fill="#59636e">verdict · diff [{e(level)} CI] · margin'
        "</text>"),
        (f'<text x="{_PLOT_X0}" y="16" font-size="12" fill="#59636e">clone − expert, points · each row on its own '
         "scale</text>"),
    ]
    for i, v in enumerate(verdicts):
        top = _TOP + i * _ROW_H
        mid = top + 24
        axis_y = top + _ROW_H - 22
        lo, hi, step = _domain([v], ticks=5)

        def x(value: float, lo: float = lo, hi: float = hi) -> float:
            return _PLOT_X0 + (value - lo) / (hi - lo) * (_PLOT_X1 - _PLOT_X0)

        color = STATUS_COLORS.get(text(v.get("status")), _UNKNOWN_COLOR)
        if i % 2 == 0:
            out.append(f'<rect x="0" y="{top}" width="{_W}" height="{_ROW_H}" fill="#f6f8fa"/>')
        out.append(f'<text x="8" y="{mid - 3:.1f}" font-size="13.5" font-weight="600" fill="#1f2328">'
                   f"{e(_clip(text(v.get('cohort')), 30))}</text>")
        mode = text(v.get("mode"))
        out.append(f'<text x="8" y="{mid + 13:.1f}" font-size="12" fill="#59636e">'
                   f"{e(_clip(text(v.get('metric')) + (f' · {mode}' if mode else ''), 36))}</text>")
        # This row's axis: ticks and labels under its band.
        out.append(f'<line x1="{_PLOT_X0}" y1="{axis_y}" x2="{_PLOT_X1}" y2="{axis_y}" stroke="#d1d9e0"/>')
        tick = lo
        while tick <= hi + step / 2:
            tx = x(tick)
            out.append(f'<line x1="{tx:.1f}" y1="{top + 6}" x2="{tx:.1f}" y2="{axis_y + 3}" stroke="#eef1f4"/>')
            out.append(f'<text x="{tx:.1f}" y="{axis_y + 14}" font-size="10.5" fill="#59636e" '
                       f'text-anchor="middle">{e(_tick_label(tick, step))}</text>')
            tick += step
        zx = x(0.0)
        out.append(f'<line x1="{zx:.1f}" y1="{top + 6}" x2="{zx:.1f}" y2="{axis_y}" stroke="#1f2328" '
                   'stroke-width="1.2"/>')
        within = number(v.get("within"))
        if within is not None:
            mx = x(-within)
            # The zone left of the margin is where the clone is worse than allowed.
            out.append(f'<rect x="{_PLOT_X0}" y="{top + 6}" width="{max(mx - _PLOT_X0, 0):.1f}" '
                       f'height="{axis_y - top - 6}" fill="#cf222e" fill-opacity="0.06"/>')
            out.append(f'<line x1="{mx:.1f}" y1="{top + 4}" x2="{mx:.1f}" y2="{axis_y}" stroke="#cf222e" '
                       'stroke-width="1.6" stroke-dasharray="4 3"/>')
        diff, c_lo, c_hi = number(v.get("diff")), number(v.get("ci_low")), number(v.get("ci_high"))
        if c_lo is not None and c_hi is not None:
            x0, x1 = x(c_lo), x(c_hi)
            out.append(f'<line x1="{x0:.1f}" y1="{mid}" x2="{x1:.1f}" y2="{mid}" stroke="{color}" stroke-width="3" '
                       'stroke-linecap="round"/>')
            for cx in (x0, x1):
                out.append(f'<line x1="{cx:.1f}" y1="{mid - 7}" x2="{cx:.1f}" y2="{mid + 7}" stroke="{color}" '
                           'stroke-width="2.2"/>')
        if diff is not None:
            hollow = c_lo is None or c_hi is None
            out.append(f'<circle cx="{x(diff):.1f}" cy="{mid}" r="6" fill="{"#fff" if hollow else color}" '
                       f'stroke="{color if hollow else "#fff"}" stroke-width="2"/>')
        else:
            out.append(f'<text x="{(_PLOT_X0 + _PLOT_X1) / 2:.0f}" y="{mid + 4}" font-size="12" fill="#6e7781" '
                       'text-anchor="middle">no scored items</text>')
        label = verdict_label(v, detail=False)
        out.append(f'<text x="{_PLOT_X1 + 16}" y="{mid - 3:.1f}" font-size="13" font-weight="700" fill="{color}">'
                   f"{e(label)}<tspan font-weight=\"400\" fill=\"#59636e\"> → {e(text(v.get('action'), NA))}</tspan>"
                   "</text>")
        out.append(f'<text x="{_PLOT_X1 + 16}" y="{mid + 13:.1f}" font-size="12" fill="#1f2328">'
                   + (f"{e(fmt_points(diff))} {e(fmt_interval(c_lo, c_hi))}" if diff is not None else "no data")
                   + f" · margin {e(fmt_margin(within))}</text>")
    out.append(f'<text x="{(_PLOT_X0 + _PLOT_X1) / 2:.0f}" y="{plot_bottom + 20}" font-size="12" fill="#59636e" '
               'text-anchor="middle">clone − expert, points (right of the dashed margin line passes)</text>')
    out.append("</svg>")
    return "".join(out)


def _clip(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _chart_card(summary: Mapping[str, Any]) -> str:
    if not rows(summary, "verdicts"):
        return ('<section class="card"><h2>Parity per cohort</h2><p class="note">No parity assertions ran.</p>'
                "</section>")
    level = confidence_label(summary) or "confidence"
    legend = (
        '<div class="legend">'
        f'<span><i style="width:26px;height:3px;background:{STATUS_COLORS["pass"]}"></i>pass</span>'
        f'<span><i style="width:26px;height:3px;background:{STATUS_COLORS["fail"]}"></i>fail</span>'
        f'<span><i style="width:26px;height:3px;background:{STATUS_COLORS["inconclusive"]}"></i>inconclusive</span>'
        f"<span>● difference, bar = {e(level)} interval (each row on its own scale)</span>"
        '<span><i style="width:0;height:14px;border-left:2px dashed #cf222e"></i>margin (−within); the shaded '
        "zone is worse than allowed</span>"
        '<span><i style="width:0;height:14px;border-left:2px solid #1f2328"></i>no difference</span>'
        "</div>"
    )
    return ('<section class="card"><h2>Parity per cohort <small>a cohort passes when its whole interval '
            "lies right of its margin</small></h2>" + _chart_svg(summary) + legend + "</section>")


# -- tables ----------------------------------------------------------------------------------------


def _table(headers: Sequence[str], body: Sequence[Sequence[str]], numeric: Sequence[int] = (),
           classes: Mapping[int, str] | None = None) -> str:
    """A table from already-escaped cells; ``numeric`` columns are right-aligned, ``classes`` adds
    a CSS class to every cell of a column."""
    def cls(i: int) -> str:
        names = " ".join(n for n in ("num" if i in numeric else "", (classes or {}).get(i, "")) if n)
        return f' class="{names}"' if names else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers))
    trs = ["<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in body]
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}</tbody></table></div>'


def _verdicts_card(summary: Mapping[str, Any]) -> str:
    verdicts = rows(summary, "verdicts")
    if not verdicts:
        return ""
    level = confidence_label(summary)
    holm = bool(section(summary, "run").get("holm"))
    headers = ["cohort / metric", "n", "expert", "clone", "diff", f"{e(level)} CI", "margin",
               "p (Holm)" if holm else "p", "verdict", "action"]
    numeric = (1, 2, 3, 4, 6, 7)
    trs = []
    for v in verdicts:
        p = number(v.get("p_adjusted")) if v.get("holm_adjusted") else number(v.get("p_value"))
        mode = text(v.get("mode"))
        cells = [
            f"<b>{e(v.get('cohort'))}</b><br><small>{e(v.get('metric'))}{e(' · ' + mode if mode else '')}</small>",
            _n_cell(v),
            e(fmt_mean(v.get("expert_mean"))), e(fmt_mean(v.get("clone_mean"))),
            f"<b>{e(fmt_points(v.get('diff')))}</b>",
            f'<span class="mono nowrap">{e(fmt_interval(v.get("ci_low"), v.get("ci_high")))}</span>',
            e(fmt_margin(v.get("within"))), e(NA if p is None else f"{p:.3g}"),
            f'<span class="pill {_status_class(v)}">{e(verdict_label(v))}</span>', e(v.get("action") or NA),
        ]
        trs.append('<tr class="main">' + "".join(
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
        # The reason reads as a sentence: its own full-width row instead of a squeezed column.
        extra = ""
        if (integer(v.get("errors")) or 0) > 0:
            extra = (f" {e(fmt_count(v.get('errors')))} of {e(fmt_count(v.get('total')))} items lost to failed "
                     f"model calls ({e(fmt_share(v.get('error_rate')))}), excluded from the scores.")
        recorded = recorded_expert(summary, v.get("cohort"))
        if recorded:
            extra += f" Recorded expert (dataset): {e(recorded)}."
        reason = text(v.get("reason")).rstrip(". ")
        trs.append(f'<tr class="why"><td colspan="{len(headers)}">{e(reason)}{"." if reason else ""}{extra} '
                   f'<span class="test">{e(v.get("test"))}</span></td></tr>')
    head = "".join(f'<th class="num">{h}</th>' if i in numeric else f"<th>{h}</th>" for i, h in enumerate(headers))
    return ('<section class="card"><h2>Verdicts <small>means and differences in points (x100)</small></h2>'
            f'<div class="scroll"><table class="verdicts"><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}'
            "</tbody></table></div></section>")


def _n_cell(verdict: Mapping[str, Any]) -> str:
    """Items, with the trajectories they come from on a second line when clustered."""
    clusters = integer(verdict.get("n_clusters"))
    n = e(fmt_count(verdict.get("n")))
    return n if clusters is None else f"{n}<br><small>({clusters:,} traj.)</small>"


def _example(where: str, expert: object, clone: object) -> str:
    return (f'<div class="ex"><div class="ex-h">{where}</div><div class="ex-b">'
            f'<div class="expert"><div class="who">expert</div><pre>{e(action_text(expert))}</pre></div>'
            f'<div class="clone"><div class="who">clone</div><pre>{e(action_text(clone))}</pre></div></div></div>')


def _where(ex: Mapping[str, Any], prefix: str = "") -> str:
    step = integer(ex.get("step"))
    out = prefix + f"<b>{e(ex.get('trajectory_id') or '?')}</b>" + (f" · step {step}" if step is not None else "")
    cohorts = ex.get("cohorts")
    if isinstance(cohorts, list) and cohorts:
        out += " · " + e(", ".join(text(c) for c in cohorts))
    return out


def _worst_card(summary: Mapping[str, Any]) -> str:
    blocks = []
    for v in rows(summary, "verdicts"):
        worst = rows(v, "worst")
        if v.get("status") == "pass" or not worst:
            continue
        prefix = (f'<span class="pill {_status_class(v)}">{e(text(v.get("status")))}</span> '
                  f"{e(v.get('cohort'))} / {e(v.get('metric'))} · ")
        blocks += [_example(_where(w, prefix), w.get("expert_action"), w.get("clone_action")) for w in worst]
    if not blocks:
        return ""
    return ('<section class="card"><h2>Worst items of failing and undecided cohorts</h2>' + "".join(blocks)
            + "</section>")


def _agents_card(summary: Mapping[str, Any]) -> str:
    agents, gate = section(summary, "agents"), section(summary, "gate")
    body = []
    costs: dict[str, float | None] = {}
    for role in ("clone", "expert"):
        a = agents.get(role)
        if not isinstance(a, Mapping):
            continue
        costs[role] = number(a.get("cost_usd")) if a.get("price_known") is not False else None
        body.append([
            f"<b>{e(role)}</b>", f"<code>{wb(a.get('name') or NA)}</code>", e(fmt_count(a.get("calls"))),
            e(fmt_count(a.get("cached"))), e(fmt_count(a.get("failed"))), e(fmt_count(a.get("retries"))),
            e(fmt_count(a.get("prompt_tokens"))), e(fmt_count(a.get("completion_tokens"))),
            f"<b>{e(fmt_usd(a.get('cost_usd'), a.get('price_known')))}</b>"
            + (" (recorded)" if a.get("cost_source") == "recorded" else ""),
            e(fmt_seconds(a.get("latency_p50_s"))), e(fmt_seconds(a.get("latency_p95_s"))),
        ])
    if not body:
        return '<section class="card"><h2>Cost and latency</h2><p class="note">No agent usage recorded.</p></section>'
    notes = [(f"Estimated saving with this routing: <b>{e(fmt_pct(gate.get('estimated_saving_pct'), 0))}</b> of "
             f"inference cost ({e(fmt_pct(gate.get('traffic_on_clone_pct'), 0))} of traffic on the clone).")]
    c, x = costs.get("clone"), costs.get("expert")
    if c is not None and x:
        notes.append(f"This run: the clone cost {e(fmt_usd(c))}, the expert {e(fmt_usd(x))} "
                     f"({(1 - c / x) * 100:.0f}% less).")
    for role in ("clone", "expert"):
        a = agents.get(role)
        if isinstance(a, Mapping) and a.get("price_known") is False:
            notes.append(f"{e(role)} <code>{e(a.get('name'))}</code> has no known price: pass "
                         f"<code>--bclone-price {e(a.get('name'))}=IN/OUT</code> (USD per million tokens).")
    return ('<section class="card"><h2>Cost and latency</h2>'
            + _table(["role", "agent", "calls", "cached", "failed", "retries", "tokens in", "tokens out", "cost",
                      "latency p50", "p95"], body, numeric=tuple(range(2, 11)))
            + "".join(f'<p class="note">{n}</p>' for n in notes) + "</section>")


def _errors_card(summary: Mapping[str, Any]) -> str:
    errors, cache = section(summary, "errors"), section(summary, "cache")
    by_role = section(errors, "by_role")
    hits, misses = integer(cache.get("hits")) or 0, integer(cache.get("misses")) or 0
    rate = f" ({hits / (hits + misses):.1%} hit rate)" if hits + misses else ""
    roles = ", ".join(f"{e(k)} {e(fmt_count(v))}" for k, v in sorted(by_role.items()))
    out = ['<section class="card"><h2>Errors and cache</h2>',
           f"<p>Failed model calls: <b>{e(fmt_count(errors.get('count') or 0))}</b>"
           + (f" ({roles})" if roles else "")
           + ". They are excluded from the scores and never counted as clone mistakes.</p>",
           f"<p>Cache: <b>{hits:,}</b> hits, <b>{misses:,}</b> misses{e(rate)}.</p>"]
    examples = rows(errors, "examples")
    if examples:
        out.append(_table(["role", "call", "error"],
                          [[e(x.get("role")), f"<code>{wb(x.get('key'))}</code>", e(x.get("error"))]
                           for x in examples[:10]]))
    out.append("</section>")
    return "".join(out)


def _confusions_card(summary: Mapping[str, Any]) -> str:
    confusions = sorted(rows(summary, "tool_confusions"), key=lambda r: -(integer(r.get("count")) or 0))
    if not confusions:
        return ('<section class="card"><h2>Tool confusions</h2><p class="note">No tool confusions recorded.</p>'
                "</section>")
    top = max(integer(r.get("count")) or 0 for r in confusions) or 1
    body = [[f"<code>{wb(r.get('expert_tool'))}</code>", f"<code>{wb(r.get('clone_tool'))}</code>",
             e(fmt_count(r.get("count"))),
             f'<div class="bar" style="width:{100 * (integer(r.get("count")) or 0) / top:.0f}%"></div>']
            for r in confusions[:25]]
    bar_col = 3
    more = (f'<p class="note">{len(confusions) - 25} more in the JSON report.</p>' if len(confusions) > 25 else "")
    return ('<section class="card"><h2>Tool confusions <small>expert tool → clone tool at the same state</small>'
            "</h2>" + _table(["expert", "clone", "count", ""], body, numeric=(2,), classes={bar_col: "barcell"})
            + more + "</section>")


def _dead_and_shift_card(summary: Mapping[str, Any]) -> str:
    out = [('<section class="card"><h2>Dead-tool calls <small>tools not in the dataset\'s toolset; '
            f'{e(OVERLAP_NOTE)}</small></h2>')]
    dead = rows(summary, "dead_tools")
    if dead:
        out.append(_table(["tool", "calls", "cohorts"],
                          [[f"<code>{wb(d.get('tool'))}</code>", e(fmt_count(d.get("count"))),
                            e(cohort_counts(d.get("cohorts")))] for d in dead], numeric=(1,)))
    else:
        out.append('<p class="note">No calls to tools outside the current toolset recorded.</p>')
    shift = summary.get("distribution_shift")
    out.append('<h2 class="gap">Distribution shift</h2>')
    if isinstance(shift, Mapping):
        body = []
        for label, key in (("in distribution", "in_distribution"), ("out of distribution", "out_of_distribution")):
            side = section(shift, key)
            body.append([e(label), e(fmt_count(side.get("n"))), e(fmt_mean(side.get("expert_mean"))),
                         e(fmt_mean(side.get("clone_mean"))),
                         f"<b>{e(fmt_points(score_diff_points(side.get('expert_mean'), side.get('clone_mean'))))}</b>"])
        threshold = shift.get("threshold")
        out.append(f"<p><b>{e(fmt_share(shift.get('ood_share')))}</b> of eval states (decision points) are out of distribution "
                   f"(shift score &gt; {e(NA if threshold is None else threshold)}); "
                   f"<code>{e(shift.get('metric') or 'score')}</code> on each side:</p>")
        out.append(_table(["side", "n", "expert", "clone", "diff"], body, numeric=(1, 2, 3, 4)))
    else:
        out.append('<p class="note">Not measured in this run.</p>')
    out.append("</section>")
    return "".join(out)


def _drift_card(summary: Mapping[str, Any]) -> str:
    drift = summary.get("drift")
    if not isinstance(drift, Mapping):
        return ""
    drows = rows(drift, "rows")
    body = [[e(r.get("cohort")), e(r.get("metric")), e(fmt_mean(r.get("baseline_clone"))), e(fmt_mean(r.get("clone"))),
             f"<b>{e(fmt_points(r.get('drop')))}</b>",
             '<span class="pill drift">drift</span>' if r.get("flagged") else '<span class="pill light">ok</span>']
            for r in drows]
    flagged = sum(1 for r in drows if r.get("flagged"))
    return (f'<section class="card"><h2>Drift against the baseline <small>{flagged} of {len(drows)} flagged; '
            f"baseline {e(drift.get('baseline'))}, margin {e(fmt_points(drift.get('margin'), signed=False))} points"
            "</small></h2>"
            + (_table(["cohort", "metric", "baseline clone", "clone", "drop (points)", ""], body, numeric=(2, 3, 4))
               if body else '<p class="note">No cohort and metric in common with the baseline.</p>')
            + "</section>")


def _divergences_card(summary: Mapping[str, Any]) -> str:
    div = section(summary, "divergences")
    if not integer(div.get("count")) and not integer(div.get("states")):
        return ""
    examples = rows(div, "examples")
    return ('<section class="card"><h2>Divergent states <small>'
            f"{e(fmt_count(div.get('count')))} of {e(fmt_count(div.get('states')))} step-mode decision points "
            f"({e(fmt_share(div.get('rate')))}) where the clone's action differs from the expert's</small></h2>"
            + "".join(_example(_where(x), x.get("expert_action"), x.get("clone_action")) for x in examples)
            + '<p class="note">Every divergent state: --bclone-divergences=divergences.parquet</p></section>')


def _scores_card(summary: Mapping[str, Any]) -> str:
    scores = rows(summary, "scores")
    if not scores:
        return ""
    body = []
    for s in scores:
        diff = number(s.get("diff"))
        diff = score_diff_points(s.get("expert_mean"), s.get("clone_mean")) if diff is None else diff
        body.append([e(s.get("cohort")), e(s.get("metric")), e(s.get("mode") or NA), e(fmt_count(s.get("n"))),
                     e(fmt_mean(s.get("expert_mean"))), e(fmt_mean(s.get("clone_mean"))), e(fmt_points(diff))])
    return ('<section class="card"><details><summary>All scores (informational, not gated) · '
            f"{len(scores)} rows</summary>"
            + _table(["cohort", "metric", "mode", "n", "expert", "clone", "diff"], body, numeric=(3, 4, 5, 6))
            + "</details></section>")


def _meta_card(summary: Mapping[str, Any]) -> str:
    ds, run = section(summary, "dataset"), section(summary, "run")
    wall = number(run.get("wall_s"))
    items = [
        ("dataset", f"{text(ds.get('ref'), NA)} (name {text(ds.get('name'), NA)}, version {text(ds.get('version'), NA)})"),
        ("fingerprint", text(ds.get("fingerprint"), NA)),
        ("evaluated", (f"{fmt_count(ds.get('trajectories'))} trajectories, {fmt_count(ds.get('decision_points'))} "
                      f"decision points, split {text(ds.get('split'), NA)}")),
        ("clone", text(run.get("clone"), NA)),
        ("expert", text(run.get("expert"), NA)),
        ("replay", (f"modes {', '.join(text(m) for m in run.get('modes') or []) or NA}, "
                   f"repeats {text(run.get('repeats'), NA)}, seed {text(run.get('seed'), NA)}")),
        ("statistics", f"{confidence_label(summary) or NA} paired-bootstrap intervals"
                       + (", Holm-corrected across cohorts" if run.get("holm") else "")),
        ("wall time", NA if wall is None else f"{wall:,.0f} s"),
        ("created", text(summary.get("created"), NA)),
    ]
    return ('<section class="card"><h2>Run</h2><dl class="meta">'
            + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items) + "</dl></section>")


def _sequential_card(summary: Mapping[str, Any]) -> str:
    """``--bclone-sequential``: the terminal's lines (one source for the figures)."""
    from .terminal import sequential_lines

    lines = [line.strip() for line in sequential_lines(summary) if line]
    if not lines:
        return ""
    items = "".join(f"<li>{e(line)}</li>" for line in lines[1:])
    return f'<section class="card"><h2>Sequential replay <small>{e(lines[0])}</small></h2><ul>{items}</ul></section>'
