"""An unreliable provider changes how long the gate takes, never what it decides.

With the default retry settings, a server answering 20% 429, 5% 500 and 2% hangs gives the clean
run's verdict table; beyond the retry budget the calls fail and no cohort passes on them; a refused
key or an unknown model stops the run with one message, without retrying.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_bclone.testing import OpenAIServer, Reply

from .runtime_support import Faulty, expert_like, make_project, verdict_table

CALLS = 2 * (16 + 12 + 3)
# --bclone-timeout cuts the hangs short; every other retry setting is the default.
ARGS = ("-p", "no:xdist", "-p", "no:cacheprovider", "--bclone-timeout=10")


def _scores(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((v["cohort"], v["metric"], v["n"], v["clone_mean"], v["expert_mean"], v["errors"])
                  for v in report["verdicts"])


def test_a_faulty_provider_gives_the_verdicts_of_a_clean_one(pytester: pytest.Pytester) -> None:
    with OpenAIServer(expert_like) as clean:
        make_project(pytester, clean.base_url)
        pytester.runpytest_subprocess(*ARGS, "--bclone-cache-dir=clean-cache", "--bclone-report-json=clean.json")
        assert clean.request_count == CALLS
    faulty = Faulty(expert_like, seed=1, rate_429=0.20, rate_500=0.05, rate_hang=0.02)
    with OpenAIServer(faulty) as server:
        make_project(pytester, server.base_url)
        result = pytester.runpytest_subprocess(*ARGS, "--bclone-cache-dir=faulty-cache", "--bclone-report-json=faulty.json")
        sent = server.request_count
    assert faulty.injected["429"] > 5 and faulty.injected["500"] > 0 and faulty.injected["hang"] > 0, faulty.injected
    assert sent >= CALLS + sum(faulty.injected.values())  # every fault was retried...
    clean_report = json.loads((pytester.path / "clean.json").read_text())
    faulty_report = json.loads((pytester.path / "faulty.json").read_text())
    assert verdict_table(faulty_report) == verdict_table(clean_report)
    assert {status for *_, status in verdict_table(clean_report)} == {"pass", "inconclusive"}
    assert _scores(faulty_report) == _scores(clean_report)
    assert faulty_report["gate"]["decision"] == clean_report["gate"]["decision"]
    assert faulty_report["agents"]["clone"]["failed"] == 0  # ...until it was answered
    assert faulty_report["agents"]["clone"]["retries"] >= sum(faulty.injected.values())
    assert "Traceback" not in result.stdout.str()


def test_beyond_the_retry_budget_calls_fail_and_no_cohort_passes(pytester: pytest.Pytester) -> None:
    with OpenAIServer(lambda _r: Reply(status=429, headers={"Retry-After": "0"})) as server:
        make_project(pytester, server.base_url)
        result = pytester.runpytest_subprocess(*ARGS, "--bclone-retry-budget=4", "--bclone-report-json=r.json")
        assert server.request_count > CALLS  # each call retried while its budget lasted
    report = json.loads((pytester.path / "r.json").read_text())
    assert all(v["status"] != "pass" for v in report["verdicts"])
    assert report["gate"]["decision"] == "BLOCKED"
    assert report["agents"]["clone"]["failed"] == CALLS
    assert "retry budget of 4 s spent, --bclone-retry-budget" in json.dumps(report["errors"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (Reply({"error": {"message": "Incorrect API key provided"}}, status=401), "HTTP 401 AuthenticationError"),
        (Reply({"error": {"message": "The model `acme-clone-v8` does not exist"}}, status=404),
         "HTTP 404 NotFoundError"),
        (Reply({"error": {"message": "Missing API key: no api key was found in the request"}}, status=500),
         "HTTP 500"),
    ],
)
def test_a_refused_key_or_unknown_model_stops_the_run_with_one_message(pytester: pytest.Pytester, answer: Reply,
                                                                        said: str) -> None:
    with OpenAIServer(lambda _r: answer) as server:
        make_project(pytester, server.base_url)
        result = pytester.runpytest_subprocess(*ARGS, "--bclone-concurrency=4")
        sent = server.request_count
    out = result.stdout.str()
    assert sent <= 4  # the calls already in flight when the first answer came; none retried
    assert result.ret != 0
    assert f"the clone openai/acme-clone-v8 at {server.base_url} cannot be used: {said}" in out
    assert "then rerun (not retried" in out
    assert "Traceback" not in out
    # The run stops after the first gate test: one failure, not one per test.
    assert result.parseoutcomes().get("failed") == 1 and "Interrupted: bclone: the clone" in out
