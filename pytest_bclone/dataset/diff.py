"""What changed between two dataset versions: counts per cohort and split, rows, toolset.

Rows are matched by id first, then, among the ids left over on each side, by content: a stable
hash of the messages and tools (what the expert saw and did). A trajectory re-imported under a
new id is therefore reported as renamed, not as one removed and one added. For a row present in
both versions each field is compared on its own (messages, tools, cohorts, split, expected,
expert_scores, metadata), and import bookkeeping in the metadata (the file a row came from...)
is ignored, so re-importing the same data from another file changes nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..records import Trajectory
from .schema import canonical_json as _json
from .store import DatasetVersion, LazyMessages

BOOKKEEPING_METADATA = frozenset({"file", "line", "lineno", "imported_from", "imported_at", "import_format",
                                  "convention", "llm_spans"})
"""Metadata keys that record how a row was imported rather than what it is: ignored by the diff."""

FIELDS = ("messages", "tools", "cohorts", "split", "expected", "expert_scores", "metadata")
"""The fields compared for a row present in both versions, in report order."""


def _messages_text(t: Trajectory) -> str:
    # The store keeps messages as canonical JSON: compare that text without parsing it.
    return t.messages.text if isinstance(t.messages, LazyMessages) else _json(list(t.messages))


def content_hash(t: Trajectory) -> str:
    """A stable hash of a trajectory's messages and tools: equal for the same conversation, whatever
    its id, cohorts, split, scores or metadata."""
    return hashlib.sha256((_messages_text(t) + "\x1f" + _json(list(t.tools))).encode()).hexdigest()


def _field_texts(t: Trajectory, ignore_metadata: frozenset[str]) -> dict[str, str]:
    return {
        "messages": _messages_text(t),
        "tools": _json(list(t.tools)),
        "cohorts": _json(sorted(t.cohorts)),
        "split": t.split,
        "expected": _json(None if t.expected is None else t.expected.to_dict()),
        "expert_scores": _json(dict(t.expert_scores)),
        "metadata": _json({k: v for k, v in t.metadata.items() if k not in ignore_metadata}),
    }


@dataclass(frozen=True)
class VersionDiff:
    """The difference B minus A."""

    a: str
    b: str
    cohort_counts: dict[str, tuple[int, int]]  # cohort -> (count in A, count in B), eval+train
    split_counts: dict[str, tuple[int, int]]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # ids (B's) whose compared fields differ
    # field -> ids (B's) where that field differs; a row may appear under several fields
    changed_fields: dict[str, list[str]] = field(default_factory=dict)
    # (id in A, id in B): the same messages and tools under another id
    renamed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    tools_added: list[str] = field(default_factory=list)
    tools_removed: list[str] = field(default_factory=list)
    # Tools removed from B's toolset that A's expert still called: the clone will learn dead calls.
    removed_tools_still_called: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def lines(self, limit: int = 10) -> list[str]:
        """Readable lines for the terminal."""

        def shown(ids: list[str]) -> str:
            return ", ".join(ids[:limit]) + (f", ... (+{len(ids) - limit})" if len(ids) > limit else "")

        out = [f"dataset diff {self.a} -> {self.b}"]
        out.append("  cohort counts:")
        for c, (x, y) in sorted(self.cohort_counts.items()):
            out.append(f"    {c:<24} {x:>7} -> {y:<7} ({y - x:+d})")
        for s, (x, y) in sorted(self.split_counts.items()):
            out.append(f"  split {s:<18} {x:>7} -> {y:<7} ({y - x:+d})")
        out.append(f"  unchanged: {self.unchanged} trajectories (matched by id or content; import bookkeeping "
                   f"such as metadata.file ignored)")
        for label, ids in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            out.append(f"  {label}: {len(ids)} trajectories" + (f": {shown(ids)}" if ids else ""))
        for name in FIELDS:
            ids = self.changed_fields.get(name, [])
            if ids:
                out.append(f"    {name} differ in {len(ids)}: {shown(ids)}")
        if self.renamed:
            pairs = [f"{a}->{b}" for a, b in self.renamed]
            out.append(f"  renamed (same messages and tools, new id): {len(pairs)}: {shown(pairs)}")
        out.append(f"  tools added: {', '.join(self.tools_added) or 'none'}")
        out.append(f"  tools removed: {', '.join(self.tools_removed) or 'none'}")
        for tool, n in sorted(self.removed_tools_still_called.items()):
            out.append(f"  warning: {self.a}'s expert calls removed tool {tool!r} {n} times: retrain without them")
        return out


def _match_by_content(only_a: Iterable[Trajectory], only_b: Iterable[Trajectory]) -> list[tuple[str, str]]:
    """Pairs (A id, B id) of unmatched rows with equal content, one to one, in id order."""
    pool: dict[str, list[str]] = defaultdict(list)
    for t in sorted(only_a, key=lambda t: t.id):
        pool[content_hash(t)].append(t.id)
    pairs = []
    for t in sorted(only_b, key=lambda t: t.id):
        ids = pool.get(content_hash(t))
        if ids:
            pairs.append((ids.pop(0), t.id))
    return pairs


def diff_versions(a: DatasetVersion, b: DatasetVersion,
                  ignore_metadata: Iterable[str] = BOOKKEEPING_METADATA) -> VersionDiff:
    """Compare two loaded versions (B minus A); ``ignore_metadata`` are metadata keys not compared."""
    ignore = frozenset(ignore_metadata)

    def counts(v: DatasetVersion) -> tuple[Counter[str], Counter[str]]:
        cohorts: Counter[str] = Counter()
        splits: Counter[str] = Counter()
        for t in v.trajectories:
            cohorts.update(t.cohorts)
            splits[t.split] += 1
        return cohorts, splits

    ca, sa = counts(a)
    cb, sb = counts(b)
    ida = {t.id: t for t in a.trajectories}
    idb = {t.id: t for t in b.trajectories}
    renamed = _match_by_content([t for i, t in ida.items() if i not in idb], [t for i, t in idb.items() if i not in ida])
    pairs = [(i, i) for i in sorted(set(ida) & set(idb))] + renamed
    changed_fields: dict[str, list[str]] = {}
    changed: list[str] = []
    for x, y in pairs:
        fa, fb = _field_texts(ida[x], ignore), _field_texts(idb[y], ignore)
        differ = [name for name in FIELDS if fa[name] != fb[name]]
        for name in differ:
            changed_fields.setdefault(name, []).append(y)
        if differ:
            changed.append(y)
    renamed_a = {x for x, _ in renamed}
    renamed_b = {y for _, y in renamed}
    tools_a = set(a.manifest.get("toolset") or ())
    tools_b = set(b.manifest.get("toolset") or ())
    removed_tools = tools_a - tools_b
    still: Counter[str] = Counter()
    if removed_tools:
        for t in a.trajectories:
            for m in t.messages:
                for tc in m.get("tool_calls") or ():
                    fn = tc.get("function")
                    name = str(fn.get("name") if isinstance(fn, Mapping) else None)
                    if name in removed_tools:
                        still[name] += 1
    return VersionDiff(
        a=a.ref,
        b=b.ref,
        cohort_counts={c: (ca[c], cb[c]) for c in sorted(set(ca) | set(cb))},
        split_counts={s: (sa[s], sb[s]) for s in sorted(set(sa) | set(sb))},
        added=sorted(set(idb) - set(ida) - renamed_b),
        removed=sorted(set(ida) - set(idb) - renamed_a),
        changed=sorted(changed),
        changed_fields={k: sorted(v) for k, v in changed_fields.items()},
        renamed=renamed,
        unchanged=len(pairs) - len(changed),
        tools_added=sorted(tools_b - tools_a),
        tools_removed=sorted(removed_tools),
        removed_tools_still_called=dict(still),
    )


__all__ = ["BOOKKEEPING_METADATA", "FIELDS", "VersionDiff", "content_hash", "diff_versions"]
