"""The versioned trajectory store: write-once version directories of Parquet plus a manifest.

Layout::

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/data-00000.parquet ...

The root is a local directory or any pyarrow filesystem URI (``s3://bucket/prefix``). A version is
written once, from a stream of rows in bounded memory (:meth:`DatasetStore.write_version_stream`):
locally into a locked staging directory renamed into place (atomic); on an object store data
files first, under names unique to the write, and ``manifest.json`` last. A version *is* its
manifest: a directory without one is never listed or loaded, and the next write of that version
replaces it.

The manifest is tamper-evident: its ``fingerprint`` is the sha256 of its own canonical content
(every count, the toolset, the lineage and every data file's sha256). Loading recomputes it,
confines every path to the version directory before opening anything, checks each data file's
size, sha256, Parquet schema and row count, and recounts splits, decision points, cohorts and the
toolset from the data. Any mismatch is one :class:`~pytest_bclone.errors.IntegrityError` naming
the file and the fix, never a warning. :meth:`DatasetStore.verify` runs the same checks (and a
parse of every row) and collects every problem instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from types import MemberDescriptorType
from typing import Any, overload

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.fs as pafs  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from ..errors import DatasetError, DatasetNotFound, IntegrityError, RowError, UnsafeVersionName, VersionExists
from ..records import DecisionPoint, ExpectedOutcome, Message, Trajectory, tool_name
from .schema import SCHEMA_VERSION, canonical_encoder, trajectory_to_row, validate_row

try:  # POSIX: a writer holds an advisory lock on its staging directory, so cleanup never races it
    import fcntl
except ImportError:  # pragma: no cover - Windows: staging is cleaned by age alone
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "pytest-bclone-dataset"
ROWS_PER_FILE = 50_000
"""Rows per data file: the unit of hashing and of parallel reads."""
ROWS_PER_GROUP = 10_000
"""Rows per Parquet row group: what a writer buffers as Python values before encoding them."""
STALE_STAGING_SECONDS = 15 * 60
"""A staging directory this old whose writer holds no lock is a killed write's leftover."""
_MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.parquet$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_COHORT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_STAGING_PREFIX = ".staging-"
_LOCK = ".lock"
_ROW_KEYS = frozenset({"id", "cohorts", "split", "messages", "tools", "expected", "expert_scores", "metadata"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_SPLITS = ("eval", "train")
_RESTORE = (
    "restore the version directory from a backup or version control, or rebuild the data as a new version "
    "with `bclone dataset import` (versions are write-once)"
)

RowValidator = Callable[[Mapping[str, Any], str], None]
"""A row check for :meth:`DatasetStore.write_version_stream`: ``(row, where)``, raises RowError."""

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
_DICTIONARY_COLUMNS = ["tools", "split", "metadata", "expert_scores"]
_NOT_NULL = ("id", "cohorts", "split", "messages", "tools", "expert_scores", "metadata", "steps")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json(value: Any) -> str:
    """Canonical JSON (sorted keys, compact, no NaN): equal values give equal text and hashes."""
    # One encoder object, the same text as json.dumps with these options (which would build a
    # new encoder object on every call).
    return _ENCODER.encode(value)


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON (and cannot be fingerprinted).
    raise ValueError(f"{name} is not a JSON value")


def manifest_fingerprint(manifest: Mapping[str, Any]) -> str:
    """The sha256 of a manifest's canonical content without its ``fingerprint`` field.

    It covers the name, version, parent, counts, toolset, lineage and every data file's sha256,
    so an edit to any of them (or to any data file) changes it.
    """
    return hashlib.sha256(_json({k: v for k, v in manifest.items() if k != "fingerprint"}).encode()).hexdigest()


class LazyMessages(Sequence[Message]):
    """The messages of a stored trajectory, parsed from JSON on first access.

    Holds the Arrow string array and a row index rather than a Python string: loading a million
    decision points then copies no message text and parses no JSON until a state is really needed.
    """

    __slots__ = ("_array", "_i", "_items")

    def __init__(self, array: Any, index: int = 0) -> None:
        # ``array`` is a pyarrow StringArray (or, for callers that have one, a plain JSON string).
        self._array: Any = array
        self._i = index
        self._items: list[Message] | None = None

    def _load(self) -> list[Message]:
        if self._items is None:
            text = self._array if isinstance(self._array, str) else self._array[self._i].as_py()
            try:
                items = json.loads(text)
            except ValueError as exc:  # only a data file forged with matching hashes gets here
                raise IntegrityError(
                    f"the stored messages of a trajectory are not valid JSON ({exc}); run `bclone dataset validate` "
                    f"on the version to list every damaged row, then {_RESTORE}") from None
            if not isinstance(items, list):
                raise IntegrityError(f"the stored messages of a trajectory are a JSON {type(items).__name__}, not a "
                                     f"list; run `bclone dataset validate` on the version, then {_RESTORE}")
            self._items = items
            self._array = None
        return self._items

    @property
    def text(self) -> str:
        """The stored JSON text (canonical), without parsing it."""
        if self._items is not None:
            return _json(self._items)
        return self._array if isinstance(self._array, str) else str(self._array[self._i].as_py())

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

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence: unhashable like a list

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (or deep-copy) the row's own JSON text, never the whole Arrow column it points into.
        return (LazyMessages, (self.text,))

    def __repr__(self) -> str:
        return f"LazyMessages({len(self)} messages)"


def check_name(value: str, what: str, source: str) -> str:
    """Return ``value`` if it is a safe dataset or version name, else raise UnsafeVersionName."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or ".." in value:
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
        """The first 12 hex digits of the manifest's fingerprint (see :attr:`fingerprint_sha256`)."""
        return self.fingerprint_sha256[:12]

    @property
    def fingerprint_sha256(self) -> str:
        """The verified sha256 over the manifest's content and every data file's sha256."""
        return str(self.manifest["fingerprint"])

    @property
    def cohorts(self) -> list[str]:
        return sorted({c for t in self.trajectories for c in t.cohorts})

    def select(self, split: str = "eval", sample: int | None = None, seed: int = 0) -> list[Trajectory]:
        """Trajectories of ``split`` (``train``, ``eval`` or ``all``), optionally a seeded sample of N."""
        rows = [t for t in self.trajectories if split == "all" or t.split == split]
        if sample is not None and sample < len(rows):
            rows = sorted(random.Random(seed).sample(rows, sample), key=lambda t: t.id)
        return rows


def all_decision_points(trajectories: Iterable[Trajectory]) -> list[DecisionPoint]:
    """Every decision point of ``trajectories``, in order, with the cyclic GC paused.

    Deriving a million points allocates a million small acyclic tuples; with the collector on,
    that triggers full collections that rescan the whole loaded dataset each time (about 3x the
    derivation itself). Reference counting frees these tuples; nothing here needs the collector.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [p for t in trajectories for p in t.decision_points()]
    finally:
        if collecting:
            gc.enable()


@dataclass(frozen=True)
class StagingLeftover:
    """A ``.staging-*`` directory: an import in progress, or the leftover of one that was killed."""

    path: str
    name: str
    version: str
    age_s: float
    locked: bool

    @property
    def stale(self) -> bool:
        """Unlocked and older than :data:`STALE_STAGING_SECONDS`: no writer will come back for it."""
        return not self.locked and self.age_s >= STALE_STAGING_SECONDS

    def describe(self) -> str:
        state = "in progress (locked by its writer)" if self.locked else (
            "left by an interrupted write" + ("; removed by the next write of this dataset" if self.stale else ""))
        return f"{self.path}: staging of {self.name}@{self.version}, {self.age_s / 60:.0f} min old, {state}"


@dataclass
class VerifyReport:
    """What :meth:`DatasetStore.verify` found; ``ok`` when nothing is wrong."""

    ref: str
    path: str
    fingerprint: str | None = None
    trajectories: int = 0
    decision_points: int = 0
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    staging: list[StagingLeftover] = field(default_factory=list)
    unlisted_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """Readable lines: one summary, then one per problem and leftover."""
        if self.ok:
            out = [(f"{self.ref}: OK: {self.trajectories} trajectories, {self.decision_points} decision points, "
                    f"{self.files_checked} data files match their sha256, manifest fingerprint "
                    f"{(self.fingerprint or '')[:12]} verified, counts match the data")]
        else:
            out = [f"{self.ref}: {len(self.problems)} problem(s) in {self.path}:"]
            out += [f"  {p}" for p in self.problems]
        out += [f"  note: {f} is not listed in {MANIFEST} (ignored; safe to delete)" for f in self.unlisted_files]
        out += [f"  note: {s.describe()}" for s in self.staging]
        return out


class _Check:
    """Collects problems (``verify``) or raises the first one (``load``)."""

    def __init__(self, raise_first: bool) -> None:
        self.raise_first = raise_first
        self.problems: list[str] = []

    def fail(self, exc: DatasetError) -> None:
        if self.raise_first:
            raise exc
        self.problems.append(str(exc))


# -- writing rows -----------------------------------------------------------------------------------
_RowValues = tuple[str, list[str], str, str, str, "str | None", str, str, list[int]]


def _row_error(where: str, rid: Any, field_name: str, problem: str, fix: str = "fix that field") -> RowError:
    return RowError(f"{where}: row {rid!r}, field {field_name}: {problem}; {fix}")


def _dump(value: Any, where: str, rid: Any, field_name: str) -> str:
    try:
        return _json(value)
    except (TypeError, ValueError) as exc:  # NaN/inf, sets, objects...
        raise _row_error(where, rid, field_name, f"cannot be stored as JSON ({exc})",
                         "use plain JSON values (finite numbers, strings, lists, objects)") from None


_MAYBE_NUMBER = re.compile(r"[:,\[][-0-9tf]")
"""Where compact JSON text may hold a number or a boolean (a value after ``:``, ``,`` or ``[``);
a string can match too, which only costs a walk of the value."""


def _number_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths to every number and boolean inside a parsed JSON value."""
    if type(value) is dict:
        return [p for k, v in value.items() for p in _number_paths(v, (*path, k))]
    if type(value) is list:
        return [p for k, v in enumerate(value) for p in _number_paths(v, (*path, k))]
    if type(value) in (int, float, bool):
        return [path]
    return []


class _RowEncoder:
    """The canonical JSON encoder of one write (the text of :func:`_json`), and its last toolset.

    One :func:`~pytest_bclone.dataset.schema.canonical_encoder` per write, not one per value: its
    circular-reference markers belong to this write alone (writers in other threads never share
    them) and are renewed after a failed call.

    Rows share a few toolsets, and an importer hands each row its own freshly parsed copy, so the
    toolset is compared by value with a snapshot of the last one encoded (parsed back from its
    text) instead of being encoded again. Equality alone is not enough: ``1 == 1.0 == True`` and
    ``0.0 == -0.0`` encode differently, so a hit also needs every number and boolean to have the
    snapshot's exact type (and a float its exact text). Anything else is a miss and is encoded.
    """

    __slots__ = ("_encode", "_numbers", "_snapshot", "tools_text")

    def __init__(self) -> None:
        self._encode = canonical_encoder(allow_nan=False)
        self._snapshot: Any = None
        self._numbers: list[tuple[Any, ...]] = []
        self.tools_text = ""

    def dump(self, value: Any, where: str, rid: Any, field_name: str) -> str:
        """``value`` as canonical JSON; RowError naming the field when it is not plain JSON."""
        try:
            return self._encode(value)
        except (TypeError, ValueError) as exc:  # NaN/inf, sets, objects, circular references...
            self._encode = canonical_encoder(allow_nan=False)  # the failed call may leave ids in its markers
            raise _row_error(where, rid, field_name, f"cannot be stored as JSON ({exc})",
                             "use plain JSON values (finite numbers, strings, lists, objects)") from None

    def tools(self, tools: Any, where: str, rid: Any) -> str:
        """The JSON text of a row's toolset: the last one's text when the value is exactly the same."""
        seq = tools if type(tools) is list else list(tools)
        text = self.cached_tools(seq)
        return self.encode_tools(seq, where, rid) if text is None else text

    def cached_tools(self, seq: list[Any]) -> str | None:
        """The last toolset's text when ``seq`` is exactly that toolset (see the class), else None."""
        if seq != self._snapshot:
            return None
        try:
            # ``seq == snapshot``: both have the same shape, so every path of the snapshot resolves.
            for path in self._numbers:
                a: Any = seq
                b: Any = self._snapshot
                for k in path:
                    a, b = a[k], b[k]
                if type(a) is not type(b) or (type(b) is float and float.__repr__(a) != float.__repr__(b)):
                    return None
        except (LookupError, TypeError):  # a Mapping that compares equal but indexes otherwise
            return None
        return self.tools_text

    def encode_tools(self, seq: list[Any], where: str, rid: Any) -> str:
        """Encode a toolset and keep it as the one to compare the next rows' with."""
        text = _dump(seq, where, rid, "tools")
        self._snapshot = snapshot = json.loads(text)
        self._numbers = _number_paths(snapshot) if _MAYBE_NUMBER.search(text) else []
        self.tools_text = text
        return text


def _fast_values(row: Any, where: str, enc: _RowEncoder) -> _RowValues | None:
    """:func:`_row_values` of a row made of plain dicts, lists and exact types, or None.

    Every check here is one of :func:`_row_values`'s own, written for the common row; anything
    unusual (another Mapping or Sequence type, a str or number subclass, a bad value) returns
    None and the full checks run and word the problem, so the two never disagree on a row (a
    test compares them on generated rows). Values are encoded in the same order as there, so
    that a row with two unstorable fields names the same one.
    """
    if type(row) is not dict or not row.keys() <= _ROW_KEYS:
        return None
    get = row.get
    rid = get("id")
    if type(rid) is not str or not rid:
        return None
    cohorts = get("cohorts")
    if cohorts is None:
        cohorts = []
    elif type(cohorts) is not list:
        return None
    else:
        for c in cohorts:
            if type(c) is not str or _COHORT_RE.match(c) is None:
                return None
    split = get("split", "eval")
    if type(split) is not str or split not in _SPLITS:
        return None
    messages = get("messages")
    if type(messages) is not list:
        return None
    steps = []
    for k, m in enumerate(messages):
        if type(m) is not dict:
            return None
        role = m.get("role")
        if type(role) is not str or role not in _ROLES:
            return None
        if role == "assistant":
            steps.append(k)
    if not steps:  # also an empty list of messages
        return None
    tools = get("tools")
    if tools is None:
        tools = []
    elif type(tools) is not list:
        return None
    tools_text = enc.cached_tools(tools)
    if tools_text is None:
        for t in tools:
            if type(t) is not dict:
                return None
            fn = t.get("function")
            if type(fn) is not dict:
                return None
            name = fn.get("name")
            if type(name) is not str or not name:
                return None
    expected = get("expected")
    if expected is not None:
        _check_expected(expected, where, rid)  # raises what the full checks would raise here
    scores = get("expert_scores")
    if scores is None:
        scores = {}
    elif type(scores) is not dict:
        return None
    else:
        for v in scores.values():
            # NaN and the infinities fail the range test; bool is neither int nor float here.
            if (type(v) is not float and type(v) is not int) or not 0 <= v <= 1:
                return None
    metadata = get("metadata")
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict:
        return None
    dump = enc.dump
    return (
        rid,
        list(cohorts),
        split,
        dump(messages, where, rid, "messages"),
        enc.encode_tools(tools, where, rid) if tools_text is None else tools_text,
        None if expected is None else dump(expected, where, rid, "expected"),
        "{}" if not scores else dump(scores, where, rid, "expert_scores"),
        "{}" if not metadata else dump(metadata, where, rid, "metadata"),
        steps,
    )


def _row_values(row: Any, where: str, enc: _RowEncoder | None = None) -> _RowValues:
    """Check one row's shape and turn it into the stored column values; RowError names the field.

    The store's own guard, whatever validation the caller ran: it never writes a row it could not
    load back, never splits a string into cohorts, never stores NaN, never drops an unknown field.
    ``enc`` is the write's encoder (a fresh one when not given).
    """
    if enc is None:
        enc = _RowEncoder()
    values = _fast_values(row, where, enc)
    if values is not None:
        return values
    if not isinstance(row, Mapping):
        raise RowError(f"{where}: row is a {type(row).__name__}, expected an object with id, cohorts, split, "
                       "messages, tools; fix or remove that row")
    rid = row.get("id")
    if not isinstance(rid, str) or not rid:
        raise _row_error(where, rid, "id", f"{rid!r} is not a non-empty string", "give every row a unique string id")
    unknown = sorted(str(k) for k in set(row) - _ROW_KEYS)
    if unknown:
        raise _row_error(where, rid, unknown[0], "is not a row field",
                         f"the fields are {', '.join(sorted(_ROW_KEYS))}; put extra data under metadata")
    cohorts = row.get("cohorts")
    cohorts = [] if cohorts is None else cohorts
    if not isinstance(cohorts, (list, tuple)):
        raise _row_error(where, rid, "cohorts", f"{cohorts!r} is a {type(cohorts).__name__}, not a list",
                         f"write a list of cohort names, e.g. [{json.dumps(str(cohorts))}]")
    for k, c in enumerate(cohorts):
        if not isinstance(c, str) or not _COHORT_RE.match(c):
            raise _row_error(where, rid, f"cohorts[{k}]", f"{c!r} is not a cohort name (letters, digits, _ . -)",
                             "fix the cohort name")
    split = row.get("split", "eval")
    if not isinstance(split, str) or split not in _SPLITS:
        raise _row_error(where, rid, "split", f"{split!r} is not 'train' or 'eval'", "use train or eval")
    messages = row.get("messages")
    if not isinstance(messages, (list, tuple)) or not messages or isinstance(messages, str):
        raise _row_error(where, rid, "messages", f"is {type(messages).__name__}, not a non-empty list of messages",
                         "give the OpenAI chat messages of the trajectory")
    steps = []
    for k, m in enumerate(messages):
        # ``type(m) is dict`` first: the ABC check costs more than the rest of the loop.
        role = m.get("role") if type(m) is dict or isinstance(m, Mapping) else None
        if not isinstance(role, str) or role not in _ROLES:
            raise _row_error(where, rid, f"messages[{k}]", f"{m!r:.80} has no valid role",
                             f"each message is an object with role one of {', '.join(sorted(_ROLES))}")
        if role == "assistant":
            steps.append(k)
    if not steps:
        raise _row_error(where, rid, "messages", "has no assistant message, so no decision point",
                         "drop the row or include the expert's turns")
    tools = row.get("tools")
    tools = [] if tools is None else tools
    if not isinstance(tools, (list, tuple)) or not all(type(t) is dict or isinstance(t, Mapping) for t in tools):
        raise _row_error(where, rid, "tools", "is not a list of tool definitions (objects)",
                         "give the OpenAI tools list, or []")
    for k, t in enumerate(tools):
        fn = t.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else t.get("name")
        if not isinstance(name, str) or not name:
            raise _row_error(where, rid, f"tools[{k}].function.name", f"{name!r} is not a tool name",
                             "give each tool definition a non-empty string name")
    expected = row.get("expected")
    if expected is not None:
        _check_expected(expected, where, rid)
    scores = row.get("expert_scores")
    scores = {} if scores is None else scores
    if not isinstance(scores, Mapping):
        raise _row_error(where, rid, "expert_scores", f"is a {type(scores).__name__}, not an object",
                         "map metric names to scores in [0, 1]")
    for k, v in scores.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise _row_error(where, rid, f"expert_scores.{k}", f"{v!r} is not a number in [0, 1]",
                             "record a finite score between 0 and 1, or leave the metric out")
    metadata = row.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise _row_error(where, rid, "metadata", f"is a {type(metadata).__name__}, not an object",
                         "put metadata in a JSON object")
    return (
        rid,
        list(cohorts),
        split,
        enc.dump(list(messages), where, rid, "messages"),
        enc.tools(tools, where, rid),
        None if expected is None else enc.dump(expected, where, rid, "expected"),
        enc.dump(scores, where, rid, "expert_scores"),
        enc.dump(metadata, where, rid, "metadata"),
        steps,
    )


def _check_expected(expected: Any, where: str, rid: Any) -> None:
    if not isinstance(expected, Mapping):
        raise _row_error(where, rid, "expected", f"is a {type(expected).__name__}, not an object or null",
                         "give {actions: [...], outputs: [...]} or null")
    actions = expected.get("actions")
    if actions is not None and not isinstance(actions, (list, tuple)):
        raise _row_error(where, rid, "expected.actions", f"is a {type(actions).__name__}, not a list",
                         "give a list of {name: TOOL, arguments: {...}}")
    for k, a in enumerate(actions or ()):
        if not isinstance(a, Mapping) or not isinstance(a.get("name"), str):
            raise _row_error(where, rid, f"expected.actions[{k}]", "is not an object with a string name",
                             "give {name: TOOL, arguments: {...}}")
        if a.get("arguments") is not None and not isinstance(a["arguments"], Mapping):
            raise _row_error(where, rid, f"expected.actions[{k}].arguments", "is not an object",
                             "give the arguments as a JSON object")
    outputs = expected.get("outputs")
    outputs = () if outputs is None else outputs
    if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, str) for o in outputs):
        raise _row_error(where, rid, "expected.outputs", "is not a list of strings", "give the required outputs")


class _Tally:
    """What the manifest needs from the rows, kept as they stream past (not the rows themselves)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.ids: set[str] = set()
        self.splits: Counter[str] = Counter()
        self.points: Counter[str] = Counter()
        self.cohorts: dict[str, Counter[str]] = {}
        self.toolset: set[str] = set()
        self._seen_tools: set[str] = set()
        self._last_tools: str | None = None

    def add(self, values: _RowValues, tools: Sequence[Any], where: str) -> None:
        rid, cohorts, split, _m, tools_text, _e, _s, _md, steps = values
        if rid in self.ids:
            raise RowError(f"{where}: trajectory id {rid!r} appears 2 times (again at this row); ids must be unique: "
                           "drop the duplicate or give it its own id")
        self.ids.add(rid)
        self.splits[split] += 1
        self.points[split] += len(steps)
        for c in cohorts:
            per_split = self.cohorts.get(c)
            if per_split is None:  # not setdefault: that would build a Counter for every row
                per_split = self.cohorts[c] = Counter()
            per_split[split] += 1
        # Rows share a few toolsets: name each distinct one once (hash of the text keeps this small).
        if tools_text is self._last_tools:  # the writer's encoder handed back the previous row's text
            return
        self._last_tools = tools_text
        key = hashlib.sha1(tools_text.encode()).hexdigest() if len(tools_text) > 64 else tools_text
        if key not in self._seen_tools:
            self._seen_tools.add(key)
            self.toolset.update(tool_name(t) for t in tools)

    def counts(self) -> dict[str, Any]:
        return {
            "trajectories": len(self.ids),
            "splits": dict(sorted(self.splits.items())),
            "decision_points": dict(sorted(self.points.items())),
            "cohorts": {c: dict(sorted(v.items())) for c, v in sorted(self.cohorts.items())},
        }


class _ParquetFile:
    """One data file being written: rows buffered per row group, encoded into an in-memory file."""

    def __init__(self) -> None:
        self.sink = pa.BufferOutputStream()
        self.writer = pq.ParquetWriter(self.sink, _ARROW_SCHEMA, compression="zstd",
                                       use_dictionary=_DICTIONARY_COLUMNS)
        self.group: list[_RowValues] = []  # a row group's rows, turned into columns when it is full
        self.rows = 0

    def add(self, values: _RowValues) -> None:
        self.group.append(values)
        self.rows += 1
        if len(self.group) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.group:
            # One transpose per row group (in C) rather than nine list appends per row.
            columns = [pa.array(col, type=f.type) for col, f in zip(zip(*self.group), _ARROW_SCHEMA, strict=True)]
            self.writer.write_table(pa.Table.from_arrays(columns, schema=_ARROW_SCHEMA))
            self.group = []

    def finish(self) -> bytes:
        self._flush()
        self.writer.close()
        return bytes(self.sink.getvalue().to_pybytes())


class _StagingLock:
    """An exclusive advisory lock on a staging directory, held for the whole write."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, _LOCK)
        self.fd: int | None = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _is_locked(directory: str) -> bool:
    path = os.path.join(directory, _LOCK)
    if fcntl is None or not os.path.exists(path):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


# -- reading ------------------------------------------------------------------------------------------
def _manifest_shape_problems(m: Any, where: str) -> list[str]:
    """Everything wrong with a manifest's structure (before its content can be trusted or used)."""
    fix = f"; {_RESTORE}"
    if not isinstance(m, dict):
        return [f"{where} is a JSON {type(m).__name__}, not an object: it is not a dataset manifest{fix}"]
    out = []
    if m.get("format") != MANIFEST_FORMAT:
        out.append(f"{where}: format is {m.get('format')!r}, expected {MANIFEST_FORMAT!r}: not a dataset manifest{fix}")
    if type(m.get("schema_version")) is not int or m["schema_version"] != SCHEMA_VERSION:
        out.append(f"{where}: schema_version {m.get('schema_version')!r} is not {SCHEMA_VERSION}, the one this "
                   "pytest-bclone reads; use the pytest-bclone that wrote it, or re-import its rows")
    for key in ("name", "version", "created"):
        if not isinstance(m.get(key), str):
            out.append(f"{where}: {key} is {m.get(key)!r}, expected a string{fix}")
        elif key != "created" and (not _NAME_RE.match(m[key]) or ".." in m[key]):
            out.append(f"{where}: {key} {m[key]!r} is not a plain name{fix}")
    if m.get("parent") is not None and not isinstance(m.get("parent"), str):
        out.append(f"{where}: parent is {m.get('parent')!r}, expected a version name or null{fix}")
    files = m.get("files")
    if not isinstance(files, list) or not files:
        out.append(f"{where} has no 'files' list naming the data files and their sha256{fix}")
    else:
        seen = set()
        for k, e in enumerate(files):
            if not isinstance(e, dict):
                out.append(f"{where}: files[{k}] is not an object with path, sha256, rows, bytes{fix}")
                continue
            p = e.get("path")
            if not isinstance(p, str) or not _FILE_RE.match(p) or ".." in p:
                out.append(f"{where}: files[{k}].path {p!r} is not a plain data file name inside the version "
                           f"directory; refusing to open it{fix}")
            elif p in seen:
                out.append(f"{where}: files[{k}].path {p!r} is listed twice{fix}")
            else:
                seen.add(p)
            if not isinstance(e.get("sha256"), str) or not _SHA_RE.match(e["sha256"]):
                out.append(f"{where}: files[{k}].sha256 {e.get('sha256')!r} is not a sha256 hex digest{fix}")
            for key in ("rows", "bytes"):
                v = e.get(key)
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    out.append(f"{where}: files[{k}].{key} {v!r} is not a count{fix}")
    counts = m.get("counts")
    if not isinstance(counts, dict):
        out.append(f"{where} has no 'counts' object{fix}")
    else:
        if isinstance(counts.get("trajectories"), bool) or not isinstance(counts.get("trajectories"), int):
            out.append(f"{where}: counts.trajectories {counts.get('trajectories')!r} is not a count{fix}")
        for key in ("splits", "decision_points", "cohorts"):
            if not isinstance(counts.get(key), dict):
                out.append(f"{where}: counts.{key} is {counts.get(key)!r}, not an object{fix}")
    if not isinstance(m.get("toolset"), list) or not all(isinstance(t, str) for t in m["toolset"]):
        out.append(f"{where}: toolset is {m.get('toolset')!r}, not a list of tool names{fix}")
    if not isinstance(m.get("lineage"), dict):
        out.append(f"{where}: lineage is {m.get('lineage')!r}, not an object{fix}")
    if "fingerprint" not in m:
        out.append(
            f"{where} has no fingerprint: it was written before manifests were tamper-evident (or the field was "
            "removed), so its counts, toolset and lineage cannot be trusted; rebuild the version: export its rows "
            "with the pytest-bclone that wrote it (`bclone dataset export REF --split all --with-ids -o rows.jsonl`) "
            "and `bclone dataset import rows.jsonl --name NAME --version NEW`"
        )
    elif not isinstance(m["fingerprint"], str) or not _SHA_RE.match(m["fingerprint"]):
        out.append(f"{where}: fingerprint {m['fingerprint']!r} is not a sha256 hex digest{fix}")
    return out


def _schema_problem(schema: Any) -> str | None:
    got = {f.name: f.type for f in schema}
    want = {f.name: f.type for f in _ARROW_SCHEMA}
    if list(got) != list(want):
        return f"has columns {list(got)}, expected {list(want)}"
    for name, t in want.items():
        g = got[name]
        if pa.types.is_dictionary(g):
            g = g.value_type
        if g != t:
            return f"column {name!r} has type {got[name]}, expected {t}"
    return None


class _DataTally:
    """Counts recomputed from the stored columns (no JSON parse but one per distinct toolset)."""

    def __init__(self) -> None:
        self.rows = 0
        self.splits: Counter[str] = Counter()
        self.points: Counter[str] = Counter()
        self.cohorts: dict[str, Counter[str]] = {}
        self.toolset: set[str] = set()
        self.ids: list[Any] = []
        self.bad_toolsets: list[tuple[str, str]] = []  # (data file, the start of the text)
        self._toolset_texts: set[str] = set()

    def add(self, table: Any, fpath: str) -> None:
        self.rows += table.num_rows
        split = table.column("split")
        if pa.types.is_dictionary(split.type):
            split = split.cast(pa.string())
        n_points = pc.list_value_length(table.column("steps"))
        grouped = pa.table({"s": split, "n": n_points}).group_by("s").aggregate([("n", "sum"), ("n", "count")])
        for s, total, count in zip(grouped["s"].to_pylist(), grouped["n_sum"].to_pylist(),
                                   grouped["n_count"].to_pylist(), strict=True):
            self.splits[str(s)] += count
            self.points[str(s)] += total or 0
        cohorts = table.column("cohorts").combine_chunks()
        flat = pc.list_flatten(cohorts)
        if len(flat):
            owner = pc.take(split.combine_chunks(), pc.list_parent_indices(cohorts))
            pairs = pa.table({"c": flat, "s": owner}).group_by(["c", "s"]).aggregate([("c", "count")])
            for c, s, count in zip(pairs["c"].to_pylist(), pairs["s"].to_pylist(), pairs["c_count"].to_pylist(),
                                   strict=True):
                self.cohorts.setdefault(str(c), Counter())[str(s)] += count
        tools = table.column("tools")
        for chunk in tools.chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            used = pc.unique(chunk.indices.drop_null()).to_pylist()
            texts = chunk.dictionary.take(pa.array(used, pa.int64())).to_pylist() if used else []
            for text in texts:
                if text in self._toolset_texts:
                    continue
                self._toolset_texts.add(text)
                try:
                    self.toolset.update(tool_name(t) for t in json.loads(text))
                except (ValueError, TypeError, AttributeError):
                    self.bad_toolsets.append((fpath, text[:60]))
        self.ids.append(table.column("id"))

    def counts(self) -> dict[str, Any]:
        return {
            "trajectories": self.rows,
            "splits": dict(sorted(self.splits.items())),
            "decision_points": dict(sorted(self.points.items())),
            "cohorts": {c: dict(sorted(v.items())) for c, v in sorted(self.cohorts.items())},
        }

    def duplicate_ids(self) -> list[str]:
        if not self.ids:
            return []
        ids = pa.chunked_array([c for col in self.ids for c in col.chunks], pa.string())
        if pc.count_distinct(ids).as_py() == len(ids):
            return []
        counts = pc.value_counts(ids)
        dupes = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        return sorted(str(x) for x in dupes.to_pylist())


def _decoded(column: Any, parse: Callable[[Any], Any]) -> list[Any]:
    """A column's values, each distinct value parsed once (dictionary-encoded columns map indexes
    to the parsed dictionary; others are parsed per row)."""
    out: list[Any] = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            values = [parse(v) for v in chunk.dictionary.to_pylist()]
            out.extend(map(values.__getitem__, chunk.indices.to_pylist()))
        else:
            out.extend(map(parse, chunk.to_pylist()))
    return out


def _cohort_tuples(column: Any) -> list[tuple[str, ...]]:
    # Few distinct cohort sets: join each row's list in Arrow, dictionary-encode, build each tuple once.
    joined = pc.binary_join(column, "\x1f").combine_chunks().dictionary_encode()
    values = [tuple(v.split("\x1f")) if v else () for v in joined.dictionary.to_pylist()]
    return list(map(values.__getitem__, joined.indices.to_pylist()))


def _expected(text: str | None) -> ExpectedOutcome | None:
    return None if text is None else ExpectedOutcome.from_dict(json.loads(text))


def _make_trajectories(columns: Mapping[str, list[Any]], n: int) -> list[Trajectory]:
    """``n`` Trajectory records from per-field value lists, without a Python call per record.

    A frozen slots dataclass's ``__init__`` sets every field through ``object.__setattr__``: about
    4x the cost of setting the slots column by column through their descriptors, which is what
    this does (fields the store does not hold get their declared defaults). Should the record
    ever validate in ``__post_init__`` or stop using slots, the regular constructor is used.
    """
    fields = dataclasses.fields(Trajectory)
    if hasattr(Trajectory, "__post_init__") or not all(
            isinstance(getattr(Trajectory, f.name, None), MemberDescriptorType) for f in fields):
        return [Trajectory(**{k: v[i] for k, v in columns.items()}) for i in range(n)]
    records: list[Trajectory] = list(map(object.__new__, repeat(Trajectory, n)))
    for f in fields:
        if f.name in columns:
            values: Iterable[Any] = columns[f.name]
        elif f.default is not dataclasses.MISSING:
            values = repeat(f.default, n)
        elif f.default_factory is not dataclasses.MISSING:
            values = (f.default_factory() for _ in range(n))
        else:  # a new required field the store does not know: fail loudly, not half-built records
            raise TypeError(f"Trajectory field {f.name!r} has no stored value and no default")
        deque(map(getattr(Trajectory, f.name).__set__, records, values), maxlen=0)
    return records


class _StoredValueError(ValueError):
    """A stored JSON column's value does not parse, or not to its field's shape: only a data file
    forged with matching hashes gets here. ``column`` names the column, ``cause`` the parser's error."""

    def __init__(self, column: str, cause: Exception) -> None:
        super().__init__(f"{column}: {cause}")
        self.column = column
        self.cause = cause


def _decoded_column(table: Any, column: str, parse: Callable[[Any], Any]) -> list[Any]:
    try:
        return _decoded(table.column(column), parse)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _StoredValueError(column, exc) from None


def _table_to_trajectories(table: Any) -> list[Trajectory]:
    """Trajectory records over one data file's columns.

    Messages stay in Arrow (parsed on first use); a value shared by rows (toolset, cohort set,
    split, scores, metadata) is decoded once; records are built column by column, since a large
    version has hundreds of thousands of them. Raises :class:`_StoredValueError` for a stored
    value that does not decode.
    """
    messages: list[LazyMessages] = []
    for chunk in table.column("messages").chunks:
        messages.extend(map(LazyMessages, repeat(chunk, len(chunk)), range(len(chunk))))
    columns = {
        "id": table.column("id").to_pylist(),
        "cohorts": _cohort_tuples(table.column("cohorts")),
        "split": _decoded(table.column("split"), str),
        "messages": messages,
        "tools": _decoded_column(table, "tools", json.loads),
        "expected": _decoded_column(table, "expected", _expected),
        "expert_scores": _decoded_column(table, "expert_scores", json.loads),
        "metadata": _decoded_column(table, "metadata", json.loads),
        "step_indexes": list(map(tuple, table.column("steps").to_pylist())),
    }
    return _make_trajectories(columns, table.num_rows)


class DatasetStore:
    """A dataset root: list, resolve, load, verify and write versions.

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

    # -- staging leftovers -----------------------------------------------------------------------
    def staging_leftovers(self, name: str | None = None) -> list[StagingLeftover]:
        """Staging directories under the root (or under dataset ``name``): writes in progress or killed.

        Only local roots stage; an object store has none (its writes leave no version until the
        manifest lands, and the next write of that version replaces what a killed one left).
        """
        if not self.local or not os.path.isdir(self.root):
            return []
        names = [name] if name is not None else [d for d in self._dirs(self.root) if not d.startswith(".")]
        now = time.time()
        out = []
        for n in names:
            base = os.path.join(self.root, n)
            try:
                entries = sorted(os.listdir(base))
            except OSError:
                continue
            for entry in entries:
                path = os.path.join(base, entry)
                if not entry.startswith(_STAGING_PREFIX) or not os.path.isdir(path):
                    continue
                version = entry[len(_STAGING_PREFIX):].rpartition("-")[0] or entry[len(_STAGING_PREFIX):]
                try:
                    age = now - os.stat(path).st_mtime
                except OSError:
                    continue
                out.append(StagingLeftover(path, n, version, max(age, 0.0), _is_locked(path)))
        return out

    def clean_staging(self, name: str | None = None,
                      older_than_s: float = STALE_STAGING_SECONDS) -> list[StagingLeftover]:
        """Remove staging directories that no writer holds and that are at least ``older_than_s`` old.

        Returns those removed. A write in progress holds its lock, so it is never removed.
        """
        removed = []
        for s in self.staging_leftovers(name):
            if not s.locked and s.age_s >= older_than_s:
                shutil.rmtree(s.path, ignore_errors=True)
                if not os.path.exists(s.path):
                    removed.append(s)
        return removed

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

    # -- loading and verifying ---------------------------------------------------------------------
    def load(self, ref: str, source: str = "--bclone-dataset") -> DatasetVersion:
        """Resolve ``ref`` and load the version, verifying its manifest and every data file."""
        name, version = self.resolve(ref, source)
        return self.load_dir(f"{self.root}/{name}/{version}", source, expect=(name, version))

    def load_dir(self, path: str, source: str = "--bclone-dataset",
                 expect: tuple[str, str] | None = None) -> DatasetVersion:
        """Load the version stored in directory ``path`` (on this store's filesystem).

        Raises IntegrityError (naming the file and the fix) for the first problem found;
        ``expect`` is the (name, version) the directory is stored under, checked against the manifest.
        """
        check = _Check(raise_first=True)
        # The load allocates hundreds of thousands of acyclic containers: the cyclic collector would
        # run over and over during it and find nothing (it doubled the load time of 100k rows).
        collecting = gc.isenabled()
        gc.disable()
        try:
            manifest, tables = self._check_version(path, source, check, expect=expect, keep_tables=True)
            assert manifest is not None
            trajectories: list[Trajectory] = []
            for fpath, table in tables:
                try:
                    trajectories.extend(_table_to_trajectories(table))
                except _StoredValueError as exc:
                    raise IntegrityError(
                        f"data file {fpath}: a stored {exc.column} value does not decode ({exc.cause}); run "
                        f"`bclone dataset validate` on the version to list every damaged row, then {_RESTORE}"
                    ) from None
        finally:
            if collecting:
                gc.enable()
        return DatasetVersion(manifest["name"], manifest["version"], path, manifest, tuple(trajectories))

    def verify(self, ref: str, source: str = "bclone dataset validate") -> VerifyReport:
        """Check a version completely and report every problem (no exception for a damaged version).

        Checks the manifest's shape and fingerprint, that every path stays in the version directory,
        each data file's size, sha256, Parquet schema and row count, the counts and toolset against
        the data, unique ids, and (beyond :meth:`load`) that every row's stored JSON parses and its
        decision points match its assistant messages. ``ref`` is a version name or a version
        directory path. Unknown versions still raise DatasetNotFound.
        """
        if ("/" in ref or os.sep in ref) and self.local and os.path.isfile(os.path.join(ref, MANIFEST)):
            path, expect, shown = os.path.abspath(ref), None, ref
        else:
            name, version = self.resolve(ref, source)
            path, expect, shown = f"{self.root}/{name}/{version}", (name, version), f"{name}@{version}"
        report = VerifyReport(ref=shown, path=path)
        check = _Check(raise_first=False)
        manifest, _ = self._check_version(path, source, check, expect=expect, keep_tables=False, deep=True,
                                          report=report)
        report.problems = check.problems
        if manifest is not None:
            report.fingerprint = manifest.get("fingerprint")
        if self.local and expect is not None:
            report.staging = self.staging_leftovers(expect[0])
        return report

    def _check_version(
        self,
        path: str,
        source: str,
        check: _Check,
        *,
        expect: tuple[str, str] | None,
        keep_tables: bool,
        deep: bool = False,
        report: VerifyReport | None = None,
    ) -> tuple[dict[str, Any] | None, list[tuple[str, Any]]]:
        manifest = self._read_manifest(path, source, check)
        if manifest is None:
            return None, []
        where = f"{path}/{MANIFEST}"
        if expect is not None and (manifest["name"], manifest["version"]) != expect:
            check.fail(IntegrityError(
                f"{where} names {manifest['name']}@{manifest['version']} but is stored as {expect[0]}@{expect[1]}: "
                f"the version directory was renamed or copied; move it back, or {_RESTORE}"))
        tally = _DataTally()
        tables: list[tuple[str, Any]] = []
        listed = {e["path"] for e in manifest["files"]}
        for entry in manifest["files"]:
            table = self._read_data_file(path, entry, check)
            if table is None:
                continue
            tally.add(table, f"{path}/{entry['path']}")
            if deep:
                self._check_rows(f"{path}/{entry['path']}", table, check)
            if report is not None:
                report.files_checked += 1
            if keep_tables:
                tables.append((f"{path}/{entry['path']}", table))
        failed_files = report is not None and report.files_checked < len(manifest["files"])
        if not failed_files:
            self._check_counts(where, manifest, tally, check)
        if report is not None:
            report.trajectories = tally.rows
            report.decision_points = sum(tally.points.values())
            try:
                report.unlisted_files = sorted(
                    i.base_name for i in self.fs.get_file_info(pafs.FileSelector(path))
                    if i.type == pafs.FileType.File and i.base_name not in listed and i.base_name != MANIFEST)
            except OSError:
                pass
        return manifest, tables

    def _read_manifest(self, path: str, source: str, check: _Check) -> dict[str, Any] | None:
        where = f"{path}/{MANIFEST}"
        info = self.fs.get_file_info(where)
        if info.type == pafs.FileType.NotFound:
            raise DatasetNotFound(
                f"{path!r} (from {source}) holds no {MANIFEST}: it is not a complete dataset version "
                "(an interrupted write leaves none); rebuild it with `bclone dataset import`"
            )
        problem = self._confinement_problem(path, MANIFEST, info)
        if problem is None and info.size is not None and info.size > _MAX_MANIFEST_BYTES:
            problem = f"{where} is {info.size} bytes, far larger than any manifest"
        if problem is not None:
            check.fail(IntegrityError(f"{problem}; {_RESTORE}"))
            return None
        try:
            with self.fs.open_input_stream(where) as f:
                raw = f.readall()
            manifest = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            check.fail(IntegrityError(f"{where} is not valid JSON ({exc}): the manifest is damaged; {_RESTORE}"))
            return None
        except OSError as exc:
            check.fail(IntegrityError(f"{where} cannot be read ({exc}); check its permissions, or {_RESTORE}"))
            return None
        shape = _manifest_shape_problems(manifest, where)
        if shape:
            for p in shape:
                check.fail(IntegrityError(p))
            return None
        computed = manifest_fingerprint(manifest)
        if computed != manifest["fingerprint"]:
            check.fail(IntegrityError(
                f"{where} was edited after the version was written: its content no longer matches its fingerprint "
                f"(recorded {manifest['fingerprint'][:16]}..., computed {computed[:16]}...), so its counts, toolset, "
                f"lineage or file hashes cannot be trusted; {_RESTORE}"))
        return dict(manifest)

    def _confinement_problem(self, directory: str, name: str, info: Any) -> str | None:
        """Why ``directory/name`` must not be opened (a symlink leaving the directory, not a file), or None."""
        path = f"{directory}/{name}"
        if self.local:
            real_dir = os.path.realpath(directory)
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_dir]) != real_dir or os.path.dirname(real) != real_dir:
                return f"{path} resolves to {real}, outside the version directory {real_dir}; refusing to open it"
            if not os.path.isfile(real):
                return f"{path} is not a regular file; refusing to open it"
        elif info.type != pafs.FileType.File:
            return f"{path} is not a file; refusing to open it"
        return None

    def _read_data_file(self, path: str, entry: Mapping[str, Any], check: _Check) -> Any | None:
        fpath = f"{path}/{entry['path']}"
        info = self.fs.get_file_info(fpath)
        if info.type == pafs.FileType.NotFound:
            check.fail(IntegrityError(
                f"data file {fpath} listed in {MANIFEST} is missing: it was deleted or never fully written; {_RESTORE}"))
            return None
        problem = self._confinement_problem(path, entry["path"], info)
        if problem is not None:
            check.fail(IntegrityError(f"data file {problem}; {_RESTORE}"))
            return None
        if info.size != entry["bytes"]:
            check.fail(IntegrityError(
                f"data file {fpath} has {info.size} bytes but {MANIFEST} records {entry['bytes']}: it was "
                f"{'truncated' if info.size < entry['bytes'] else 'changed'} after the version was written; {_RESTORE}"))
            return None
        try:
            with self.fs.open_input_file(fpath) as f:
                data = f.read_buffer()
        except OSError as exc:
            check.fail(IntegrityError(f"data file {fpath} cannot be read ({exc}); check its permissions, or {_RESTORE}"))
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            check.fail(IntegrityError(
                f"data file {fpath} has sha256 {digest[:16]}... but {MANIFEST} records {entry['sha256'][:16]}...: "
                f"the file was changed after the version was written; {_RESTORE}"))
            return None
        try:
            table = pq.read_table(pa.BufferReader(data), read_dictionary=_DICTIONARY_COLUMNS)
            # Parquet does not check that strings are UTF-8 or offsets sane; a full validation (a few %
            # of the read) does, so a damaged row fails here rather than as a decode error mid-run.
            table.validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as exc:
            check.fail(IntegrityError(f"data file {fpath} is not a readable Parquet file ({exc}): it is truncated "
                                      f"or corrupt; {_RESTORE}"))
            return None
        problem = _schema_problem(table.schema)
        if problem is not None:
            check.fail(IntegrityError(f"data file {fpath} is not a trajectory table: it {problem}; {_RESTORE}"))
            return None
        if table.num_rows != entry["rows"]:
            check.fail(IntegrityError(f"data file {fpath} holds {table.num_rows} rows but {MANIFEST} records "
                                      f"{entry['rows']}; {_RESTORE}"))
            return None
        nulls = [c for c in _NOT_NULL if table.column(c).null_count]
        if nulls:
            check.fail(IntegrityError(f"data file {fpath} has empty (null) values in column {nulls[0]!r}, which every "
                                      f"row must have; {_RESTORE}"))
            return None
        return table

    def _check_counts(self, where: str, manifest: Mapping[str, Any], tally: _DataTally, check: _Check) -> None:
        data = tally.counts()
        recorded = manifest["counts"]
        for key in ("trajectories", "splits", "decision_points", "cohorts"):
            # Compared as canonical JSON: in Python True == 1 and 12.0 == 12, in a manifest they differ.
            if _json(recorded.get(key)) != _json(data[key]):
                check.fail(IntegrityError(
                    f"{where}: counts.{key} records {json.dumps(recorded.get(key), sort_keys=True)} but the data "
                    f"holds {json.dumps(data[key], sort_keys=True)}; {_RESTORE}"))
        bad_splits = sorted(set(tally.splits) - set(_SPLITS))
        if bad_splits:
            check.fail(IntegrityError(f"{where}: the data has split {bad_splits[0]!r}, not train or eval; {_RESTORE}"))
        if tally.bad_toolsets:
            fpath, text = tally.bad_toolsets[0]
            check.fail(IntegrityError(f"data file {fpath}: a stored toolset (column tools) is not a JSON list of "
                                      f"tools ({text!r}); {_RESTORE}"))
        elif sorted(tally.toolset) != list(manifest["toolset"]):
            check.fail(IntegrityError(
                f"{where}: toolset records {manifest['toolset']} but the data's tools are {sorted(tally.toolset)}; "
                f"{_RESTORE}"))
        dupes = tally.duplicate_ids()
        if dupes:
            check.fail(IntegrityError(f"{where}: trajectory id {dupes[0]!r} appears more than once in the data; "
                                      f"{_RESTORE}"))

    def _check_rows(self, fpath: str, table: Any, check: _Check) -> None:
        """The deep check of ``verify``: every row's stored JSON parses to a valid row again."""
        rows = zip(table.column("id").to_pylist(), table.column("cohorts").to_pylist(),
                   table.column("split").to_pylist(), table.column("messages").to_pylist(),
                   table.column("tools").to_pylist(), table.column("expected").to_pylist(),
                   table.column("expert_scores").to_pylist(), table.column("metadata").to_pylist(),
                   table.column("steps").to_pylist(), strict=True)
        for k, (rid, cohorts, split, msgs, tools, exp, scores, meta, steps) in enumerate(rows):
            where = f"data file {fpath} row {k}"
            try:
                row = {"id": rid, "cohorts": cohorts, "split": split, "messages": json.loads(msgs),
                       "tools": json.loads(tools), "expected": None if exp is None else json.loads(exp),
                       "expert_scores": json.loads(scores), "metadata": json.loads(meta)}
                values = _row_values(row, where)
            except ValueError as exc:  # JSON that does not parse
                check.fail(IntegrityError(f"{where}: stored JSON does not parse ({exc}); {_RESTORE}"))
                continue
            except RowError as exc:
                check.fail(IntegrityError(f"{exc} (stored data); {_RESTORE}"))
                continue
            if values[-1] != steps:
                check.fail(IntegrityError(f"{where}: row {rid!r} records decision points at messages {steps} but "
                                          f"its assistant messages are at {values[-1]}; {_RESTORE}"))

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
        """Write a new version from trajectories or rows; returns its manifest.

        Rows are validated against the JSON schema unless ``validate`` is False (importers validate
        with line numbers themselves). Raises VersionExists if the version already exists.
        ``created`` fixes the creation time (for byte-for-byte reproducible builds).
        Streams: see :meth:`write_version_stream`.
        """
        rows = (trajectory_to_row(t) if isinstance(t, Trajectory) else t for t in trajectories)
        return self.write_version_stream(name, version, rows, parent=parent, lineage=lineage, source=source,
                                         created=created, validate=validate_row if validate else None)

    def write_version_stream(
        self,
        name: str,
        version: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        parent: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        source: str = "write_version_stream",
        created: str | None = None,
        validate: RowValidator | None = None,
    ) -> dict[str, Any]:
        """Write a new version from a stream of rows in bounded memory; returns its manifest.

        Rows are encoded as they arrive into row groups of :data:`ROWS_PER_GROUP` and data files of
        :data:`ROWS_PER_FILE`; only the manifest's tallies (counts, toolset, the set of ids for the
        duplicate check) are kept. ``validate(row, where)`` is called on each row first (``where``
        is ``"<source> row <i>"``); whatever it does, the store checks each row's shape itself and
        raises RowError for a row it could not load back (a string for cohorts, NaN scores...).

        Write-once: VersionExists if ``name@version`` has a manifest. Locally the files go to a
        locked ``.staging-*`` directory renamed into place at the end; on an object store data files
        get names unique to this write and the manifest is written last. Any error (or interrupt)
        removes what this write wrote; a killed write leaves at most files that are not a version.
        """
        check_name(name, "dataset name", source)
        check_name(version, "dataset version", source)
        if parent is not None and not isinstance(parent, str):
            raise DatasetError(f"parent {parent!r} (from {source}) is not a version name; pass e.g. v7")
        lineage_dict = dict(lineage or {})
        try:
            _json(lineage_dict)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"lineage of {name}@{version} (from {source}) cannot be stored as JSON ({exc}); "
                               "pass plain JSON values") from None
        final = f"{self.root}/{name}/{version}"
        if self._exists(f"{final}/{MANIFEST}"):
            raise VersionExists(
                f"dataset version {name}@{version} already exists at {final}; versions are write-once: "
                "write a new version (e.g. the next number) instead"
            )
        token = uuid.uuid4().hex[:8]
        lock: _StagingLock | None = None
        written: list[str] = []
        started = time.time()
        if self.local:
            self.clean_staging(name)
            target = f"{self.root}/{name}/{_STAGING_PREFIX}{version}-{token}"
            os.makedirs(target)
            prefix = "data-"
        else:
            target, prefix = final, f"data-{token}-"
        try:
            if self.local:
                lock = _StagingLock(target)
            tally = _Tally(source)
            enc = _RowEncoder()
            files: list[dict[str, Any]] = []
            current: _ParquetFile | None = None
            for i, row in enumerate(rows):
                where = f"{source} row {i}"
                if validate is not None:
                    validate(row, where)
                values = _row_values(row, where, enc)
                tally.add(values, row.get("tools") or (), where)
                if current is None:
                    current = _ParquetFile()
                current.add(values)
                if current.rows >= ROWS_PER_FILE:
                    files.append(self._put(target, f"{prefix}{len(files):05d}.parquet", current, written))
                    current = None
            if current is not None or not files:
                files.append(self._put(target, f"{prefix}{len(files):05d}.parquet", current or _ParquetFile(), written))
            manifest = _manifest(name, version, parent, tally, files, lineage_dict, created)
            body = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
            if self.local:
                self._write_bytes(f"{target}/{MANIFEST}", body)
                if lock is not None:
                    lock.release()
                self._publish_local(target, final, name, version)
            else:
                if self._exists(f"{final}/{MANIFEST}"):  # another writer won the race
                    raise VersionExists(f"dataset version {name}@{version} was created meanwhile at {final}")
                self._write_bytes(f"{final}/{MANIFEST}", body)  # the version exists from this moment
                written.clear()
                self._remove_leftovers(final, manifest, started)
        except BaseException:
            if self.local:
                shutil.rmtree(target, ignore_errors=True)
            else:
                for p in written:
                    try:
                        self.fs.delete_file(p)
                    except OSError:
                        pass  # a file that stays is not a version (no manifest) and is replaced later
            raise
        finally:
            if lock is not None:
                lock.release()
        return manifest

    def _put(self, directory: str, fname: str, pf: _ParquetFile, written: list[str]) -> dict[str, Any]:
        data = pf.finish()
        path = f"{directory}/{fname}"
        written.append(path)
        self._write_bytes(path, data)
        return {"path": fname, "sha256": hashlib.sha256(data).hexdigest(), "rows": pf.rows, "bytes": len(data)}

    def _publish_local(self, staging: str, final: str, name: str, version: str) -> None:
        """Rename the finished staging directory into place; a directory without a manifest is replaced."""
        if os.path.lexists(final) and not os.path.isdir(final):
            raise DatasetError(f"{final} exists and is not a directory; move it away to write {name}@{version}")
        if os.path.isdir(final) and not os.path.exists(os.path.join(final, MANIFEST)):
            # Not a version (no manifest): a write that died before its rename, or an empty directory.
            # Replace it, but only if it holds nothing a person put there.
            foreign = [e for e in os.listdir(final) if not (_FILE_RE.match(e) or e == _LOCK)]
            if foreign:
                raise DatasetError(
                    f"{final} exists without a {MANIFEST} and holds {', '.join(sorted(foreign)[:3])}, which are not "
                    f"dataset files; move them away or write another version name than {version}")
            shutil.rmtree(final)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer won the race
                raise VersionExists(f"dataset version {name}@{version} was created meanwhile at {final}") from None
            raise

    def _remove_leftovers(self, final: str, manifest: Mapping[str, Any], started: float) -> None:
        """Object stores: delete files of killed earlier writes of this version (older than this write)."""
        listed = {e["path"] for e in manifest["files"]} | {MANIFEST}
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(final))
        except OSError:
            return
        for i in infos:
            if i.type != pafs.FileType.File or i.base_name in listed:
                continue
            if i.mtime is None or i.mtime.timestamp() < started:
                try:
                    self.fs.delete_file(i.path)
                except OSError:
                    pass

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)


def _manifest(
    name: str,
    version: str,
    parent: str | None,
    tally: _Tally,
    files: list[dict[str, Any]],
    lineage: Mapping[str, Any],
    created: str | None,
) -> dict[str, Any]:
    manifest = {
        "format": MANIFEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "parent": parent,
        "created": created or datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": tally.counts(),
        "toolset": sorted(tally.toolset),
        "lineage": dict(lineage),
        "files": files,
    }
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    return manifest


def row_digest(t: Trajectory) -> str:
    """A content hash of one whole trajectory row (id, cohorts, split, messages, tools, metadata...)."""
    return hashlib.sha256(_json(trajectory_to_row(t)).encode()).hexdigest()


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
    "ROWS_PER_FILE",
    "STALE_STAGING_SECONDS",
    "DatasetStore",
    "DatasetVersion",
    "LazyMessages",
    "RowValidator",
    "StagingLeftover",
    "VerifyReport",
    "all_decision_points",
    "check_name",
    "load_ref",
    "manifest_fingerprint",
    "row_digest",
]
