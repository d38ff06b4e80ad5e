"""The tau2-bench importer: the real retail domain (when present) and small synthetic domains."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.schema import canonical_json, validate_row
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.dataset.tau_bench import RetailEnv, annotation_schema, read_tau_tasks, tool_to_openai
from pytest_bclone.errors import ImportFormatError, RowError

RETAIL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tau2-retail"


@pytest.fixture(scope="module")
def retail() -> dict[str, Any]:
    if not (RETAIL / "tasks.json").is_file():
        msg = f"tau2 retail data not found at {RETAIL} (the shared data directory of the project)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must provide it (a skip there would hide the real-data tests)")
        pytest.skip(msg)
    return {
        "rows": read_tau_tasks(str(RETAIL)),
        "tasks": json.loads((RETAIL / "tasks.json").read_text()),
        "tools": json.loads((RETAIL / "tools.json").read_text()),
        "db": json.loads((RETAIL / "db.json").read_text()),
    }


def _calls(row: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(tool call, tool message) pairs of a row, in order."""
    msgs = row["messages"]
    out = []
    for i, m in enumerate(msgs):
        for tc in m.get("tool_calls") or ():
            answer = next(r for r in msgs[i + 1:] if r["role"] == "tool" and r["tool_call_id"] == tc["id"])
            out.append((tc, answer))
    return out


# -- the real tau2 retail domain ----------------------------------------------------------------
def test_every_task_becomes_a_valid_row_with_the_published_split(retail: dict[str, Any]) -> None:
    rows = retail["rows"]
    assert len(rows) == 114
    assert Counter(r["split"] for r in rows) == {"train": 74, "eval": 40}
    split_file = json.loads((RETAIL / "split_tasks.json").read_text())
    by_task = {r["metadata"]["task_id"]: r for r in rows}
    assert {by_task[t]["split"] for t in split_file["test"]} == {"eval"}
    assert rows[0]["id"] == "tau2-retail-0"
    assert len({r["id"] for r in rows}) == 114
    for r in rows:
        validate_row(r, r["id"])
        assert r["messages"][0]["role"] == "system" and "Retail agent policy" in r["messages"][0]["content"]
        assert r["messages"][1]["role"] == "user" and r["messages"][1]["content"]


def test_gold_actions_are_expected_actions_and_assistant_tool_calls(retail: dict[str, Any]) -> None:
    for row, task in zip(retail["rows"], retail["tasks"]):
        gold = task["evaluation_criteria"]["actions"] or []
        assert row["expected"]["actions"] == [{"name": a["name"], "arguments": a["arguments"]} for a in gold]
        assert row["expected"]["outputs"] == task["evaluation_criteria"]["communicate_info"]
        calls = [tc["function"] for tc, _ in _calls(row)]
        assert [(c["name"], c["arguments"]) for c in calls] == [(a["name"], canonical_json(a["arguments"]))
                                                                for a in gold]
        assistants = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(assistants) == len(gold) + 1  # one call a turn, then the final text
        final = assistants[-1]
        assert final["content"] and "tool_calls" not in final
        for info in task["evaluation_criteria"]["communicate_info"]:
            assert info in final["content"]


def test_read_only_lookups_return_the_real_db_records(retail: dict[str, Any]) -> None:
    db, seen = retail["db"], Counter()
    for row in retail["rows"]:
        written = False
        for tc, answer in _calls(row):
            name, args = tc["function"]["name"], json.loads(tc["function"]["arguments"])
            if name in row["metadata"]["state_changing_tools"]:
                written = True
            elif answer["content"].startswith("Error:"):
                continue
            elif name == "get_order_details" and not written:
                order = json.loads(answer["content"])
                assert order == db["orders"][args["order_id"]]
                assert order["user_id"] == db["orders"][args["order_id"]]["user_id"]
                seen[name] += 1
            elif name == "get_user_details" and not written:
                assert json.loads(answer["content"]) == db["users"][args["user_id"]]
                seen[name] += 1
            elif name == "get_product_details":
                assert json.loads(answer["content"]) == db["products"][args["product_id"]]
                seen[name] += 1
            elif name == "find_user_id_by_email":
                assert db["users"][answer["content"]]["email"] == args["email"]
                seen[name] += 1
            elif name == "find_user_id_by_name_zip":
                user = db["users"][answer["content"]]
                assert (user["name"]["first_name"], user["address"]["zip"]) == (args["first_name"], args["zip"])
                seen[name] += 1
    assert min(seen.values()) > 5 and len(seen) == 5


def test_state_changes_are_replayed_and_seen_by_later_lookups(retail: dict[str, Any]) -> None:
    checked = 0
    for row in retail["rows"]:
        status: dict[str, str] = {}
        for tc, answer in _calls(row):
            name, args = tc["function"]["name"], json.loads(tc["function"]["arguments"])
            if answer["content"].startswith("Error:") or "order_id" not in args:
                continue
            record = json.loads(answer["content"])
            if name in row["metadata"]["state_changing_tools"]:
                status[args["order_id"]] = record["status"]
            elif name == "get_order_details" and args["order_id"] in status:
                assert record["status"] == status[args["order_id"]]
                checked += 1
    assert checked >= 3
    # Task 0 exchanges two items: the result is the order after the exchange was requested.
    _, answer = _calls(retail["rows"][0])[-1]
    assert json.loads(answer["content"])["status"] == "exchange requested"


def test_gold_failed_calls_are_kept_as_tau2_errors(retail: dict[str, Any]) -> None:
    by_task = {r["metadata"]["task_id"]: r for r in retail["rows"]}
    # The customer of task 67 misremembers their zip twice before the right one.
    assert by_task["67"]["metadata"]["tool_errors"] == ["find_user_id_by_name_zip: User not found"] * 2
    contents = [a["content"] for _, a in _calls(by_task["67"])]
    assert contents[:3] == ["Error: User not found", "Error: User not found", "noah_ito_3850"]


def test_toolset_is_the_sixteen_tools_as_openai_functions(retail: dict[str, Any]) -> None:
    for row in retail["rows"]:
        assert row["tools"] == retail["rows"][0]["tools"]
    tools = {t["function"]["name"]: t for t in retail["rows"][0]["tools"]}
    assert len(tools) == 16 and set(tools) == {t["name"] for t in retail["tools"]}
    exchange = tools["exchange_delivered_order_items"]["function"]
    assert set(exchange) == {"name", "description", "parameters"}  # nothing OpenAI would reject
    assert exchange["parameters"]["properties"]["item_ids"]["type"] == "array"
    assert exchange["parameters"]["properties"]["item_ids"]["items"] == {"type": "string"}
    assert exchange["parameters"]["required"] == ["order_id", "item_ids", "new_item_ids", "payment_method_id"]
    assert "required" not in tools["list_all_product_types"]["function"]["parameters"]
    changing = retail["rows"][0]["metadata"]["state_changing_tools"]
    assert changing == sorted(t["name"] for t in retail["tools"] if t["mutates_state"]) and len(changing) == 7


def test_derived_cohorts(retail: dict[str, Any]) -> None:
    rows = retail["rows"]
    counts = Counter(c for r in rows for c in r["cohorts"])
    assert counts == {"long_tail": 80, "tool_heavy": 60, "multi_turn_refunds": 43, "common_intents": 34,
                      "safety": 4}
    by_task = {r["metadata"]["task_id"]: r for r in rows}
    assert sorted(t for t, r in by_task.items() if "safety" in r["cohorts"]) == ["10", "12", "50", "57"]
    assert "safety" not in by_task["26"]["cohorts"]  # transfers, but only after a return
    for r, task in zip(rows, retail["tasks"]):
        n = len(task["evaluation_criteria"]["actions"] or [])
        assert ("tool_heavy" in r["cohorts"]) == (n >= 5)
        assert ("long_tail" in r["cohorts"]) != ("common_intents" in r["cohorts"])


def test_cli_import_show_and_load(retail: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    assert main(["dataset", "--root", root, "import", str(RETAIL), "--format", "tau-bench",
                 "--name", "retail", "--version", "v1"]) == 0
    expected_points = sum(len(r["expected"]["actions"]) + 1 for r in retail["rows"])
    assert f"114 trajectories, {expected_points} decision points" in capsys.readouterr().out
    assert main(["dataset", "--root", root, "show", "retail@v1"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["counts"]["splits"] == {"eval": 40, "train": 74}
    assert manifest["counts"]["cohorts"]["safety"] == {"eval": 1, "train": 3}
    assert manifest["lineage"]["format"] == "tau-bench" and len(manifest["toolset"]) == 16
    version = DatasetStore(root).load("v1")
    assert len(version.trajectories) == 114
    assert sum(len(t.decision_points()) for t in version.trajectories) == expected_points == 664
    t = next(t for t in version.trajectories if t.id == "tau2-retail-0")
    assert t.expected is not None and [a.name for a in t.expected.actions][-1] == "exchange_delivered_order_items"
    assert len(version.select("eval")) == 40


# -- small synthetic domains: parsing rules and errors --------------------------------------------
TOOLS = [
    {"name": "get_order_details", "mutates_state": False, "description": "Get an order.",
     "parameters": [{"name": "order_id", "annotation": "str", "required": True, "description": "The order id."}]},
    {"name": "cancel_pending_order", "mutates_state": True, "description": "Cancel a pending order.",
     "parameters": [{"name": "order_id", "annotation": "str", "required": True},
                    {"name": "reason", "annotation": "str", "required": True}]},
    {"name": "transfer_to_human_agents", "mutates_state": False, "description": "Hand over.",
     "parameters": [{"name": "summary", "annotation": "str", "required": True}]},
]
DB = {
    "users": {"ann_1": {"user_id": "ann_1", "name": {"first_name": "Ann", "last_name": "Lee"},
                        "address": {"zip": "10001"}, "email": "ann@example.com",
                        "payment_methods": {"gift_card_1": {"source": "gift_card", "id": "gift_card_1",
                                                            "balance": 10.0}},
                        "orders": ["#W1"]}},
    "orders": {"#W1": {"order_id": "#W1", "user_id": "ann_1", "status": "pending", "items": [],
                       "payment_history": [{"transaction_type": "payment", "amount": 25.5,
                                            "payment_method_id": "gift_card_1"}]}},
    "products": {},
}


def _task(tid: str, actions: list[dict[str, Any]], info: list[str] | None = None) -> dict[str, Any]:
    return {"id": tid, "description": {"purpose": "test", "notes": None},
            "user_scenario": {"instructions": {"domain": "shop", "reason_for_call": "You want to cancel #W1.",
                                               "known_info": "You are Ann Lee.", "unknown_info": None,
                                               "task_instructions": "Be polite."}},
            "evaluation_criteria": {"actions": actions, "communicate_info": info or []}}


def _domain(tmp_path: Path, tasks: Any, *, splits: dict[str, list[str]] | None = None, skip: str = "") -> Path:
    d = tmp_path / "tau2-shop"
    d.mkdir(exist_ok=True)
    files = {"tasks.json": tasks, "tools.json": TOOLS, "db.json": DB}
    if splits is not None:
        files["split_tasks.json"] = splits
    for name, value in files.items():
        if name != skip:
            (d / name).write_text(json.dumps(value))
    if skip != "policy.md":
        (d / "policy.md").write_text("# Shop policy\nBe nice.\n")
    return d


def test_synthetic_domain_rows_split_and_cohorts(tmp_path: Path) -> None:
    cancel = {"action_id": "a_0", "name": "cancel_pending_order",
              "arguments": {"order_id": "#W1", "reason": "no longer needed"}}
    look = {"action_id": "a_1", "name": "get_order_details", "arguments": {"order_id": "#W1"}}
    transfer = {"name": "transfer_to_human_agents", "arguments": {"summary": "wants a refund in cash"},
                "compare_args": []}
    tasks = [_task("a", [cancel, look]), _task("b", [transfer]), _task("c", []), _task("d", [], ["25.5"])]
    d = _domain(tmp_path, tasks, splits={"train": ["a", "b"], "test": ["c"], "base": ["a", "b", "c", "d"]})
    rows = {r["metadata"]["task_id"]: r for r in read_tau_tasks(str(d), cohorts=["shop"])}
    assert rows["a"]["id"] == "tau2-shop-a"
    assert [rows[t]["split"] for t in "abc"] == ["train", "train", "eval"]
    assert rows["d"]["split"] in ("train", "eval")  # listed nowhere: the stable id hash
    assert rows["a"]["cohorts"] == ["shop", "multi_turn_refunds", "common_intents"]  # 1 of 4 tasks: not rare
    assert "safety" in rows["b"]["cohorts"] and "safety" in rows["c"]["cohorts"]
    assert "safety" not in rows["d"]["cohorts"]  # nothing to do, but something to tell
    assert rows["b"]["metadata"]["action_compare_args"] == [[]]
    assert rows["d"]["messages"][-1] == {"role": "assistant", "content": "25.5"}
    assert rows["a"]["messages"][1]["content"] == "You want to cancel #W1.\n\nYou are Ann Lee."
    # the cancellation refunds the gift card and the later lookup sees the cancelled order
    cancelled = json.loads(rows["a"]["messages"][3]["content"])
    assert cancelled["status"] == "cancelled" and cancelled["payment_history"][-1]["transaction_type"] == "refund"
    assert json.loads(rows["a"]["messages"][5]["content"])["status"] == "cancelled"
    assert DB["orders"]["#W1"]["status"] == "pending"  # the database itself is never changed


def test_split_argument_forces_and_no_split_file_hashes(tmp_path: Path) -> None:
    d = _domain(tmp_path, [_task(str(i), []) for i in range(30)])
    assert {r["split"] for r in read_tau_tasks(str(d), split="eval")} == {"eval"}
    assert {r["split"] for r in read_tau_tasks(str(d))} == {"train", "eval"}


def test_missing_tasks_json(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match=r"no tau2-bench tasks file at .*tasks\.json; give the domain"):
        read_tau_tasks(str(tmp_path))


def test_missing_companion_file(tmp_path: Path) -> None:
    d = _domain(tmp_path, [_task("a", [])], skip="db.json")
    with pytest.raises(ImportFormatError, match=r"db\.json is missing beside .*tasks\.json"):
        read_tau_tasks(str(d / "tasks.json"))


def test_task_without_evaluation_criteria(tmp_path: Path) -> None:
    task = _task("7", [])
    del task["evaluation_criteria"]
    d = _domain(tmp_path, [_task("a", []), task])
    with pytest.raises(RowError, match=r"tasks\.json\[task 1\]: task '7', field evaluation_criteria: missing; .*add "
                                       r"evaluation_criteria"):
        read_tau_tasks(str(d))


def test_unknown_tool_in_gold_action(tmp_path: Path) -> None:
    d = _domain(tmp_path, [_task("a", [{"name": "refund_in_cash", "arguments": {}}])])
    with pytest.raises(RowError) as err:
        read_tau_tasks(str(d))
    msg = str(err.value)
    assert "[task 0]: task 'a', field evaluation_criteria.actions[0].name" in msg
    assert "unknown tool 'refund_in_cash'" in msg and "add the tool to tools.json or fix the action's name" in msg


def test_gold_action_with_unknown_or_missing_argument(tmp_path: Path) -> None:
    d = _domain(tmp_path, [_task("a", [{"name": "get_order_details", "arguments": {"id": "#W1"}}])])
    with pytest.raises(RowError, match=r"actions\[0\]\.arguments\.id: tool 'get_order_details' has no parameter"):
        read_tau_tasks(str(d))
    d = _domain(tmp_path, [_task("a", [{"name": "get_order_details", "arguments": {}}])])
    with pytest.raises(RowError, match=r"required parameter 'order_id' of tool 'get_order_details' is missing"):
        read_tau_tasks(str(d))


def test_cli_reports_import_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _domain(tmp_path, [_task("a", [{"name": "refund_in_cash", "arguments": {}}])])
    assert main(["dataset", "--root", str(tmp_path / "s"), "import", str(d), "--format", "tau-bench",
                 "--name", "shop", "--version", "v1"]) == 2
    assert "bclone: error:" in capsys.readouterr().err
    assert not (tmp_path / "s" / "shop" / "v1").exists()


# -- units ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("annotation", "schema"), [
    ("str", {"type": "string"}), ("int", {"type": "integer"}), ("float", {"type": "number"}),
    ("bool", {"type": "boolean"}), ("List[str]", {"type": "array", "items": {"type": "string"}}),
    ("list[int]", {"type": "array", "items": {"type": "integer"}}), ("dict", {"type": "object"}),
    ("Dict[str, Any]", {"type": "object"}), ("Optional[str]", {}), ("str | None", {}), ("Order", {}), ("", {}),
])
def test_annotation_schema(annotation: str, schema: dict[str, Any]) -> None:
    assert annotation_schema(annotation) == schema


def test_tool_to_openai_without_a_name() -> None:
    with pytest.raises(ImportFormatError, match="needs a non-empty \"name\""):
        tool_to_openai({"parameters": []}, "tools.json[3]")


def test_retail_env_tools_and_errors() -> None:
    env = RetailEnv(DB)
    assert env.call("find_user_id_by_name_zip", {"first_name": "ann", "last_name": "LEE", "zip": "10001"}) == "ann_1"
    assert env.call("find_user_id_by_email", {"email": "nobody@example.com"}) == "Error: User not found"
    assert env.call("calculate", {"expression": "(2 + 3) * 1.5 / 2"}) == "3.75"
    assert env.call("calculate", {"expression": "__import__('os')"}) == "Error: Invalid characters in expression"
    assert env.call("cancel_pending_order", {"order_id": "#W1", "reason": "because"}) == "Error: Invalid reason"
    env.call("cancel_pending_order", {"order_id": "#W1", "reason": "ordered by mistake"})
    user = json.loads(env.call("get_user_details", {"user_id": "ann_1"}))
    assert user["payment_methods"]["gift_card_1"]["balance"] == 35.5  # refunded at once
    assert env.call("cancel_pending_order", {"order_id": "#W1", "reason": "ordered by mistake"}) == \
        "Error: Non-pending order cannot be cancelled"
    assert env.errors == ["find_user_id_by_email: User not found", "calculate: Invalid characters in expression",
                          "cancel_pending_order: Invalid reason",
                          "cancel_pending_order: Non-pending order cannot be cancelled"]
    assert DB["users"]["ann_1"]["payment_methods"]["gift_card_1"]["balance"] == 10.0
    with pytest.raises(ImportFormatError, match="cannot replay"):
        env.call("book_flight", {})
