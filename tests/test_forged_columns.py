"""A data file forged with its hash and the manifest's fingerprint updated (the one way past the
integrity checks) whose JSON columns do not parse, or parse to the wrong shape, is one
IntegrityError naming the file and the fix when loaded, and a listed problem when verified: never a
JSONDecodeError or AttributeError out of the loader. A byte-flip fuzz test found the ``expected``
column's case by chance; these cases are deterministic."""

from __future__ import annotations

import hashlib
import json

import pytest

from pytest_bclone.dataset.store import DatasetStore, manifest_fingerprint
from pytest_bclone.errors import IntegrityError

from .conftest import make_row


def _forge(version_dir, column: str, value: str) -> None:
    """Set ``column`` of the second row to ``value`` (same schema), then update the file's hash
    and size and the manifest's fingerprint, as a careful tamperer would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = version_dir / "data-00000.parquet"
    table = pq.read_table(data)
    at = table.schema.get_field_index(column)
    values = table.column(column).to_pylist()
    values[1] = value
    table = table.set_column(at, table.schema.field(at), pa.array(values, type=table.schema.field(at).type))
    pq.write_table(table, data)
    raw = data.read_bytes()
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"][0].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw))
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(("column", "value"), [
    ("expected", "{not json"),
    ("expected", "[1, 2]"),
    ("expected", '{"actions": 7}'),
    ("tools", "{not json"),
    ("expert_scores", "[unclosed"),
    ("metadata", "nul\u0000l"),
], ids=["expected-not-json", "expected-a-list", "expected-bad-calls", "tools-not-json", "scores-not-json",
        "metadata-not-json"])
def test_a_forged_json_column_is_one_integrity_error_naming_the_file(tmp_path, column, value):
    store = DatasetStore(str(tmp_path))
    store.write_version("support", "v1", [make_row(i) for i in range(1, 5)])
    _forge(tmp_path / "support/v1", column, value)
    with pytest.raises(IntegrityError) as exc:
        store.load("v1")
    message = str(exc.value)
    assert "data-00000.parquet" in message and column in message, message
    assert "bclone dataset validate" in message or "restore the version directory" in message, message
    report = store.verify("v1")  # collects the problem; never raises for a damaged version
    assert not report.ok
