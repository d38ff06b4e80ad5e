"""Pure renderers of the gate's report: terminal lines, JSON, Markdown, JUnit properties, HTML,
the routing config, the divergences file, and drift against a baseline.

Every renderer takes only the run's summary dict (its schema: :data:`REPORT_SCHEMA`); the JSON
report is that dict. Nothing here imports pytest or litellm, and heavy or optional libraries
(tabulate, jsonschema, pyarrow, PyYAML) are imported inside the function that needs them, so
importing this package is cheap. Every file is written atomically (temp file + ``os.replace``).
Errors are :class:`ReportError` (a :class:`~pytest_bclone.errors.BcloneError`) naming the value,
where it came from and the fix.

How the plugin wires it (controller only)::

    lines = terminal_lines(summary, config.get_verbosity())     # pytest_terminal_summary
    item.user_properties.extend(junit_properties(verdict_record))  # --junitxml
    if cfg.report_json: write_json(summary, cfg.report_json)
    if cfg.report_md: write_markdown(summary, cfg.report_md); append_github_step_summary(summary)
    if cfg.report_html: write_html(summary, cfg.report_html)
    if cfg.routes: write_routes(summary, cfg.routes)
    if cfg.divergences: write_divergences(records, cfg.divergences)
    if cfg.baseline: summary["drift"] = compare_baseline(summary, load_baseline(cfg.baseline),
                                                          cfg.drift_margin, baseline=cfg.baseline)
    if cfg.save_baseline: save_baseline(summary, cfg.save_baseline)
"""

from ._common import SCHEMA_ID, ReportError
from .divergences import write_divergences
from .drift import compare_baseline, load_baseline, save_baseline
from .html_report import html, write_html
from .jsonio import write_json
from .junit import junit_properties
from .markdown_report import append_github_step_summary, markdown, write_markdown
from .routes import routes_config, write_routes
from .schema import REPORT_SCHEMA, validate_summary
from .terminal import terminal_lines

__all__ = [
    "REPORT_SCHEMA",
    "SCHEMA_ID",
    "ReportError",
    "append_github_step_summary",
    "compare_baseline",
    "html",
    "junit_properties",
    "load_baseline",
    "markdown",
    "routes_config",
    "save_baseline",
    "terminal_lines",
    "validate_summary",
    "write_divergences",
    "write_html",
    "write_json",
    "write_markdown",
    "write_routes",
]
