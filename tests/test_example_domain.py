"""The example suite's retail domain: environment, expert, generator and behaviour-cloned clone.

These check that the example gate's verdicts can be trusted to come from real parts: an
environment that enforces the policy, an expert whose recordings replay exactly, a generator that
reproduces the committed dataset byte for byte, and a clone that learnt from the train split only
and shows the tool-deprecation drift on v8 by itself.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from example_suite import generate
from example_suite.conftest import pytest_bclone_make_agent
from example_suite.retail.clone import BCClone, train_clone
from example_suite.retail.env import RetailEnvironment
from example_suite.retail.expert import ScriptedExpert, expert_policy
from example_suite.retail.tools import LEGACY_REFUND, REFUND, tool_names
from pytest_bclone.dataset.store import DatasetStore, DatasetVersion
from pytest_bclone.evaluators import default_registry, score_steps
from pytest_bclone.records import Action, DecisionPoint, ToolCall, Trajectory

ROOT = Path(generate.__file__).resolve().parent / "bclone_datasets"


@pytest.fixture(scope="module")
def v7() -> DatasetVersion:
    return DatasetStore(str(ROOT)).load("retail@v7")


@pytest.fixture(scope="module")
def v8() -> DatasetVersion:
    return DatasetStore(str(ROOT)).load("retail@v8")


@pytest.fixture(scope="module")
def clone_v7(v7: DatasetVersion) -> BCClone:
    return train_clone(v7.trajectories, "bc-clone@v7")  # eval rows are passed on purpose: it must drop them


def _orders(env: RetailEnvironment, status: str) -> list[str]:
    return sorted(o for o, order in env._base["orders"].items() if order["status"] == status)


def _call(env: RetailEnvironment, name: str, **args: object) -> dict[str, object]:
    result: dict[str, object] = json.loads(env.execute(ToolCall(name, args)))
    return result


# -- the environment -------------------------------------------------------------------------------------
def test_environment_enforces_the_policy() -> None:
    env = RetailEnvironment("v8")
    delivered, pending = _orders(env, "delivered")[0], _orders(env, "pending")[0]
    refused = _call(env, "cancel_order", order_id=delivered, reason="no longer needed")
    assert "only pending orders" in str(refused["error"])
    assert "only pending orders" in str(_call(env, "change_address", order_id=delivered, address1="1 A Street",
                                              city="Boise", state="ID", zip="83701")["error"])
    order = env._order(pending)
    item = order["items"][0]["item_id"]
    original = order["payment_history"][0]["payment_method_id"]
    assert "only delivered orders" in str(_call(env, "return_items", order_id=pending, item_ids=[item],
                                                payment_method_id=original)["error"])
    assert "must be one of" in str(_call(env, "cancel_order", order_id=pending, reason="bored")["error"])
    assert "not found" in str(_call(env, "get_order", order_id="#W0000000")["error"])
    # refunds go to the original payment method only
    d_order = env._order(delivered)
    other = "gift_card_0000000" if not original.startswith("gift_card") else "paypal_0000000"
    assert "original payment method" in str(_call(
        env, "issue_refund", order_id=delivered, item_id=d_order["items"][0]["item_id"], amount=1.0,
        payment_method_id=other, reason="damaged")["error"])
    assert env.snapshot() == {}  # nothing above changed anything
    assert _call(env, "cancel_order", order_id=pending, reason="ordered by mistake")["status"] == "cancelled"
    again = _call(env, "cancel_order", order_id=pending, reason="no longer needed")
    assert "only pending orders" in str(again["error"])  # it is cancelled now


def test_environment_retired_tool_and_private_database() -> None:
    v7_env, v8_env = RetailEnvironment("v7"), RetailEnvironment("v8")
    assert LEGACY_REFUND in tool_names("v7") and REFUND not in tool_names("v7")
    assert REFUND in tool_names("v8") and LEGACY_REFUND not in tool_names("v8")
    delivered = _orders(v8_env, "delivered")[0]
    item = v8_env._order(delivered)["items"][0]
    assert "retired" in str(_call(v8_env, LEGACY_REFUND, order_id=delivered, item_id=item["item_id"],
                                  amount=item["price"])["error"])
    refunded = _call(v7_env, LEGACY_REFUND, order_id=delivered, item_id=item["item_id"], amount=item["price"])
    assert refunded["item_refunds"] == [{"item_id": item["item_id"], "amount": item["price"]}]
    # each episode has its own database: v7_env's refund is invisible to a fresh one and to the store
    assert RetailEnvironment("v7")._order(delivered).get("item_refunds") is None
    assert v8_env._order(delivered).get("item_refunds") is None


def test_final_state_check_compares_with_the_gold_outcome() -> None:
    env = RetailEnvironment("v8")
    pending = _orders(env, "pending")[0]
    gold = (ToolCall("cancel_order", {"order_id": pending, "reason": "no longer needed"}),)
    right, wrong = (RetailEnvironment("v8", expected_actions=gold) for _ in range(2))
    _call(right, "cancel_order", order_id=pending, reason="no longer needed")
    _call(wrong, "cancel_order", order_id=pending, reason="ordered by mistake")
    assert right.final_state_ok() is True and wrong.final_state_ok() is False
    assert RetailEnvironment("v8").final_state_ok() is None


# -- the expert --------------------------------------------------------------------------------------------
def _sample(dataset: DatasetVersion, k: int) -> list[Trajectory]:
    return sorted(dataset.trajectories, key=lambda t: hashlib.sha256(t.id.encode()).hexdigest())[:k]


@pytest.mark.parametrize("version", ["v7", "v8"])
def test_recorded_tool_results_replay_exactly(version: str, request: pytest.FixtureRequest) -> None:
    dataset: DatasetVersion = request.getfixturevalue(version)
    for t in _sample(dataset, 250):
        env = RetailEnvironment.for_trajectory(t)
        calls = {tc["id"]: tc["function"] for m in t.messages for tc in m.get("tool_calls") or ()}
        for m in t.messages:
            if m["role"] == "tool":
                fn = calls[m["tool_call_id"]]
                assert env.execute(ToolCall.parse(fn["name"], fn["arguments"])) == m["content"], t.id
        assert env.final_state_ok() is True, t.id


def test_expert_reproduces_its_recorded_actions(v8: DatasetVersion) -> None:
    for t in _sample(v8, 150):
        for point in t.decision_points():
            assert expert_policy(point.state) == _without_ids(point.expert_action), point.key


def _without_ids(action: Action) -> Action:
    return Action(tuple(ToolCall(c.name, c.arguments, json.dumps(c.arguments), None) for c in action.tool_calls),
                  action.text)


# -- the generator -----------------------------------------------------------------------------------------
def test_generator_reproduces_the_committed_datasets(tmp_path: Path) -> None:
    manifests = generate.write(tmp_path / "full", validate=False)  # validation checks rows, never changes bytes
    got = {v: {f["path"]: f["sha256"] for f in m["files"]} for v, m in manifests.items()}
    assert got == generate.committed_hashes(ROOT)
    committed = json.loads((ROOT / "retail" / "v8" / "manifest.json").read_text())
    assert manifests["v8"] == committed and committed["parent"] == "v7"
    assert committed["lineage"]["generator"] == "example_suite.generate" and committed["lineage"]["seed"] == generate.SEED


def test_generator_is_deterministic(tmp_path: Path) -> None:
    for run in ("a", "b"):
        generate.write(tmp_path / run, count=30)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_dataset_shape(v7: DatasetVersion, v8: DatasetVersion) -> None:
    for dataset in (v7, v8):
        counts = dataset.manifest["counts"]
        assert counts["trajectories"] >= 2000
        assert set(counts["cohorts"]) == {"common_intents", "long_tail", "safety", "tool_heavy", "multi_turn_refunds"}
        assert 0.15 <= counts["splits"]["eval"] / counts["trajectories"] <= 0.25
        assert all(t.expected is not None and t.expert_scores == {"task_completion": 1.0} for t in dataset.trajectories)
    assert sum(f["bytes"] for d in (v7, v8) for f in d.manifest["files"]) < 3_000_000
    assert {tool for t in v8.trajectories for m in t.messages for tool in
            [c["function"]["name"] for c in m.get("tool_calls") or ()]} >= {REFUND, "exchange_items", "return_items"}


# -- the clone ---------------------------------------------------------------------------------------------
def _accuracy(clone: BCClone, trajectories: list[Trajectory]) -> tuple[float, list[tuple[DecisionPoint, Action]]]:
    """Step-level exact match (the real action_match evaluator) against the recorded expert."""
    pairs = [(p, clone.predict(p.state.messages)) for t in trajectories for p in t.decision_points()]
    scores = score_steps(default_registry(), ["action_match"], pairs)["action_match"]
    return sum(s.value for s in scores) / len(scores), pairs


def test_clone_learns_from_the_train_split_only(clone_v7: BCClone, v7: DatasetVersion) -> None:
    train_ids = {t.id for t in v7.select("train")}
    eval_rows = v7.select("eval")
    assert clone_v7.trained_on == train_ids
    assert not clone_v7.trained_on & {t.id for t in eval_rows}
    train_acc, _ = _accuracy(clone_v7, [t for t in _sample(v7, 600) if t.split == "train"])
    eval_acc, pairs = _accuracy(clone_v7, eval_rows)
    # chance: always answering with the most frequent expert action
    majority = Counter(p.expert_action.describe() for p, _ in pairs).most_common(1)[0][1] / len(pairs)
    assert train_acc >= 0.97
    assert majority + 0.5 < eval_acc < train_acc and eval_acc < 0.995


def test_v7_clone_calls_the_retired_refund_tool_on_v8(clone_v7: BCClone, v8: DatasetVersion) -> None:
    refund_states = [p for t in v8.select("eval") for p in t.decision_points() if REFUND in p.expert_action.tool_names]
    predicted = Counter(name for p in refund_states for name in clone_v7.predict(p.state.messages).tool_names)
    assert refund_states and LEGACY_REFUND not in v8.manifest["toolset"]
    assert predicted[LEGACY_REFUND] > 0 and predicted[REFUND] == 0  # it has never seen issue_refund


def test_conftest_resolves_the_example_specs() -> None:
    config: pytest.Config = None  # type: ignore[assignment]  # neither spec reads the config
    assert isinstance(pytest_bclone_make_agent("expert", "scripted-expert", config), ScriptedExpert)
    assert pytest_bclone_make_agent("clone", "openai/gpt-4o-mini", config) is None


def test_ids_name_tasks_not_versions_and_draw_the_task_again(v7: DatasetVersion, v8: DatasetVersion) -> None:
    from example_suite.retail.db import DB_SEED, base_database
    from example_suite.retail.user import ScriptedUser

    ids7, ids8 = {t.id for t in v7.trajectories}, {t.id for t in v8.trajectories}
    assert not any("v7" in i or "v8" in i for i in ids7 | ids8)
    shared = ids7 & ids8
    assert len(shared) > len(ids8) * 3 // 4  # most tasks are in both versions under one id
    db = base_database(DB_SEED)
    by7 = {t.id: t for t in v7.trajectories}
    for t in v8.trajectories[:25]:
        task = generate.task_of_id(t.id)
        assert task is not None and generate.trajectory_id(int(t.id.split("-")[1]), task) == t.id
        opening = next(m["content"] for m in t.messages if m["role"] == "user")
        assert ScriptedUser(task, db).opening() == opening
        if t.id in by7:  # the same task: the customer opens the same way in v7
            assert next(m["content"] for m in by7[t.id].messages if m["role"] == "user") == opening
    assert generate.task_of_id("retail-00001-000000") is None and generate.task_of_id("other-1") is None
