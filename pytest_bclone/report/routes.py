"""The routing decision as a config file a router loads: cohort -> model string.

A BLOCKED gate writes every cohort (and the default) to the expert: a router reloading this file
must never send traffic to a clone the gate refused, whatever the per-cohort routes say.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._common import ReportError, atomic_write_text, number, section, text

__all__ = ["ROUTES_SCHEMA_ID", "routes_config", "write_routes"]

ROUTES_SCHEMA_ID = "pytest-bclone/routes/1"


def routes_config(summary: Mapping[str, Any], clone_model: str | None = None,
                  expert_model: str | None = None) -> dict[str, Any]:
    """The router config: ``{"default", "routes": {cohort: model}, "estimated_saving_pct", ...}``.

    Model strings default to the agent names of the run (``summary["run"]``); pass the deployed
    model names when they differ (a ``recorded`` expert is not something a router can call).
    ``default`` is where traffic outside every gated cohort goes: the clone only on a plain SHIP,
    otherwise the expert (an unevaluated slice is not covered by a hybrid decision).
    """
    run, gate, ds = section(summary, "run"), section(summary, "gate"), section(summary, "dataset")
    clone = clone_model or text(run.get("clone"))
    expert = expert_model or text(run.get("expert"))
    if not clone or not expert:
        missing = "clone" if not clone else "expert"
        raise ReportError(
            f"routes: no {missing} model: the summary's run.{missing} is empty and no {missing}_model was "
            f"given; pass {missing}_model='provider/model' to write_routes"
        )
    decision = text(gate.get("decision"), "BLOCKED")
    routes = section(gate, "routes")
    blocked = decision == "BLOCKED"
    cohort_models = {
        text(cohort): expert if blocked or where != "clone" else clone for cohort, where in sorted(routes.items())
    }
    saving = None if blocked else number(gate.get("estimated_saving_pct"))
    return {
        "schema": ROUTES_SCHEMA_ID,
        "decision": decision,
        "default": clone if decision == "SHIP" else expert,
        "routes": cohort_models,
        "models": {"clone": clone, "expert": expert},
        "estimated_saving_pct": saving,
        "traffic_on_clone_pct": None if blocked else number(gate.get("traffic_on_clone_pct")),
        "dataset": text(ds.get("ref")) or None,
        "dataset_fingerprint": text(ds.get("fingerprint")) or None,
        "gate": text(gate.get("line")) or None,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_routes(summary: Mapping[str, Any], path: str | os.PathLike[str], clone_model: str | None = None,
                 expert_model: str | None = None, *, source: str = "--bclone-routes") -> Path:
    """Write :func:`routes_config` as JSON, or YAML when ``path`` ends in ``.yaml``/``.yml``.

    YAML needs PyYAML (imported only then); without it the error names the extension and the fix.
    """
    config = routes_config(summary, clone_model, expert_model)
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import importlib

            # importlib keeps mypy from requiring PyYAML's stubs for an optional dependency.
            yaml = importlib.import_module("yaml")
        except ImportError:
            raise ReportError(
                f"{source}={str(path)!r}: a {suffix} routes file needs PyYAML, which is not installed; "
                "pip install pyyaml, or name the file .json"
            ) from None
        body = str(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    else:
        body = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(path, body, source=source)
