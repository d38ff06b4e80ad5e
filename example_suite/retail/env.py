"""The retail environment: executes tool calls on a private copy of the database.

It is what ``pytest_bclone_make_environment`` hands the rollout engine, and what the generator
records the expert against. The environment enforces the parts of the policy that a back office
would: only pending orders can be cancelled or re-addressed, only delivered ones returned,
exchanged or refunded, refunds never exceed what was paid for an item, and a tool that is not in
this version's toolset does not exist (a retired tool answers with an error, as a removed API
endpoint would). Identity checks are the agent's job (the back office does not know who is
typing), which is why the written policy asks the agent to authenticate first.

Every result is a JSON string; a failure is ``{"error": "..."}``, never an exception.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from pytest_bclone.records import ToolCall, Trajectory

from .db import DB_SEED, base_database
from .tools import LEGACY_REFUND, REFUND, toolset, version_of


@lru_cache(maxsize=4)
def _customer_index(seed: int) -> dict[Any, str]:
    """email -> user id and (first, last, zip) -> user id (case-folded), built once per store."""
    index: dict[Any, str] = {}
    for c in base_database(seed)["customers"].values():
        index[c["email"].casefold()] = c["user_id"]
        name = c["name"]
        index[(name["first_name"].casefold(), name["last_name"].casefold(), c["address"]["zip"])] = c["user_id"]
    return index


class ToolError(Exception):
    """A refused or invalid call; its message is what the agent reads."""


def dump(value: Any) -> str:
    """Tool results as compact, key-ordered JSON (stable bytes for the recorded dataset)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class RetailEnvironment:
    """One episode's world: ``tools`` (the version's OpenAI tool list), ``execute(call)`` and
    ``final_state_ok()`` (is the database what the task expects?).

    ``expected_actions`` are the task's gold actions; the expected end state is a fresh database
    with those actions applied (as tau-bench does), so the check never trusts the agent's own run.
    """

    def __init__(self, version: str = "v8", *, seed: int = DB_SEED,
                 expected_actions: Sequence[ToolCall] | None = None) -> None:
        self.version = version
        self.seed = seed
        self.tools: list[dict[str, Any]] = toolset(version)
        self._names = {t["function"]["name"] for t in self.tools}
        # Copy-on-write: reads see the shared store, the first write to an order copies it here.
        self._base = base_database(seed)
        self.changed: dict[str, dict[str, Any]] = {}
        self.expected_actions = None if expected_actions is None else tuple(expected_actions)
        self.log: list[tuple[str, dict[str, Any], str]] = []

    @classmethod
    def for_trajectory(cls, trajectory: Trajectory) -> RetailEnvironment:
        """The environment a recorded trajectory ran in: its version's tools, its store, its gold actions."""
        seed = int(trajectory.metadata.get("db_seed", DB_SEED))
        expected = trajectory.expected.actions if trajectory.expected is not None else None
        return cls(version_of(list(trajectory.tools)), seed=seed, expected_actions=expected)

    # -- the agent's side ------------------------------------------------------------------------
    def execute(self, call: ToolCall) -> str:
        """Run ``call``; returns the JSON result or a JSON error the agent can read."""
        args = dict(call.arguments) if call.arguments is not None else None
        try:
            if args is None:
                raise ToolError(f"the arguments of {call.name} are not a JSON object ({call.error})")
            if call.name not in self._names:
                retired = " (it was retired; use issue_refund)" if call.name == LEGACY_REFUND else ""
                raise ToolError(f"unknown tool {call.name!r}{retired}; available tools: "
                                f"{', '.join(sorted(self._names))}")
            self._check_args(call.name, args)
            result = dump(getattr(self, "_t_" + call.name)(**args))
        except ToolError as exc:
            result = dump({"error": str(exc)})
        self.log.append((call.name, args or {}, result))
        return result

    def _check_args(self, name: str, args: Mapping[str, Any]) -> None:
        spec = next(t["function"]["parameters"] for t in self.tools if t["function"]["name"] == name)
        props, required = spec["properties"], spec["required"]
        unknown = sorted(set(args) - set(props))
        if unknown:
            raise ToolError(f"{name}: unexpected argument(s) {', '.join(unknown)}; expected {', '.join(props)}")
        missing = [k for k in required if k not in args]
        if missing:
            raise ToolError(f"{name}: missing required argument(s) {', '.join(missing)}")
        for key, value in args.items():
            kind = props[key].get("type")
            ok = {"string": isinstance(value, str), "number": isinstance(value, (int, float))
                  and not isinstance(value, bool), "array": isinstance(value, list)}.get(kind, True)
            if not ok:
                raise ToolError(f"{name}: argument {key} must be a {kind}, got {type(value).__name__}")
            if "enum" in props[key] and value not in props[key]["enum"]:
                raise ToolError(f"{name}: {key} must be one of {props[key]['enum']}, got {value!r}")

    # -- the expected end state --------------------------------------------------------------------
    def final_state_ok(self) -> bool | None:
        """True when the database equals the task's expected end state (None: no expectation known)."""
        if self.expected_actions is None:
            return None
        gold = RetailEnvironment(self.version, seed=self.seed)
        for call in self.expected_actions:
            gold.execute(call)
        return gold.snapshot() == self.snapshot()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The orders this episode changed, as they are now (everything else is the shared store)."""
        return {oid: order for oid, order in sorted(self.changed.items()) if order != self._base["orders"][oid]}

    def order(self, order_id: str) -> dict[str, Any] | None:
        """The current view of an order (this episode's copy when it changed it)."""
        return self.changed.get(order_id) or self._base["orders"].get(order_id)

    # -- lookups ---------------------------------------------------------------------------------
    def _order(self, order_id: str) -> dict[str, Any]:
        """The order for reading (never mutate it: it may be the shared store's)."""
        order = self.order(order_id)
        if order is None:
            hint = " (order ids start with '#')" if not order_id.startswith("#") else ""
            raise ToolError(f"order {order_id!r} not found{hint}")
        return order

    def _writable(self, order_id: str) -> dict[str, Any]:
        """The order for writing: this episode's private copy, made on first write."""
        order = self._order(order_id)
        if order_id not in self.changed:
            order = self.changed[order_id] = copy.deepcopy(order)
        return order

    def _t_find_customer(self, email: str | None = None, first_name: str | None = None,
                         last_name: str | None = None, zip: str | None = None) -> dict[str, Any]:
        index = _customer_index(self.seed)
        if email:
            found = index.get(email.strip().casefold())
        elif first_name and last_name and zip:
            found = index.get((first_name.strip().casefold(), last_name.strip().casefold(), zip.strip()))
        else:
            raise ToolError("find_customer needs an email, or first_name, last_name and zip")
        if found is None:
            raise ToolError("no customer matches these details")
        return {"user_id": found}

    def _t_get_customer(self, user_id: str) -> dict[str, Any]:
        customer = self._base["customers"].get(user_id)
        if customer is None:
            raise ToolError(f"customer {user_id!r} not found")
        return customer

    def _t_get_order(self, order_id: str) -> dict[str, Any]:
        return self._order(order_id)

    def _t_get_product(self, product_id: str) -> dict[str, Any]:
        product = self._base["products"].get(product_id)
        if product is None:
            raise ToolError(f"product {product_id!r} not found")
        return product

    # -- state changes ---------------------------------------------------------------------------
    def _require(self, order: dict[str, Any], status: str, verb: str) -> None:
        """Refuse a state change the policy forbids for the order's status."""
        if order["status"] != status:
            raise ToolError(f"cannot {verb} order {order['order_id']}: its status is {order['status']!r}; "
                            f"only {status} orders allow that")

    def _items(self, order: dict[str, Any], item_ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(item_ids)
        if not ids:
            raise ToolError("item_ids is empty")
        if len(set(ids)) != len(ids):
            raise ToolError("item_ids lists an item twice")
        by_id = {i["item_id"]: i for i in order["items"]}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ToolError(f"item(s) {', '.join(missing)} are not in order {order['order_id']}")
        return [by_id[i] for i in ids]

    def _original_method(self, order: dict[str, Any]) -> str:
        return str(order["payment_history"][0]["payment_method_id"])

    def _t_cancel_order(self, order_id: str, reason: str) -> dict[str, Any]:
        order = self._writable(order_id)
        self._require(order, "pending", "cancel")
        total = order["payment_history"][0]["amount"]
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        order["payment_history"].append(
            {"transaction_type": "refund", "amount": total, "payment_method_id": self._original_method(order)})
        return order

    def _t_change_address(self, order_id: str, address1: str, city: str, state: str, zip: str) -> dict[str, Any]:
        order = self._writable(order_id)
        self._require(order, "pending", "change the address of")
        order["address"] = {"address1": address1, "city": city, "state": state, "zip": zip}
        return order

    def _t_return_items(self, order_id: str, item_ids: list[str], payment_method_id: str) -> dict[str, Any]:
        order = self._writable(order_id)
        self._require(order, "delivered", "return")
        items = self._items(order, item_ids)
        if payment_method_id != self._original_method(order):
            raise ToolError("refunds must go to the original payment method of the order "
                            f"({self._original_method(order)})")
        amount = round(sum(i["price"] for i in items), 2)
        order["status"] = "return requested"
        order["return_items"] = sorted(item_ids)
        order["payment_history"].append(
            {"transaction_type": "refund", "amount": amount, "payment_method_id": payment_method_id})
        return order

    def _t_exchange_items(self, order_id: str, item_ids: list[str], new_item_ids: list[str],
                          payment_method_id: str) -> dict[str, Any]:
        order = self._writable(order_id)
        self._require(order, "delivered", "exchange")
        items = self._items(order, item_ids)
        if len(new_item_ids) != len(items):
            raise ToolError("new_item_ids must name one new item per exchanged item")
        diff = 0.0
        for item, new_id in zip(items, new_item_ids):
            variants = self._base["products"][item["product_id"]]["variants"]
            new = variants.get(new_id)
            if new is None:
                raise ToolError(f"item {new_id!r} is not a variant of {item['name']}")
            if not new["available"]:
                raise ToolError(f"item {new_id!r} is not available")
            if new_id == item["item_id"]:
                raise ToolError(f"item {new_id!r} is the item being exchanged")
            diff += new["price"] - item["price"]
        if payment_method_id != self._original_method(order):
            raise ToolError(f"the price difference is settled with the original payment method "
                            f"({self._original_method(order)})")
        order["status"] = "exchange requested"
        order["exchange_items"] = sorted(item_ids)
        order["exchange_new_items"] = sorted(new_item_ids)
        order["payment_history"].append(
            {"transaction_type": "payment" if diff > 0 else "refund", "amount": round(abs(diff), 2),
             "payment_method_id": payment_method_id})
        return order

    def _refund(self, order_id: str, item_id: str, amount: float, payment_method_id: str,
                reason: str | None) -> dict[str, Any]:
        order = self._writable(order_id)
        self._require(order, "delivered", "refund")
        (item,) = self._items(order, [item_id])
        if payment_method_id != self._original_method(order):
            raise ToolError(f"refunds must go to the original payment method of the order "
                            f"({self._original_method(order)})")
        if any(r["item_id"] == item_id for r in order.get("item_refunds", ())):
            raise ToolError(f"item {item_id} of order {order_id} was already refunded")
        if amount <= 0 or round(amount, 2) > item["price"]:
            raise ToolError(f"refund amount {amount} must be positive and at most the item price {item['price']}")
        entry: dict[str, Any] = {"item_id": item_id, "amount": round(amount, 2)}
        if reason is not None:
            entry["reason"] = reason
        order.setdefault("item_refunds", []).append(entry)
        order["payment_history"].append(
            {"transaction_type": "refund", "amount": round(amount, 2), "payment_method_id": payment_method_id})
        return order

    def _t_issue_refund(self, order_id: str, item_id: str, amount: float, payment_method_id: str,
                        reason: str) -> dict[str, Any]:
        return self._refund(order_id, item_id, amount, payment_method_id, reason)

    def _t_issue_refund_legacy(self, order_id: str, item_id: str, amount: float) -> dict[str, Any]:
        # The legacy API always refunded to the original payment method and kept no reason.
        order = self._order(order_id)
        return self._refund(order_id, item_id, amount, self._original_method(order), None)

    def _t_transfer_to_human_agents(self, summary: str) -> dict[str, Any]:
        return {"status": "transferred", "summary": summary}


assert {REFUND, LEGACY_REFUND} <= {n[3:] for n in dir(RetailEnvironment) if n.startswith("_t_")}
