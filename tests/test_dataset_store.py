"""The versioned store: write-once versions, manifests, hash verification, resolution, S3."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import pytest

from pytest_bclone.dataset.store import DatasetStore, load_ref
from pytest_bclone.errors import (
    DatasetError,
    DatasetNotFound,
    IntegrityError,
    RowError,
    UnsafeVersionName,
    VersionExists,
)
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


# -- tamper evidence ------------------------------------------------------------------------------------
def _edit_manifest(version_dir, mutate, *, refingerprint=False):
    """Edit a version's manifest in place; with ``refingerprint`` the editor also recomputes the
    fingerprint (a careful tamperer), so only the checks against the data can catch the edit."""
    from pytest_bclone.dataset.store import manifest_fingerprint

    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    mutate(manifest)
    if refingerprint:
        manifest["fingerprint"] = manifest_fingerprint(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def test_manifest_carries_a_fingerprint_over_its_content_and_every_file_hash(tmp_path, rows):
    from pytest_bclone.dataset.store import manifest_fingerprint

    store = DatasetStore(str(tmp_path))
    a = store.write_version("support", "v1", rows, created="2026-01-01T00:00:00+00:00")
    b = DatasetStore(str(tmp_path / "again")).write_version("support", "v1", rows, created="2026-01-01T00:00:00+00:00")
    assert a["fingerprint"] == manifest_fingerprint(a) == b["fingerprint"]  # reproducible
    c = DatasetStore(str(tmp_path / "other")).write_version("support", "v1", rows[:-1],
                                                            created="2026-01-01T00:00:00+00:00")
    assert c["fingerprint"] != a["fingerprint"]
    v = store.load("v1")
    assert v.fingerprint == a["fingerprint"][:12] and v.fingerprint_sha256 == a["fingerprint"]
    report = store.verify("support@v1")
    assert report.ok and report.trajectories == 12 and report.decision_points == 24, report.lines()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m["counts"].__setitem__("trajectories", 13), "counts"),
        (lambda m: m["counts"]["splits"].__setitem__("eval", 8), "counts"),
        (lambda m: m["toolset"].append("issue_refund"), "toolset"),
        (lambda m: m["lineage"].__setitem__("filter", "none"), "lineage"),
        (lambda m: m.__setitem__("parent", "v0"), "parent"),
        (lambda m: m["files"][0].__setitem__("sha256", "0" * 64), "file hash"),
    ],
    ids=["count", "split", "toolset", "lineage", "parent", "file-hash"],
)
def test_any_manifest_edit_breaks_its_fingerprint(tmp_path, rows, mutate, field):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows, lineage={"filter": "task_completion>=0.8"})
    _edit_manifest(tmp_path / "support/v1", mutate)
    with pytest.raises(IntegrityError, match=r"manifest.json was edited after the version was written.*restore"):
        store.load("v1")
    report = store.verify("v1")
    assert not report.ok and any("edited after" in p for p in report.problems), field


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m["counts"].__setitem__("trajectories", 13), r"counts.trajectories records 13 but the data holds 12"),
        (lambda m: m["counts"]["splits"].update(eval=10, train=2), r"counts.splits records .* but the data holds"),
        (lambda m: m["counts"]["decision_points"].__setitem__("eval", 1), r"counts.decision_points records"),
        (lambda m: m["counts"]["cohorts"].pop("long_tail"), r"counts.cohorts records"),
        (lambda m: m.__setitem__("toolset", ["get_order", "issue_refund"]), r"toolset records .* data's tools are"),
    ],
    ids=["trajectories", "splits", "points", "cohorts", "toolset"],
)
def test_counts_and_toolset_are_checked_against_the_data(tmp_path, rows, mutate, message):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    _edit_manifest(tmp_path / "support/v1", mutate, refingerprint=True)
    with pytest.raises(IntegrityError, match=message):
        store.load("v1")
    report = store.verify("v1")
    assert not report.ok and any(re.search(message, p) for p in report.problems), report.problems


@pytest.mark.parametrize("bad_path", ["../../copy.parquet", "ABSOLUTE", "../../../../etc/passwd", "sub/x.parquet"])
def test_manifest_paths_stay_in_the_version_directory(tmp_path, rows, bad_path):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    # An identical copy outside the version: its sha256 matches, so only the confinement refuses it.
    copy = tmp_path / "copy.parquet"
    copy.write_bytes((tmp_path / "support/v1/data-00000.parquet").read_bytes())
    bad_path = str(copy) if bad_path == "ABSOLUTE" else bad_path
    _edit_manifest(tmp_path / "support/v1", lambda m: m["files"][0].__setitem__("path", bad_path), refingerprint=True)
    with pytest.raises(IntegrityError, match=r"is not a plain data file name inside the version directory; refusing"):
        store.load("v1")
    assert any("refusing to open it" in p for p in store.verify("v1").problems)


def test_a_symlink_leaving_the_version_directory_is_refused(tmp_path, rows):
    store = DatasetStore(str(tmp_path / "root"))
    store.write_version("support", "v1", rows)
    data = tmp_path / "root/support/v1/data-00000.parquet"
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(data.read_bytes())  # same bytes: the hash alone would accept it
    data.unlink()
    data.symlink_to(outside)
    with pytest.raises(IntegrityError, match=r"resolves to .*elsewhere.parquet, outside the version directory"):
        store.load("v1")


def test_a_manifest_without_fingerprint_is_refused_with_the_re_import_recipe(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    _edit_manifest(tmp_path / "support/v1", lambda m: m.pop("fingerprint"))
    with pytest.raises(IntegrityError, match=r"has no fingerprint.*bclone dataset export .*bclone dataset import"):
        store.load("v1")


def _truncate_and_rehash(version_dir, keep):
    data = version_dir / "data-00000.parquet"
    raw = data.read_bytes()[:keep]
    data.write_bytes(raw)

    def mutate(m):
        m["files"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))

    _edit_manifest(version_dir, mutate, refingerprint=True)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").write_text("{not json"), r"manifest.json is not valid JSON"),
        (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00binary"), r"manifest.json is not valid JSON"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), r"manifest.json is a JSON list, not an object"),
        (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace('"rows": 12', '"rows": NaN')),
         r"manifest.json is not valid JSON \(NaN is not a JSON value"),
        (lambda d: _edit_manifest(d, lambda m: m.pop("files"), refingerprint=True), r"has no 'files' list"),
        (lambda d: (d / "data-00000.parquet").unlink(), r"data-00000.parquet listed in manifest.json is missing"),
        (lambda d: (d / "data-00000.parquet").write_bytes((d / "data-00000.parquet").read_bytes()[:500]),
         r"data-00000.parquet has 500 bytes but manifest.json records \d+: it was truncated"),
        (lambda d: _truncate_and_rehash(d, 500), r"data-00000.parquet is not a readable Parquet file .* truncated"),
    ],
    ids=["not-json", "binary", "list", "nan", "no-files", "deleted", "truncated", "truncated-rehashed"],
)
def test_a_damaged_version_is_one_integrity_error_naming_the_file(tmp_path, rows, damage, message):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    damage(tmp_path / "support/v1")
    with pytest.raises(IntegrityError, match=message) as exc:
        store.load("v1")
    assert "restore the version directory" in str(exc.value)
    assert not store.verify("v1").ok


def test_a_parquet_file_of_another_schema_is_refused_even_with_its_hash_updated(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    data = tmp_path / "support/v1/data-00000.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in rows], "payload": ["x"] * len(rows)}), data)
    raw = data.read_bytes()
    _edit_manifest(tmp_path / "support/v1",
                   lambda m: m["files"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw)),
                   refingerprint=True)
    with pytest.raises(IntegrityError, match=r"data-00000.parquet is not a trajectory table: it has columns"):
        store.load("v1")


def test_verify_lists_every_problem_and_checks_rows_deeply(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    _edit_manifest(tmp_path / "support/v1", lambda m: (m["counts"].__setitem__("trajectories", 99),
                                                       m.__setitem__("toolset", [])))
    report = store.verify("v1")
    assert len(report.problems) == 3, report.problems  # fingerprint, trajectories, toolset
    assert "problem(s)" in report.lines()[0]


# -- leftovers of killed writes -----------------------------------------------------------------------------
_KILLED_WRITER = r"""
import sys, time
from pytest_bclone.dataset import store as st
sys.path.insert(0, sys.argv[3])
from conftest import make_row
st.ROWS_PER_FILE = 3
st.ROWS_PER_GROUP = 2

def rows():
    for i in range(10):
        if i == 4:  # the first data file is written: say so, then hang until killed
            print("ready", flush=True)
            time.sleep(600)
        yield make_row(i)

st.DatasetStore(sys.argv[1]).write_version_stream("support", sys.argv[2], rows())
"""


def _start_killed_writer(root: str, version: str):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, root, version, os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_killed_local_write_leaves_a_staging_dir_that_is_reported_then_cleaned(tmp_path, rows):
    import signal

    store = DatasetStore(str(tmp_path))
    proc = _start_killed_writer(str(tmp_path), "v1")
    try:
        (leftover,) = store.staging_leftovers()
        assert leftover.locked and leftover.version == "v1" and "in progress" in leftover.describe()
        assert store.clean_staging(older_than_s=0) == []  # a live writer's staging is never removed
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    (leftover,) = store.staging_leftovers()
    assert not leftover.locked and not leftover.stale  # killed just now: reported, kept for a while
    assert store.versions("support") == []
    store.write_version("support", "v1", rows)
    assert any("left by an interrupted write" in line for line in store.verify("v1").lines())
    store.write_version("support", "v2", rows)  # a write cleans only stale leftovers
    assert len(store.staging_leftovers()) == 1
    os.utime(leftover.path, (0, 0))  # make it old
    assert store.staging_leftovers()[0].stale
    store.write_version("support", "v3", rows)
    assert store.staging_leftovers() == [] and store.versions("support") == ["v1", "v2", "v3"]


def test_a_directory_without_manifest_is_not_a_version_and_is_replaced(tmp_path, rows):
    store = DatasetStore(str(tmp_path))
    (tmp_path / "support/v1").mkdir(parents=True)
    (tmp_path / "support/v1/data-00000.parquet").write_bytes(b"half")
    assert store.versions("support") == []
    store.write_version("support", "v1", rows)
    assert len(store.load("v1").trajectories) == 12
    (tmp_path / "support/v2").mkdir()
    (tmp_path / "support/v2/notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"support/v2 exists without a manifest.json and holds notes.txt"):
        store.write_version("support", "v2", rows)
    assert (tmp_path / "support/v2/notes.txt").read_text() == "mine"


def _s3_uri(s3_server, monkeypatch, bucket):
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=f"http://{s3_server}", region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/datasets?endpoint_override={s3_server}&scheme=http&region=us-east-1"


def test_s3_write_failing_or_killed_mid_write_leaves_no_version_blocking_the_name(s3_server, rows, monkeypatch):
    import signal

    from pytest_bclone.dataset import store as st

    uri = _s3_uri(s3_server, monkeypatch, "halfwrites")
    store = DatasetStore(uri)
    monkeypatch.setattr(st, "ROWS_PER_FILE", 3)

    def failing():
        yield from rows[:5]
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError):
        store.write_version_stream("support", "v1", failing())
    assert store.versions("support") == []
    leftover = store.fs.get_file_info(st.pafs.FileSelector(f"{store.root}/support/v1", allow_not_found=True))
    assert [i for i in leftover if i.type == st.pafs.FileType.File] == []  # our files were removed

    proc = _start_killed_writer(uri, "v2")  # writes one data file, then dies without cleaning up
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    files = store.fs.get_file_info(st.pafs.FileSelector(f"{store.root}/support/v2", allow_not_found=True))
    assert len([i for i in files if i.type == st.pafs.FileType.File]) == 1  # a half version: data, no manifest
    assert store.versions("support") == []
    with pytest.raises(DatasetNotFound):
        store.load("support@v2")
    time.sleep(1.1)  # object-store mtimes have one-second resolution
    store.write_version("support", "v2", rows)  # not blocked: a version is its manifest
    v = DatasetStore(uri).load("support@v2")
    assert len(v.trajectories) == 12
    files = store.fs.get_file_info(st.pafs.FileSelector(f"{store.root}/support/v2"))
    assert sorted(i.base_name for i in files) == sorted(["manifest.json", *(f["path"] for f in v.manifest["files"])])
    report = store.verify("support@v2")
    assert report.ok and report.trajectories == 12 and report.unlisted_files == [], report.lines()


def test_loading_parses_no_messages_until_a_state_is_used(tmp_path, rows):
    import pickle

    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    v = store.load("v1")
    points = [p for t in v.trajectories for p in t.decision_points()]
    assert len(points) == 24
    assert all(t.messages._items is None for t in v.trajectories)  # decision points came from the steps column
    t = v.trajectories[1]
    copy = pickle.loads(pickle.dumps(t.messages))
    assert len(pickle.dumps(t.messages)) < 2 * len(t.messages.text) + 200  # its own row, not the column
    assert list(copy) == rows[1]["messages"] == list(t.messages)


# -- fuzzing the manifest: any edit is an IntegrityError or is visible in the fingerprint ---------------------
def _json_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, (*prefix, i))


def test_fuzzed_manifests_never_crash_the_load(tmp_path_factory):
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pytest_bclone.dataset.store import manifest_fingerprint
    from pytest_bclone.errors import DatasetError

    from .conftest import make_row

    base = tmp_path_factory.mktemp("fuzz-base")
    original = DatasetStore(str(base)).write_version("support", "v1", [make_row(i) for i in range(4)])
    paths = [p for p in _json_paths(original) if p]
    leaves = st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                                 max_size=3), max_leaves=6)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(paths), value=values, refingerprint=st.booleans())
    def check(path, value, refingerprint):
        work = tmp_path_factory.mktemp("fuzz")
        shutil.copytree(base / "support", work / "support")
        manifest = json.loads((work / "support/v1/manifest.json").read_text())
        target = manifest
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        if refingerprint:
            manifest["fingerprint"] = manifest_fingerprint(manifest)
        (work / "support/v1/manifest.json").write_text(json.dumps(manifest))
        try:
            v = DatasetStore(str(work)).load("support@v1")
        except DatasetError as exc:
            assert "manifest.json" in str(exc) or "data file" in str(exc)
            return
        # Loaded: the edit was a no-op, or touched what no data can vouch for (lineage, created,
        # parent) and then the fingerprint itself changed.
        same = manifest_fingerprint(manifest) == original["fingerprint"]
        assert same or (refingerprint and path[0] in ("lineage", "created", "parent")), (path, value)
        assert v.fingerprint_sha256 == manifest["fingerprint"]

    check()


def test_fuzzed_data_files_with_their_hashes_updated_never_crash_load_or_verify(tmp_path_factory):
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pytest_bclone.dataset.store import manifest_fingerprint
    from pytest_bclone.errors import DatasetError

    from .conftest import make_row

    base = tmp_path_factory.mktemp("fuzz-data")
    DatasetStore(str(base)).write_version("support", "v1", [make_row(i) for i in range(4)])
    size = (base / "support/v1/data-00000.parquet").stat().st_size

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(flips=st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4),
           cut=st.none() | st.integers(0, size))
    def check(flips, cut):
        work = tmp_path_factory.mktemp("fuzz")
        shutil.copytree(base / "support", work / "support")
        data = work / "support/v1/data-00000.parquet"
        raw = bytearray(data.read_bytes())
        for pos, mask in flips:
            raw[pos] ^= mask
        raw = bytes(raw[:cut] if cut is not None else raw)
        data.write_bytes(raw)
        manifest = json.loads((work / "support/v1/manifest.json").read_text())
        manifest["files"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
        manifest["fingerprint"] = manifest_fingerprint(manifest)
        (work / "support/v1/manifest.json").write_text(json.dumps(manifest))
        store = DatasetStore(str(work))
        try:
            store.load("support@v1")
        except DatasetError as exc:
            assert "data-00000.parquet" in str(exc) or "manifest.json" in str(exc)
        store.verify("support@v1")  # collects problems; never raises for a damaged version

    check()


def test_fuzzed_rows_are_stored_faithfully_or_refused_with_a_row_error(tmp_path_factory):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from pytest_bclone.dataset.schema import trajectory_to_row

    from .conftest import make_row

    template = make_row(0)
    paths = [p for p in _json_paths(template) if p]
    leaves = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=6)
              | st.sampled_from(["assistant", "tool", "eval", "train", "c1"]))
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "name", "function", "x"]), kids, max_size=3), max_leaves=5)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(paths), value=values)
    def check(path, value):
        row = json.loads(json.dumps(template))
        target = row
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        store = DatasetStore(str(tmp_path_factory.mktemp("rows")))
        try:
            store.write_version_stream("support", "v1", [row])
        except RowError as exc:
            assert "row 0" in str(exc)
            assert store.versions("support") == [] and os.listdir(os.path.join(store.root, "support")) == []
            return
        (t,) = store.load("v1").trajectories
        back = trajectory_to_row(t)
        for key in ("id", "cohorts", "split", "messages", "tools", "expert_scores", "metadata"):
            assert back[key] == (row.get(key) if row.get(key) is not None else back[key]), key
        assert store.verify("v1").ok

    check()


def test_all_decision_points_equals_the_per_trajectory_points_and_restores_the_gc(tmp_path, rows):
    import gc

    from pytest_bclone.dataset.store import all_decision_points

    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    v = store.load("v1")
    assert gc.isenabled()
    points = all_decision_points(v.trajectories)
    assert gc.isenabled()
    assert points == [p for t in v.trajectories for p in t.decision_points()]
    assert [(p.trajectory.id, p.step) for p in points[:3]] == [("t0000", 0), ("t0000", 1), ("t0001", 0)]
    gc.disable()
    try:
        all_decision_points(v.trajectories)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_concurrent_writers_of_one_version_one_wins_the_others_get_version_exists(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = DatasetStore(str(tmp_path))

    def write(k):
        try:
            return store.write_version("support", "v1", [make_row(100 * k + i) for i in range(30)])
        except VersionExists as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(write, range(4)))
    won = [r for r in results if isinstance(r, dict)]
    assert len(won) == 1 and sum(isinstance(r, VersionExists) for r in results) == 3
    v = store.load("v1")
    assert v.fingerprint_sha256 == won[0]["fingerprint"] and len(v.trajectories) == 30
    assert os.listdir(tmp_path / "support") == ["v1"]  # no staging left by the losers


def test_a_toolset_object_shared_by_rows_is_encoded_once_but_a_mutated_one_again(tmp_path, monkeypatch):
    from pytest_bclone.dataset import store as st

    tools = make_row(0)["tools"]
    dumps = []
    real = st._dump
    monkeypatch.setattr(st, "_dump", lambda v, *a: dumps.append(a[-1]) or real(v, *a))

    def rows():
        for i in range(6):
            row = make_row(i)
            row["tools"] = tools  # one object for every row, as importers pass it
            if i == 4:
                tools[0]["function"]["description"] = "changed in place"
            yield row

    DatasetStore(str(tmp_path)).write_version_stream("support", "v1", rows())
    assert dumps.count("tools") == 2  # first row, then again after the in-place change
    v = DatasetStore(str(tmp_path)).load("v1")
    described = [t.id for t in v.trajectories if "description" in t.tools[0]["function"]]
    assert described == ["t0004", "t0005"]


def test_forged_messages_json_is_an_integrity_error_when_used_and_found_by_verify(tmp_path, rows):
    import pyarrow.parquet as pq

    from pytest_bclone.dataset.store import manifest_fingerprint

    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    data = tmp_path / "support/v1/data-00000.parquet"
    table = pq.read_table(data)
    messages = table.column("messages").to_pylist()
    messages[1] = messages[1][:-5]  # cut: no longer JSON
    table = table.set_column(table.schema.get_field_index("messages"), "messages",
                             pa_array(messages))
    pq.write_table(table, data, compression="zstd")
    raw = data.read_bytes()

    def mutate(m):
        m["files"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))

    _edit_manifest(tmp_path / "support/v1", mutate, refingerprint=True)
    assert manifest_fingerprint(json.loads((tmp_path / "support/v1/manifest.json").read_text()))
    v = store.load("v1")  # messages are parsed lazily: the load itself cannot see it
    with pytest.raises(IntegrityError, match=r"stored messages of a trajectory are not valid JSON.*validate"):
        list(v.trajectories[1].messages)
    report = store.verify("v1")
    assert any("row 1: stored JSON does not parse" in p for p in report.problems), report.problems


def pa_array(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


def test_records_built_column_by_column_equal_the_constructed_ones(tmp_path, rows, monkeypatch):
    from pytest_bclone.dataset import store as st

    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", rows)
    fast = store.load("v1").trajectories
    monkeypatch.setattr(st, "MemberDescriptorType", type(None))  # forces the regular constructor
    slow = store.load("v1").trajectories
    assert fast == slow and len(fast) == 12
    for t in fast:
        assert t._actions is None and t._memo is None and t._indexes is None  # declared defaults
        assert t.expert_actions() == tuple(p.expert_action for p in t.decision_points())


# -- the writer's fast paths store exactly what the plain encoding stores -------------------------------
def _reference_json(value):
    """The writer's encoding before it kept one encoder per write: json.dumps with these options."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _stored_columns(root, ref="v1"):
    import pyarrow.parquet as pq

    path = os.path.join(root, "support", ref)
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    rows = []
    for f in manifest["files"]:
        rows += pq.read_table(os.path.join(path, f["path"])).to_pylist()
    return rows


def _toolset(minimum, description="look an order up"):
    return [{"type": "function", "function": {"name": "get_order", "description": description, "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "minimum": minimum}}}}}]


def test_rows_are_stored_as_their_plain_canonical_json_whatever_toolsets_rows_share(tmp_path):
    # Consecutive rows carry equal toolsets as distinct objects (as an importer passes them) and
    # toolsets equal in Python but not in JSON: 0 == 0.0 == False == -0.0, 1 == 1.0 == True.
    minima = [0, 0, 0.0, False, -0.0, -0.0, 0.0, 1, True, 1.0, 1, 10**20, 1e20, 1e20]
    rows = []
    for i, minimum in enumerate(minima):
        row = make_row(i)
        row["tools"] = _toolset(minimum)
        row["messages"][1]["content"] = "é \u2028 😀 \"quoted\""
        row["metadata"] = {"z": [1, 1.0, True, None], "a": {"b": -0.0}} if i % 2 else {}
        row["expert_scores"] = {"task_completion": [0, 1, 0.5, 1.0][i % 4]}
        row["expected"] = None if i % 3 else row["expected"]
        rows.append(row)
    shared = _toolset(2)
    for i in range(len(minima), len(minima) + 3):  # one object for several rows, mutated in place
        row = make_row(i)
        row["tools"] = shared
        rows.append(row)
    store = DatasetStore(str(tmp_path))
    want = []  # each row's reference encoding when it was written (the shared toolset changes later)

    def stream():
        for k, row in enumerate(rows):
            if k == len(rows) - 1:
                shared[0]["function"]["parameters"]["properties"]["order_id"]["minimum"] = 2.0  # 2 == 2.0
            want.append({key: None if row[key] is None else _reference_json(row[key])
                         for key in ("messages", "tools", "expected", "expert_scores", "metadata")})
            yield row

    store.write_version_stream("support", "v1", stream())
    stored = _stored_columns(str(tmp_path))
    assert len(stored) == len(rows)
    for row, ref, got in zip(rows, want, stored, strict=True):
        assert {key: got[key] for key in ref} == ref, row["id"]
        assert (got["id"], got["cohorts"], got["split"], got["steps"]) == (row["id"], row["cohorts"], row["split"],
                                                                          [2, 5])
    assert {json.loads(r["tools"])[0]["function"]["parameters"]["properties"]["order_id"]["minimum"].__repr__()
            for r in stored} >= {"0", "0.0", "False", "-0.0", "1", "True", "1.0", "2", "2.0"}
    assert store.verify("v1").ok


def test_equal_toolsets_of_many_rows_are_encoded_once(tmp_path, monkeypatch):
    from pytest_bclone.dataset import store as st

    dumps = []
    real = st._dump
    monkeypatch.setattr(st, "_dump", lambda v, *a: dumps.append(a[-1]) or real(v, *a))
    rows = []
    for i in range(20):
        row = make_row(i)
        row["tools"] = json.loads(json.dumps(_toolset(1 if i < 10 else 1.0)))  # each row its own parsed copy
        rows.append(row)
    DatasetStore(str(tmp_path)).write_version_stream("support", "v1", rows)
    assert dumps.count("tools") == 2  # the first row, then the first with 1.0 for 1


def test_the_writers_fast_checks_agree_with_its_full_checks_on_generated_rows():
    from unittest import mock

    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from pytest_bclone.dataset import store as s

    template = make_row(0)
    paths = [p for p in _json_paths(template) if p] + [("scores",), ("expected", "actions", 0, "arguments")]
    # The fields each check is about, drawn as often as all the nested paths together.
    checked = [("id",), ("cohorts",), ("cohorts", 0), ("split",), ("messages",), ("messages", 0), ("messages", 2, "role"),
               ("tools",), ("tools", 0), ("tools", 0, "function"), ("tools", 0, "function", "name"), ("expected",),
               ("expert_scores",), ("expert_scores", "task_completion"), ("metadata",)]
    leaves = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=6)
              | st.sampled_from(["assistant", "tool", "eval", "train", "c1", "c1\n", "bad cohort", "get_order"])
              | st.builds(tuple, st.lists(st.sampled_from(["c1", "assistant"]), max_size=2)))
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "name", "function", "type", "x"]), kids, max_size=3), max_leaves=5)

    def outcome(fn, row):
        try:
            return fn(row, "w", s._RowEncoder())
        except RowError as exc:
            return str(exc)

    mutation = (st.tuples(st.sampled_from(paths), values, st.booleans())
                | st.tuples(st.sampled_from(checked), leaves, st.just(False)))

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(mutation, min_size=1, max_size=3))
    @example([(("tools", 0, "function", "name"), "", False)])
    @example([(("cohorts", 0), "bad cohort", False)])
    @example([(("split",), "test", False)])
    @example([(("id",), "", False)])
    @example([(("expert_scores", "task_completion"), True, False)])
    def check(mutations):
        row = json.loads(json.dumps(template))
        for path, value, delete in mutations:
            target = row
            try:
                for key in path[:-1]:
                    target = target[key]
                if delete:
                    del target[path[-1]]
                else:
                    target[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                continue
        fast = outcome(s._fast_values, row)
        if fast is None:
            return  # the full checks decide
        with mock.patch.object(s, "_fast_values", lambda *a: None):
            full = outcome(s._row_values, row)
        assert fast == full, row

    check()


def test_an_unstorable_value_leaves_the_writers_encoder_usable():
    from pytest_bclone.dataset.store import _RowEncoder

    enc = _RowEncoder()
    inner = {"a": 1}
    value = [inner, float("nan")]
    with pytest.raises(RowError, match=r"field messages: cannot be stored as JSON .*Out of range float"):
        enc.dump(value, "w", "t1", "messages")
    value[1] = 2  # the same objects again: a stale circular-reference marker would refuse them
    assert enc.dump(value, "w", "t1", "messages") == '[{"a":1},2]'
    loop: list = []
    loop.append(loop)
    with pytest.raises(RowError, match="Circular reference"):
        enc.dump(loop, "w", "t1", "metadata")
