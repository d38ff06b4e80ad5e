"""The CI recipes in examples/ci run as written: their shell steps, in order, in a temporary
checkout, with the hosted steps (checkout, cache restore/save, artifact upload) played by the test.

The clone is a real litellm model served by the local stub server, so the model-call cache is
real: the push run records it, the pull-request run restores it and replays it with
``--bclone-cache-mode=none`` and sends no request at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.testing import OpenAIServer, reply

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "examples" / "ci"
SAMPLE = 30  # trajectories: enough for every cohort's test to run, small enough to stay fast


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    # A poor clone: always the same text. The gate must block it, and the pipeline must fail.
    with OpenAIServer(lambda _req: reply("Could you tell me more?")) as srv:
        yield srv


def checkout(tmp_path: Path) -> Path:
    work = tmp_path / "checkout"
    shutil.copytree(REPO / "example_suite", work / "example_suite",
                    ignore=shutil.ignore_patterns("__pycache__", ".bclone", ".pytest_cache"))
    return work


def base_env(work: Path, server: OpenAIServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "BCLONE_", "GITHUB_", "CI_"))}
    params = json.dumps({"api_base": server.base_url, "api_key": "sk-ci-recipe-test"})
    env["PYTEST_ADDOPTS"] = (f"--bclone-clone=openai/stub-clone --bclone-sample={SAMPLE} -p no:cacheprovider "
                             f"-o bclone_clone_params='{params}'")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")
    return env


def bash(script: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=dict(env), capture_output=True,
                          text=True, timeout=600, check=False)


# -- GitHub Actions ----------------------------------------------------------------------------------
def _expr(text: str, ctx: Mapping[str, str]) -> str:
    """The few ``${{ }}`` expressions the workflow uses, evaluated from ``ctx``."""

    def one(m: re.Match[str]) -> str:
        e = m.group(1).strip()
        if e == "github.event_name":
            return ctx["event"]
        if e == "steps.bclone-cache.outputs.cache-matched-key != ''":
            return "true" if ctx.get("matched") else "false"
        if e == "secrets.OPENAI_API_KEY":
            return ""
        if e.startswith(("github.ref_name", "github.sha", "github.base_ref")):
            return "x"
        raise AssertionError(f"the test does not know the expression {e!r}: teach _expr")

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def run_github(work: Path, env: dict[str, str], event: str, store: dict[str, Path], out: Path) -> dict[str, Any]:
    workflow = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    ctx = {"event": event}
    github_env, summary = out / f"{event}.env", out / f"{event}-summary.md"
    github_env.write_text("")
    env = {**env, "GITHUB_ENV": str(github_env), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true"}
    failed, ran = False, []
    for step in steps:
        cond = step.get("if", "success()")
        if "always()" not in cond and failed:
            continue
        if "github.event_name != 'pull_request'" in cond and event == "pull_request":
            continue
        uses = step.get("uses", "")
        if uses.startswith(("actions/checkout", "actions/setup-python")):
            ran.append(uses)
        elif uses.startswith("actions/cache/restore"):
            if "cache" in store:
                shutil.copytree(store["cache"], work / step["with"]["path"], dirs_exist_ok=True)
                ctx["matched"] = "yes"
            ran.append(uses)
        elif uses.startswith("actions/cache/save"):
            src = work / step["with"]["path"]
            assert src.is_dir() and any(src.rglob("*.json")), "the gate recorded no model call to save"
            store["cache"] = out / "saved-cache"
            shutil.copytree(src, store["cache"], dirs_exist_ok=True)
            ran.append(uses)
        elif uses.startswith("actions/upload-artifact"):
            shutil.copytree(work / step["with"]["path"], out / f"{event}-artifacts", dirs_exist_ok=True)
            ran.append(uses)
        elif "run" in step:
            if step.get("name") == "Install":
                # The runner is fresh in CI; here the package under test is already installed.
                assert "pip install pytest-bclone" in step["run"]
                ran.append("Install")
                continue
            step_env = {**env, **{k: _expr(str(v), ctx) for k, v in (step.get("env") or {}).items()}}
            for line in github_env.read_text().splitlines():
                key, _, value = line.partition("=")
                step_env[key] = value
            proc = bash(step["run"], work, step_env)
            ran.append(step["name"])
            if step["name"] == "Run the gate":
                ctx["gate_output"] = proc.stdout + proc.stderr
                ctx["gate_rc"] = str(proc.returncode)
            failed = failed or proc.returncode != 0
        else:
            raise AssertionError(f"unknown step {step}")
    return {"failed": failed, "ran": ran, "summary": summary, **ctx}


def test_github_workflow_records_on_main_replays_on_pull_requests_and_fails_on_blocked(
        server: OpenAIServer, tmp_path: Path) -> None:
    work = checkout(tmp_path)
    out = tmp_path / "ci"
    out.mkdir()
    env = base_env(work, server, tmp_path)
    store: dict[str, Path] = {}

    before = server.request_count
    push = run_github(work, env, "push", store, out)
    recorded = server.request_count - before
    assert recorded > 0, push.get("gate_output")
    assert "BCLONE GATE: BLOCKED" in push["gate_output"]
    assert push["failed"] and push["gate_rc"] == "1"  # the pipeline fails on BLOCKED
    assert "actions/cache/save@v4" in push["ran"] and "actions/upload-artifact@v4" in push["ran"]
    artifacts = out / "push-artifacts"
    assert {p.name for p in artifacts.iterdir()} >= {"report.md", "report.html", "report.json", "routes.json",
                                                    "junit.xml"}
    assert json.loads((artifacts / "report.json").read_text())["gate"]["decision"] == "BLOCKED"
    assert "BCLONE GATE" in push["summary"].read_text() or "BLOCKED" in push["summary"].read_text()

    # A pull request on a fresh runner: the cache restored, replayed with mode none, zero requests.
    shutil.rmtree(work)
    work = checkout(tmp_path)
    before = server.request_count
    pr = run_github(work, env, "pull_request", store, out)
    assert server.request_count == before, "a pull request must not call the model"
    assert "cache none" in pr["gate_output"]  # the header names the cache mode it ran with
    assert "BCLONE GATE: BLOCKED" in pr["gate_output"] and pr["failed"]
    assert "actions/cache/save@v4" not in pr["ran"]  # pull requests never overwrite main's recording
    assert (out / "pull_request-artifacts" / "report.html").exists()
    pr_report = json.loads((out / "pull_request-artifacts" / "report.json").read_text())
    push_report = json.loads((artifacts / "report.json").read_text())
    assert [v["status"] for v in pr_report["verdicts"]] == [v["status"] for v in push_report["verdicts"]]


def test_gitlab_job_script_runs_in_order_and_fails_on_blocked(server: OpenAIServer, tmp_path: Path) -> None:
    job = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())["bclone-gate"]
    assert job["cache"][0]["paths"] == [".bclone/cache"] and job["artifacts"]["when"] == "always"
    work = checkout(tmp_path)
    env = base_env(work, server, tmp_path)
    script = [line for line in job["script"] if "pip install" not in line]
    assert len(script) == len(job["script"]) - 1
    before = server.request_count
    proc = bash("\n".join(script), work, env)  # one shell, as GitLab runs a job's script
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert server.request_count > before
    assert "BCLONE GATE: BLOCKED" in proc.stdout
    for path in job["artifacts"]["paths"]:
        assert {p.name for p in (work / path).iterdir()} >= {"report.md", "report.html", "junit.xml"}
    # A merge request on the next pipeline: the restored cache is replayed without a model call.
    before = server.request_count
    proc = bash("\n".join(script), work, {**env, "CI_MERGE_REQUEST_IID": "7"})
    assert proc.returncode == 1 and server.request_count == before
    assert "cache none" in proc.stdout
