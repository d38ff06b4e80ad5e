"""The OpenAI function tools of the retail domain, per dataset version.

v7 and v8 differ in one place, the refund tool: v7 offers ``issue_refund_legacy(order_id, item_id,
amount)``; v8 retired it (it is absent from v8's toolset) for ``issue_refund``, which also names the
payment method and the reason. That is the tool-deprecation drift the brief warns about: a clone
trained on v7 trajectories keeps calling the dead tool.
"""

from __future__ import annotations

from typing import Any

VERSIONS = ("v7", "v8")
LEGACY_REFUND = "issue_refund_legacy"
REFUND = "issue_refund"

_ORDER_ID = {"type": "string", "description": "The order id, including the leading '#', e.g. '#W1234567'."}
_ITEM_IDS = {"type": "array", "items": {"type": "string"}, "description": "Item ids from the order."}
_PAYMENT = {"type": "string", "description": "A payment method id, e.g. 'credit_card_1234567'."}


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False},
        },
    }


_COMMON_BEFORE = [
    _tool("find_customer",
          "Find a customer's user id, either by email or by first name, last name and zip code.",
          {"email": {"type": "string"}, "first_name": {"type": "string"}, "last_name": {"type": "string"},
           "zip": {"type": "string"}}, []),
    _tool("get_customer", "Get a customer's profile: name, email, address, payment methods and order ids.",
          {"user_id": {"type": "string"}}, ["user_id"]),
    _tool("get_order", "Get an order: status, items, address, payments, tracking.",
          {"order_id": _ORDER_ID}, ["order_id"]),
    _tool("get_product", "Get a product and all its variants (options, price, availability).",
          {"product_id": {"type": "string"}}, ["product_id"]),
    _tool("cancel_order", "Cancel a pending order. The refund goes to the original payment method.",
          {"order_id": _ORDER_ID,
           "reason": {"type": "string", "enum": ["no longer needed", "ordered by mistake"]}},
          ["order_id", "reason"]),
    _tool("return_items", "Return items of a delivered order; the refund goes to the given payment method.",
          {"order_id": _ORDER_ID, "item_ids": _ITEM_IDS, "payment_method_id": _PAYMENT},
          ["order_id", "item_ids", "payment_method_id"]),
    _tool("exchange_items",
          "Exchange items of a delivered order for other variants of the same product; the price "
          "difference is settled with the given payment method.",
          {"order_id": _ORDER_ID, "item_ids": _ITEM_IDS,
           "new_item_ids": {"type": "array", "items": {"type": "string"}}, "payment_method_id": _PAYMENT},
          ["order_id", "item_ids", "new_item_ids", "payment_method_id"]),
    _tool("change_address", "Change the shipping address of a pending order.",
          {"order_id": _ORDER_ID, "address1": {"type": "string"}, "city": {"type": "string"},
           "state": {"type": "string"}, "zip": {"type": "string"}},
          ["order_id", "address1", "city", "state", "zip"]),
]

_REFUND_V7 = _tool(
    LEGACY_REFUND, "Refund an amount for an item of a delivered order (legacy refund API).",
    {"order_id": _ORDER_ID, "item_id": {"type": "string"}, "amount": {"type": "number"}},
    ["order_id", "item_id", "amount"])

_REFUND_V8 = _tool(
    REFUND, "Refund an amount for a damaged or missing item of a delivered order, to the order's original "
    "payment method.",
    {"order_id": _ORDER_ID, "item_id": {"type": "string"}, "amount": {"type": "number"},
     "payment_method_id": _PAYMENT, "reason": {"type": "string", "enum": ["damaged", "missing"]}},
    ["order_id", "item_id", "amount", "payment_method_id", "reason"])

_TRANSFER = _tool(
    "transfer_to_human_agents",
    "Transfer the customer to a human agent, with a short summary. Use it when the request is out of scope "
    "or the customer asks for a person.",
    {"summary": {"type": "string"}}, ["summary"])


_TOOLSETS = {"v7": [*_COMMON_BEFORE, _REFUND_V7, _TRANSFER], "v8": [*_COMMON_BEFORE, _REFUND_V8, _TRANSFER]}


def toolset(version: str) -> list[dict[str, Any]]:
    """The OpenAI tool list of dataset ``version`` (``v7`` or ``v8``).

    One shared list per version (treat it as read-only): every trajectory and episode of a
    version then holds the same object, which the evaluators' per-list toolset cache rewards.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown retail dataset version {version!r}; expected one of {', '.join(VERSIONS)}")
    return _TOOLSETS[version]


def tool_names(version: str) -> list[str]:
    """Names of the tools of ``version``, in toolset order."""
    return [t["function"]["name"] for t in toolset(version)]


def version_of(tools: list[dict[str, Any]] | Any) -> str:
    """Which version a tool list belongs to (v8 when it offers ``issue_refund``, else v7)."""
    names = {(t.get("function") or {}).get("name") for t in tools}
    return "v8" if REFUND in names else "v7"
