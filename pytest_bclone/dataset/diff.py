"""What changed between two dataset versions: counts per cohort and split, rows, toolset."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .store import DatasetVersion, row_digest


@dataclass(frozen=True)
class VersionDiff:
    """The difference B minus A."""

    a: str
    b: str
    cohort_counts: dict[str, tuple[int, int]]  # cohort -> (count in A, count in B), eval+train
    split_counts: dict[str, tuple[int, int]]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    tools_added: list[str] = field(default_factory=list)
    tools_removed: list[str] = field(default_factory=list)
    # Tools removed from B's toolset that A's expert still called: the clone will learn dead calls.
    removed_tools_still_called: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def lines(self, limit: int = 10) -> list[str]:
        """Readable lines for the terminal."""
        out = [f"dataset diff {self.a} -> {self.b}"]
        out.append("  cohort counts:")
        for c, (x, y) in sorted(self.cohort_counts.items()):
            out.append(f"    {c:<24} {x:>7} -> {y:<7} ({y - x:+d})")
        for s, (x, y) in sorted(self.split_counts.items()):
            out.append(f"  split {s:<18} {x:>7} -> {y:<7} ({y - x:+d})")
        for label, ids in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            shown = ", ".join(ids[:limit]) + (f", ... (+{len(ids) - limit})" if len(ids) > limit else "")
            out.append(f"  {label}: {len(ids)} trajectories" + (f": {shown}" if ids else ""))
        out.append(f"  tools added: {', '.join(self.tools_added) or 'none'}")
        out.append(f"  tools removed: {', '.join(self.tools_removed) or 'none'}")
        for tool, n in sorted(self.removed_tools_still_called.items()):
            out.append(f"  warning: {self.a}'s expert calls removed tool {tool!r} {n} times: retrain without them")
        return out


def diff_versions(a: DatasetVersion, b: DatasetVersion) -> VersionDiff:
    """Compare two loaded versions."""

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
    common = sorted(set(ida) & set(idb))
    tools_a = set(a.manifest.get("toolset") or ())
    tools_b = set(b.manifest.get("toolset") or ())
    removed_tools = tools_a - tools_b
    still: Counter[str] = Counter()
    if removed_tools:
        for t in a.trajectories:
            for m in t.messages:
                for tc in m.get("tool_calls") or ():
                    name = str((tc.get("function") or {}).get("name"))
                    if name in removed_tools:
                        still[name] += 1
    return VersionDiff(
        a=a.ref,
        b=b.ref,
        cohort_counts={c: (ca[c], cb[c]) for c in sorted(set(ca) | set(cb))},
        split_counts={s: (sa[s], sb[s]) for s in sorted(set(sa) | set(sb))},
        added=sorted(set(idb) - set(ida)),
        removed=sorted(set(ida) - set(idb)),
        changed=[i for i in common if row_digest(ida[i]) != row_digest(idb[i])],
        tools_added=sorted(tools_b - tools_a),
        tools_removed=sorted(removed_tools),
        removed_tools_still_called=dict(still),
    )
