"""Argument normalisation, toolset facts and the optimal matching of parallel tool calls.

Every imitation evaluator compares calls the same way, so the rules live here once:

* **Canonical values** (:func:`canon`): ``1`` equals ``1.0``; strings compare case-folded with
  surrounding spaces stripped; object key order is irrelevant; lists stay ordered; JSON booleans
  never equal numbers (``true`` is not ``1``).
* **Defaults** (:class:`Toolset`): an optional argument sent at its JSON-schema ``default`` counts as
  omitted, and so does an explicit ``null`` for an optional argument.
* **Argument agreement** (:func:`arg_agreement`): the share of argument keys (union of both sides,
  after the rules above) whose canonical values are equal.
* **Call matching** (:func:`match_calls`): parallel calls are matched as a multiset, by name, with an
  exact maximum-weight assignment on argument agreement inside each group of same-named calls
  (:func:`max_weight_assignment`, scipy's ``linear_sum_assignment``, used only when the pairing is
  ambiguous), so neither call order nor a greedy choice decides which expert call a clone call is
  credited against.

Toolset facts are parsed once per tool list object and cached (:func:`toolset`): the hot paths never
parse a schema per call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from ..records import Action, ToolCall, ToolSpec

__all__ = [
    "CallMatch",
    "IdentityCache",
    "NormArgs",
    "ToolInfo",
    "Toolset",
    "arg_agreement",
    "arg_diff",
    "call_key",
    "canon",
    "describe_call",
    "keyed_calls",
    "match_calls",
    "max_weight_assignment",
    "normalize_args",
    "normalize_text",
    "take_one",
    "toolset",
]

NormArgs = dict[str, Hashable]
"""A call's arguments in canonical form (defaults and optional nulls removed)."""


class _JsonBool:
    """Canonical JSON boolean: equal only to itself, so ``true`` never equals ``1``.

    (Python's ``True == 1`` would otherwise make a boolean argument agree with a number.)
    """

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "true" if self.value else "false"


_TRUE = _JsonBool(True)
_FALSE = _JsonBool(False)


def canon(value: Any) -> Hashable:
    """The canonical, hashable form of a JSON value (see the module docstring for the rules)."""
    t = type(value)
    if t is str:
        return str(value).strip().casefold()
    if t is int or t is float or value is None:
        return value  # type: ignore[no-any-return]  # 1 == 1.0 and hash(1) == hash(1.0) already
    if t is bool:
        return _TRUE if value else _FALSE
    if isinstance(value, Mapping):
        return frozenset((k, canon(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(canon(v) for v in value)
    if isinstance(value, bool):  # a bool subclass (numpy.bool_ is not, but be safe)
        return _TRUE if value else _FALSE
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return value.strip().casefold()
    return repr(value)  # not JSON: compare by its representation rather than crash


class ToolInfo(NamedTuple):
    """What the schema of one tool says: canonical defaults, required arguments, state change.

    (A NamedTuple rather than a frozen dataclass: a dataset builds one per tool per trajectory.)
    """

    name: str
    defaults: Mapping[str, Hashable]
    required: frozenset[str]
    mutates: bool | None
    """From the tool's metadata: ``mutates_state`` (as tau2-bench exports it) or the MCP annotation
    ``readOnlyHint``; ``None`` when the definition says nothing."""


_NO_DEFAULTS: Mapping[str, Hashable] = {}
_NO_NAMES: frozenset[str] = frozenset()


def _mutates(spec: Mapping[str, Any], fn: Mapping[str, Any]) -> bool | None:
    for where in (spec, fn):
        for key in ("mutates_state", "x-mutates-state"):
            value = where.get(key)
            if isinstance(value, bool):
                return value
        notes = where.get("annotations")
        if isinstance(notes, dict) and isinstance(notes.get("readOnlyHint"), bool):
            return not notes["readOnlyHint"]
    return None


def _tool_info(spec: Mapping[str, Any]) -> ToolInfo:
    # isinstance(x, dict) rather than Mapping: the ABC check costs more than the rest of the parse,
    # and tool definitions arrive as dicts (JSON, Parquet rows).
    fn = spec.get("function")
    if not isinstance(fn, dict):
        fn = spec
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    required = params.get("required") if isinstance(params, dict) else None
    defaults: dict[str, Hashable] | None = None
    if isinstance(props, dict):
        for key, schema in props.items():
            if isinstance(schema, dict) and "default" in schema:
                if defaults is None:
                    defaults = {}
                defaults[str(key)] = canon(schema["default"])
    return ToolInfo(
        str(fn.get("name")),
        defaults or _NO_DEFAULTS,
        frozenset(required) if isinstance(required, (list, tuple)) and required else _NO_NAMES,
        _mutates(spec, fn),
    )


def _name(spec: Mapping[str, Any]) -> str:
    fn = spec.get("function")
    return str((fn if isinstance(fn, dict) else spec).get("name"))


class Toolset:
    """The facts of one tool list: the tool names, and a :class:`ToolInfo` per tool on demand.

    Build it with :func:`toolset`, which caches one instance per tool list object. Only names are
    read up front; a tool's schema is parsed the first time a call of it is compared (most
    trajectories call a few of their tools).
    """

    __slots__ = ("_info", "_specs", "names")

    def __init__(self, specs: Sequence[ToolSpec]) -> None:
        self._specs: dict[str, Mapping[str, Any]] = {
            _name(spec): spec for spec in specs if isinstance(spec, (dict, Mapping))
        }
        self._info: dict[str, ToolInfo | None] = {}
        self.names: frozenset[str] = frozenset(self._specs)

    def get(self, name: str) -> ToolInfo | None:
        """The parsed schema facts of tool ``name``, or ``None`` when the toolset has no such tool."""
        try:
            return self._info[name]
        except KeyError:
            spec = self._specs.get(name)
            info = self._info[name] = None if spec is None else _tool_info(spec)
            return info

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)


K = TypeVar("K")
V = TypeVar("V")


class IdentityCache(Generic[K, V]):
    """A small FIFO cache keyed by object identity, for derived facts of unhashable inputs (a tool
    list, a trajectory). Each entry holds its key object, so that object's id cannot be reused by
    another while the entry lives; the identity check on lookup guards the rest."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._entries: dict[int, tuple[K, V]] = {}

    def get(self, key: K, build: Callable[[K], V]) -> V:
        """The cached value for ``key``, built with ``build(key)`` on a miss."""
        hit = self._entries.get(id(key))
        if hit is not None and hit[0] is key:
            return hit[1]
        value = build(key)
        if len(self._entries) >= self._size:  # FIFO eviction: dicts keep insertion order
            self._entries.pop(next(iter(self._entries)))
        self._entries[id(key)] = (key, value)
        return value


_toolsets: IdentityCache[Sequence[ToolSpec], Toolset] = IdentityCache()


def toolset(specs: Sequence[ToolSpec]) -> Toolset:
    """The :class:`Toolset` of a tool list, parsed once per list object (all decision points of a
    trajectory share their trajectory's list, so a dataset costs one parse per trajectory)."""
    return _toolsets.get(specs, Toolset)


def normalize_args(call: ToolCall, tools: Toolset) -> NormArgs | None:
    """The canonical arguments of ``call``, or ``None`` when they could not be parsed.

    Arguments equal to their schema default, and explicit ``null`` for arguments the schema does not
    require, are dropped: both mean "left at the default", the same as omitting them.
    """
    args = call.arguments
    if args is None:
        return None
    info = tools.get(call.name)
    defaults = info.defaults if info is not None else _NO_DEFAULTS
    required = info.required if info is not None else frozenset()
    out: NormArgs = {}
    for key, value in args.items():
        c = value.strip().casefold() if type(value) is str else canon(value)  # inlined common case
        if c is None and key not in required:
            continue
        if defaults and key in defaults and defaults[key] == c:
            continue
        out[key] = c
    return out


def call_key(name: str, args: NormArgs | None) -> Hashable:
    """A hashable identity for a normalised call: equal keys mean the same call.

    Unparseable arguments get a unique key, so such a call never equals anything (not even itself).
    """
    if args is None:
        return object()
    return (name, frozenset(args.items()))


def arg_agreement(expert: NormArgs | None, agent: NormArgs | None) -> float:
    """Share of argument keys (union of both sides) whose canonical values agree; 0 if unparseable."""
    if expert is None or agent is None:
        return 0.0
    if expert == agent:
        return 1.0
    keys = expert.keys() | agent.keys()
    same = 0
    for k in keys:
        if k in expert and k in agent and expert[k] == agent[k]:
            same += 1
    return same / len(keys)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def arg_diff(expert_call: ToolCall, expert: NormArgs | None, agent_call: ToolCall, agent: NormArgs | None) -> str:
    """A readable diff of two matched calls, e.g. ``order_id: expected 'W123' got 'W124'``.

    Values are shown as sent (before normalisation); keys that agree are left out.
    """
    if agent is None:
        return f"arguments unparseable ({agent_call.error or 'not a JSON object'}): {agent_call.raw_arguments[:60]!r}"
    if expert is None:
        return (f"the recorded expert's arguments are unparseable ({expert_call.error}); "
                "fix the trajectory row in the dataset")
    raw_e = expert_call.arguments or {}
    raw_a = agent_call.arguments or {}
    parts = []
    for k in sorted(expert.keys() | agent.keys()):
        if k not in agent:
            parts.append(f"{k}: expected {_show(raw_e.get(k))} got nothing")
        elif k not in expert:
            parts.append(f"{k}: not expected, got {_show(raw_a.get(k))}")
        elif expert[k] != agent[k]:
            parts.append(f"{k}: expected {_show(raw_e.get(k))} got {_show(raw_a.get(k))}")
    return ", ".join(parts)


def max_weight_assignment(weights: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """An exact maximum-weight assignment of rows to columns.

    Assigns ``min(rows, columns)`` pairs and returns them as ``(row, column)`` sorted by row.
    Solved by :func:`scipy.optimize.linear_sum_assignment` (imported on first use, so loading the
    plugin does not import scipy); :func:`match_calls` calls it only when a group of same-named
    calls is ambiguous, which is rare.
    """
    n = len(weights)
    m = len(weights[0]) if n else 0
    if n == 0 or m == 0:
        return []
    import numpy as np
    from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

    rows, cols = linear_sum_assignment(np.asarray(weights, dtype=float), maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist()))


class CallMatch:
    """The optimal matching of an agent's calls against the expert's calls at one state.

    ``pairs`` holds ``(expert index, agent index, argument agreement)``; ``missing`` the expert calls
    left unmatched, ``extra`` the agent calls left unmatched (wrong tool, or a duplicate);
    ``size`` is ``max(len(expert calls), len(agent calls))``, the denominator that makes extra,
    missing and duplicated calls all cost credit. Treat it as immutable.
    """

    __slots__ = ("extra", "missing", "pairs", "size")

    def __init__(self, pairs: tuple[tuple[int, int, float], ...], missing: tuple[int, ...],
                 extra: tuple[int, ...], size: int) -> None:
        self.pairs = pairs
        self.missing = missing
        self.extra = extra
        self.size = size

    def __repr__(self) -> str:
        return f"CallMatch(pairs={self.pairs}, missing={self.missing}, extra={self.extra}, size={self.size})"

    @property
    def selection(self) -> float:
        """Matched calls / ``size`` (1.0 when neither side called a tool)."""
        return len(self.pairs) / self.size if self.size else 1.0

    @property
    def arguments(self) -> float:
        """Mean argument agreement over matched calls (1.0 with no calls on either side, 0.0 when
        calls exist but none matched by name)."""
        if not self.pairs:
            return 0.0 if self.size else 1.0
        return sum(s for _, _, s in self.pairs) / len(self.pairs)

    @property
    def credit(self) -> float:
        """Sum of argument agreement over matched calls / ``size``: ``selection * arguments``."""
        if not self.size:
            return 1.0
        return sum(s for _, _, s in self.pairs) / self.size

    @property
    def exact(self) -> bool:
        """Every call matched with full argument agreement and none missing or extra."""
        return not self.missing and not self.extra and all(s == 1.0 for _, _, s in self.pairs)


_EMPTY_MATCH = CallMatch((), (), (), 0)


def _unambiguous(sims: list[list[float]]) -> list[tuple[int, int]] | None:
    """The optimal assignment when each call of the shorter side can have a best partner to itself.

    Giving every row (or, when there are more rows than columns, every column) one of its own
    maxima reaches the upper bound of any assignment, so it is optimal; this covers the usual
    parallel calls (distinct arguments, or exact copies) without solving an assignment. ``None``
    when the first-come choice of maxima collides: the caller then solves the assignment.
    """
    rows, cols = len(sims), len(sims[0])
    transposed = rows > cols
    lines = [list(col) for col in zip(*sims)] if transposed else sims
    taken: set[int] = set()
    chosen = []
    for i, line in enumerate(lines):
        top = max(line)
        j = next((j for j, w in enumerate(line) if w == top and j not in taken), None)
        if j is None:
            return None
        taken.add(j)
        chosen.append((j, i) if transposed else (i, j))
    return sorted(chosen)


def match_calls(
    expert_names: Sequence[str],
    expert_args: Sequence[NormArgs | None],
    agent_names: Sequence[str],
    agent_args: Sequence[NormArgs | None],
) -> CallMatch:
    """Match two multisets of calls: same name required, then maximum total argument agreement.

    The assignment is joint (name and arguments): calls of different tools never pair, and inside
    each group of same-named calls the pairing maximises the summed argument agreement exactly, so
    with two calls of one tool the right pairing is found whatever the order.
    """
    ne, na = len(expert_names), len(agent_names)
    if ne == 0 and na == 0:
        return _EMPTY_MATCH
    if ne == 1 and na == 1:  # the common case, no grouping needed
        if expert_names[0] == agent_names[0]:
            return CallMatch(((0, 0, arg_agreement(expert_args[0], agent_args[0])),), (), (), 1)
        return CallMatch((), (0,), (0,), 1)
    if len(set(expert_names)) == ne and len(set(agent_names)) == na:
        # each tool called at most once per side (the usual parallel calls): pair by name
        where = {name: j for j, name in enumerate(agent_names)}
        found = [(i, where[name]) for i, name in enumerate(expert_names) if name in where]
        taken = {j for _, j in found}
        return CallMatch(
            tuple((i, j, arg_agreement(expert_args[i], agent_args[j])) for i, j in found),
            tuple(i for i, name in enumerate(expert_names) if name not in where),
            tuple(j for j in range(na) if j not in taken),
            max(ne, na),
        )
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, name in enumerate(expert_names):
        groups.setdefault(name, ([], []))[0].append(i)
    for j, name in enumerate(agent_names):
        groups.setdefault(name, ([], []))[1].append(j)
    pairs: list[tuple[int, int, float]] = []
    matched_e: set[int] = set()
    matched_a: set[int] = set()
    for e_idx, a_idx in groups.values():
        if not e_idx or not a_idx:
            continue
        if len(e_idx) == 1 and len(a_idx) == 1:
            chosen = [(0, 0)]
            sims = [[arg_agreement(expert_args[e_idx[0]], agent_args[a_idx[0]])]]
        else:
            sims = [[arg_agreement(expert_args[i], agent_args[j]) for j in a_idx] for i in e_idx]
            chosen = _unambiguous(sims) or max_weight_assignment(sims)
        for r, c in chosen:
            pairs.append((e_idx[r], a_idx[c], sims[r][c]))
            matched_e.add(e_idx[r])
            matched_a.add(a_idx[c])
    pairs.sort()
    return CallMatch(
        tuple(pairs),
        tuple(i for i in range(ne) if i not in matched_e),
        tuple(j for j in range(na) if j not in matched_a),
        max(ne, na),
    )


def describe_call(call: ToolCall) -> str:
    """``name(k=v, ...)`` for reasons (arguments as sent)."""
    return Action((call,)).describe()


def keyed_calls(calls: Sequence[ToolCall], tools: Toolset, *, with_arguments: bool = True) -> list[Hashable]:
    """The :func:`call_key` of each call (or just its name when ``with_arguments`` is False)."""
    if not with_arguments:
        return [c.name for c in calls]
    return [call_key(c.name, normalize_args(c, tools)) for c in calls]


def normalize_text(text: str | None) -> str:
    """Text for containment checks: case-folded, commas dropped (``1,000`` = ``1000``), spaces collapsed."""
    return " ".join((text or "").replace(",", "").split()).casefold()


def take_one(counter: Counter[Hashable], key: Hashable) -> bool:
    """Consume one ``key`` from a multiset ``counter``; True when there was one to take."""
    if counter[key] > 0:
        counter[key] -= 1
        return True
    return False
