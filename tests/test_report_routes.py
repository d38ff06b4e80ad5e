"""The routing config a router loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pytest_bclone.report import ReportError, routes_config, write_routes

from .test_report_fixtures import blocked_summary, load_summary, ship_summary

CLONE, EXPERT = "openai/support-clone-ft-v3", "anthropic/claude-opus-4-7"


def test_hybrid_routes_send_passing_cohorts_to_the_clone_and_the_rest_to_the_expert(tmp_path: Path) -> None:
    path = write_routes(load_summary(), tmp_path / "routes.json")
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["routes"] == {"common_intents": CLONE, "long_tail": EXPERT, "multi_turn_refunds": EXPERT,
                                "safety": CLONE, "tool_heavy": CLONE}
    assert config["default"] == EXPERT  # traffic outside the gated cohorts stays on the expert
    assert config["decision"] == "SHIP WITH HYBRID ROUTE"
    assert config["estimated_saving_pct"] == 61.2
    assert config["dataset"] == "support@v8"
    assert config["generated"].endswith("+00:00")
    assert config["schema"] == "pytest-bclone/routes/1"


def test_deployed_model_names_override_the_agent_names() -> None:
    config = routes_config(load_summary(), clone_model="router/clone-v3", expert_model="router/opus")
    assert set(config["routes"].values()) == {"router/clone-v3", "router/opus"}
    assert config["models"] == {"clone": "router/clone-v3", "expert": "router/opus"}


def test_ship_defaults_to_the_clone_and_blocked_sends_everything_to_the_expert() -> None:
    assert routes_config(ship_summary())["default"] == CLONE
    blocked = load_summary()
    blocked["gate"].update(decision="BLOCKED", line="BCLONE GATE: BLOCKED (safety: zero regression violated)")
    # Even if the session left clone routes in a blocked summary, the file never serves the clone.
    config = routes_config(blocked)
    assert set(config["routes"].values()) == {EXPERT} and config["default"] == EXPERT
    assert config["estimated_saving_pct"] is None
    assert routes_config(blocked_summary())["routes"]["safety"] == EXPERT


def test_yaml_routes(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    path = write_routes(load_summary(), tmp_path / "routes.yaml")
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["routes"]["long_tail"] == EXPERT


def test_yaml_without_pyyaml_names_the_extension_and_the_fix(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    with pytest.raises(ReportError, match=r"--bclone-routes='.*routes.yml': a .yml routes file needs PyYAML.*"
                                          r"pip install pyyaml, or name the file .json"):
        write_routes(load_summary(), tmp_path / "routes.yml")
    assert not list(tmp_path.iterdir())


def test_missing_model_names_are_a_clear_error() -> None:
    summary = load_summary()
    summary["run"]["expert"] = ""
    with pytest.raises(ReportError, match=r"no expert model: .*pass expert_model='provider/model'"):
        routes_config(summary)
