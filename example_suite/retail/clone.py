"""A behaviour-cloned clone: next-action classification over the state, with copy pointers.

Trained by supervised imitation on the (state, expert action) pairs of a dataset version's
**train** split, nothing else: no policy text, no hand-written answers, no eval rows.

* **Action templates.** Each expert action is abstracted into a template: tool names plus, for
  every argument, *where its value comes from* in the state, the way a model copies: an entity the
  customer typed (``("u", "email", -1)``: the last email in the customer's messages), a field of a
  tool result (``("t", "get_order", 0, ("payment_history", 0, "payment_method_id"))``), the element
  of a result list that matches the customer's words (``("tm", "get_order", 0, ("items",),
  "item_id")``: the item the customer named), a span of the agent's own last message or a customer
  message, or, when the value is nowhere in the state, the literal value itself (memorised, so it
  is wrong in any other conversation). Texts become templates the same way: the values they quote
  are replaced by pointers. A batch of calls that walks a whole result list (``get_order`` for each
  of the customer's orders) is a ``map`` template.
* **Policy.** A multiclass averaged perceptron picks the template from sparse features of the
  state: the words of the first, previous and last customer messages and of the agent's last
  message, the tool-call sequence so far, the keys, status and errors of the last tool results,
  whether a result's ``user_id`` agrees with the authenticated one, counts, and conjunctions of the
  conversation phase with the words. Training takes a couple of seconds; ``act`` about a
  millisecond.
* **Decoding.** The best-scoring template whose pointers all resolve in the current state is
  filled in and returned. Nothing checks the result against the policy or the state's tool list:
  a clone trained on v7 keeps calling ``issue_refund_legacy`` on v8, as a fine-tuned model would.

Its errors are the honest ones of behaviour cloning: rare phrasings it has hardly seen, pointers
learnt from one conversation shape applied to another, literals memorised from training
conversations, and flows the training set under-samples.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_bclone.records import Action, AgentReply, CallStats, State, ToolCall, Trajectory

Pointer = tuple[Any, ...]
Template = tuple[Any, ...]

WORD_RE = re.compile(r"[a-z][a-z'-]*")
TOKEN_RE = re.compile(r"[\w#@'$-]+(?:\.[\w#@'$-]+)*")
ENTITY_RES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+\.[\w.]*\w")),
    ("order", re.compile(r"#?\bW\d{7}\b")),
    ("zip", re.compile(r"\b\d{5}\b")),
)
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+)(\S+)")
_CAP_STOP = frozenset({"I", "I'm", "I've", "I'd", "I'll", "Hi", "Hello", "Sure", "Yes", "No", "My", "It's", "Thanks",
                       "Order", "Please", "Can", "Could", "The", "OK", "Okay", "Zip", "Last", "First"})
_MAX_ARG_TRIES = 12
_NO_CALL = ToolCall("?", {})  # a tool message answering no known call


# -- observing a state ---------------------------------------------------------------------------------
def _json(text: Any) -> Any:
    if not isinstance(text, str) or text[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _is_collection(value: Any) -> bool:
    """A dict keyed by ids whose values are records (product variants): treated like a list."""
    return (isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())
            and all(k.isdigit() for k in value))


def _children(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, list):
        return list(enumerate(value))
    if _is_collection(value):
        return list(enumerate(value.values()))
    if isinstance(value, dict):
        return list(value.items())
    return []


def _walk(value: Any, path: Sequence[Any]) -> Any:
    for step in path:
        if isinstance(step, int):
            items = value if isinstance(value, list) else list(value.values()) if _is_collection(value) else None
            if items is None or not -len(items) <= step < len(items):
                return None
            value = items[step]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            return None
    return value


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[tuple[Any, ...], Any]]:
    kids = _children(value)
    if not kids:
        yield path, value
        return
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        yield path, value  # a list of ids is a value too (map templates walk it)
    for key, child in kids:
        yield from _leaves(child, (*path, key))


def _vkey(value: Any) -> tuple[str, Any] | None:
    """A hashable key that never confuses True with 1 or "1" with 1."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ("l", tuple(value))
    return None


def money(value: float) -> str:
    return f"{value:.2f}"


class Obs:
    """What the clone reads from a state (parsed once per state; derived views are lazy)."""

    __slots__ = ("_entities", "_index", "_user_words", "batch", "events", "last_role", "last_text", "n_assistant",
                 "users")

    def __init__(self, messages: Sequence[Mapping[str, Any]]) -> None:
        self.users: list[str] = []
        self.last_text = ""
        self.events: list[tuple[str, Mapping[str, Any], Any]] = []  # (tool, arguments, parsed result)
        self.batch: list[tuple[str, Any]] = []  # results after the last assistant message
        self.n_assistant = 0
        pending: dict[str, ToolCall] = {}
        for m in messages:
            role = m.get("role")
            if role == "user":
                self.users.append(str(m.get("content") or ""))
            elif role == "assistant":
                self.n_assistant += 1
                self.batch = []
                if m.get("content"):
                    self.last_text = str(m["content"])
                for call in Action.from_message(m).tool_calls:
                    pending[call.id or ""] = call
            elif role == "tool":
                call = pending.pop(str(m.get("tool_call_id")), _NO_CALL)
                result = _json(m.get("content"))
                self.events.append((call.name, dict(call.arguments or {}), result))
                self.batch.append((call.name, result))
        self.last_role = str(messages[-1].get("role")) if messages else ""
        self._entities: dict[str, list[str]] | None = None
        self._index: dict[tuple[str, Any], list[Pointer]] | None = None
        self._user_words: set[str] | None = None

    # customer entities, in order of appearance over all customer messages
    @property
    def entities(self) -> dict[str, list[str]]:
        if self._entities is None:
            found: dict[str, list[str]] = {kind: [] for kind, _ in ENTITY_RES}
            found["cap"] = []
            for text in self.users:
                for kind, pattern in ENTITY_RES:
                    found[kind].extend(pattern.findall(text))
                starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
                for m in re.finditer(r"[^\s,.;:!?()]+", text):
                    word = m.group(0)
                    if word[:1].isupper() and m.start() not in starts and word not in _CAP_STOP \
                            and not any(c.isdigit() for c in word):
                        found["cap"].append(word)
            self._entities = found
        return self._entities

    @property
    def user_words(self) -> set[str]:
        if self._user_words is None:
            self._user_words = {w for t in self.users for w in TOKEN_RE.findall(t.lower())}
        return self._user_words

    def results(self, tool: str) -> list[Any]:
        """Results of ``tool``, most recent first."""
        return [r for name, _, r in reversed(self.events) if name == tool]

    def user_id(self) -> str | None:
        for name, _, result in self.events:
            if name == "find_customer" and isinstance(result, dict) and "user_id" in result:
                return str(result["user_id"])
        return None

    # where values live (for template induction)
    def leaf_index(self) -> dict[tuple[str, Any], list[Pointer]]:
        if self._index is None:
            index: dict[tuple[str, Any], list[Pointer]] = {}
            seen: Counter[str] = Counter()
            for name, _, result in reversed(self.events):
                k = seen[name]
                seen[name] += 1
                for path, value in _leaves(result):
                    key = _vkey(value)
                    if key is not None:
                        index.setdefault(key, []).append(("t", name, k, path))
            self._index = index
        return self._index


# -- pointers ----------------------------------------------------------------------------------------
def _match(obs: Obs, element: Any) -> int:
    """How well a record matches what the customer said: its words the customer used too."""
    score = 0
    words = obs.user_words
    for path, value in _leaves(element):
        if path and path[-1] in ("item_id", "product_id", "order_id", "user_id", "payment_method_id"):
            continue
        if isinstance(value, str):
            toks = TOKEN_RE.findall(value.lower())
            score += sum(1 for t in toks if t in words)
    return score


def _matches(obs: Obs, items: Any) -> list[tuple[int, Any]]:
    return [(_match(obs, e), e) for _, e in _children(items)] if isinstance(items, (list, dict)) else []


def resolve(obs: Obs, ptr: Any) -> Any:
    """The value a pointer designates in this state (None when it does not resolve)."""
    kind = ptr[0]
    if kind == "lit":
        return ptr[1]
    if kind == "list":
        values = [resolve(obs, p) for p in ptr[1]]
        return None if any(v is None for v in values) else values
    if kind == "fmt":
        value = resolve(obs, ptr[1])
        return money(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "u":
        values = obs.entities.get(ptr[1], [])
        return values[ptr[2]] if -len(values) <= ptr[2] < 0 else None
    if kind in ("t", "tm", "tma"):
        results = obs.results(ptr[1])
        if not 0 <= ptr[2] < len(results):
            return None
        if kind == "t":
            return _walk(results[ptr[2]], ptr[3])
        scored = _matches(obs, _walk(results[ptr[2]], ptr[3]))
        if kind == "tm":
            if not scored:
                return None
            best = max(s for s, _ in scored)
            top = [e for s, e in scored if s == best]
            return top[0].get(ptr[4]) if best > 0 and isinstance(top[0], dict) else None
        picked = [e.get(ptr[4]) for s, e in scored if s > 0 and isinstance(e, dict)]
        return picked or None
    if kind in ("as", "us"):
        if kind == "as":
            text = obs.last_text
            start, n = ptr[1], ptr[2]
        else:
            back, start, n = ptr[1], ptr[2], ptr[3]
            text = obs.users[-1 - back] if back < len(obs.users) else ""
        tokens = TOKEN_RE.findall(text)
        if not -len(tokens) <= start or start + n > 0:
            return None
        return " ".join(tokens[start:start + n or None])
    raise ValueError(f"unknown pointer {ptr!r}")


def _span_pointers(obs: Obs, value: str) -> Iterable[Pointer]:
    target = TOKEN_RE.findall(value)
    if not target or " ".join(target) != value:
        return
    n = len(target)
    sources: list[tuple[str, int, str]] = [("as", 0, obs.last_text)]
    sources += [("us", back, obs.users[-1 - back]) for back in range(min(4, len(obs.users)))]
    for kind, back, text in sources:
        tokens = TOKEN_RE.findall(text)
        for i in range(len(tokens) - n, -1, -1):
            if tokens[i:i + n] == target:
                start = i - len(tokens)
                yield ("as", start, n) if kind == "as" else ("us", back, start, n)
                break


def find_pointer(obs: Obs, value: Any) -> Pointer:
    """Where ``value`` comes from in the state, by the priority a copying model would use."""
    if isinstance(value, str):
        for kind, values in obs.entities.items():
            for j in range(len(values) - 1, -1, -1):
                if values[j] == value:
                    return ("u", kind, j - len(values))
    key = _vkey(value)
    candidates = obs.leaf_index().get(key, []) if key is not None else []
    for ptr in candidates:
        if not any(isinstance(p, int) for p in ptr[3]):
            return ptr
    for ptr in candidates:
        path = ptr[3]
        cut = max(i for i, p in enumerate(path) if isinstance(p, int)) if any(isinstance(p, int) for p in path) else -1
        if cut >= 0 and len(path) == cut + 2:
            tm = ("tm", ptr[1], ptr[2], path[:cut], path[-1])
            if resolve(obs, tm) == value:
                return tm
    if candidates:
        return candidates[0]
    if isinstance(value, list) and value:
        for ptr in obs.leaf_index().get(("l", tuple(value)), []):
            return ptr
        # the records of a result list that match the customer's words
        for elem_value in value[:1]:
            for ptr in obs.leaf_index().get(_vkey(elem_value) or ("x", 0), []):
                path = ptr[3]
                if len(path) >= 2 and isinstance(path[-2], int):
                    tma = ("tma", ptr[1], ptr[2], path[:-2], path[-1])
                    if resolve(obs, tma) == value:
                        return tma
        return ("list", tuple(find_pointer(obs, v) for v in value))
    if isinstance(value, str):
        for span in _span_pointers(obs, value):
            return span
    return ("lit", value)


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _thaw_lit(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def induce(obs: Obs, action: Action) -> Template:
    """The template of the expert's ``action`` at this state."""
    if not action.tool_calls:
        return ("text", _text_template(obs, action.text or ""))
    calls = action.tool_calls
    if len(calls) >= 2 and len({c.name for c in calls}) == 1:
        mapped = _map_template(obs, calls)
        if mapped is not None:
            return mapped
    out = []
    for call in calls:
        args = tuple(sorted((k, _arg_template(obs, v)) for k, v in (call.arguments or {}).items()))
        out.append((call.name, args))
    return ("calls", tuple(out))


def _arg_template(obs: Obs, value: Any) -> Pointer:
    ptr = find_pointer(obs, value)
    if ptr[0] == "lit":
        return ("lit", _freeze(value))
    return ptr


def _map_template(obs: Obs, calls: Sequence[ToolCall]) -> Template | None:
    """``f(x) for x in <result list>``: one varying argument walking a whole list of a result."""
    args = [dict(c.arguments or {}) for c in calls]
    keys = set(args[0])
    if any(set(a) != keys for a in args):
        return None
    varying = [k for k in keys if len({json.dumps(a[k]) for a in args}) > 1]
    if len(varying) != 1:
        return None
    values = [a[varying[0]] for a in args]
    for ptr in obs.leaf_index().get(("l", tuple(values)) if all(isinstance(v, str) for v in values) else ("x", 0), []):
        fixed = tuple(sorted((k, _arg_template(obs, args[0][k])) for k in keys if k != varying[0]))
        return ("map", calls[0].name, varying[0], ptr, fixed)
    return None


def _text_template(obs: Obs, text: str) -> tuple[Any, ...]:
    """``text`` with the values it quotes from the state replaced by pointers."""
    candidates: dict[str, Pointer] = {}
    for kind, values in obs.entities.items():
        for j, value in enumerate(values):
            if len(value) >= 3 and value in text:
                candidates[value] = ("u", kind, j - len(values))
    for key in obs.leaf_index():
        kind, value = key
        if kind == "s" and len(value) >= 3 and value in text and value not in candidates:
            candidates[value] = find_pointer(obs, value)
        elif kind == "n":
            shown = money(value)
            if shown in text and shown not in candidates:
                ptr = find_pointer(obs, value)
                if ptr[0] != "lit":
                    candidates[shown] = ("fmt", ptr)
    spans: list[tuple[int, int, Pointer]] = []
    taken = [False] * len(text)
    for value in sorted(candidates, key=lambda v: (-len(v), v)):
        for m in re.finditer(re.escape(value), text):
            a, b = m.start(), m.end()
            if (a > 0 and text[a - 1].isalnum()) or (b < len(text) and text[b].isalnum()) or any(taken[a:b]):
                continue
            spans.append((a, b, candidates[value]))
            for i in range(a, b):
                taken[i] = True
    parts: list[Any] = []
    pos = 0
    for a, b, ptr in sorted(spans):
        if a > pos:
            parts.append(text[pos:a])
        parts.append(ptr)
        pos = b
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def instantiate(obs: Obs, template: Template) -> Action | None:
    """The action a template means in this state (None when a pointer does not resolve)."""
    kind = template[0]
    if kind == "text":
        out = []
        for part in template[1]:
            if isinstance(part, str):
                out.append(part)
            else:
                value = resolve(obs, part)
                if not isinstance(value, str):
                    return None
                out.append(value)
        return Action((), "".join(out))
    if kind == "map":
        _, name, arg, list_ptr, fixed = template
        values = resolve(obs, list_ptr)
        if not isinstance(values, list) or not values:
            return None
        base = {}
        for k, ptr in fixed:
            value = _thaw_lit(ptr[1]) if ptr[0] == "lit" else resolve(obs, ptr)
            if value is None:
                return None
            base[k] = value
        return Action(tuple(ToolCall(name, {**base, arg: v}, json.dumps({**base, arg: v})) for v in values))
    calls = []
    for name, args in template[1]:
        filled = {}
        for k, ptr in args:
            value = _thaw_lit(ptr[1]) if ptr[0] == "lit" else resolve(obs, ptr)
            if value is None:
                return None
            filled[k] = value
        calls.append(ToolCall(name, filled, json.dumps(filled)))
    return Action(tuple(calls))


# -- features ------------------------------------------------------------------------------------------
def _words(text: str, limit: int = 40) -> list[str]:
    return list(dict.fromkeys(WORD_RE.findall(text.lower())))[:limit]


def features(obs: Obs) -> list[str]:
    """Sparse binary features of a state (see the module docstring)."""
    names = [name for name, _, _ in obs.events]
    last_tool = names[-1] if names else "-"
    uid = obs.user_id()
    status, owner = "-", "-"
    batch: list[str] = []
    for name, result in obs.batch:
        if not isinstance(result, dict):
            continue
        if "error" in result:
            status = "error"
        elif "status" in result and status == "-":
            status = str(result["status"])
        if uid is not None and name != "find_customer" and "user_id" in result:
            # does this record belong to the authenticated customer? (a relation a model attends to)
            owner = "same" if result["user_id"] == uid and owner != "other" else "other"
        batch += [f"rk={name}.{k}" for k in list(result)[:12]]
        batch += [f"rl={k}={min(len(v), 5)}" for k, v in result.items() if isinstance(v, list)]
    # the phase of the conversation: who spoke last, which tool answered, with what status and owner
    ctx = f"{obs.last_role}|{last_tool if obs.last_role == 'tool' else '-'}|{status}|{owner}"
    f = ["b", "r=" + obs.last_role, "c=" + ctx, "seq=" + "/".join(names[-4:]), "last=" + last_tool,
         f"nu={min(len(obs.users), 8)}", f"na={min(obs.n_assistant, 12)}", f"nb={len(obs.batch)}", "owner=" + owner]
    f += ["has=" + n for n in sorted(set(names))]
    f += [f"res={name}:{'err' if isinstance(r, dict) and 'error' in r else 'ok'}" for name, r in obs.batch]
    f += batch
    last_user = obs.users[-1] if obs.users else ""
    lu = _words(last_user)
    f += ["lu=" + w for w in lu]
    f.append("lu0=" + (lu[0] if lu else "-"))
    f += ["ent=" + k for k, pattern in ENTITY_RES if pattern.search(last_user)]
    if len(obs.users) > 1:
        f += ["fu=" + w for w in _words(obs.users[0])]
    if len(obs.users) > 2:
        f += ["pu=" + w for w in _words(obs.users[-2])]
    f += ["la=" + w for w in _words(obs.last_text, 25)]
    la0 = " ".join(WORD_RE.findall(obs.last_text.lower())[:3])
    f.append("la0=" + la0)
    # a linear model needs the conjunctions of the phase with what was said
    first = _words(obs.users[0]) if obs.users else []
    f += [f"c&fu={ctx}&{w}" for w in first]
    f += [f"c&lu={ctx}&{w}" for w in lu]
    f.append(f"c&la0={ctx}&{la0}")
    return f


# -- the learner ---------------------------------------------------------------------------------------
@dataclass
class Example:
    """One (state, template) pair of the training set."""

    trajectory_id: str
    step: int
    features: list[str]
    template: str


def training_examples(trajectories: Iterable[Trajectory]) -> list[Example]:
    """Every decision point of the given trajectories as a (features, template) example."""
    out = []
    for t in trajectories:
        messages = list(t.messages)
        for step, index in enumerate(t.assistant_indexes()):
            obs = Obs(messages[:index])
            template = induce(obs, Action.from_message(messages[index]))
            out.append(Example(t.id, step, features(obs), json.dumps(template)))
    return out


def _untuple(value: Any) -> Any:
    """JSON turns tuples into lists; pointers and templates are tuples again after loading."""
    if isinstance(value, list):
        return tuple(_untuple(v) for v in value)
    return value


@dataclass
class Model:
    """The trained policy: feature index, template classes and averaged weights."""

    feature_index: dict[str, int]
    templates: list[Template]
    weights: np.ndarray
    counts: list[int] = field(default_factory=list)

    def scores(self, feats: Sequence[str]) -> np.ndarray:
        idx = [self.feature_index[x] for x in feats if x in self.feature_index]
        if not idx:
            return np.zeros(len(self.templates), dtype=np.float32)
        return self.weights[np.unique(np.asarray(idx, dtype=np.int64))].sum(axis=0)  # type: ignore[no-any-return]


def fit(examples: Sequence[Example], *, epochs: int = 4, seed: int = 0, min_count: int = 2) -> Model:
    """Train the averaged perceptron (deterministic for a given example list and seed)."""
    counts = Counter(x for e in examples for x in set(e.features))
    feature_index = {x: i for i, x in enumerate(sorted(x for x, c in counts.items() if c >= min_count))}
    labels = sorted({e.template for e in examples})
    label_index = {t: i for i, t in enumerate(labels)}
    rows = [np.unique(np.asarray([feature_index[x] for x in e.features if x in feature_index], dtype=np.int64))
            for e in examples]
    y = np.asarray([label_index[e.template] for e in examples], dtype=np.int64)
    w = np.zeros((len(feature_index), len(labels)), dtype=np.float32)
    u = np.zeros_like(w)  # sum of (update time x update): averaging without storing every weight vector
    rng = np.random.default_rng(seed)
    c = 1.0
    for _ in range(epochs):
        for i in rng.permutation(len(examples)):
            idx = rows[i]
            if idx.size == 0:
                c += 1
                continue
            guess = int(np.argmax(w[idx].sum(axis=0)))
            truth = int(y[i])
            if guess != truth:
                w[idx, truth] += 1.0
                w[idx, guess] -= 1.0
                u[idx, truth] += c
                u[idx, guess] -= c
            c += 1
    averaged = w - u / c
    label_counts = Counter(int(v) for v in y)
    return Model(feature_index, [_untuple(json.loads(t)) for t in labels], averaged.astype(np.float32),
                 [label_counts[i] for i in range(len(labels))])


FALLBACK = "I'm not sure I understood. Could you tell me more about what you need?"


class BCClone:
    """The trained clone as an :class:`~pytest_bclone.agents.base.Agent` (``bc-clone@v7``)."""

    def __init__(self, model: Model, name: str, trained_on: Iterable[str] = ()) -> None:
        self.model = model
        self.name = name
        self.trained_on = frozenset(trained_on)
        """Ids of the trajectories it was trained on (the train split, and nothing else)."""

    def predict(self, messages: Sequence[Mapping[str, Any]]) -> Action:
        """The next action for a message history."""
        obs = Obs(messages)
        scores = self.model.scores(features(obs))
        for k in np.argsort(-scores, kind="stable")[:_MAX_ARG_TRIES]:
            action = instantiate(obs, self.model.templates[int(k)])
            if action is not None:
                return action
        return Action((), FALLBACK)

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
        """One step; deterministic (every repeat gives the same answer). Tokens are estimated (4
        characters each) so that ``--bclone-price bc-clone@v7=IN/OUT`` can price the clone."""
        start = time.perf_counter()
        try:
            action = self.predict(state.messages)
        except Exception as exc:  # noqa: BLE001 (an agent reports failures, it does not raise)
            return AgentReply(None, CallStats(error=f"{self.name} raised {type(exc).__name__}: {exc}"))
        action = Action(tuple(ToolCall(c.name, c.arguments, c.raw_arguments, f"call_{state.step}_{i}")
                              for i, c in enumerate(action.tool_calls)), action.text)
        prompt = sum(len(str(m.get("content") or "")) for m in state.messages)
        completion = len(action.text or "") + sum(len(c.raw_arguments) for c in action.tool_calls)
        return AgentReply(action, CallStats(prompt_tokens=prompt // 4, completion_tokens=max(1, completion // 4),
                                            latency_s=time.perf_counter() - start))


def train_clone(trajectories: Iterable[Trajectory], name: str, *, epochs: int = 4, seed: int = 0) -> BCClone:
    """Behaviour cloning on the **train** split of ``trajectories`` (eval rows are ignored)."""
    train = [t for t in trajectories if t.split == "train"]
    if not train:
        raise ValueError(f"{name}: no train-split trajectories to learn from")
    model = fit(training_examples(train), epochs=epochs, seed=seed)
    return BCClone(model, name, (t.id for t in train))
