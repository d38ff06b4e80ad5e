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
import functools
import json
import operator
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BcloneError, ImportFormatError, RowError
from .importers import ImportOptions, SkippedSource
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


def iter_rows(path: str, options: ImportOptions, skipped: list[SkippedSource]) -> Iterator[dict[str, Any]]:
    """The ``tau-bench`` importer: a tau2 domain (directory or tasks.json), or a recorded-runs file.

    Recorded runs are tau-bench's historical trajectories (a JSON list of ``{task_id, trial,
    reward, info, traj}``) and tau2-bench results files (``{"info", "tasks", "simulations"}``);
    see :func:`iter_run_rows`.
    """
    if not os.path.isdir(path) and is_runs_file(path):
        yield from iter_run_rows(path, options, skipped)
        return
    if os.path.isfile(path) and os.path.basename(path) != "tasks.json" and not _looks_like_tasks(path):
        # Neither shape: say so, rather than ask for a tools.json the user never meant to give.
        raise ImportFormatError(
            f"{path} is neither recorded runs (tau-bench: a JSON list of {{task_id, trial, reward, info, traj}}; "
            "tau2: a results file with \"simulations\") nor tau2 tasks (user_scenario, evaluation_criteria); give a "
            "runs file, or a tau2 domain directory"
        )
    yield from read_tau_tasks(path, cohorts=options.cohorts, split=options.split)


def _looks_like_tasks(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(65536)
    return b'"user_scenario"' in head or b'"evaluation_criteria"' in head


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
# Recorded runs: tau-bench trajectories and tau2-bench results files
# --------------------------------------------------------------------------------------------
_MSG_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")
_NON_EVALUABLE = frozenset({"infrastructure_error", "context_window_exceeded"})  # tau2 leaves them out of metrics
_DOMAIN_WORDS = ("retail", "airline", "telecom", "mock")


def _obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (optional nested fields)."""
    return value if isinstance(value, dict) else {}


def is_runs_file(path: str) -> bool:
    """True when ``path`` looks like recorded runs (a tau-bench run list or a tau2 results file)."""
    if os.path.basename(path) == "tasks.json" or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(65536).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if head.startswith("["):
        return '"traj"' in head or ('"task_id"' in head and '"reward"' in head)
    return head.startswith("{") and '"simulations"' in head


def _load_runs_json(path: str) -> Any:
    from .importers import open_checked

    with open_checked(path, "a tau-bench runs JSON file") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ImportFormatError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {col}); "
                                "re-export the runs file as UTF-8") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        lineno, colno = getattr(exc, "lineno", "?"), getattr(exc, "colno", "?")
        raise ImportFormatError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)} at column {colno}); "
                                "expected tau-bench runs (a JSON list of {task_id, trial, reward, info, traj}) or a "
                                "tau2 results file ({\"tasks\", \"simulations\"})") from None


def iter_run_rows(path: str, options: ImportOptions, skipped: list[SkippedSource]) -> Iterator[dict[str, Any]]:
    """Rows of a recorded-runs file: one per run (task x trial), validated.

    * the run's reward becomes ``expert_scores.task_completion`` (tau2's reward breakdown and
      tau-bench's ``r_actions``/``r_outputs`` are kept as further ``expert_scores``);
    * the task's gold actions (``info.task.actions`` in tau-bench, the results file's ``tasks``
      in tau2) become ``expected.actions``, its outputs/``communicate_info`` ``expected.outputs``;
    * task id, trial, domain, simulation id and timestamps go to metadata;
    * every trial of one task lands in the same split (a stable hash of domain + task id), so a
      task is never on both sides.

    A run that cannot become a row (a failed run, no reward, no assistant turn...) is skipped
    and reported with its index, task and trial, or raises under ``options.strict``.

    A run list is one JSON document, so it is parsed whole (unlike JSONL imports, which
    stream); a results file of a few thousand runs is a few hundred MB at most.
    """
    from .importers import skip_or_raise

    data = _load_runs_json(path)
    if isinstance(data, list):
        units = _tau_bench_runs(path, data, options)
    elif isinstance(data, dict) and isinstance(data.get("simulations"), list):
        units = _tau2_runs(path, data, options)
    else:
        raise ImportFormatError(f"{path} holds a JSON {type(data).__name__} without \"simulations\"; expected "
                                "tau-bench runs (a JSON list of {task_id, trial, reward, info, traj}) or a tau2 "
                                "results file ({\"info\", \"tasks\", \"simulations\"})")
    seen: set[str] = set()
    for where, build in units:
        try:
            row = build()
            if row["id"] in seen:
                raise RowError(f"{where}: run {row['id']!r} appears twice in the file; keep one")
            validate_row(row, where)
        except BcloneError as exc:
            skip_or_raise(exc, where, options, skipped)
            continue
        seen.add(row["id"])
        yield row


def _clean_message(m: Any, where: str, k: int) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise RowError(f"{where}: message {k} is a JSON {type(m).__name__}; expected an OpenAI chat message")
    msg = {key: m[key] for key in _MSG_KEYS if key in m and m[key] is not None}
    if m.get("role") == "assistant":
        msg.setdefault("content", None)
        if not m.get("tool_calls"):
            msg.pop("tool_calls", None)
        else:
            msg["tool_calls"] = [
                {"id": str(tc.get("id") or f"call_{k}_{j}"), "type": "function",
                 "function": {"name": (tc.get("function") or {}).get("name"),
                              "arguments": (tc.get("function") or {}).get("arguments", "{}")}}
                if isinstance(tc, Mapping) else tc
                for j, tc in enumerate(m["tool_calls"])
            ]
    elif msg.get("role") in ("system", "user", "tool"):
        msg.setdefault("content", "")
    return msg


def _reward(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RowError(f"{where}: reward {value!r} is not a number in [0, 1]; a recorded run needs its reward")
    return float(value)


def _guess_domain(messages: Sequence[Any], path: str) -> str:
    # tau-bench writes no domain into a run: its system prompt (the domain's policy) names it,
    # e.g. "# Retail agent policy"; failing that, the file name usually does.
    if messages and isinstance(messages[0], Mapping) and messages[0].get("role") == "system":
        head = str(messages[0].get("content") or "")[:200].lower()
        for word in _DOMAIN_WORDS:
            if word in head:
                return word
    base = os.path.basename(path).lower()
    return next((w for w in _DOMAIN_WORDS if w in base), "unknown")


def _tau_bench_runs(path: str, data: list[Any], options: ImportOptions) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    for i, run in enumerate(data):
        if not isinstance(run, Mapping):
            where = f"{path}[run {i}]"

            def bad(where: str = where, run: Any = run) -> dict[str, Any]:
                raise RowError(f"{where}: a run is a JSON {type(run).__name__}; expected {{task_id, trial, reward, "
                               "info, traj}")
            yield where, bad
            continue
        where = f"{path}[run {i}] (task {run.get('task_id')!r}, trial {run.get('trial')!r})"
        yield where, functools.partial(_tau_bench_row, run, where, path, options)


def _tau_bench_row(run: Mapping[str, Any], where: str, path: str, options: ImportOptions) -> dict[str, Any]:
    info = _obj(run.get("info"))
    if info.get("error"):
        raise RowError(f"{where}: the run failed ({str(info['error'])[:120]}); it holds no expert trajectory")
    traj = run.get("traj")
    if not isinstance(traj, list) or not traj:
        raise RowError(f"{where}: field traj is {'empty' if isinstance(traj, list) else 'missing'}; a recorded run "
                       "needs its messages")
    if run.get("task_id") is None:
        raise RowError(f"{where}: field task_id is missing; every run names its task")
    reward = _reward(run.get("reward"), where)
    messages = [_clean_message(m, where, k) for k, m in enumerate(traj)]
    if not any(m.get("role") == "assistant" for m in messages):
        raise RowError(f"{where}: the run has no assistant turn, so no decision point to learn from; "
                       "drop the run or record the agent's replies")
    domain = str(info.get("domain") or _guess_domain(messages, path))
    task = _obj(info.get("task"))
    task_id, trial = str(run["task_id"]), run.get("trial", 0)
    row_id = f"tau-{domain}-{task_id}-t{trial}"
    gold = task.get("actions") or []
    expected: dict[str, Any] = {
        "actions": [{"name": a.get("name"), "arguments": a.get("kwargs", a.get("arguments")) or {}}
                    for a in gold if isinstance(a, Mapping)],
        "outputs": [str(o) for o in task.get("outputs") or ()],
    }
    scores = {"task_completion": reward}
    reward_info = _obj(info.get("reward_info"))
    detail = _obj(reward_info.get("info"))
    for key in ("r_actions", "r_outputs"):
        v = detail.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            scores[key] = float(v)
    metadata: dict[str, Any] = {
        "source": "tau-bench run", "run_file": os.path.basename(path), "domain": domain, "task_id": task_id,
        "trial": trial, "intent": "+".join(sorted({a["name"] for a in expected["actions"] if a["name"]})) or "none",
    }
    for key in ("user_id", "instruction"):
        if task.get(key) is not None:
            metadata[key] = task[key]
    for key in ("user_cost", "total_cost", "source"):
        if info.get(key) is not None:
            metadata["tau_" + key if key == "source" else key] = info[key]
    return _run_row(row_id, domain, task_id, messages, [], expected, scores, metadata, options)


def _tau2_runs(path: str, data: Mapping[str, Any], options: ImportOptions) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    info = _obj(data.get("info"))
    env = _obj(info.get("environment_info"))
    domain = str(env.get("domain_name") or _guess_domain([], path))
    policy = env.get("policy")
    tools = _tau2_tools(env.get("tool_defs"), path)
    tasks = {str(t.get("id")): t for t in data.get("tasks") or () if isinstance(t, Mapping)}
    for i, sim in enumerate(data["simulations"]):
        tid = sim.get("task_id") if isinstance(sim, Mapping) else None
        where = f"{path}[simulation {i}] (task {tid!r}, trial {sim.get('trial') if isinstance(sim, Mapping) else None!r})"
        yield where, functools.partial(_tau2_row, sim, where, domain, policy, tools, tasks, options)


def _tau2_tools(tool_defs: Any, path: str) -> list[dict[str, Any]]:
    """OpenAI tools from the results file's ``info.environment_info.tool_defs`` (when present)."""
    out: list[dict[str, Any]] = []
    items = tool_defs.items() if isinstance(tool_defs, Mapping) else (
        ((t.get("name") if isinstance(t, Mapping) else None), t) for t in tool_defs or ())
    for name, spec in items:
        if isinstance(spec, Mapping) and spec.get("type") == "function" and isinstance(spec.get("function"), Mapping):
            out.append({"type": "function", "function": dict(spec["function"])})
            continue
        if isinstance(spec, Mapping) and isinstance(spec.get("openai_schema"), Mapping):
            out.append(dict(spec["openai_schema"]))
            continue
        fn: dict[str, Any] = {"name": str(name or (spec.get("name") if isinstance(spec, Mapping) else ""))}
        if isinstance(spec, Mapping):
            desc = spec.get("description") or spec.get("short_desc")
            if desc:
                fn["description"] = str(desc)
            params = spec.get("parameters") or spec.get("params")
            fn["parameters"] = dict(params) if isinstance(params, Mapping) else {"type": "object", "properties": {}}
        elif isinstance(spec, str):
            fn["description"] = spec
            fn["parameters"] = {"type": "object", "properties": {}}
        if fn["name"]:
            out.append({"type": "function", "function": fn})
    return out


def _tau2_message(m: Any, where: str, k: int) -> dict[str, Any] | None:
    """A tau2 message as an OpenAI one; None for the user's own tool traffic (telecom's user tools)."""
    if not isinstance(m, Mapping):
        raise RowError(f"{where}: message {k} is a JSON {type(m).__name__}; expected a tau2 message")
    role = m.get("role")
    if role == "tool":
        if m.get("requestor") == "user":
            return None
        return {"role": "tool", "tool_call_id": str(m.get("id") or ""), "content": str(m.get("content") or "")}
    if role == "assistant":
        msg: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
        calls = [tc for tc in m.get("tool_calls") or () if isinstance(tc, Mapping)]
        if calls:
            msg["tool_calls"] = [
                {"id": str(tc.get("id") or f"call_{k}_{j}"), "type": "function",
                 "function": {"name": tc.get("name"), "arguments": canonical_json(tc.get("arguments") or {})
                              if isinstance(tc.get("arguments"), Mapping) else str(tc.get("arguments") or "{}")}}
                for j, tc in enumerate(calls)
            ]
        return msg
    if role in ("user", "system"):
        if not m.get("content"):
            return None  # a user turn that only ran the user's own tools
        return {"role": role, "content": str(m["content"])}
    raise RowError(f"{where}: message {k} has role {role!r}; expected system, user, assistant or tool")


def _tau2_row(sim: Any, where: str, domain: str, policy: Any, tools: list[dict[str, Any]],
              tasks: Mapping[str, Any], options: ImportOptions) -> dict[str, Any]:
    if not isinstance(sim, Mapping):
        raise RowError(f"{where}: a simulation is a JSON {type(sim).__name__}; expected a tau2 SimulationRun")
    reason = str(sim.get("termination_reason") or "")
    if reason in _NON_EVALUABLE:
        raise RowError(f"{where}: terminated by {reason}, which tau2 counts as not evaluable; rerun that task")
    reward_info = sim.get("reward_info")
    if not isinstance(reward_info, Mapping):
        raise RowError(f"{where}: no reward_info: the run was not evaluated; evaluate it with tau2 first")
    reward = _reward(reward_info.get("reward"), where)
    raw = sim.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RowError(f"{where}: field messages is empty or missing; a recorded run needs its messages")
    messages = [c for k, m in enumerate(raw) if (c := _tau2_message(m, where, k)) is not None]
    # Tool results answer calls the assistant made: drop any orphan (e.g. a user tool's echo).
    made = {tc["id"] for m in messages for tc in m.get("tool_calls") or ()}
    messages = [m for m in messages if m["role"] != "tool" or m["tool_call_id"] in made]
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(f"{where}: the run has no assistant turn, so no decision point to learn from; "
                       "drop the run or record the agent's replies")
    if isinstance(policy, str) and policy and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": policy})
    task_id = str(sim.get("task_id"))
    trial = sim.get("trial")
    row_id = f"tau2-{domain}-{task_id}-t{trial if trial is not None else sim.get('id')}"
    task = tasks.get(task_id) or {}
    crit = _obj(task.get("evaluation_criteria"))
    gold = [a for a in crit.get("actions") or () if isinstance(a, Mapping) and a.get("requestor", "assistant")
            == "assistant"]
    expected: dict[str, Any] = {"actions": [{"name": a.get("name"), "arguments": a.get("arguments") or {}}
                                            for a in gold],
                "outputs": [str(o) for o in crit.get("communicate_info") or ()]}
    scores = {"task_completion": reward}
    for k, v in _obj(reward_info.get("reward_breakdown")).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            scores[f"reward_{str(k).lower()}"] = float(v)
    metadata: dict[str, Any] = {
        "source": "tau2-bench results", "domain": domain, "task_id": task_id, "trial": trial,
        "simulation_id": sim.get("id"),
        "intent": "+".join(sorted({a["name"] for a in expected["actions"] if a["name"]})) or "none",
    }
    for key in ("timestamp", "start_time", "end_time", "duration", "termination_reason", "agent_cost", "user_cost",
                "seed"):
        if sim.get(key) is not None:
            metadata[key] = sim[key]
    return _run_row(row_id, domain, task_id, messages, tools, expected, scores, metadata, options)


def _run_row(row_id: str, domain: str, task_id: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
             expected: dict[str, Any], scores: dict[str, float], metadata: dict[str, Any],
             options: ImportOptions) -> dict[str, Any]:
    if not tools:
        # tau-bench's run files carry no tool definitions; the names the run called are the best
        # the file offers. Marked, so a gate does not mistake them for the real schemas.
        names = sorted({tc["function"]["name"] for m in messages for tc in m.get("tool_calls") or ()
                        if isinstance(tc.get("function", {}).get("name"), str)})
        tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in names]
        metadata["tools_inferred_from_calls"] = True
    return {
        "id": row_id,
        "cohorts": list(options.cohorts),
        # All trials of a task share a split: the hash of the task, not of the run.
        "split": options.split or _eval_split(f"{domain}-{task_id}", options.eval_fraction),
        "messages": normalise_messages(messages),
        "tools": tools,
        "expected": expected,
        "expert_scores": scores,
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
    "is_runs_file",
    "iter_rows",
    "iter_run_rows",
    "read_tau_tasks",
    "tool_to_openai",
]
