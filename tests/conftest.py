"""Shared fixtures: trajectory builders and a local S3-compatible server (moto's server mode)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_row(
    i: int,
    *,
    cohorts: tuple[str, ...] = ("common_intents",),
    split: str = "eval",
    order: str | None = None,
) -> dict[str, Any]:
    """A small valid trajectory row: a lookup with parallel tool calls, a tool result, a text reply."""
    order = order or f"W{i}"
    return {
        "id": f"t{i:04d}",
        "cohorts": list(cohorts),
        "split": split,
        "messages": [
            {"role": "system", "content": "You are a retail support agent."},
            {"role": "user", "content": f"Where are my orders {order} and {order}b?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_order", "arguments": json.dumps({"order_id": order})}},
                    {"id": "c2", "type": "function",
                     "function": {"name": "get_order", "arguments": json.dumps({"order_id": order + "b"})}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
            {"role": "tool", "tool_call_id": "c2", "content": '{"status": "pending"}'},
            {"role": "assistant", "content": f"{order} has shipped; {order}b is pending."},
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_order", "parameters": {
                "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
        ],
        "expected": {"actions": [{"name": "get_order", "arguments": {"order_id": order}}], "outputs": []},
        "expert_scores": {"task_completion": 1.0},
        "metadata": {"source": "test"},
    }


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return [make_row(i, split="train" if i % 4 == 0 else "eval",
                     cohorts=("long_tail",) if i % 3 == 0 else ("common_intents",)) for i in range(12)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint ``127.0.0.1:PORT``."""
    pytest.importorskip("moto")
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto server did not start on 127.0.0.1 within 30 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
