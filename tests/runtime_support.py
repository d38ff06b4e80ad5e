"""A small gate project with a litellm clone over HTTP, for the runtime hardening tests.

Faults, signals, single-flight and secrets all drive the gate the way users do (pytest with
``--bclone-clone=openai/...`` and ``bclone_clone_params``) against the local stub server. The
clone answers like the recorded expert, except in ``long_tail`` where it skips the second lookup
on every second trajectory, so the verdict table holds a PASS, a FAIL and an INCONCLUSIVE.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.testing import Reply, reply

from .conftest import make_row

COHORTS = {"common": 16, "long_tail": 12, "safety": 3}
"""Trajectories per cohort; the ``safety`` ones are also ``common`` (cohorts share trajectories)."""

TESTS = {
    "test_common.py": """
        from pytest_bclone import assert_parity

        def test_common():
            assert_parity(cohort="common", within=30, metric="action_match", on_fail="warn")
    """,
    "test_long_tail.py": """
        from pytest_bclone import assert_parity

        def test_long_tail():
            assert_parity(cohort="long_tail", within=5, metric="action_match", on_fail="warn")

        def test_safety():
            assert_parity(cohort="safety", within=1, metric="action_match", on_fail="warn")
    """,
    # The same cohort asserted by a second test (under -n 2 likely on the other worker).
    "test_common_again.py": """
        from pytest_bclone import assert_parity

        def test_common_tool_selection():
            assert_parity(cohort="common", within=30, metric="tool_selection", on_fail="warn")
    """,
}


def rows() -> list[dict[str, Any]]:
    out = []
    n = 0
    for cohort, count in COHORTS.items():
        for i in range(count):
            cohorts = (cohort, "common") if cohort == "safety" else (cohort,)
            row = make_row(n, cohorts=cohorts, split="eval", order=f"{cohort[0].upper()}{i}")
            row["id"] = f"{cohort}-{i:03d}"
            out.append(row)
            n += 1
    return out


def _order(request: dict[str, Any]) -> str:
    first_user = next(m for m in request["messages"] if m["role"] == "user")
    return str(first_user["content"]).split("orders ")[1].split(" and")[0]


def expert_like(request: dict[str, Any]) -> Reply:
    """The clone: answers like the expert, but skips the second lookup on long_tail orders L0, L2, L4..."""
    order = _order(request)
    if request["messages"][-1]["role"] == "user":
        calls: list[tuple[str, dict[str, Any]]] = [("get_order", {"order_id": order})]
        if not (order.startswith("L") and int(order[1:]) % 2 == 0):
            calls.append(("get_order", {"order_id": order + "b"}))
        return reply(tool_calls=calls, prompt_tokens=100, completion_tokens=20)
    return reply(f"{order} has shipped; {order}b is pending.", prompt_tokens=120, completion_tokens=10)


def request_id(request: dict[str, Any]) -> str:
    """A digest of what identifies a request (its messages), to count distinct requests."""
    return hashlib.sha256(json.dumps(request.get("messages"), sort_keys=True).encode()).hexdigest()[:16]


class Faulty:
    """A seeded faulty provider: each request is answered 429 (with ``Retry-After: 0``), 500 or a
    hang with the given probabilities, else by ``answer``."""

    def __init__(self, answer: Callable[[dict[str, Any]], Reply], *, seed: int, rate_429: float = 0.20,
                 rate_500: float = 0.05, rate_hang: float = 0.02, hang_s: float = 60.0) -> None:
        self.answer = answer
        self.rng = random.Random(seed)
        self.rates = (rate_429, rate_500, rate_hang)
        self.hang_s = hang_s
        self.injected = {"429": 0, "500": 0, "hang": 0}
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            draw = self.rng.random()
            r429, r500, rhang = self.rates
            kind = "429" if draw < r429 else "500" if draw < r429 + r500 else (
                "hang" if draw < r429 + r500 + rhang else None)
            if kind:
                self.injected[kind] += 1
        if kind == "429":
            return Reply(status=429, headers={"Retry-After": "0"})
        if kind == "500":
            return Reply(status=500)
        if kind == "hang":
            return Reply(status=200, delay=self.hang_s)
        return self.answer(request)


def make_project(pytester: pytest.Pytester, base_url: str, *, api_key: str = "sk-test-runtime-key",
                 extra_ini: str = "", tests: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None) -> pytest.Pytester:
    """A gate project in ``pytester.path``: dataset ``support@v1``, the clone over HTTP, the tests."""
    if not (pytester.path / "bclone_datasets" / "support" / "v1").exists():
        DatasetStore(str(pytester.path / "bclone_datasets")).write_version("support", "v1", rows())
    params = params or {"api_base": base_url, "api_key": api_key}
    pytester.makeini(
        "[pytest]\n"
        "bclone_dataset = support@v1\n"
        "bclone_clone = openai/acme-clone-v8\n"
        "bclone_bootstrap = 200\n"
        f"bclone_clone_params = {json.dumps(params)}\n" + extra_ini
    )
    import textwrap

    for name, source in (tests or TESTS).items():
        (pytester.path / name).write_text(textwrap.dedent(source))
    return pytester


def verdict_table(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(test, cohort, metric, status) of every verdict in a JSON report, sorted."""
    return sorted((v["test"], v["cohort"], v["metric"], v["status"]) for v in report["verdicts"])
