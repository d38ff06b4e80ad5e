"""``bclone dataset build``: the brief's curation step, as pure functions over rows.

From the rows of one or more sources (versions or import files) to a training/eval cohort::

    load -> time window -> expert-score thresholds -> de-duplication -> toolset drift
         -> cohort rules -> grouped, seeded train/eval split -> warnings

Each step is a function returning the kept rows and what it did; :func:`build` chains them and
records every step (with row counts after it) in the lineage that goes into the manifest.

Cohort rules come from a TOML file::

    keep_source_cohorts = true          # keep the cohorts rows already carry (default true)

    [[cohort]]
    name = "multi_turn_refunds"
    tools = ["return_delivered_order_items", "cancel_pending_order"]  # calls any of these
    min_user_turns = 2                  # and has at least 2 user turns

    [[cohort]]
    name = "safety"
    keywords = ["\\\\b(lawyer|sue|chargeback)\\\\b"]  # a regex found in a user message (case-insensitive)

    [[cohort]]
    name = "voice"
    metadata = { channel = ["voice", "phone"] }     # metadata.channel is one of these

    [rarity]                            # intents below a share of traffic: a long-tail cohort
    field = "intent"                    # metadata field; rows without it use their tool-name set
    below_share = 0.05
    cohort = "long_tail"
    else = "common_intents"             # optional: the cohort of every other row

Within one ``[[cohort]]`` every criterion given must hold; a trajectory may be in several
cohorts. The split is grouped: every row sharing a ``split_by`` value (task id, user, session)
lands on the same side, decided by a seeded hash of the value, so a group keeps its side when
the cohort is rebuilt on a schedule with more rows (a row trained on in v8 is not evaluated on
in v9).

The build holds the selected rows in memory (rarity shares and de-duplication need the whole
set); imports, by contrast, stream.

Sample-size warnings use the rule of three: when a clone shows no regression on any of ``n``
eval trajectories, the one-sided upper confidence bound on its regression rate is about
``-ln(1 - confidence) / n`` (3/n at 95%), so a margin of ``m`` points can be resolved at all only
from ``n >= -ln(1 - confidence) / (m / 100)``: 100 trajectories for 3 points at 95%. That is a
floor (a clone with some regressions needs more), which is why it is a warning.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError
from .schema import canonical_json

TIMESTAMP_KEYS = ("timestamp", "start_time", "startTime", "created_at", "createdAt", "time")
"""Metadata keys read as a row's time, in this order (ISO 8601 text or epoch seconds/ms/ns)."""

_RULE_KEYS = ("name", "tools", "tools_all", "min_user_turns", "max_user_turns", "metadata", "keywords",
              "keyword_scope")
_RARITY_KEYS = ("field", "below_share", "cohort", "else")
_TOP_KEYS = ("keep_source_cohorts", "cohort", "rarity")
_COHORT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# ----------------------------------------------------------------------------------------------
# Row helpers
# ----------------------------------------------------------------------------------------------
def expert_tool_names(row: Mapping[str, Any]) -> list[str]:
    """Names of the tools the expert called in ``row``, in order."""
    return [str((tc.get("function") or {}).get("name")) for m in row["messages"] if m.get("role") == "assistant"
            for tc in m.get("tool_calls") or ()]


def user_turns(row: Mapping[str, Any]) -> int:
    """How many user messages ``row`` has."""
    return sum(1 for m in row["messages"] if m.get("role") == "user")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def field_value(row: Mapping[str, Any], path: str) -> Any:
    """A metadata field by dotted path (``channel``, ``user.id``); ``id`` and ``split`` name the row's own."""
    if path in ("id", "split"):
        return row.get(path)
    value: Any = row.get("metadata") or {}
    for part in path.removeprefix("metadata.").split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def content_hash(row: Mapping[str, Any]) -> str:
    """sha256 of the messages and tools: equal conversations, whatever their ids or metadata."""
    return hashlib.sha256((canonical_json(row["messages"]) + "\n" + canonical_json(row.get("tools") or [])).encode()
                          ).hexdigest()


def intent_of(row: Mapping[str, Any], path: str) -> str:
    """The rarity key of a row: its metadata field, else the sorted set of tools the expert called."""
    value = field_value(row, path)
    if value is not None and value != "":
        return str(value)
    return "+".join(sorted(set(expert_tool_names(row)))) or "(no tool call)"


def parse_time(value: Any, what: str) -> datetime:
    """ISO 8601 text (``Z`` allowed; naive means UTC) or epoch seconds/ms/ns as an aware datetime."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: {value!r} is not a time")
    if isinstance(value, (int, float)):
        x = float(value)
        x = x / 1e9 if x > 1e14 else x / 1e3 if x > 1e11 else x  # ns, ms or s since the epoch
        return datetime.fromtimestamp(x, UTC)
    if not isinstance(value, str):
        raise TypeError(f"{what}: {value!r} is not a time")
    dt = datetime.fromisoformat(value.strip())
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def row_time(row: Mapping[str, Any]) -> datetime | None:
    """The row's time from its metadata (:data:`TIMESTAMP_KEYS`), or None."""
    meta = row.get("metadata") or {}
    for key in TIMESTAMP_KEYS:
        if meta.get(key) is not None:
            try:
                return parse_time(meta[key], key)
            except (ValueError, TypeError, OverflowError, OSError):
                return None
    return None


# ----------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CohortRule:
    """One ``[[cohort]]`` of the rules file: every criterion given must hold."""

    name: str
    tools: tuple[str, ...] = ()  # the expert calls any of these
    tools_all: tuple[str, ...] = ()  # ... and all of these
    min_user_turns: int | None = None
    max_user_turns: int | None = None
    metadata: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()
    keyword_scope: str = "user"  # "user" messages only, or "all" messages

    def matches(self, row: Mapping[str, Any], patterns: Sequence[re.Pattern[str]]) -> bool:
        """True when ``row`` meets every criterion of this rule."""
        if self.tools or self.tools_all:
            called = set(expert_tool_names(row))
            if self.tools and not called.intersection(self.tools):
                return False
            if self.tools_all and not called.issuperset(self.tools_all):
                return False
        if self.min_user_turns is not None or self.max_user_turns is not None:
            n = user_turns(row)
            if self.min_user_turns is not None and n < self.min_user_turns:
                return False
            if self.max_user_turns is not None and n > self.max_user_turns:
                return False
        for path, allowed in self.metadata.items():
            if field_value(row, path) not in allowed:
                return False
        if patterns:
            texts = [_text(m.get("content")) for m in row["messages"]
                     if self.keyword_scope == "all" or m.get("role") == "user"]
            if not any(p.search(t) for p in patterns for t in texts):
                return False
        return True

    def describe(self) -> dict[str, Any]:
        """The rule as recorded in the lineage."""
        out: dict[str, Any] = {"name": self.name}
        for key in ("tools", "tools_all", "keywords"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        for key in ("min_user_turns", "max_user_turns"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.metadata:
            out["metadata"] = {k: list(v) for k, v in self.metadata.items()}
        if self.keywords:
            out["keyword_scope"] = self.keyword_scope
        return out


@dataclass(frozen=True)
class RarityRule:
    """Rows whose intent holds less than ``below_share`` of the rows go to ``cohort``."""

    field: str = "intent"
    below_share: float = 0.05
    cohort: str = "long_tail"
    otherwise: str | None = None


@dataclass(frozen=True)
class Rules:
    """A parsed rules file (and its sha256, for the lineage)."""

    cohorts: tuple[CohortRule, ...] = ()
    rarity: RarityRule | None = None
    keep_source_cohorts: bool = True
    path: str | None = None
    sha256: str | None = None


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; known keys: {', '.join(known)}")


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a string or a list of strings, got {value!r}")
    return tuple(value)


def _cohort_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _COHORT_NAME.match(value):
        raise ConfigError(f"{where}: cohort name {value!r} must be letters, digits, '_', '.' or '-'")
    return value


def parse_rules(text: str, path: str = "rules.toml") -> Rules:
    """Parse a rules file; every error names the file, the rule and the fix."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); see `bclone dataset build --help` for the format") from None
    _check_keys(data, _TOP_KEYS, path)
    raw_rules = data.get("cohort", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{path}: 'cohort' must be an array of tables, written [[cohort]]")
    rules = []
    for i, r in enumerate(raw_rules):
        where = f"{path}: [[cohort]] #{i + 1}"
        _check_keys(r, _RULE_KEYS, where)
        name = _cohort_name(r.get("name"), where)
        where = f"{path}: cohort {name!r}"
        meta: dict[str, tuple[Any, ...]] = {}
        for k, v in (r.get("metadata") or {}).items():
            meta[k] = tuple(v) if isinstance(v, list) else (v,)
        turns = {}
        for key in ("min_user_turns", "max_user_turns"):
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ConfigError(f"{where}: {key} = {v!r}; expected a whole number >= 0")
            turns[key] = v
        keywords = _str_list(r.get("keywords", []), f"{where}, keywords")
        for pattern in keywords:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}: keyword pattern {pattern!r} is not a valid regex ({exc})") from None
        scope = r.get("keyword_scope", "user")
        if scope not in ("user", "all"):
            raise ConfigError(f"{where}: keyword_scope = {scope!r}; expected \"user\" or \"all\"")
        rule = CohortRule(name, _str_list(r.get("tools", []), f"{where}, tools"),
                          _str_list(r.get("tools_all", []), f"{where}, tools_all"), turns["min_user_turns"],
                          turns["max_user_turns"], meta, keywords, scope)
        if rule == CohortRule(name, keyword_scope=scope):
            raise ConfigError(f"{where}: the rule has no criterion (tools, tools_all, min_user_turns, max_user_turns, "
                              "metadata, keywords), so it would take every row; add one")
        rules.append(rule)
    rarity = None
    if "rarity" in data:
        r = data["rarity"]
        _check_keys(r, _RARITY_KEYS, f"{path}: [rarity]")
        share = r.get("below_share", 0.05)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"{path}: [rarity] below_share = {share!r}; expected a share in (0, 1), e.g. 0.05")
        other = r.get("else")
        rarity = RarityRule(str(r.get("field", "intent")), float(share),
                            _cohort_name(r.get("cohort", "long_tail"), f"{path}: [rarity] cohort"),
                            None if other is None else _cohort_name(other, f"{path}: [rarity] else"))
    keep = data.get("keep_source_cohorts", True)
    if not isinstance(keep, bool):
        raise ConfigError(f"{path}: keep_source_cohorts = {keep!r}; expected true or false")
    return Rules(tuple(rules), rarity, keep, path, hashlib.sha256(text.encode()).hexdigest())


def load_rules(path: str) -> Rules:
    """Read and parse a rules file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read rules file {path!r}: {exc.strerror}; check --rules") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"rules file {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    return parse_rules(text, path)


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------
def parse_min_scores(items: Iterable[str]) -> dict[str, float]:
    """``["task_completion=0.8", ...]`` -> ``{"task_completion": 0.8}``; errors name the bad item."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if not sep or not name.strip() or not math.isfinite(threshold) or not 0 <= threshold <= 1:
            raise ConfigError(f"--min-score {item!r}: expected NAME=THRESHOLD with a threshold in [0, 1], e.g. "
                              "task_completion=0.8")
        out[name.strip()] = threshold
    return out


def time_window(rows: list[dict[str, Any]], since: datetime | None, until: datetime | None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keep rows with ``since <= time < until``; rows without a readable time are dropped and counted."""
    kept, early, late, undated = [], 0, 0, 0
    for r in rows:
        t = row_time(r)
        if t is None:
            undated += 1
        elif since is not None and t < since:
            early += 1
        elif until is not None and t >= until:
            late += 1
        else:
            kept.append(r)
    return kept, {"step": "time_window", "since": since.isoformat() if since else None,
                  "until": until.isoformat() if until else None, "dropped_before": early, "dropped_after": late,
                  "dropped_no_timestamp": undated, "rows": len(kept)}


def min_scores(rows: list[dict[str, Any]], thresholds: Mapping[str, float]
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keep rows whose expert scored at least every threshold; a missing score drops the row."""
    kept, below, missing = [], Counter[str](), Counter[str]()
    for r in rows:
        scores = r.get("expert_scores") or {}
        ok = True
        for name, t in thresholds.items():
            if name not in scores:
                missing[name] += 1
                ok = False
                break
            if scores[name] < t:
                below[name] += 1
                ok = False
                break
        if ok:
            kept.append(r)
    return kept, {"step": "min_score", "thresholds": dict(thresholds), "dropped_below": dict(below),
                  "dropped_missing_score": dict(missing), "rows": len(kept)}


def dedup(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keep the first row of each conversation (content hash of messages + tools), in source order."""
    seen: set[str] = set()
    kept = []
    for r in rows:
        h = content_hash(r)
        if h not in seen:
            seen.add(h)
            kept.append(r)
    return kept, {"step": "dedup", "key": "sha256(messages + tools)", "dropped": len(rows) - len(kept),
                  "rows": len(kept)}


def toolset_drift(rows: list[dict[str, Any]], toolset: Iterable[str], source: str
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Drop rows whose expert calls a tool absent from ``toolset`` (tool-deprecation drift)."""
    current = set(toolset)
    kept, by_tool = [], Counter[str]()
    for r in rows:
        gone = sorted(set(expert_tool_names(r)) - current)
        if gone:
            by_tool.update(gone)
        else:
            kept.append(r)
    return kept, {"step": "toolset", "source": source, "toolset": sorted(current),
                  "dropped": len(rows) - len(kept), "dropped_by_tool": dict(sorted(by_tool.items())),
                  "rows": len(kept)}


def assign_cohorts(rows: list[dict[str, Any]], rules: Rules) -> dict[str, Any]:
    """Set each row's cohorts from the rules (in place); returns the lineage step."""
    patterns = {r.name: [re.compile(p, re.IGNORECASE) for p in r.keywords] for r in rules.cohorts}
    long_tail: set[str] = set()
    intents: Counter[str] = Counter()
    if rules.rarity is not None:
        intents = Counter(intent_of(r, rules.rarity.field) for r in rows)
        long_tail = {k for k, n in intents.items() if n < rules.rarity.below_share * len(rows)}
    for r in rows:
        cohorts = list(r.get("cohorts") or ()) if rules.keep_source_cohorts else []
        cohorts += [rule.name for rule in rules.cohorts if rule.matches(r, patterns[rule.name])]
        if rules.rarity is not None:
            if intent_of(r, rules.rarity.field) in long_tail:
                cohorts.append(rules.rarity.cohort)
            elif rules.rarity.otherwise:
                cohorts.append(rules.rarity.otherwise)
        r["cohorts"] = list(dict.fromkeys(cohorts))
    counts = Counter(c for r in rows for c in r["cohorts"])
    step: dict[str, Any] = {
        "step": "cohorts", "rules_file": rules.path, "rules_sha256": rules.sha256,
        "keep_source_cohorts": rules.keep_source_cohorts, "rules": [r.describe() for r in rules.cohorts],
        "counts": dict(sorted(counts.items())), "rows_in_no_cohort": sum(1 for r in rows if not r["cohorts"]),
        "rows": len(rows),
    }
    if rules.rarity is not None:
        step["rarity"] = {"field": rules.rarity.field, "below_share": rules.rarity.below_share,
                          "cohort": rules.rarity.cohort, "else": rules.rarity.otherwise,
                          "long_tail_intents": sorted(long_tail)}
    return step


def group_side(key: str, seed: int, eval_fraction: float) -> str:
    """``eval`` or ``train`` for a group: a seeded hash, so a group keeps its side when rows are added."""
    h = int(hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()[:13], 16) / float(1 << 52)
    return "eval" if h < eval_fraction else "train"


def grouped_split(rows: list[dict[str, Any]], by: str | None, eval_fraction: float, seed: int) -> dict[str, Any]:
    """Set each row's split (in place) so that no group of ``by`` is on both sides."""
    groups: dict[str, str] = {}
    ungrouped = 0
    for r in rows:
        value = field_value(r, by) if by else None
        if value is None or value == "":
            ungrouped += by is not None
            key = f"id:{r['id']}"
        else:
            key = f"{by}:{canonical_json(value)}"
        side = groups.get(key)
        if side is None:
            side = groups[key] = group_side(key, seed, eval_fraction)
        r["split"] = side
    sides = Counter(r["split"] for r in rows)
    return {"step": "split", "by": by or "id", "eval_fraction": eval_fraction, "seed": seed, "groups": len(groups),
            "eval_groups": sum(1 for s in groups.values() if s == "eval"), "rows_without_key": ungrouped,
            "rows": {"train": sides.get("train", 0), "eval": sides.get("eval", 0)}}


def needed_for_margin(margin: float, confidence: float) -> int:
    """Smallest n at which zero observed regressions put the upper bound under ``margin`` points
    (rule of three: ``-ln(1 - confidence) / (margin / 100)``; 100 for 3 points at 95%)."""
    return math.ceil(-math.log(1 - confidence) / (margin / 100) - 1e-9)


def cohort_warnings(rows: Sequence[Mapping[str, Any]], min_rows: int, margin: float, confidence: float
                    ) -> list[str]:
    """A warning per cohort under ``min_rows`` rows, and per eval cohort too small for ``margin``."""
    total: Counter[str] = Counter()
    evals: Counter[str] = Counter()
    for r in rows:
        for c in r.get("cohorts") or ():
            total[c] += 1
            if r.get("split") == "eval":
                evals[c] += 1
    need = needed_for_margin(margin, confidence)
    out = []
    for c in sorted(total):
        if total[c] < min_rows:
            out.append(f"cohort {c!r} has {total[c]} trajectories, fewer than --min-cohort-rows {min_rows}: its "
                       "verdicts will rest on very few conversations; add traffic or merge it into another cohort")
        if evals[c] < need:
            out.append(f"eval cohort {c!r} has {evals[c]} trajectories; resolving --margin {margin:g} needs at least "
                       f"{need} (rule of three at {confidence:.0%}: even a clone with zero regressions cannot pass "
                       f"with fewer); gather {need - evals[c]} more eval trajectories or widen the margin")
    return out


# ----------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSpec:
    """Everything ``build`` does, as given on the command line."""

    min_scores: Mapping[str, float] = field(default_factory=dict)
    rules: Rules | None = None
    split_by: str | None = None
    eval_fraction: float = 0.2
    seed: int = 0
    dedup: bool = True
    since: datetime | None = None
    until: datetime | None = None
    toolset: tuple[str, ...] | None = None
    toolset_source: str = ""
    min_cohort_rows: int = 30
    margin: float = 3.0
    confidence: float = 0.95


@dataclass
class BuildResult:
    """The curated rows, the lineage steps and the warnings."""

    rows: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    warnings: list[str]


def build(rows: list[dict[str, Any]], spec: BuildSpec) -> BuildResult:
    """Run every step of ``spec`` over ``rows`` (already loaded from the sources, in order)."""
    steps: list[dict[str, Any]] = [{"step": "load", "rows": len(rows)}]
    if spec.since is not None or spec.until is not None:
        rows, step = time_window(rows, spec.since, spec.until)
        steps.append(step)
    if spec.min_scores:
        rows, step = min_scores(rows, spec.min_scores)
        steps.append(step)
    if spec.dedup:
        rows, step = dedup(rows)
        steps.append(step)
    if spec.toolset is not None:
        rows, step = toolset_drift(rows, spec.toolset, spec.toolset_source)
        steps.append(step)
    if spec.rules is not None:
        steps.append(assign_cohorts(rows, spec.rules))
    split = grouped_split(rows, spec.split_by, spec.eval_fraction, spec.seed)
    steps.append(split)
    warnings = []
    if split["rows_without_key"]:
        warnings.append(f"{split['rows_without_key']} trajectories have no metadata field {spec.split_by!r}: each is "
                        "split on its own, so related ones may land on both sides; fill the field or pick another "
                        "--split-by")
    warnings += cohort_warnings(rows, spec.min_cohort_rows, spec.margin, spec.confidence)
    return BuildResult(rows, steps, warnings)


def lineage_lines(lineage: Mapping[str, Any]) -> list[str]:
    """A readable account of a built version's lineage (``bclone dataset show --lineage``)."""
    out = []
    for s in lineage.get("sources") or ():
        digest = s.get("sha256") or s.get("fingerprint") or "?"
        out.append(f"source {s.get('kind')} {s.get('ref') or s.get('path')}: {s.get('rows')} rows "
                   f"({'sha256' if s.get('sha256') else 'fingerprint'} {str(digest)[:16]})")
    for s in lineage.get("steps") or ():
        detail = {k: v for k, v in s.items() if k not in ("step", "rows")}
        out.append(f"{s['step']}: {s['rows']} rows" + (f"  {canonical_json(detail)}" if detail else ""))
    for w in lineage.get("warnings") or ():
        out.append(f"warning: {w}")
    return out


__all__ = [
    "BuildResult",
    "BuildSpec",
    "CohortRule",
    "RarityRule",
    "Rules",
    "assign_cohorts",
    "build",
    "cohort_warnings",
    "content_hash",
    "dedup",
    "grouped_split",
    "lineage_lines",
    "load_rules",
    "min_scores",
    "needed_for_margin",
    "parse_min_scores",
    "parse_rules",
    "time_window",
    "toolset_drift",
]
