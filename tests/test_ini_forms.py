"""Every ini form pytest reads takes natural values for bclone_* keys, and paths resolve like
pytest's own: a command-line path against the invocation directory, an ini path against the
ini file's directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PROBE = """
import json

def test_probe(bclone_config):
    c = bclone_config
    print("CFG=" + json.dumps({"confidence": c.confidence, "holm": c.holm, "concurrency": c.concurrency,
                               "timeout": c.timeout, "price": {k: list(v) for k, v in c.price.items()},
                               "cache_dir": c.cache_dir, "report_json": c.report_json}))
"""

INI = """[pytest]
bclone_confidence = 0.9
bclone_holm = true
bclone_concurrency = 8
bclone_timeout = 12.5
bclone_price =
    openai/clone=0.1/0.4
bclone_cache_dir = calls
"""

PYPROJECT_LEGACY = """[tool.pytest.ini_options]
bclone_confidence = "0.9"
bclone_holm = true
bclone_concurrency = "8"
bclone_timeout = "12.5"
bclone_price = ["openai/clone=0.1/0.4"]
bclone_cache_dir = "calls"
"""

PYPROJECT_NATIVE = """[tool.pytest]
bclone_confidence = 0.9
bclone_holm = true
bclone_concurrency = 8
bclone_timeout = 12.5
bclone_price = ["openai/clone=0.1/0.4"]
bclone_cache_dir = "calls"
"""


def _probe(pytester: pytest.Pytester, *args: str) -> dict[str, object]:
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "test_probe.py", *args)
    result.assert_outcomes(passed=1)
    return _cfg(result.outlines)


def _cfg(lines: list[str]) -> dict[str, object]:
    line = next(x for x in lines if "CFG=" in x)
    return json.loads(line.split("CFG=", 1)[1].rsplit("}", 1)[0] + "}")  # type: ignore[no-any-return]


@pytest.mark.parametrize(("filename", "text"), [("pytest.ini", INI), ("pyproject.toml", PYPROJECT_LEGACY),
                                                ("pyproject.toml", PYPROJECT_NATIVE)],
                         ids=["pytest.ini", "tool.pytest.ini_options", "tool.pytest-native"])
def test_natural_values_in_every_ini_form(pytester: pytest.Pytester, filename: str, text: str) -> None:
    pytester.makefile(Path(filename).suffix, **{Path(filename).stem: text})
    pytester.makepyfile(test_probe=PROBE)
    cfg = _probe(pytester)
    assert cfg["confidence"] == 0.9 and cfg["holm"] is True
    assert cfg["concurrency"] == 8 and cfg["timeout"] == 12.5
    assert cfg["price"] == {"openai/clone": [0.1, 0.4]}
    assert cfg["cache_dir"] == str(pytester.path / "calls")  # an ini path: against the ini file's directory


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("bclone_concurrency", "many", "bclone_concurrency"),
    ("bclone_confidence", "1.5", "bclone_confidence"),
    ("bclone_holm", "perhaps", "bclone_holm"),
])
def test_a_bad_ini_value_is_one_error_line_naming_the_key(pytester: pytest.Pytester, key: str, value: str,
                                                         expected: str) -> None:
    pytester.makeini(f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1 and expected in errors[0], result.errlines
    assert "Traceback" not in "\n".join(result.outlines + result.errlines)


def test_command_line_paths_resolve_against_the_invocation_directory(pytester: pytest.Pytester) -> None:
    pytester.makefile(".ini", pytest="[pytest]\nbclone_cache_dir = calls\n")
    pytester.makepyfile(test_probe=PROBE)
    sub = pytester.mkdir("sub")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", "-c",
                           str(pytester.path / "pytest.ini"), str(pytester.path / "test_probe.py"),
                           "--bclone-report-json=out/report.json"],
                          cwd=sub, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = _cfg(proc.stdout.splitlines())
    assert cfg["report_json"] == str(sub / "out" / "report.json")  # like --junitxml
    assert cfg["cache_dir"] == str(pytester.path / "calls")  # the ini value stays with the ini file
