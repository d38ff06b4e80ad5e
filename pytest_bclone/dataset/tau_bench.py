"""Import tau2-bench task files: one expert trajectory per task, replayed from its gold actions.

A tau2-bench domain directory holds ``tasks.json`` (user scenarios and gold actions),
``tools.json`` (the tool signatures), ``db.json`` (the environment's database), ``policy.md``
(the agent's policy) and optionally ``split_tasks.json`` (train/test task ids). Each task becomes
one row:

* ``system``: the policy;
* ``user``: the scenario's ``reason_for_call``, ``known_info`` and ``unknown_info`` as the
  customer's opening message. They are the user simulator's instructions, written in the second
  person ("You received your order..."); they are kept verbatim rather than paraphrased;
* per gold action, an assistant turn with that one tool call and a ``tool`` message holding the
  result of **replaying the call against db.json**. Read-only tools look the answer up (the JSON of
  the order/user/product/item, a user id, the product list, the calculation); state-changing
  tools apply their documented effect to a per-task copy-on-write view of the database and return
  the record after the change, as tau2 does. A later lookup in the same task therefore sees the
  change (11 retail tasks read an order after modifying it). A call tau2 would reject comes out
  as ``"Error: <reason>"``, tau2's own convention. Gold sequences do contain such calls on
  purpose (a misremembered email or zip tried first, an exchange attempted on a pending order):
  18 of the retail gold actions, in 15 tasks; ``metadata.tool_errors`` lists them per row;
* a final assistant text turn. tau2 records no final message, so this one is synthetic: the
  task's ``communicate_info`` joined (the facts the agent must tell), else a short confirmation.
  ``metadata.synthetic`` lists what was synthesised; score it on ``expected.outputs``, not text.

Differences from the tau2 environment, on purpose: money amounts are rounded to cents, and a
multi-item ``modify_pending_order_items`` prices each new item from its own variant. Only the
retail domain's tools are replayed; a gold action of any other tool is an
:class:`ImportFormatError` naming it (no answer is ever made up).

Derived cohorts (added to the caller's ``cohorts``):

* ``tool_heavy``: at least :data:`TOOL_HEAVY_MIN_ACTIONS` gold actions;
* ``multi_turn_refunds``: a gold action in :data:`REFUND_TOOLS` (returns and cancellations,
  which refund the customer);
* ``safety``: no state-changing gold action, and the gold answer is to hand over
  (``transfer_to_human_agents``) or to do and tell nothing at all (no action, no
  ``communicate_info``): the agent must decline what the customer asks;
* ``long_tail`` when the task's *set* of gold tool names occurs in fewer than
  :data:`LONG_TAIL_SHARE` of the imported tasks, else ``common_intents``. The share is relative
  to the file being imported, so the same task may change sides in a different task set.

Split: ``split`` forces one; else ``split_tasks.json`` ``train`` -> ``train`` and ``test`` ->
``eval``; a task listed in neither (or no split file) gets the stable id hash of the OpenAI JSONL
importer with its default eval fraction.
"""

from __future__ import annotations

import ast
import copy
import json
import operator
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ImportFormatError, RowError
from .openai_jsonl import _eval_split, normalise_messages
from .schema import canonical_json, validate_row

TOOL_HEAVY_MIN_ACTIONS = 5
"""A task with at least this many gold actions is in cohort ``tool_heavy``."""

REFUND_TOOLS = frozenset({"return_delivered_order_items", "cancel_pending_order"})
"""Gold tools that put a task in cohort ``multi_turn_refunds``."""

TRANSFER_TOOL = "transfer_to_human_agents"

LONG_TAIL_SHARE = 0.05
"""A set of gold tool names held by fewer than this share of tasks makes them ``long_tail``."""

_SPLITS = {"train": "train", "test": "eval"}
_DEFAULT_EVAL_FRACTION = 0.2  # the OpenAI JSONL importer's default, for tasks no split lists
_SYNTHETIC = [
    "final assistant message (tau2 records none: communicate_info joined, else a confirmation)",
    "tool results (gold actions replayed against db.json)",
]


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def read_tau_tasks(path: str, *, cohorts: Sequence[str] = (), split: str | None = None) -> list[dict[str, Any]]:
    """Read a tau2-bench domain (its directory, or ``tasks.json`` inside it); returns validated rows.

    Row ids are ``tau2-<domain>-<task id>``. Raises :class:`ImportFormatError` for a missing or
    unreadable file, :class:`RowError` for a task that cannot become a row (no
    ``evaluation_criteria``, a gold action of a tool ``tools.json`` does not define...).
    """
    files = _locate(path)
    raw_tasks = _load_json(files.tasks, list, "a JSON list of tau2 tasks")
    tool_defs = _load_json(files.tools, list, "a JSON list of tool definitions")
    db = _load_json(files.db, dict, "a JSON object of tables (users, orders, products)")
    policy = _read_text(files.policy)
    task_splits = _read_splits(files.splits)

    tools, state_changing = _convert_tools(tool_defs, files.tools)
    tool_params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    dir_domain = os.path.basename(os.path.dirname(os.path.abspath(files.tasks)))
    tasks = [_parse_task(t, i, files, tool_params, dir_domain) for i, t in enumerate(raw_tasks)]
    if not tasks:
        raise ImportFormatError(f"{files.tasks} holds no tasks (an empty list); expected tau2-bench tasks")

    # Long-tail needs the whole file: how many tasks share each set of gold tool names.
    intents = Counter(t.intent for t in tasks)
    rows = []
    for i, task in enumerate(tasks):
        source = f"{files.tasks}[task {i}]"
        row = _task_to_row(
            task, source, policy, tools, state_changing, db, task_splits, cohorts, split,
            long_tail=intents[task.intent] < LONG_TAIL_SHARE * len(tasks),
        )
        validate_row(row, source)
        rows.append(row)
    return rows


def tool_to_openai(tool: Mapping[str, Any], source: str = "tools.json") -> dict[str, Any]:
    """One tau2 ``tools.json`` entry as an OpenAI function tool.

    Parameter annotations map to JSON schema types (``str`` -> string, ``int`` -> integer,
    ``float`` -> number, ``bool`` -> boolean, ``list[X]`` -> array of X, ``dict`` -> object);
    an ``Optional``/union/unknown annotation gets no type rather than a wrong one.
    ``mutates_state`` is not kept here: OpenAI rejects unknown keys in a function definition, so
    the importer puts the state-changing tool names in row metadata instead.
    """
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ImportFormatError(f"{source}: a tool has no name; every tools.json entry needs a non-empty \"name\"")
    params = tool.get("parameters") or []
    if not isinstance(params, list):
        raise ImportFormatError(f"{source}: tool {name!r}, field parameters: expected a list of "
                                "{name, annotation, required, description}, got a JSON "
                                f"{type(params).__name__}")
    properties: dict[str, Any] = {}
    required = []
    for k, p in enumerate(params):
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str):
            raise ImportFormatError(f"{source}: tool {name!r}, field parameters[{k}]: a parameter needs a \"name\"")
        prop = annotation_schema(str(p.get("annotation") or ""))
        if p.get("description"):
            prop["description"] = str(p["description"])
        properties[p["name"]] = prop
        if p.get("required"):
            required.append(p["name"])
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    fn: dict[str, Any] = {"name": name}
    if tool.get("description"):
        fn["description"] = str(tool["description"])
    fn["parameters"] = parameters
    return {"type": "function", "function": fn}


_SIMPLE_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                 "dict": "object", "list": "array"}


def annotation_schema(annotation: str) -> dict[str, Any]:
    """The JSON schema of a Python annotation as tau2 writes it (``str``, ``List[str]``...)."""
    a = annotation.replace(" ", "").replace("typing.", "")
    low = a.lower()
    if low in _SIMPLE_TYPES:
        return {"type": _SIMPLE_TYPES[low]}
    m = re.fullmatch(r"(?:list|sequence|tuple)\[(.+)\]", a, re.IGNORECASE)
    if m:
        items = annotation_schema(m.group(1).split(",")[0])
        return {"type": "array", "items": items} if items else {"type": "array"}
    if re.fullmatch(r"(?:dict|mapping)\[.+\]", a, re.IGNORECASE):
        return {"type": "object"}
    return {}  # Optional[...], X | None, Any, a model class: no type is better than a wrong one


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Files:
    tasks: str
    tools: str
    db: str
    policy: str
    splits: str | None


def _locate(path: str) -> _Files:
    if os.path.isdir(path):
        base, tasks = path, os.path.join(path, "tasks.json")
    else:
        base, tasks = os.path.dirname(path) or ".", path
    if not os.path.isfile(tasks):
        raise ImportFormatError(
            f"no tau2-bench tasks file at {tasks}; give the domain directory (holding tasks.json, tools.json, "
            "db.json, policy.md) or the tasks.json inside it"
        )
    found = {}
    for key, fname in (("tools", "tools.json"), ("db", "db.json"), ("policy", "policy.md")):
        p = os.path.join(base, fname)
        if not os.path.isfile(p):
            raise ImportFormatError(
                f"{fname} is missing beside {tasks} (looked for {p}); a tau2-bench import needs the domain's "
                f"tools.json, db.json and policy.md next to tasks.json"
            )
        found[key] = p
    splits = os.path.join(base, "split_tasks.json")
    return _Files(tasks, found["tools"], found["db"], found["policy"], splits if os.path.isfile(splits) else None)


def _load_json(path: str, kind: type, expected: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except OSError as exc:
        raise ImportFormatError(f"cannot read {path}: {exc.strerror}; check the path") from None
    except ValueError as exc:
        raise ImportFormatError(f"{path} is not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(value, kind):
        raise ImportFormatError(f"{path} holds a JSON {type(value).__name__}; expected {expected}")
    return value


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ImportFormatError(f"cannot read {path}: {exc.strerror}; check the path") from None


def _read_splits(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    raw = _load_json(path, dict, 'a JSON object {"train": [task ids], "test": [task ids]}')
    out: dict[str, str] = {}
    for name, ours in _SPLITS.items():  # "base" (= all tasks) and other keys carry no split
        ids = raw.get(name) or []
        if not isinstance(ids, list):
            raise ImportFormatError(f"{path}: field {name}: expected a list of task ids, got a JSON "
                                    f"{type(ids).__name__}")
        for tid in ids:
            if out.setdefault(str(tid), ours) != ours:
                raise ImportFormatError(f"{path}: task {tid!r} is listed in both train and test; list it in one")
    return out


def _convert_tools(tool_defs: list[Any], path: str) -> tuple[list[dict[str, Any]], list[str]]:
    tools, state_changing, seen = [], [], set()
    for i, t in enumerate(tool_defs):
        if not isinstance(t, Mapping):
            raise ImportFormatError(f"{path}[{i}]: a tool is a JSON {type(t).__name__}; expected an object")
        tool = tool_to_openai(t, f"{path}[{i}]")
        name = tool["function"]["name"]
        if name in seen:
            raise ImportFormatError(f"{path}[{i}]: tool {name!r} is defined twice; keep one definition")
        seen.add(name)
        tools.append(tool)
        if t.get("mutates_state"):
            state_changing.append(name)
    return tools, sorted(state_changing)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Action:
    action_id: str
    name: str
    arguments: dict[str, Any]
    compare_args: list[str] | None


@dataclass(frozen=True)
class _Task:
    id: str
    domain: str
    raw: Mapping[str, Any]
    instructions: Mapping[str, Any]
    actions: tuple[_Action, ...]
    outputs: tuple[str, ...]

    @property
    def intent(self) -> frozenset[str]:
        return frozenset(a.name for a in self.actions)


def _parse_task(
    task: Any, i: int, files: _Files, tool_params: Mapping[str, Mapping[str, Any]], dir_domain: str
) -> _Task:
    src = f"{files.tasks}[task {i}]"
    if not isinstance(task, Mapping):
        raise RowError(f"{src}: task is a JSON {type(task).__name__}; expected a tau2 task object")
    if task.get("id") in (None, ""):
        raise RowError(f"{src}: field id: the task has no id; give every task a unique id")
    tid = str(task["id"])
    crit = task.get("evaluation_criteria")
    if not isinstance(crit, Mapping):
        raise RowError(
            f"{src}: task {tid!r}, field evaluation_criteria: missing; the importer builds the expert trajectory "
            "from its gold actions: add evaluation_criteria with \"actions\" (may be []) or remove the task"
        )
    raw_actions = crit.get("actions") or []
    if not isinstance(raw_actions, list):
        raise RowError(f"{src}: task {tid!r}, field evaluation_criteria.actions: expected a list of "
                       f"{{name, arguments}}, got a JSON {type(raw_actions).__name__}")
    actions = []
    for k, a in enumerate(raw_actions):
        field = f"evaluation_criteria.actions[{k}]"
        if not isinstance(a, Mapping) or not isinstance(a.get("name"), str):
            raise RowError(f"{src}: task {tid!r}, field {field}.name: a gold action needs a tool name")
        name = a["name"]
        if name not in tool_params:
            raise RowError(
                f"{src}: task {tid!r}, field {field}.name: gold action calls unknown tool {name!r}; "
                f"{files.tools} defines {', '.join(sorted(tool_params))}: add the tool to tools.json or fix "
                "the action's name"
            )
        args = a.get("arguments") or {}
        if not isinstance(args, Mapping):
            raise RowError(f"{src}: task {tid!r}, field {field}.arguments: expected an object, got a JSON "
                           f"{type(args).__name__}")
        _check_arguments(src, tid, field, name, args, tool_params[name])
        compare = a.get("compare_args")
        actions.append(_Action(str(a.get("action_id") or f"{tid}_{k}"), name, dict(args),
                               list(compare) if isinstance(compare, list) else None))
    outputs = crit.get("communicate_info") or []
    if not isinstance(outputs, list):
        raise RowError(f"{src}: task {tid!r}, field evaluation_criteria.communicate_info: expected a list of "
                       "strings")
    scenario = task.get("user_scenario") or {}
    instructions = scenario.get("instructions") if isinstance(scenario, Mapping) else None
    if isinstance(instructions, str):  # tau2 allows free-text instructions
        instructions = {"reason_for_call": instructions}
    if not isinstance(instructions, Mapping):
        raise RowError(f"{src}: task {tid!r}, field user_scenario.instructions: missing; the customer's opening "
                       "message is built from its reason_for_call, known_info and unknown_info")
    domain = str(instructions.get("domain") or dir_domain.removeprefix("tau2-").removeprefix("tau2_"))
    return _Task(tid, domain, task, instructions, tuple(actions), tuple(str(o) for o in outputs))


def _check_arguments(
    src: str, tid: str, field: str, tool: str, args: Mapping[str, Any], params: Mapping[str, Any]
) -> None:
    known = params.get("properties") or {}
    for arg in args:
        if arg not in known:
            raise RowError(f"{src}: task {tid!r}, field {field}.arguments.{arg}: tool {tool!r} has no parameter "
                           f"{arg!r} (it takes {', '.join(known) or 'none'}); fix the gold action or tools.json")
    for arg in params.get("required") or ():
        if arg not in args:
            raise RowError(f"{src}: task {tid!r}, field {field}.arguments: required parameter {arg!r} of tool "
                           f"{tool!r} is missing; add it to the gold action")


def _opening_message(instructions: Mapping[str, Any]) -> str:
    parts = [instructions.get(k) for k in ("reason_for_call", "known_info", "unknown_info")]
    return "\n\n".join(str(p).strip() for p in parts if p and str(p).strip())


def _final_message(task: _Task, state_changing: Sequence[str]) -> str:
    if task.outputs:
        return ", ".join(task.outputs)
    names = [a.name for a in task.actions]
    if names and names[-1] == TRANSFER_TOOL:
        return "I have transferred you to a human agent, who will help you further."
    if any(n in state_changing for n in names):
        return "Your request has been processed. Is there anything else I can help you with?"
    if not names:  # nothing to do and nothing to tell: the gold answer is to decline
        return "I'm sorry, but I cannot help with that request. Is there anything else I can help you with?"
    return "Is there anything else I can help you with?"


def derived_cohorts(
    action_names: Sequence[str], outputs: Sequence[str], state_changing: Sequence[str], *, long_tail: bool
) -> list[str]:
    """The cohorts a task earns from its gold actions (see the module docstring for the rules)."""
    out = []
    if len(action_names) >= TOOL_HEAVY_MIN_ACTIONS:
        out.append("tool_heavy")
    if REFUND_TOOLS.intersection(action_names):
        out.append("multi_turn_refunds")
    changes_state = any(n in state_changing for n in action_names)
    declines = TRANSFER_TOOL in action_names or (not action_names and not outputs)
    if not changes_state and declines:
        out.append("safety")
    out.append("long_tail" if long_tail else "common_intents")
    return out


def _task_to_row(
    task: _Task,
    source: str,
    policy: str,
    tools: list[dict[str, Any]],
    state_changing: list[str],
    db: Mapping[str, Any],
    task_splits: Mapping[str, str],
    cohorts: Sequence[str],
    split: str | None,
    *,
    long_tail: bool,
) -> dict[str, Any]:
    row_id = f"tau2-{task.domain}-{task.id}"
    env = RetailEnv(db)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": policy},
        {"role": "user", "content": _opening_message(task.instructions)},
    ]
    for a in task.actions:
        call_id = f"call_{a.action_id}"
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": a.name, "arguments": canonical_json(a.arguments)}}
        ]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": a.name,
                         "content": env.call(a.name, a.arguments, source=f"{source} task {task.id!r}")})
    messages.append({"role": "assistant", "content": _final_message(task, state_changing)})

    names = [a.name for a in task.actions]
    all_cohorts = list(dict.fromkeys([*cohorts, *derived_cohorts(names, task.outputs, state_changing,
                                                                   long_tail=long_tail)]))
    desc = task.raw.get("description")
    metadata: dict[str, Any] = {
        "source": "tau2-bench",
        "domain": task.domain,
        "task_id": task.id,
        "description": {k: v for k, v in desc.items() if v is not None} if isinstance(desc, Mapping) else desc,
        "user_instructions": dict(task.instructions),
        "state_changing_tools": state_changing,
        "tau_split": {"train": "train", "eval": "test"}.get(task_splits.get(task.id, ""), None),
        "synthetic": _SYNTHETIC,
        "tool_errors": env.errors,
    }
    crit = task.raw["evaluation_criteria"]
    for key in ("nl_assertions", "reward_basis"):
        if crit.get(key) is not None:
            metadata[key] = crit[key]
    if any(a.compare_args is not None for a in task.actions):
        # tau2 compares only these arguments of a gold action (e.g. none of a transfer's summary).
        metadata["action_compare_args"] = [a.compare_args for a in task.actions]
    if task.raw.get("issues"):
        metadata["issues"] = task.raw["issues"]
    return {
        "id": row_id,
        "cohorts": all_cohorts,
        "split": split or task_splits.get(task.id) or _eval_split(row_id, _DEFAULT_EVAL_FRACTION),
        "messages": normalise_messages(messages),
        "tools": tools,
        "expected": {"actions": [{"name": a.name, "arguments": a.arguments} for a in task.actions],
                     "outputs": list(task.outputs)},
        "expert_scores": {},
        "metadata": metadata,
    }


# --------------------------------------------------------------------------------------------
# The retail environment, replayed over db.json
# --------------------------------------------------------------------------------------------
class ToolCallError(Exception):
    """A call the environment rejects; its result is ``"Error: <message>"`` (tau2's convention)."""


_BIN_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}


def _arith(node: ast.AST) -> float:
    # Only numbers and + - * / ( ): never eval() text that came from a data file.
    if isinstance(node, ast.Expression):
        return _arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
        return _BIN_OPS[type(node.op)](_arith(node.left), _arith(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ToolCallError("Invalid expression")


def _fold(text: str) -> str:
    # Names and emails match case- and accent-insensitively, as in tau2's lookups.
    return "".join(c for c in unicodedata.normalize("NFKD", str(text)) if not unicodedata.combining(c)).casefold()


def _cents(x: float) -> float:
    return round(x + 0.0, 2)


class RetailEnv:
    """The tau2 retail tools over a db.json, one instance per task.

    Reads see db.json plus this task's changes; a state-changing call deep-copies only the
    records it touches (copy-on-write), so replaying 114 tasks never copies the whole database.
    ``errors`` lists the calls that were rejected, as ``"tool: message"``.
    """

    def __init__(self, db: Mapping[str, Any]) -> None:
        self._db = db
        self._changed: dict[tuple[str, str], dict[str, Any]] = {}
        self.errors: list[str] = []

    def call(self, name: str, arguments: Mapping[str, Any], *, source: str = "tau2 task") -> str:
        """The tool message content of ``name(**arguments)``: JSON of a record, or plain text."""
        handler = getattr(self, f"_tool_{name}", None)
        if handler is None:
            raise ImportFormatError(
                f"{source}: gold action calls tool {name!r}, which the importer cannot replay (it implements the "
                "tau2 retail tools); a tool result is never made up: import a retail domain, or add the tool to "
                "pytest_bclone.dataset.tau_bench.RetailEnv"
            )
        try:
            result = handler(**arguments)
        except ToolCallError as exc:
            self.errors.append(f"{name}: {exc}")
            return f"Error: {exc}"
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Arguments of the wrong type, or a record missing a field: tau2 answers with an error too.
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            return f"Error: {type(exc).__name__}: {exc}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)

    # -- records -----------------------------------------------------------------------------
    def _get(self, table: str, key: str, what: str) -> dict[str, Any]:
        if (table, key) in self._changed:
            return self._changed[(table, key)]
        rec = (self._db.get(table) or {}).get(key)
        if not isinstance(rec, dict):
            raise ToolCallError(f"{what} not found")
        return rec

    def _mutable(self, table: str, key: str, what: str) -> dict[str, Any]:
        rec = self._get(table, key, what)
        if (table, key) not in self._changed:
            rec = copy.deepcopy(rec)
            self._changed[(table, key)] = rec
        return rec

    def _users(self) -> list[dict[str, Any]]:
        return [self._get("users", uid, "User") for uid in self._db.get("users") or {}]

    def _payment_method(self, user_id: str, method_id: str, mutable: bool = False) -> dict[str, Any]:
        user = (self._mutable if mutable else self._get)("users", user_id, "User")
        method = (user.get("payment_methods") or {}).get(method_id)
        if not isinstance(method, dict):
            raise ToolCallError("Payment method not found")
        return method

    def _variant(self, product_id: str, item_id: str) -> dict[str, Any]:
        variant = (self._get("products", product_id, "Product").get("variants") or {}).get(item_id)
        if not isinstance(variant, dict):
            raise ToolCallError("Variant not found")
        return variant

    def _price_difference(self, order: Mapping[str, Any], item_ids: Sequence[str],
                          new_item_ids: Sequence[str]) -> tuple[float, list[dict[str, Any]]]:
        have = [it["item_id"] for it in order.get("items") or ()]
        for iid in item_ids:
            if list(item_ids).count(iid) > have.count(iid):
                raise ToolCallError(f"{iid} not found")
        if len(item_ids) != len(new_item_ids):
            raise ToolCallError("The number of items to be exchanged should match")
        diff, variants = 0.0, []
        for iid, new_iid in zip(item_ids, new_item_ids):
            item = next(it for it in order["items"] if it["item_id"] == iid)
            variant = self._variant(item["product_id"], new_iid)
            if not variant.get("available"):
                raise ToolCallError(f"New item {new_iid} not found or available")
            diff += float(variant["price"]) - float(item["price"])
            variants.append(variant)
        return _cents(diff), variants

    @staticmethod
    def _is_gift_card(method: Mapping[str, Any]) -> bool:
        return method.get("source") == "gift_card"

    # -- read-only tools ---------------------------------------------------------------------
    def _tool_calculate(self, expression: str) -> str:
        if not all(c in "0123456789+-*/(). " for c in expression):
            raise ToolCallError("Invalid characters in expression")
        try:
            return str(round(_arith(ast.parse(expression, mode="eval")), 2))
        except (SyntaxError, ZeroDivisionError) as exc:
            raise ToolCallError(f"Invalid expression ({exc})") from None

    def _tool_find_user_id_by_email(self, email: str) -> str:
        for user in self._users():
            if _fold(user.get("email", "")) == _fold(email):
                return str(user["user_id"])
        raise ToolCallError("User not found")

    def _tool_find_user_id_by_name_zip(self, first_name: str, last_name: str, zip: str) -> str:
        for user in self._users():
            name, addr = user.get("name") or {}, user.get("address") or {}
            if (_fold(name.get("first_name", "")) == _fold(first_name)
                    and _fold(name.get("last_name", "")) == _fold(last_name) and addr.get("zip") == zip):
                return str(user["user_id"])
        raise ToolCallError("User not found")

    def _tool_get_order_details(self, order_id: str) -> dict[str, Any]:
        return self._get("orders", order_id, "Order")

    def _tool_get_product_details(self, product_id: str) -> dict[str, Any]:
        return self._get("products", product_id, "Product")

    def _tool_get_item_details(self, item_id: str) -> dict[str, Any]:
        for pid in self._db.get("products") or {}:
            variant = (self._get("products", pid, "Product").get("variants") or {}).get(item_id)
            if isinstance(variant, dict):
                return variant
        raise ToolCallError("Item not found")

    def _tool_get_user_details(self, user_id: str) -> dict[str, Any]:
        return self._get("users", user_id, "User")

    def _tool_list_all_product_types(self) -> str:
        products = [self._get("products", pid, "Product") for pid in self._db.get("products") or {}]
        return json.dumps({p["name"]: p["product_id"] for p in products}, sort_keys=True)

    def _tool_transfer_to_human_agents(self, summary: str) -> str:
        return "Transfer successful"

    # -- state-changing tools ----------------------------------------------------------------
    def _tool_cancel_pending_order(self, order_id: str, reason: str) -> dict[str, Any]:
        order = self._get("orders", order_id, "Order")
        if order.get("status") != "pending":
            raise ToolCallError("Non-pending order cannot be cancelled")
        if reason not in {"no longer needed", "ordered by mistake"}:
            raise ToolCallError("Invalid reason")
        order = self._mutable("orders", order_id, "Order")
        refunds = []
        for payment in order.get("payment_history") or ():
            refunds.append({"transaction_type": "refund", "amount": payment["amount"],
                            "payment_method_id": payment["payment_method_id"]})
            method = self._payment_method(order["user_id"], payment["payment_method_id"], mutable=True)
            if self._is_gift_card(method):  # a gift card is refunded at once
                method["balance"] = _cents(float(method.get("balance", 0)) + float(payment["amount"]))
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        order.setdefault("payment_history", []).extend(refunds)
        return order

    def _tool_exchange_delivered_order_items(self, order_id: str, item_ids: list[str], new_item_ids: list[str],
                                             payment_method_id: str) -> dict[str, Any]:
        order = self._get("orders", order_id, "Order")
        if order.get("status") != "delivered":
            raise ToolCallError("Non-delivered order cannot be exchanged")
        diff, _ = self._price_difference(order, item_ids, new_item_ids)
        method = self._payment_method(order["user_id"], payment_method_id)
        if self._is_gift_card(method) and float(method.get("balance", 0)) < diff:
            raise ToolCallError("Insufficient gift card balance to pay for the price difference")
        order = self._mutable("orders", order_id, "Order")
        order.update(status="exchange requested", exchange_items=sorted(item_ids),
                     exchange_new_items=sorted(new_item_ids), exchange_payment_method_id=payment_method_id,
                     exchange_price_difference=diff)
        return order

    def _tool_return_delivered_order_items(self, order_id: str, item_ids: list[str],
                                           payment_method_id: str) -> dict[str, Any]:
        order = self._get("orders", order_id, "Order")
        if order.get("status") != "delivered":
            raise ToolCallError("Non-delivered order cannot be returned")
        method = self._payment_method(order["user_id"], payment_method_id)
        history = order.get("payment_history") or [{}]
        if not self._is_gift_card(method) and payment_method_id != history[0].get("payment_method_id"):
            raise ToolCallError("Payment method should be the original payment method")
        have = [it["item_id"] for it in order.get("items") or ()]
        if any(item_ids.count(i) > have.count(i) for i in item_ids):
            raise ToolCallError("Some item not found")
        order = self._mutable("orders", order_id, "Order")
        order.update(status="return requested", return_items=sorted(item_ids),
                     return_payment_method_id=payment_method_id)
        return order

    def _tool_modify_pending_order_address(self, order_id: str, address1: str, address2: str, city: str,
                                           state: str, country: str, zip: str) -> dict[str, Any]:
        if "pending" not in str(self._get("orders", order_id, "Order").get("status")):
            raise ToolCallError("Non-pending order cannot be modified")
        order = self._mutable("orders", order_id, "Order")
        order["address"] = {"address1": address1, "address2": address2, "city": city, "country": country,
                            "state": state, "zip": zip}
        return order

    def _tool_modify_pending_order_items(self, order_id: str, item_ids: list[str], new_item_ids: list[str],
                                         payment_method_id: str) -> dict[str, Any]:
        order = self._get("orders", order_id, "Order")
        if order.get("status") != "pending":
            raise ToolCallError("Non-pending order cannot be modified")
        if any(a == b for a, b in zip(item_ids, new_item_ids)):
            raise ToolCallError("The new item id should be different from the old item id")
        diff, variants = self._price_difference(order, item_ids, new_item_ids)
        method = self._payment_method(order["user_id"], payment_method_id)
        if self._is_gift_card(method) and float(method.get("balance", 0)) < diff:
            raise ToolCallError("Insufficient gift card balance to pay for the new item")
        order = self._mutable("orders", order_id, "Order")
        order.setdefault("payment_history", []).append(
            {"transaction_type": "payment" if diff > 0 else "refund", "amount": abs(diff),
             "payment_method_id": payment_method_id})
        if self._is_gift_card(method):
            method = self._payment_method(order["user_id"], payment_method_id, mutable=True)
            method["balance"] = _cents(float(method.get("balance", 0)) - diff)
        taken: set[int] = set()  # duplicate item ids replace distinct order lines
        for iid, new_iid, variant in zip(item_ids, new_item_ids, variants):
            k = next(k for k, it in enumerate(order["items"]) if it["item_id"] == iid and k not in taken)
            taken.add(k)
            order["items"][k].update(item_id=new_iid, price=variant["price"], options=copy.deepcopy(variant.get("options")))
        order["status"] = "pending (item modified)"
        return order

    def _tool_modify_pending_order_payment(self, order_id: str, payment_method_id: str) -> dict[str, Any]:
        order = self._get("orders", order_id, "Order")
        if "pending" not in str(order.get("status")):
            raise ToolCallError("Non-pending order cannot be modified")
        method = self._payment_method(order["user_id"], payment_method_id)
        history = order.get("payment_history") or []
        if len(history) != 1 or history[0].get("transaction_type") != "payment":
            raise ToolCallError("There should be exactly one payment for a pending order")
        old_id, amount = history[0]["payment_method_id"], float(history[0]["amount"])
        if old_id == payment_method_id:
            raise ToolCallError("The new payment method should be different from the current one")
        if self._is_gift_card(method) and float(method.get("balance", 0)) < amount:
            raise ToolCallError("Insufficient gift card balance to pay for the order")
        order = self._mutable("orders", order_id, "Order")
        order["payment_history"].extend([
            {"transaction_type": "payment", "amount": amount, "payment_method_id": payment_method_id},
            {"transaction_type": "refund", "amount": amount, "payment_method_id": old_id},
        ])
        for mid, sign in ((payment_method_id, -1), (old_id, 1)):
            m = self._payment_method(order["user_id"], mid, mutable=True)
            if self._is_gift_card(m):
                m["balance"] = _cents(float(m.get("balance", 0)) + sign * amount)
        return order

    def _tool_modify_user_address(self, user_id: str, address1: str, address2: str, city: str, state: str,
                                  country: str, zip: str) -> dict[str, Any]:
        user = self._mutable("users", user_id, "User")
        user["address"] = {"address1": address1, "address2": address2, "city": city, "country": country,
                           "state": state, "zip": zip}
        return user


__all__ = [
    "LONG_TAIL_SHARE",
    "REFUND_TOOLS",
    "TOOL_HEAVY_MIN_ACTIONS",
    "RetailEnv",
    "ToolCallError",
    "annotation_schema",
    "derived_cohorts",
    "read_tau_tasks",
    "tool_to_openai",
]
