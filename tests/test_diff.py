"""`bclone dataset diff`: rows matched by id and by content, field-level changes, bookkeeping ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_bclone import cli
from pytest_bclone.dataset.diff import content_hash, diff_versions
from pytest_bclone.dataset.store import DatasetStore

from .conftest import make_row


def _versions(tmp_path: Path, a_rows: list[dict], b_rows: list[dict]):
    store = DatasetStore(str(tmp_path))
    store.write_version("s", "v1", a_rows)
    store.write_version("s", "v2", b_rows)
    return store.load("s@v1"), store.load("s@v2")


def test_the_same_rows_reimported_under_new_ids_and_files_are_unchanged_or_renamed(tmp_path: Path) -> None:
    a_rows = [make_row(i) for i in range(5)]
    for r in a_rows:
        r["metadata"] = {"file": "export-monday.jsonl", "intent": "status"}
    b_rows = json.loads(json.dumps(a_rows))
    for r in b_rows:
        r["metadata"]["file"] = "export-tuesday.jsonl"  # import bookkeeping only
    b_rows[3]["id"], b_rows[4]["id"] = "fresh-3", "fresh-4"  # same conversations, new ids
    d = diff_versions(*_versions(tmp_path, a_rows, b_rows))
    assert d.added == [] and d.removed == [] and d.changed == []
    assert d.renamed == [("t0003", "fresh-3"), ("t0004", "fresh-4")]
    assert d.unchanged == 5
    assert "renamed (same messages and tools, new id): 2: t0003->fresh-3, t0004->fresh-4" in "\n".join(d.lines())


def test_changes_are_reported_per_field(tmp_path: Path) -> None:
    a_rows = [make_row(i) for i in range(6)]
    b_rows = json.loads(json.dumps(a_rows[1:])) + [make_row(9)]
    b_rows[0]["cohorts"] = ["long_tail"]  # t0001
    b_rows[1]["messages"][-1]["content"] = "Something else."  # t0002
    b_rows[2]["split"] = "train"  # t0003
    b_rows[3]["expert_scores"] = {"task_completion": 0.5}  # t0004
    b_rows[4]["metadata"] = {"source": "test", "note": "reviewed"}  # t0005: real metadata, not bookkeeping
    d = diff_versions(*_versions(tmp_path, a_rows, b_rows))
    assert d.added == ["t0009"] and d.removed == ["t0000"] and d.renamed == []
    assert d.changed == ["t0001", "t0002", "t0003", "t0004", "t0005"]
    assert d.changed_fields == {"cohorts": ["t0001"], "messages": ["t0002"], "split": ["t0003"],
                                "expert_scores": ["t0004"], "metadata": ["t0005"]}
    assert d.unchanged == 0
    assert d.cohort_counts["long_tail"] == (0, 1) and d.split_counts["train"] == (0, 1)


def test_a_changed_conversation_under_a_new_id_is_removed_and_added(tmp_path: Path) -> None:
    a_rows = [make_row(1)]
    b_rows = [make_row(1)]
    b_rows[0]["id"] = "other"
    b_rows[0]["messages"][1]["content"] = "A different question"
    d = diff_versions(*_versions(tmp_path, a_rows, b_rows))
    assert d.added == ["other"] and d.removed == ["t0001"] and d.renamed == []


def test_content_hash_is_the_same_for_stored_and_in_memory_trajectories(tmp_path: Path) -> None:
    from pytest_bclone.dataset.schema import row_to_trajectory

    row = make_row(3)
    stored = DatasetStore(str(tmp_path)).write_version("s", "v1", [row]) and DatasetStore(str(tmp_path)).load("v1")
    (t,) = stored.trajectories
    assert content_hash(t) == content_hash(row_to_trajectory(row))
    other = make_row(3, cohorts=("long_tail",), split="train")
    other["id"] = "x"
    assert content_hash(row_to_trajectory(other)) == content_hash(t)  # labels are not content


def test_example_v7_to_v8_diff_reports_the_real_changes(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1] / "example_suite" / "bclone_datasets"
    assert cli.main(["dataset", "--root", str(root), "diff", "retail@v7", "retail@v8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    matched = len(d["changed"]) + d["unchanged"]
    # Most tasks are in both versions under the same id; the intent-mix shift adds and removes a few.
    assert matched > 1500, (matched, len(d["added"]), len(d["removed"]))
    assert 0 < len(d["added"]) < 600 and 0 < len(d["removed"]) < 600
    assert d["tools_removed"] == ["issue_refund_legacy"] and d["tools_added"] == ["issue_refund"]
    # The toolset changed for every row; refund conversations changed their calls too.
    assert len(d["changed_fields"]["tools"]) == matched
    assert 0 < len(d["changed_fields"].get("messages", [])) < matched
    assert "metadata" not in d["changed_fields"] or len(d["changed_fields"]["metadata"]) < matched
