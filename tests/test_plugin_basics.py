"""The plugin as users meet it: --help, header, fixtures, usage errors, cheap loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_bclone.dataset.store import DatasetStore

from .conftest import make_row


@pytest.fixture
def project(pytester: pytest.Pytester):
    """A pytester project with a dataset support@v1 under the default root."""
    DatasetStore(str(pytester.path / "bclone_datasets")).write_version(
        "support", "v1", [make_row(i, split="eval" if i % 2 else "train") for i in range(6)]
    )
    return pytester


def test_help_shows_a_bclone_group_with_every_option(pytester: pytest.Pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    assert "behavior-cloning release gate (pytest-bclone):" in out
    for flag in ("--bclone-dataset=REF", "--bclone-clone=SPEC", "--bclone-cache-mode", "--bclone-confidence",
                 "--bclone-report-json=PATH", "--bclone-repeats=K"):
        assert flag in out
    assert "bclone_dataset_root" in out  # ini twin listed


def test_inactive_without_a_dataset_and_disabled_with_p_no(pytester: pytest.Pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    assert pytester.runpytest().ret == 0
    result = pytester.runpytest_subprocess("-p", "no:bclone", "--bclone-dataset=v1")
    assert result.ret == 4 and "unrecognized arguments: --bclone-dataset=v1" in result.stderr.str()
    result = pytester.runpytest_subprocess("-p", "no:bclone")
    result.assert_outcomes(passed=1)
    assert "bclone" not in result.stdout.str()


def test_header_and_dataset_fixture(project: pytest.Pytester):
    project.makepyfile("""
        def test_ds(bclone_dataset, bclone_config):
            assert bclone_dataset.ref == "support@v1"
            assert len(bclone_dataset.select()) == 3
            assert bclone_config.split == "eval"
    """)
    result = project.runpytest("--bclone-dataset=v1")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"bclone: dataset support@v1 \(6 trajectories, .*\) sha256 [0-9a-f]{12}.*"])


def test_ini_twin_and_cli_precedence(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    project.makeini("[pytest]\nbclone_dataset = support@v1\nbclone_split = train\n")
    project.makepyfile("""
        def test_cfg(bclone_config):
            import os
            assert bclone_config.split == os.environ["WANT_SPLIT"]
    """)
    monkeypatch.setenv("WANT_SPLIT", "train")
    project.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("WANT_SPLIT", "all")
    project.runpytest("--bclone-split=all").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bclone-dataset=v1", "--bclone-repeats=0"], "--bclone-repeats: invalid value '0': must be an integer"),
        (["--bclone-dataset=v1", "--bclone-mode=replay"], "--bclone-mode: invalid value 'replay': must be one of step"),
        (["--bclone-dataset=v1", "--bclone-confidence=1.5"], "--bclone-confidence: invalid value '1.5'"),
        (["--bclone-dataset=v1", "--bclone-price=gpt"], "'gpt' is not MODEL=IN/OUT"),
        (["--bclone-dataset=v9"], "dataset version 'v9' (from --bclone-dataset) is not in"),
        (["--bclone-dataset=../x"], "'../x' (from --bclone-dataset) is not a plain name"),
    ],
)
def test_bad_values_exit_4_with_one_error_line(project: pytest.Pytester, args, message):
    result = project.runpytest(*args)
    assert result.ret == 4
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()


def test_bad_ini_value_names_the_ini_key(project: pytest.Pytester):
    project.makeini("[pytest]\nbclone_clone_params = [1, 2]\n")
    result = project.runpytest("--bclone-dataset=v1")
    assert result.ret == 4
    assert "ini key bclone_clone_params: invalid value '[1, 2]': must be a JSON object" in result.stderr.str()


def test_tampered_dataset_stops_the_run(project: pytest.Pytester):
    data = project.path / "bclone_datasets/support/v1/data-00000.parquet"
    data.write_bytes(data.read_bytes()[:-8] + b"tampered")
    result = project.runpytest("--bclone-dataset=v1")
    assert result.ret == 4
    assert "data-00000.parquet has sha256" in result.stderr.str()


def test_plain_plugin_loading_imports_neither_litellm_nor_pyarrow(tmp_path):
    # A real pytest run in an empty project: the plugin is loaded through its entry point and
    # parses an option of ours, yet nothing heavy is imported.
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    code = (
        "import sys, pytest\n"
        "ret = pytest.main(['-q', '-p', 'no:cacheprovider', '--bclone-concurrency=4', 'test_x.py'])\n"
        "assert ret == 0, ret\n"
        "assert 'pytest_bclone.plugin' in sys.modules\n"
        "heavy = [m for m in ('litellm', 'pyarrow', 'numpy', 'jsonschema') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr
    assert "HEAVY []" in res.stdout, res.stdout + res.stderr


def test_readme_documents_every_option():
    from pathlib import Path

    from pytest_bclone.config import OPTIONS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [o.ini_name for o in OPTIONS if f"`{o.ini_name}`" not in readme]
    assert not missing, f"README.md lacks options: {missing}"


def test_trajectory_match_choices_match_the_evaluator():
    from pytest_bclone.config import TRAJECTORY_MATCH
    from pytest_bclone.evaluators import MATCH_MODES

    assert TRAJECTORY_MATCH == MATCH_MODES


def test_evaluator_settings_reach_the_registry(tmp_path):
    from pytest_bclone.config import build_config
    from pytest_bclone.dataset.store import DatasetStore
    from pytest_bclone.session import BcloneSession

    DatasetStore(str(tmp_path)).write_version("support", "v1", [make_row(1)])
    cfg = build_config({"trajectory_match": "subset"},
                       {"state_changing_tools": ["get_order, lookup_refund"], "read_only_tools": ["cancel_preview"]},
                       str(tmp_path))
    assert cfg.state_changing_tools == frozenset({"get_order", "lookup_refund"})
    session = BcloneSession(cfg, DatasetStore(str(tmp_path)).load("v1"))
    registry = session.registry
    policy = registry.get("safety_refusal").policy
    assert policy.state_changing == {"get_order", "lookup_refund"} and policy.read_only == {"cancel_preview"}
    assert registry.get("trajectory_score").match == "subset"


def test_bad_tool_list_in_ini_is_a_usage_error(project: pytest.Pytester):
    project.makeini("[pytest]\nbclone_state_changing_tools =\n    get_order\n    rm -rf/\n")
    result = project.runpytest("--bclone-dataset=v1")
    assert result.ret == 4 and "ini key bclone_state_changing_tools" in result.stderr.str()
