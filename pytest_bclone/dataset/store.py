"""The versioned trajectory store: write-once version directories of Parquet plus a manifest.

Layout::

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/data-00000.parquet ...

The root is a local directory or any pyarrow filesystem URI (``s3://bucket/prefix``). A version is
written once: locally into a staging directory renamed into place (atomic), elsewhere data files
first and ``manifest.json`` last, so a version without a manifest is never listed or loaded.
Loading reads each data file once, checks its sha256 against the manifest, and parses it from
memory; a mismatch is an :class:`~pytest_bclone.errors.IntegrityError`, never a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.fs as pafs  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from ..errors import DatasetNotFound, IntegrityError, RowError, UnsafeVersionName, VersionExists
from ..records import ExpectedOutcome, Message, Trajectory, tool_name
from .schema import SCHEMA_VERSION, canonical_json, trajectory_to_row, validate_row

MANIFEST = "manifest.json"
ROWS_PER_FILE = 50_000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("cohorts", pa.list_(pa.string())),
        ("split", pa.string()),
        ("messages", pa.string()),  # OpenAI messages as JSON: lossless for any message shape
        ("tools", pa.string()),  # JSON; dictionary-encoded, so a toolset shared by rows is stored once
        ("expected", pa.string()),
        ("expert_scores", pa.string()),
        ("metadata", pa.string()),
        ("steps", pa.list_(pa.int32())),  # assistant message indexes: decision points without a parse
    ]
)


class LazyMessages(Sequence[Message]):
    """The messages of a stored trajectory, parsed from JSON on first access.

    Loading a million decision points then costs no JSON parse until a state is really needed.
    """

    __slots__ = ("_items", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._items: list[Message] | None = None

    def _load(self) -> list[Message]:
        if self._items is None:
            assert self._text is not None
            self._items = json.loads(self._text)
            self._text = None
        return self._items

    @overload
    def __getitem__(self, i: int) -> Message: ...
    @overload
    def __getitem__(self, i: slice) -> list[Message]: ...
    def __getitem__(self, i: int | slice) -> Message | list[Message]:
        return self._load()[i]

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self) -> Iterator[Message]:
        return iter(self._load())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"LazyMessages({len(self)} messages)"


def check_name(value: str, what: str, source: str) -> str:
    """Return ``value`` if it is a safe dataset or version name, else raise UnsafeVersionName."""
    if not _NAME_RE.match(value) or ".." in value:
        raise UnsafeVersionName(
            f"{what} {value!r} (from {source}) is not a plain name: it must match {_NAME_RE.pattern} and "
            f"may not contain '/' or '..', so it cannot leave the store root; use a name like v8"
        )
    return value


def _version_sort_key(v: str) -> tuple[Any, ...]:
    """Natural order: v2 < v10; plain text sorts by its digit runs."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", v) if p)


@dataclass(frozen=True)
class DatasetVersion:
    """A loaded, verified dataset version."""

    name: str
    version: str
    path: str
    manifest: Mapping[str, Any]
    trajectories: tuple[Trajectory, ...]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def fingerprint(self) -> str:
        """A short hash of every data file's sha256: names the exact content of the version."""
        h = hashlib.sha256("".join(f["sha256"] for f in self.manifest["files"]).encode())
        return h.hexdigest()[:12]

    @property
    def cohorts(self) -> list[str]:
        return sorted({c for t in self.trajectories for c in t.cohorts})

    def select(self, split: str = "eval", sample: int | None = None, seed: int = 0) -> list[Trajectory]:
        """Trajectories of ``split`` (``train``, ``eval`` or ``all``), optionally a seeded sample of N."""
        rows = [t for t in self.trajectories if split == "all" or t.split == split]
        if sample is not None and sample < len(rows):
            rows = sorted(random.Random(seed).sample(rows, sample), key=lambda t: t.id)
        return rows


class DatasetStore:
    """A dataset root: list, resolve, load and write versions.

    ``root`` is a directory (relative paths are taken from ``base_dir``) or a pyarrow filesystem
    URI. ``source`` says where the root came from, for error messages.
    """

    def __init__(self, root: str, base_dir: str = ".", source: str = "the dataset root") -> None:
        self.source = source
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
            self.display = root
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.root = os.path.abspath(os.path.join(base_dir, root))
            self.fs = pafs.LocalFileSystem()
            self.display = self.root
            self.local = True

    # -- listing ---------------------------------------------------------------------------------
    def _dirs(self, path: str) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.Directory)

    def _exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def check_root(self) -> None:
        """Raise DatasetNotFound when the root does not exist."""
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise DatasetNotFound(
                f"dataset root {self.display!r} (from {self.source}) does not exist; create a version with "
                "`bclone dataset import FILE --name NAME --version v1`, or point bclone_dataset_root (ini) / "
                "--bclone-dataset-root at the directory that holds your datasets"
            )

    def names(self) -> list[str]:
        """Dataset names under the root."""
        self.check_root()
        return [d for d in self._dirs(self.root) if not d.startswith(".")]

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name`` (those with a manifest), oldest first."""
        base = f"{self.root}/{name}"
        found = [d for d in self._dirs(base) if not d.startswith(".") and self._exists(f"{base}/{d}/{MANIFEST}")]
        return sorted(found, key=_version_sort_key)

    def _available(self) -> str:
        items = [f"{n}@{v}" for n in self.names() for v in self.versions(n)]
        return ", ".join(items) if items else "none"

    # -- resolution ------------------------------------------------------------------------------
    def resolve(self, ref: str, source: str = "--bclone-dataset") -> tuple[str, str]:
        """``v8``, ``name@v8``, ``latest`` or ``name@latest`` -> (name, version), checked to exist."""
        self.check_root()
        name, sep, version = ref.rpartition("@")
        if sep:
            check_name(name, "dataset name", source)
            names = [name]
        else:
            version, names = ref, self.names()
        if version != "latest":
            check_name(version, "dataset version", source)
        if sep and name not in self.names():
            raise DatasetNotFound(
                f"dataset {name!r} (from {source}={ref}) is not in {self.display}; available: {self._available()}"
            )
        candidates = [(n, self.versions(n)) for n in names]
        if version == "latest":
            candidates = [(n, vs[-1:]) for n, vs in candidates if vs]
        else:
            candidates = [(n, [version]) for n, vs in candidates if version in vs]
        if len(candidates) == 1:
            return candidates[0][0], candidates[0][1][0]
        if not candidates:
            raise DatasetNotFound(
                f"dataset version {ref!r} (from {source}) is not in {self.display}; available: {self._available()}; "
                "pass one of those, or create it with `bclone dataset import`"
            )
        raise DatasetNotFound(
            f"dataset version {ref!r} (from {source}) is ambiguous in {self.display}: "
            f"{', '.join(n + '@' + vs[0] for n, vs in candidates)}; name the dataset, e.g. {candidates[0][0]}@{version}"
        )

    # -- loading ---------------------------------------------------------------------------------
    def load(self, ref: str, source: str = "--bclone-dataset") -> DatasetVersion:
        """Resolve ``ref`` and load the version, verifying every data file's sha256."""
        name, version = self.resolve(ref, source)
        return self.load_dir(f"{self.root}/{name}/{version}", source)

    def load_dir(self, path: str, source: str = "--bclone-dataset") -> DatasetVersion:
        """Load the version stored in directory ``path`` (on this store's filesystem)."""
        try:
            with self.fs.open_input_stream(f"{path}/{MANIFEST}") as f:
                manifest = json.loads(f.readall())
        except FileNotFoundError:
            raise DatasetNotFound(
                f"{path!r} (from {source}) holds no {MANIFEST}: it is not a complete dataset version "
                "(an interrupted write leaves none); rebuild it with `bclone dataset import`"
            ) from None
        trajectories: list[Trajectory] = []
        for entry in manifest["files"]:
            with self.fs.open_input_stream(f"{path}/{entry['path']}") as f:
                data = f.readall()
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"]:
                raise IntegrityError(
                    f"data file {path}/{entry['path']} has sha256 {digest[:16]}... but {MANIFEST} records "
                    f"{entry['sha256'][:16]}...: the file was changed after the version was written; restore it "
                    "or rebuild the version under a new name (versions are write-once)"
                )
            trajectories.extend(_table_to_trajectories(pq.read_table(pa.BufferReader(data), read_dictionary=["tools"])))
        return DatasetVersion(manifest["name"], manifest["version"], path, manifest, tuple(trajectories))

    # -- writing ---------------------------------------------------------------------------------
    def write_version(
        self,
        name: str,
        version: str,
        trajectories: Iterable[Trajectory | Mapping[str, Any]],
        *,
        parent: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        validate: bool = True,
        source: str = "write_version",
        created: str | None = None,
    ) -> dict[str, Any]:
        """Write a new version; returns its manifest.

        Rows are validated against the schema unless ``validate`` is False (importers validate
        with line numbers themselves). Raises VersionExists if the version already exists.
        ``created`` fixes the creation time (for byte-for-byte reproducible builds).
        """
        check_name(name, "dataset name", source)
        check_name(version, "dataset version", source)
        final = f"{self.root}/{name}/{version}"
        if self._exists(final):
            raise VersionExists(
                f"dataset version {name}@{version} already exists at {final}; versions are write-once: "
                "write a new version (e.g. the next number) instead"
            )
        rows = []
        for i, item in enumerate(trajectories):
            row = trajectory_to_row(item) if isinstance(item, Trajectory) else dict(item)
            if validate:
                validate_row(row, f"{source} row {i}")
            rows.append(row)
        ids = Counter(r["id"] for r in rows)
        dupes = [k for k, c in ids.items() if c > 1]
        if dupes:
            raise RowError(f"{source}: trajectory id {dupes[0]!r} appears {ids[dupes[0]]} times; ids must be unique")
        staging = f"{self.root}/{name}/.staging-{version}-{uuid.uuid4().hex[:8]}" if self.local else final
        self.fs.create_dir(staging, recursive=True)
        try:
            files = []
            for k in range(0, max(len(rows), 1), ROWS_PER_FILE):
                fname = f"data-{k // ROWS_PER_FILE:05d}.parquet"
                data = _rows_to_parquet(rows[k : k + ROWS_PER_FILE])
                self._write_bytes(f"{staging}/{fname}", data)
                n = len(rows[k : k + ROWS_PER_FILE])
                files.append({"path": fname, "sha256": hashlib.sha256(data).hexdigest(), "rows": n, "bytes": len(data)})
            manifest = _manifest(name, version, parent, rows, files, lineage, created)
            self._write_bytes(f"{staging}/{MANIFEST}", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            if self.local:
                if self._exists(final):  # another writer won the race
                    raise VersionExists(f"dataset version {name}@{version} was created meanwhile at {final}")
                os.rename(staging, final)
        except BaseException:
            if self.local and self._exists(staging):
                self.fs.delete_dir(staging)
            raise
        return manifest

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)


def _rows_to_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    cols: dict[str, list[Any]] = {f.name: [] for f in _ARROW_SCHEMA}
    for r in rows:
        cols["id"].append(r["id"])
        cols["cohorts"].append(list(r.get("cohorts") or ()))
        cols["split"].append(r.get("split", "eval"))
        cols["messages"].append(canonical_json(r["messages"]))
        cols["tools"].append(canonical_json(r.get("tools") or []))
        exp = r.get("expected")
        cols["expected"].append(None if exp is None else canonical_json(exp))
        cols["expert_scores"].append(canonical_json(r.get("expert_scores") or {}))
        cols["metadata"].append(canonical_json(r.get("metadata") or {}))
        cols["steps"].append([i for i, m in enumerate(r["messages"]) if m.get("role") == "assistant"])
    table = pa.table(cols, schema=_ARROW_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["tools", "split", "metadata", "expert_scores"])
    return bytes(sink.getvalue().to_pybytes())


def _table_to_trajectories(table: pa.Table) -> list[Trajectory]:
    tools_col = table.column("tools").combine_chunks()
    # A toolset shared by many rows is parsed once (the column is dictionary-encoded).
    toolsets = [json.loads(s) for s in tools_col.dictionary.to_pylist()]
    tool_idx = tools_col.indices.to_pylist()
    parsed: dict[str, Any] = {}

    def cached(text: str | None) -> Any:
        if text is None:
            return None
        if text not in parsed:
            parsed[text] = json.loads(text)
        return parsed[text]

    out = []
    for i, (tid, cohorts, split, msgs, exp, scores, meta, steps) in enumerate(
        zip(
            table.column("id").to_pylist(),
            table.column("cohorts").to_pylist(),
            table.column("split").to_pylist(),
            table.column("messages").to_pylist(),
            table.column("expected").to_pylist(),
            table.column("expert_scores").to_pylist(),
            table.column("metadata").to_pylist(),
            table.column("steps").to_pylist(),
        )
    ):
        out.append(
            Trajectory(
                id=tid,
                cohorts=tuple(cohorts),
                split=split,
                messages=LazyMessages(msgs),
                tools=toolsets[tool_idx[i]],
                expected=None if exp is None else ExpectedOutcome.from_dict(json.loads(exp)),
                expert_scores=cached(scores),
                metadata=cached(meta) if len(meta) < 256 else json.loads(meta),
                step_indexes=tuple(steps),
            )
        )
    return out


def _manifest(
    name: str,
    version: str,
    parent: str | None,
    rows: Sequence[Mapping[str, Any]],
    files: list[dict[str, Any]],
    lineage: Mapping[str, Any] | None,
    created: str | None,
) -> dict[str, Any]:
    splits: Counter[str] = Counter()
    cohorts: dict[str, Counter[str]] = {}
    points: Counter[str] = Counter()
    toolset: set[str] = set()
    for r in rows:
        split = r.get("split", "eval")
        splits[split] += 1
        n_points = sum(1 for m in r["messages"] if m.get("role") == "assistant")
        points[split] += n_points
        for c in r.get("cohorts") or ():
            cohorts.setdefault(c, Counter())[split] += 1
        toolset.update(tool_name(t) for t in r.get("tools") or ())
    return {
        "format": "pytest-bclone-dataset",
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "parent": parent,
        "created": created or datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {
            "trajectories": len(rows),
            "splits": dict(sorted(splits.items())),
            "decision_points": dict(sorted(points.items())),
            "cohorts": {c: dict(sorted(v.items())) for c, v in sorted(cohorts.items())},
        },
        "toolset": sorted(toolset),
        "lineage": dict(lineage or {}),
        "files": files,
    }


def row_digest(t: Trajectory) -> str:
    """A content hash of one trajectory (used by diff to find changed rows)."""
    return hashlib.sha256(canonical_json(trajectory_to_row(t)).encode()).hexdigest()


def load_ref(ref: str, root: str, base_dir: str = ".", source: str = "--bclone-dataset",
             root_source: str = "ini bclone_dataset_root") -> DatasetVersion:
    """Load ``ref``: a version name (``v8``, ``name@v8``, ``latest``) under ``root``, or a path to a
    version directory (one holding ``manifest.json``)."""
    path = ref if os.path.isabs(ref) else os.path.join(base_dir, ref)
    if ("/" in ref or os.sep in ref) and os.path.isfile(os.path.join(path, MANIFEST)):
        return DatasetStore(os.path.dirname(os.path.abspath(path)), source="the version's directory").load_dir(
            os.path.abspath(path), source
        )
    return DatasetStore(root, base_dir, root_source).load(ref, source)


__all__ = [
    "MANIFEST",
    "DatasetStore",
    "DatasetVersion",
    "LazyMessages",
    "check_name",
    "load_ref",
    "row_digest",
]
