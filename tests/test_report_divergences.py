"""Every divergent state, to Parquet or JSONL, read back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.report import ReportError, write_divergences

RECORDS: list[dict[str, Any]] = [
    {"trajectory_id": "t00412", "step": 3, "cohorts": ["long_tail", "tool_heavy"],
     "expert_action": {"tool_calls": [{"name": "exchange_delivered_order_items",
                                       "arguments": {"order_id": "#W7273336", "item_ids": ["6956751343"]}}],
                       "content": None},
     "clone_action": {"tool_calls": [{"name": "return_delivered_order_items",
                                      "arguments": {"order_id": "#W7273336"}}], "content": None},
     "scores": {"tool_selection_accuracy": {"expert": 1.0, "clone": 0.0}}},
    {"trajectory_id": "t01877", "step": None, "cohorts": [],
     "expert_action": {"tool_calls": [], "content": "Your order is cancelled."},
     "clone_action": {"tool_calls": [], "content": "Could you confirm the order number? <b>ünïcode</b>"},
     "scores": {}},
]


def test_parquet_round_trip(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = write_divergences(RECORDS, tmp_path / "out" / "divergences.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["trajectory_id", "step", "cohorts", "expert_action", "clone_action", "scores"]
    rows = table.to_pylist()
    assert [r["trajectory_id"] for r in rows] == ["t00412", "t01877"]
    assert rows[0]["step"] == 3 and rows[1]["step"] is None
    assert rows[0]["cohorts"] == ["long_tail", "tool_heavy"] and rows[1]["cohorts"] == []
    for row, record in zip(rows, RECORDS, strict=True):
        for key in ("expert_action", "clone_action", "scores"):
            assert json.loads(row[key]) == record[key]  # nested fields are JSON strings
    assert os.listdir(path.parent) == ["divergences.parquet"]


def test_parquet_keeps_extra_keys_and_writes_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    path = write_divergences([{**RECORDS[0], "repeat": 2}], tmp_path / "d.parquet")
    assert json.loads(pq.read_table(path).to_pylist()[0]["repeat"]) == 2
    empty = pq.read_table(write_divergences([], tmp_path / "empty.parquet"))
    assert empty.num_rows == 0 and "expert_action" in empty.column_names


def test_jsonl_round_trip(tmp_path: Path) -> None:
    path = write_divergences(iter(RECORDS), tmp_path / "divergences.jsonl")  # any iterable
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == RECORDS
    assert write_divergences([], tmp_path / "empty.jsonl").read_text(encoding="utf-8") == ""


def test_unknown_extension_and_bad_records_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"--bclone-divergences='.*divergences.csv': unknown extension '.csv': "
                                          r"divergences are written as .parquet or .jsonl"):
        write_divergences(RECORDS, tmp_path / "divergences.csv")
    with pytest.raises(ReportError, match=r"unknown extension '\(none\)'"):
        write_divergences(RECORDS, tmp_path / "divergences")
    with pytest.raises(ReportError, match=r"divergence record 0 \(t9\) lacks expert_action, clone_action"):
        write_divergences([{"trajectory_id": "t9"}], tmp_path / "d.jsonl")
    with pytest.raises(ReportError, match="divergence record 0 is a str"):
        write_divergences(["oops"], tmp_path / "d.jsonl")  # type: ignore[list-item]
    assert not list(tmp_path.iterdir())


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "divergences.jsonl"
    path.write_text("previous\n", encoding="utf-8")

    def records() -> Any:
        yield RECORDS[0]
        yield {"trajectory_id": "broken"}

    with pytest.raises(ReportError):
        write_divergences(records(), path)
    assert path.read_text(encoding="utf-8") == "previous\n"
