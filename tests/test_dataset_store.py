"""The versioned store: write-once versions, manifests, hash verification, resolution, S3."""

from __future__ import annotations

import json
import os

import pytest

from pytest_bclone.dataset.store import DatasetStore, load_ref
from pytest_bclone.errors import DatasetNotFound, IntegrityError, RowError, UnsafeVersionName, VersionExists
from pytest_bclone.records import Action

from .conftest import make_row


def test_write_then_load_round_trips_rows_and_manifest(tmp_path, rows):
    store = DatasetStore(str(tmp_path / "ds"))
    manifest = store.write_version("support", "v1", rows, lineage={"filter": "task_completion>=0.8"})
    assert manifest["counts"]["trajectories"] == 12
    assert manifest["counts"]["splits"] == {"eval": 9, "train": 3}
    assert manifest["counts"]["cohorts"]["long_tail"] == {"eval": 3, "train": 1}  # ids 0, 3, 6, 9
    assert manifest["counts"]["decision_points"] == {"eval": 18, "train": 6}
    assert manifest["toolset"] == ["get_order"]
    assert manifest["lineage"] == {"filter": "task_completion>=0.8"}
    on_disk = json.loads((tmp_path / "ds/support/v1/manifest.json").read_text())
    assert on_disk["files"][0]["sha256"] == manifest["files"][0]["sha256"]

    v = store.load("v1")
    assert (v.name, v.version) == ("support", "v1")
    t = {t.id: t for t in v.trajectories}["t0001"]
    assert list(t.messages) == rows[1]["messages"]
    assert t.cohorts == ("common_intents",) and t.split == "eval"
    assert t.expected is not None and t.expected.actions[0].arguments == {"order_id": "W1"}
    assert t.expert_scores == {"task_completion": 1.0}


def test_decision_points_carry_state_and_expert_action(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    t = {t.id: t for t in store.load("v1").trajectories}["t0001"]
    points = t.decision_points()
    assert [p.step for p in points] == [0, 1]
    first, second = points
    assert [m["role"] for m in first.state.messages] == ["system", "user"]
    assert first.expert_action.tool_names == ("get_order", "get_order")
    assert first.expert_action.tool_calls[1].arguments == {"order_id": "W1b"}
    assert len(second.state.messages) == 5
    assert second.expert_action == Action(text="W1 has shipped; W1b is pending.")
    assert first.key == "t0001#0"


def test_select_defaults_to_eval_and_samples_with_a_seed(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    v = store.load("v1")
    assert {t.split for t in v.select()} == {"eval"}
    assert len(v.select("all")) == 12
    a, b = v.select(sample=4, seed=7), v.select(sample=4, seed=7)
    assert [t.id for t in a] == [t.id for t in b] and len(a) == 4
    assert {t.id for t in a} <= {t.id for t in v.select()}


def test_resolution_of_v_name_at_v_latest_and_path(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    for v in ("v2", "v10", "v9"):
        store.write_version("support", v, rows[:2])
    assert store.resolve("latest") == ("support", "v10")  # natural order, not text order
    assert store.resolve("support@v9") == ("support", "v9")
    assert store.versions("support") == ["v2", "v9", "v10"]
    path_version = load_ref(str(tmp_path / "support" / "v2"), "unused-root")
    assert path_version.version == "v2"
    store.write_version("billing", "v9", rows[:1])
    with pytest.raises(DatasetNotFound, match=r"'v9' .* ambiguous .*billing@v9, support@v9.*name the dataset"):
        store.resolve("v9")


def test_unknown_version_lists_the_available_ones(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v7", rows[:1])
    store.write_version("support", "v8", rows[:1])
    with pytest.raises(DatasetNotFound) as exc:
        store.load("v9", source="--bclone-dataset")
    msg = str(exc.value)
    assert "'v9'" in msg and "--bclone-dataset" in msg and "available: support@v7, support@v8" in msg


def test_missing_root_names_the_root_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFound) as exc:
        DatasetStore(str(tmp_path / "nope"), source="ini bclone_dataset_root").load("v1")
    msg = str(exc.value)
    assert str(tmp_path / "nope") in msg and "ini bclone_dataset_root" in msg and "bclone dataset import" in msg


def test_tampered_data_file_is_an_error_naming_the_file(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    data = tmp_path / "support/v1/data-00000.parquet"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as exc:
        store.load("v1")
    assert "data-00000.parquet" in str(exc.value) and "sha256" in str(exc.value) and "restore" in str(exc.value)


def test_versions_are_write_once(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    before = (tmp_path / "support/v1/manifest.json").read_bytes()
    with pytest.raises(VersionExists, match=r"support@v1 already exists .* write-once"):
        store.write_version("support", "v1", rows[:1])
    assert (tmp_path / "support/v1/manifest.json").read_bytes() == before


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", ""])
def test_version_names_cannot_leave_the_root(tmp_path, rows, bad):
    store = DatasetStore(str(tmp_path / "root"))
    with pytest.raises(UnsafeVersionName, match="cannot leave the store root"):
        store.write_version("support", bad, rows)
    assert not (tmp_path / "x").exists()
    os.makedirs(tmp_path / "root", exist_ok=True)
    with pytest.raises(UnsafeVersionName, match="cannot leave the store root"):
        store.load(bad)


def test_malformed_row_names_the_row_and_field(tmp_path, rows):
    bad = make_row(99)
    bad["messages"][2]["tool_calls"][0]["function"]["name"] = 7
    with pytest.raises(RowError) as exc:
        DatasetStore(str(tmp_path)).write_version("support", "v1", [*rows, bad], source="build.py")
    msg = str(exc.value)
    assert "build.py row 12" in msg and "'t0099'" in msg and "messages[2].tool_calls[0].function.name" in msg
    assert not (tmp_path / "support" / "v1").exists()  # nothing half-written


def test_duplicate_ids_are_rejected(tmp_path):
    with pytest.raises(RowError, match="'t0001' appears 2 times"):
        DatasetStore(str(tmp_path)).write_version("support", "v1", [make_row(1), make_row(1)])


def test_interrupted_write_leaves_no_version(tmp_path, rows, monkeypatch):
    store = DatasetStore(str(tmp_path))

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("pytest_bclone.dataset.store._manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        store.write_version("support", "v1", rows)
    assert store.versions("support") == []
    assert os.listdir(tmp_path / "support") == []  # staging removed


def test_s3_store_through_a_local_s3_server(s3_server, rows, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=f"http://{s3_server}", region_name="us-east-1").create_bucket(Bucket="bclone")
    uri = f"s3://bclone/datasets?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    store = DatasetStore(uri)
    store.write_version("support", "v8", rows)
    assert store.versions("support") == ["v8"]
    v = DatasetStore(uri).load("support@v8")
    assert len(v.trajectories) == 12 and v.manifest["counts"]["splits"]["eval"] == 9
    with pytest.raises(VersionExists):
        store.write_version("support", "v8", rows)
