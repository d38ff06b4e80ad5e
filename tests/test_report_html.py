"""The HTML report: self-contained, escaped, one chart row per verdict, robust to empty runs."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

from pytest_bclone.report import html, write_html
from pytest_bclone.report.html_report import STATUS_COLORS

from .test_report_fixtures import (
    HOSTILE,
    blocked_summary,
    empty_summary,
    hostile_summary,
    load_summary,
    ship_summary,
)


class _Tags(HTMLParser):
    """Collects every start tag with its attributes (what a browser would see)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(doc: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(doc)
    return parser.tags


def test_the_report_is_self_contained() -> None:
    doc = html(load_summary())
    assert doc.startswith("<!doctype html>") and doc.rstrip().endswith("</html>")
    tags = _tags(doc)
    names = {t for t, _ in tags}
    assert not names & {"script", "link", "iframe", "object", "embed", "img", "base"}
    for _, attrs in tags:
        for key in ("src", "href", "xlink:href", "action", "srcset"):
            assert key not in attrs, (key, attrs)
        assert not any(k.startswith("on") for k in attrs)  # no event handlers
    assert not re.search(r"https?://", doc)  # no URL at all, not even an xmlns
    assert "@import" not in doc and "url(" not in doc
    assert "default-src 'none'" in doc  # and the browser is told to refuse anything else


def test_header_shows_the_decision_coloured_by_it() -> None:
    for build, klass in ((load_summary, "hybrid"), (ship_summary, "ship"), (blocked_summary, "blocked")):
        summary = build()
        doc = html(summary)
        assert f'<header class="decision {klass}">' in doc
        assert f"<h1>{summary['gate']['decision']}</h1>" in doc
        assert summary["gate"]["line"] in doc
    assert "blocks release" in html(blocked_summary())


def test_chart_has_a_row_per_verdict_with_margin_zero_line_and_status_colours() -> None:
    summary = load_summary()
    doc = html(summary)
    svg = doc[doc.index("<svg"):doc.index("</svg>")]
    assert svg.count("<circle") == len(summary["verdicts"])
    assert svg.count('stroke-dasharray="4 3"') == len(summary["verdicts"])  # a margin line per row
    for status in ("pass", "fail", "inconclusive"):
        assert STATUS_COLORS[status] in svg
    assert "INCONCLUSIVE" in svg and "-6.3 [-14.1, +1.6] · margin -2.0" in svg
    assert "clone − expert, points" in svg


def test_tables_and_side_by_side_examples_are_present() -> None:
    doc = html(load_summary())
    for heading in ("Routing", "Next steps", "Parity per cohort", "Verdicts", "Worst items", "Cost and latency",
                    "Errors and cache", "Tool confusions", "Dead-tool calls", "Distribution shift",
                    "Drift against the baseline", "Divergent states", "All scores", "Run"):
        assert re.search(f"<(h2[^>]*|summary)>{heading}", doc), heading
    assert doc.count('<div class="ex">') == 4 + 4  # worst items + divergence examples
    assert doc.count('<div class="who">expert</div>') == doc.count('<div class="who">clone</div>')
    assert "lookup_order_legacy(order=&quot;#W2378156&quot;)" in doc
    assert "$8.21" in doc and "62% less" in doc and "83.4% hit rate" in doc


def test_untrusted_text_is_escaped_everywhere() -> None:
    doc = html(hostile_summary())
    assert "<script" not in doc and "<img" not in doc and "onerror=alert(1)>" not in doc
    assert HOSTILE not in doc
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in doc
    assert not {t for t, _ in _tags(doc)} & {"script", "img"}


def test_empty_and_bare_summaries_render(tmp_path: Path) -> None:
    doc = html(empty_summary())
    assert "no scored items" in doc and "Not measured in this run." in doc and "n/a" in doc
    assert "unpriced" in doc
    bare = html({})
    assert "UNKNOWN" in bare and "No parity assertions ran." in bare
    path = write_html(load_summary(), tmp_path / "r" / "bclone.html")
    assert path.read_text(encoding="utf-8") == html(load_summary())
    assert os.listdir(path.parent) == ["bclone.html"]
