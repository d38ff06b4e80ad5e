"""The retail database: products with variants, customers with payment methods, orders.

Built deterministically from a seed (plain ``random.Random``, fixed lists, no wall clock), so the
generator, the environment of a rollout and the tests all see the same store. Everything is plain
JSON-able dicts: a tool result is a slice of the database serialised as it is.

The database is built once per seed and per process (:func:`base_database`); an episode works on a
private copy-on-write view of it, so no episode ever sees another one's cancellations or refunds.
"""

from __future__ import annotations

import itertools
import random
from functools import lru_cache
from typing import Any

DB_SEED = 2026
"""The seed of the store both dataset versions were recorded against."""

Database = dict[str, dict[str, dict[str, Any]]]
"""``{"products": {product_id: ...}, "customers": {user_id: ...}, "orders": {order_id: ...}}``."""

# (product id, display name, the words customers use for it, option dimensions, base price)
CATALOG: tuple[tuple[str, str, tuple[str, ...], dict[str, tuple[str, ...]], float], ...] = (
    ("P1001", "Wireless Headphones", ("headphones", "wireless headphones"),
     {"color": ("black", "white", "blue"), "connectivity": ("bluetooth", "usb-c")}, 89.0),
    ("P1002", "Running Shoes", ("running shoes", "shoes", "sneakers"),
     {"size": ("8", "9", "10", "11"), "color": ("black", "red", "grey")}, 74.0),
    ("P1003", "T-Shirt", ("t-shirt", "tee", "shirt"),
     {"size": ("S", "M", "L", "XL"), "color": ("white", "black", "green")}, 19.0),
    ("P1004", "Water Bottle", ("water bottle", "bottle"),
     {"capacity": ("500ml", "750ml", "1l"), "color": ("blue", "green", "steel")}, 24.0),
    ("P1005", "Backpack", ("backpack", "bag"),
     {"color": ("black", "navy", "olive"), "capacity": ("20l", "30l")}, 59.0),
    ("P1006", "Desk Lamp", ("desk lamp", "lamp"),
     {"finish": ("black", "brass", "white"), "bulb": ("led", "halogen")}, 42.0),
    ("P1007", "Coffee Maker", ("coffee maker", "coffee machine"),
     {"capacity": ("4 cups", "8 cups", "12 cups"), "color": ("black", "steel")}, 99.0),
    ("P1008", "Yoga Mat", ("yoga mat", "mat"),
     {"thickness": ("4mm", "6mm"), "color": ("purple", "blue", "black")}, 32.0),
    ("P1009", "Rain Jacket", ("rain jacket", "jacket"),
     {"size": ("S", "M", "L", "XL"), "color": ("yellow", "navy")}, 84.0),
    ("P1010", "Smart Watch", ("smart watch", "watch"),
     {"strap": ("silicone", "leather"), "color": ("black", "silver", "gold")}, 199.0),
    ("P1011", "Bluetooth Speaker", ("bluetooth speaker", "speaker"),
     {"color": ("black", "red", "blue"), "size": ("mini", "standard")}, 55.0),
    ("P1012", "Office Chair", ("office chair", "chair"),
     {"color": ("black", "grey"), "armrests": ("fixed", "adjustable")}, 229.0),
)

FIRST_NAMES = (
    "Emma", "Liam", "Olivia", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella", "Lucas", "Mia", "Logan",
    "Amelia", "James", "Harper", "Aiden", "Evelyn", "Elijah", "Abigail", "Mateo", "Ella", "Daniel", "Chloe",
    "Omar", "Yara", "Ivan", "Mei", "Raj", "Fatima", "Lena", "Hugo", "Nora", "Kenji", "Sara", "Tomas", "Aisha",
)
LAST_NAMES = (
    "Garcia", "Smith", "Johnson", "Brown", "Lopez", "Nguyen", "Khan", "Silva", "Müller", "Rossi", "Kim",
    "Patel", "Cohen", "Novak", "Ito", "Moreau", "Okafor", "Larsen", "Walsh", "Ahmed", "Bauer", "Costa",
    "Dubois", "Evans", "Fischer", "Gomez", "Hansen", "Ivanova", "Jensen", "Kowalski",
)
STREETS = (
    "Oak Street", "Maple Avenue", "Cedar Lane", "Pine Road", "Elm Drive", "Lake Boulevard", "Hill Court",
    "River Way", "Birch Street", "Willow Avenue", "Sunset Drive", "Park Lane",
)
CITIES = (
    ("Springfield", "IL", "627"), ("Portland", "OR", "972"), ("Austin", "TX", "787"), ("Denver", "CO", "802"),
    ("Columbus", "OH", "432"), ("Madison", "WI", "537"), ("Raleigh", "NC", "276"), ("Boise", "ID", "837"),
    ("Tucson", "AZ", "857"), ("Albany", "NY", "122"),
)
STATUSES = ("pending", "processed", "delivered", "cancelled")
STATUS_WEIGHTS = (0.32, 0.18, 0.42, 0.08)
N_CUSTOMERS = 320


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _address(rng: random.Random) -> dict[str, str]:
    city, state, prefix = rng.choice(CITIES)
    return {
        "address1": f"{rng.randrange(10, 999)} {rng.choice(STREETS)}",
        "city": city,
        "state": state,
        "zip": prefix + _digits(rng, 2),
    }


def build_database(seed: int = DB_SEED) -> Database:
    """Build the whole store from ``seed`` (same seed, same bytes)."""
    rng = random.Random(seed)
    products: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()

    def new_id(n: int) -> str:
        while True:
            value = _digits(rng, n)
            if value[0] != "0" and value not in used_ids:
                used_ids.add(value)
                return value

    for pid, name, aliases, dims, base in CATALOG:
        variants: dict[str, dict[str, Any]] = {}
        keys = list(dims)
        for combo in itertools.product(*(dims[k] for k in keys)):
            item_id = new_id(10)
            variants[item_id] = {
                "item_id": item_id,
                "options": dict(zip(keys, combo)),
                "price": round(base + rng.choice((-4, -2, 0, 0, 3, 6)) + rng.choice((0.0, 0.49, 0.99)), 2),
                "available": rng.random() > 0.22,
            }
        products[pid] = {"product_id": pid, "name": name, "variants": variants}

    customers: dict[str, dict[str, Any]] = {}
    orders: dict[str, dict[str, Any]] = {}
    seen_people: set[tuple[str, str, str]] = set()
    seen_emails: set[str] = set()
    while len(customers) < N_CUSTOMERS:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        address = _address(rng)
        if (first, last, address["zip"]) in seen_people:
            continue  # name + zip must identify one customer (find_customer relies on it)
        email = f"{first.lower()}.{last.lower()}{rng.randrange(10, 99)}@example.com".replace("ü", "u")
        if email in seen_emails:
            continue  # an email identifies one customer
        seen_people.add((first, last, address["zip"]))
        seen_emails.add(email)
        user_id = f"{first.lower()}_{last.lower()}_{new_id(4)}".replace("ü", "u")
        methods: list[dict[str, Any]] = []
        kinds = rng.sample(("credit_card", "paypal", "gift_card"), rng.choice((1, 1, 2, 2, 3)))
        for kind in sorted(kinds):
            method: dict[str, Any] = {"id": f"{kind}_{new_id(7)}", "type": kind}
            if kind == "credit_card":
                method["brand"] = rng.choice(("visa", "mastercard", "amex"))
                method["last_four"] = _digits(rng, 4)
            elif kind == "gift_card":
                method["balance"] = float(rng.randrange(0, 300))
            methods.append(method)
        customer: dict[str, Any] = {
            "user_id": user_id,
            "name": {"first_name": first, "last_name": last},
            "email": email,
            "address": address,
            "payment_methods": methods,
            "orders": [],
        }
        for _ in range(rng.choice((1, 2, 2, 3, 3, 4))):
            order_id = f"#W{new_id(7)}"
            status = rng.choices(STATUSES, STATUS_WEIGHTS)[0]
            items = []
            for pid in sorted(rng.sample([c[0] for c in CATALOG], rng.choice((1, 1, 2, 2, 3, 4)))):
                product = products[pid]
                item_id = rng.choice(sorted(product["variants"]))
                variant = product["variants"][item_id]
                items.append({"item_id": item_id, "product_id": pid, "name": product["name"],
                              "options": dict(variant["options"]), "price": variant["price"]})
            total = round(sum(i["price"] for i in items), 2)
            payment = rng.choice(methods)["id"]
            order: dict[str, Any] = {
                "order_id": order_id,
                "user_id": user_id,
                "status": status,
                "items": items,
                "address": dict(address),
                "payment_history": [{"transaction_type": "payment", "amount": total, "payment_method_id": payment}],
            }
            if status in ("processed", "delivered"):
                order["tracking_id"] = new_id(12)
            if status == "cancelled":
                order["cancel_reason"] = rng.choice(("no longer needed", "ordered by mistake"))
                order["payment_history"].append(
                    {"transaction_type": "refund", "amount": total, "payment_method_id": payment})
            orders[order_id] = order
            customer["orders"].append(order_id)
        customers[user_id] = customer
    return {"products": products, "customers": customers, "orders": orders}


@lru_cache(maxsize=4)
def base_database(seed: int = DB_SEED) -> Database:
    """The store of ``seed``, built once per process and shared: treat it as read-only.

    Episodes never write to it: :class:`~example_suite.retail.env.RetailEnvironment` copies a
    record the first time it changes it (copy-on-write), which gives every episode a private
    database for the price of copying the two or three orders it touches (a full deep copy of
    the store costs ~20 ms, too much for thousands of recorded and rolled-out episodes).
    """
    return build_database(seed)


def product_aliases() -> dict[str, tuple[str, ...]]:
    """Product id -> the words customers use for it (longest first)."""
    return {pid: tuple(sorted(aliases, key=len, reverse=True)) for pid, _, aliases, _, _ in CATALOG}


def money(value: float) -> str:
    """How amounts are written everywhere: ``45.99`` (no currency sign, two decimals)."""
    return f"{value:.2f}"
