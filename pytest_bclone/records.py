"""The small, immutable records that flow through the pipeline.

Trajectory -> DecisionPoint (State + expert Action) -> AgentReply (Action + call figures).
Everything here is pure Python (no pyarrow, no litellm) and JSON-able through ``to_dict`` so it
crosses the pytest-xdist channel unchanged.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Message = dict[str, Any]
"""One OpenAI chat message (role, content, tool_calls, tool_call_id, name...)."""

ToolSpec = dict[str, Any]
"""One OpenAI tool definition: ``{"type": "function", "function": {"name", "parameters"...}}``."""

SPLITS = ("train", "eval")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of an action.

    ``arguments`` is the parsed JSON object; when the model sent arguments that are not a JSON
    object, ``arguments`` is ``None``, ``raw_arguments`` keeps what was sent and ``error`` says why.
    """

    name: str
    arguments: Mapping[str, Any] | None
    raw_arguments: str = ""
    id: str | None = None
    error: str | None = None

    @classmethod
    def parse(cls, name: str, raw: Any, id: str | None = None) -> ToolCall:
        """Build a call from the OpenAI ``function.arguments`` field (a JSON string or a dict)."""
        if isinstance(raw, Mapping):
            return cls(name, dict(raw), json.dumps(raw, sort_keys=True), id)
        text = "" if raw is None else str(raw)
        if text.strip() == "":
            return cls(name, {}, text, id)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return cls(name, None, text, id, f"arguments are not valid JSON ({exc.msg} at char {exc.pos})")
        if not isinstance(value, dict):
            return cls(name, None, text, id, f"arguments are JSON {type(value).__name__}, not an object")
        return cls(name, value, text, id)

    def to_openai(self, index: int = 0) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry for this call."""
        raw = self.raw_arguments if self.arguments is None else json.dumps(self.arguments)
        return {
            "id": self.id or f"call_{index}",
            "type": "function",
            "function": {"name": self.name, "arguments": raw},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arguments": None if self.arguments is None else dict(self.arguments),
            "raw_arguments": self.raw_arguments,
            "id": self.id,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToolCall:
        return cls(d["name"], d.get("arguments"), d.get("raw_arguments", ""), d.get("id"), d.get("error"))


@dataclass(frozen=True, slots=True)
class Action:
    """What an agent does at a state: tool calls and/or a text reply."""

    tool_calls: tuple[ToolCall, ...] = ()
    text: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return bool(self.tool_calls)

    @property
    def unparseable(self) -> bool:
        """True when any tool call's arguments could not be parsed (scored wrong, never a crash)."""
        return any(c.error for c in self.tool_calls)

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.tool_calls)

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Action:
        """Read an OpenAI assistant message."""
        calls = []
        for i, tc in enumerate(message.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            calls.append(_parse_call(str(fn.get("name", "")), fn.get("arguments"), tc.get("id") or f"call_{i}"))
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        if cls is not Action:
            return cls(tuple(calls), content if content else None)
        action = _new(Action)  # the dataclass __init__ without its per-field object.__setattr__
        _set_tool_calls(action, tuple(calls))
        _set_text(action, content if content else None)
        return action

    def to_message(self) -> Message:
        """The OpenAI assistant message for this action."""
        msg: Message = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            msg["tool_calls"] = [c.to_openai(i) for i, c in enumerate(self.tool_calls)]
        return msg

    def describe(self) -> str:
        """A short human-readable form, e.g. ``get_order(order_id='W1')`` or ``"Sure, ..."``."""
        if self.tool_calls:
            parts = []
            for c in self.tool_calls:
                if c.arguments is None:
                    parts.append(f"{c.name}(<unparseable: {c.raw_arguments[:40]!r}>)")
                else:
                    args = ", ".join(f"{k}={v!r}" for k, v in sorted(c.arguments.items()))
                    parts.append(f"{c.name}({args})")
            return "; ".join(parts)
        text = (self.text or "").replace("\n", " ")
        return repr(text[:60] + ("..." if len(text) > 60 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"tool_calls": [c.to_dict() for c in self.tool_calls], "text": self.text}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Action:
        return cls(tuple(ToolCall.from_dict(c) for c in d.get("tool_calls") or ()), d.get("text"))


# Reading a recorded action is most of what a load does per decision point (a million per large
# run), so the common case skips the generic layers: arguments that are one JSON object with no
# surrounding whitespace are scanned directly (what json.loads does for them, minus its Python
# frames), and the frozen records are filled through their slot descriptors (what their __init__
# does, minus a Python-level object.__setattr__ per field). Anything else takes ToolCall.parse.
# json.loads' default decoder settings; scan_once(text, index) -> (value, end)
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_new = object.__new__
_set_call_name = ToolCall.__dict__["name"].__set__
_set_call_arguments = ToolCall.__dict__["arguments"].__set__
_set_call_raw = ToolCall.__dict__["raw_arguments"].__set__
_set_call_id = ToolCall.__dict__["id"].__set__
_set_call_error = ToolCall.__dict__["error"].__set__
_set_tool_calls = Action.__dict__["tool_calls"].__set__
_set_text = Action.__dict__["text"].__set__


def _parse_call(name: str, raw: Any, id: str | None) -> ToolCall:
    """``ToolCall.parse(name, raw, id)``, the same record, faster for a plain JSON object text."""
    if type(raw) is str and raw[:1] == "{":
        try:
            value, end = _scan_json(raw, 0)
        except Exception:  # noqa: BLE001 - ToolCall.parse reads it again and says what is wrong
            end = -1
        if end == len(raw):  # the whole text is that object: json.loads gives the same dict
            call = _new(ToolCall)
            _set_call_name(call, name)
            _set_call_arguments(call, value)
            _set_call_raw(call, raw)
            _set_call_id(call, id)
            _set_call_error(call, None)
            return call
    return ToolCall.parse(name, raw, id)


@dataclass(frozen=True, slots=True)
class ExpectedOutcome:
    """What a trajectory must achieve (as in tau-bench): required actions and required outputs."""

    actions: tuple[ToolCall, ...] = ()
    outputs: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ExpectedOutcome | None:
        if d is None:
            return None
        acts = tuple(ToolCall.parse(a["name"], a.get("arguments") or {}) for a in d.get("actions") or ())
        return cls(acts, tuple(d.get("outputs") or ()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": [{"name": a.name, "arguments": dict(a.arguments or {})} for a in self.actions],
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True, slots=True)
class Trajectory:
    """One recorded conversation of the expert, as stored in a dataset version."""

    id: str
    cohorts: tuple[str, ...]
    split: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec]
    expected: ExpectedOutcome | None = None
    expert_scores: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Indexes of the assistant messages, when the store already knows them: deriving decision
    # points then needs no parse of the messages (which a store may keep as lazy JSON).
    step_indexes: tuple[int, ...] | None = None
    # Parse-once caches (not part of the record: no init, repr or comparison). Set through
    # object.__setattr__ on first use; a trajectory loaded once has each recorded action parsed once
    # however many agents, repeats and metrics read it.
    _actions: tuple[Action, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _indexes: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _memo: dict[Any, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def expert_actions(self) -> tuple[Action, ...]:
        """The recorded expert's action at every decision point, in order (parsed once, then cached)."""
        actions = self._actions
        if actions is None:
            messages = parsed_messages(self)
            indexes = self._indexes or tuple(self.assistant_indexes())
            actions = tuple([Action.from_message(messages[i]) for i in indexes])
            object.__setattr__(self, "_indexes", indexes)
            object.__setattr__(self, "_actions", actions)
        return actions

    def forget_actions(self) -> None:
        """Drop the parsed recorded actions (the next read parses them again, equal): for a caller
        that has kept what it needs of them in a compact form, so a large run frees the rest."""
        object.__setattr__(self, "_actions", None)

    def memo(self) -> dict[Any, Any]:
        """A per-trajectory cache for facts derived from the recording (e.g. the evaluators'
        normalised expert calls), so they too are computed once per load. Keys must be hashable
        values that identify how the fact was derived."""
        memo = self._memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_memo", memo)
        return memo

    def forget_memo(self) -> None:
        """Drop the :meth:`memo` cache (a scored trajectory's facts are not read again; any later
        reader derives them afresh, the same values)."""
        object.__setattr__(self, "_memo", None)

    @property
    def tool_names(self) -> frozenset[str]:
        """Names of the tools the agent could call in this trajectory."""
        return frozenset(tool_name(t) for t in self.tools)

    def assistant_indexes(self) -> list[int]:
        """Indexes of the assistant messages: one decision point each."""
        if self.step_indexes is not None:
            return list(self.step_indexes)
        return [i for i, m in enumerate(self.messages) if m.get("role") == "assistant"]

    def decision_points(self) -> list[DecisionPoint]:
        """Every decision point of this trajectory, in order."""
        # tuple.__new__ directly: NamedTuple's generated __new__ adds a Python-level call per point,
        # and a large dataset derives a million of them.
        make = tuple.__new__
        indexes = self._indexes
        if indexes is None:
            # kept (as expert_actions keeps them): the load's parse of the expert's actions then
            # reads the roles of the messages once per trajectory, not twice
            indexes = tuple(self.assistant_indexes())
            object.__setattr__(self, "_indexes", indexes)
        return [make(DecisionPoint, (self, step, idx)) for step, idx in enumerate(indexes)]


# The parsed messages of the last few trajectories read through :func:`parsed_messages` (by
# trajectory identity; the trajectory is held so its id is not reused). Replay and scoring walk
# trajectories in order, so a small window serves every state of a trajectory from one parse.
_PARSED: OrderedDict[int, tuple[Trajectory, Sequence[Message]]] = OrderedDict()
_PARSED_KEEP = 64


def parsed_messages(trajectory: Trajectory) -> Sequence[Message]:
    """The messages of ``trajectory``, parsed, without making a lazily stored trajectory keep them.

    A trajectory loaded from the store holds its messages as the stored JSON (``LazyMessages``),
    which keeps its parse once read. Reading a million decision points that way keeps every
    message dict of the run alive (the largest share of a large gate's memory), although each is
    needed only while its trajectory is replayed and scored. This parses the stored text into a
    small window of recently read trajectories instead. Messages already parsed (or a plain list)
    are returned as they are; text that is not a JSON list falls back to the messages themselves,
    whose own error says what is damaged and how to fix it.
    """
    messages = trajectory.messages
    # LazyMessages not yet parsed: ``_items`` is None until it parses itself (dataset.store).
    if getattr(messages, "_items", 0) is not None or not hasattr(messages, "text"):
        return messages
    key = id(trajectory)
    hit = _PARSED.get(key)
    if hit is not None and hit[0] is trajectory:
        _PARSED.move_to_end(key)
        return hit[1]
    try:
        parsed = json.loads(messages.text)
    except ValueError:
        return messages  # its own parse raises the store's IntegrityError, which names the fix
    if not isinstance(parsed, list):
        return messages
    _PARSED[key] = (trajectory, parsed)
    if len(_PARSED) > _PARSED_KEEP:
        _PARSED.popitem(last=False)
    return parsed


def tool_name(tool: Mapping[str, Any]) -> str:
    """The name of an OpenAI tool definition (accepts the bare function form too)."""
    fn = tool.get("function")
    return str(fn.get("name") if isinstance(fn, Mapping) else tool.get("name"))


@dataclass(frozen=True, slots=True)
class State:
    """Everything an agent sees before a step: the message prefix and the tool list.

    ``trajectory_id`` and ``step`` identify the recorded state (the recorded expert and the cache
    use them); a live rollout state carries the episode's trajectory id and its own step number.
    """

    trajectory_id: str
    step: int
    messages: Sequence[Message]
    tools: Sequence[ToolSpec]


class DecisionPoint(NamedTuple):
    """An assistant turn of a recorded trajectory: the state before it and the expert's action.

    Holds a reference to the trajectory and an index, so deriving a million of them copies no
    messages; ``state`` and ``expert_action`` are built on demand. (A NamedTuple, not a frozen
    dataclass: it is built a million times per large run and tuple construction is ~5x cheaper.)
    """

    trajectory: Trajectory
    step: int
    message_index: int

    @property
    def trajectory_id(self) -> str:
        return self.trajectory.id

    @property
    def cohorts(self) -> tuple[str, ...]:
        return self.trajectory.cohorts

    @property
    def key(self) -> str:
        """A stable item id: ``<trajectory id>#<step>``."""
        return f"{self.trajectory.id}#{self.step}"

    @property
    def state(self) -> State:
        # The message prefix is sliced when an agent first reads it: a clone that answers from
        # the state's id and step (the recorded expert, a lookup) never parses the recording.
        t = self.trajectory
        state = object.__new__(_PointState)
        _set_trajectory_id(state, t.id)
        _set_step(state, self.step)
        _set_tools(state, t.tools)
        _set_point(state, self)
        return state

    @property
    def expert_action(self) -> Action:
        """The recorded expert action (parsed once per trajectory, see :meth:`Trajectory.expert_actions`)."""
        t = self.trajectory
        actions = t.expert_actions()
        indexes = t._indexes
        step = self.step
        if indexes is not None and 0 <= step < len(indexes) and indexes[step] == self.message_index:
            return actions[step]
        # a point built by hand may name a message that is not the step-th assistant turn
        return Action.from_message(parsed_messages(t)[self.message_index])


_set_trajectory_id = State.__dict__["trajectory_id"].__set__
_set_step = State.__dict__["step"].__set__
_set_tools = State.__dict__["tools"].__set__
_messages_slot = State.__dict__["messages"]


class _PointState(State):
    """The :class:`State` of a recorded decision point, its message prefix sliced on first read.

    Equal to, and read like, ``State(t.id, step, t.messages[:index], t.tools)``: ``messages`` is
    that same list once read (then kept on the state), so nothing is parsed or copied for agents
    that never look at the messages.
    """

    __slots__ = ("_point",)
    _point: DecisionPoint | None

    @property
    def messages(self) -> Sequence[Message]:
        try:
            return _messages_slot.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:
            point = self._point
            assert point is not None
            messages = parsed_messages(point.trajectory)[: point.message_index]
            _messages_slot.__set__(self, messages)
            return messages

    @messages.setter
    def messages(self, value: Sequence[Message]) -> None:  # the dataclass __init__ (replace, copy, pickle)
        _messages_slot.__set__(self, value)

    def _plain(self) -> State:
        return State(self.trajectory_id, self.step, self.messages, self.tools)

    # Equal to, and shown as, the plain State it stands for (the dataclass methods compare classes).
    def __eq__(self, other: object) -> bool:
        if isinstance(other, State):
            return (self.trajectory_id, self.step, self.messages, self.tools) == (
                other.trajectory_id, other.step, other.messages, other.tools)
        return NotImplemented

    __hash__ = State.__hash__

    def __repr__(self) -> str:
        return repr(self._plain())


_set_point = _PointState.__dict__["_point"].__set__


@dataclass(frozen=True, slots=True)
class CallStats:
    """Figures of one agent answer: tokens, cost, latency, retries, cache, error.

    ``price_known`` is False when the model has no litellm price and no ``--bclone-price``
    override: ``cost_usd`` is then 0 and must not be read as "free".
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    retries: int = 0
    cached: bool = False
    error: str | None = None
    price_known: bool = True
    calls: int = 1  # model calls behind this answer: 0 for a recording read, an episode's count in rollouts

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "retries": self.retries,
            "cached": self.cached,
            "error": self.error,
            "price_known": self.price_known,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallStats:
        return cls(**{k: d[k] for k in cls.__slots__ if k in d})


@dataclass(frozen=True, slots=True)
class AgentReply:
    """An agent's answer at a state. ``action`` is ``None`` exactly when the call failed."""

    action: Action | None
    stats: CallStats = field(default_factory=CallStats)

    @property
    def failed(self) -> bool:
        return self.action is None

    def to_dict(self) -> dict[str, Any]:
        return {"action": None if self.action is None else self.action.to_dict(), "stats": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentReply:
        a = d.get("action")
        return cls(None if a is None else Action.from_dict(a), CallStats.from_dict(d.get("stats") or {}))


@dataclass(frozen=True, slots=True)
class Episode:
    """One rollout: an agent driving a whole episode in the suite's environment.

    ``actions`` are the agent's actions in order, ``messages`` the whole conversation (recorded
    user turns, the agent's turns, tool results). ``error`` is set when a model call finally failed
    (the episode is then excluded from scores, never scored as a mistake). ``final_state_ok`` is the
    environment's own end-state check, ``None`` when the environment offers none. ``truncated``
    says the episode was stopped at the step cap (the agent was still acting: often a loop).
    """

    trajectory_id: str
    actions: tuple[Action, ...]
    messages: tuple[Message, ...]
    stats: CallStats = field(default_factory=CallStats)
    error: str | None = None
    final_state_ok: bool | None = None
    repeat: int = 0
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "truncated": self.truncated,
            "trajectory_id": self.trajectory_id,
            "actions": [a.to_dict() for a in self.actions],
            "messages": list(self.messages),
            "stats": self.stats.to_dict(),
            "error": self.error,
            "final_state_ok": self.final_state_ok,
            "repeat": self.repeat,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Episode:
        return cls(
            d["trajectory_id"],
            tuple(Action.from_dict(a) for a in d.get("actions") or ()),
            tuple(d.get("messages") or ()),
            CallStats.from_dict(d.get("stats") or {}),
            d.get("error"),
            d.get("final_state_ok"),
            int(d.get("repeat", 0)),
            bool(d.get("truncated", False)),
        )


@dataclass(frozen=True, slots=True)
class Score:
    """An evaluator's verdict on one item: a value in [0, 1] and a reason a person can read."""

    value: float
    reason: str = ""

    def __post_init__(self) -> None:
        if not (0.0 <= self.value <= 1.0):
            raise ValueError(f"score {self.value!r} is outside [0, 1] (reason: {self.reason!r})")
