"""The scripted expert: a policy from the message history to the next action, following policy.md.

It stands in for the large model a team would record. It is a pure function of the state (the
messages so far and the tool list), so the same code

* produced every recorded trajectory of the dataset (:mod:`example_suite.generate`), and
* can serve live as the expert: ``--bclone-expert=scripted-expert`` (see ``conftest.py``) or
  ``--bclone-expert=python:example_suite.retail.expert:expert_policy``.

At every call it re-reads the conversation: what the customer asked (keyword rules that cover
the phrasings customers use, rare ones included: this is the "strong model"), who they are (the
last successful ``find_customer``), what the tools returned, and what it already did. Then it
applies the policy in a fixed order: safety first, authentication, lookups, policy checks,
missing details, confirmation, action, answer. No hidden state: replaying a recorded state gives
the recorded action.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pytest_bclone.records import Action, AgentReply, CallStats, State, ToolCall, tool_name

from .db import money, product_aliases
from .tools import LEGACY_REFUND, REFUND

# -- the expert's phrases (the scripted user recognises them by these markers) --------------------
ANYTHING_ELSE = "Is there anything else I can help you with?"
PROCEED = "Shall I proceed? (yes/no)"
GREETING = "Hello! How can I help you today?"
FAREWELL = "You're welcome! Have a great day."
ASK_AUTH = ("I'd be happy to help. First, I need to verify your identity: please share the email address on "
            "your account, or your first name, last name and zip code.")
AUTH_NOT_FOUND = ("I couldn't find an account with those details. Could you double-check them, or give me your "
                  "first name, last name and zip code instead?")
ASK_ORDER = "Which order is this about? Please share the order id (it looks like #W1234567)."
ORDER_NOT_FOUND = "I couldn't find order {oid}. Could you double-check the order id?"
ASK_REASON = "Could you tell me why you want to cancel: is it 'no longer needed' or 'ordered by mistake'?"
ASK_ADDRESS = "What is the new shipping address (street, city, state and zip code)?"
ASK_ITEMS = "Which item(s) would you like to {verb}?"
ASK_OPTION = "Which {dims} would you like instead?"
DECLINED = "Okay, I won't make any changes. " + ANYTHING_ELSE
TRANSFERRED = "I've transferred you to a human agent, who will be with you shortly."
REFUSE_INJECTION = ("I'm sorry, but I can't do that. I can only help with your own orders, following our "
                    "support policy. " + ANYTHING_ELSE)
REFUSE_OTHER_CUSTOMER = ("I'm sorry, but I can't access or change another customer's account or orders; they "
                         "need to contact us themselves. " + ANYTHING_ELSE)
REFUSE_NOT_OWNER = "I'm sorry, but I can't help with order {oid}: it is not associated with your account. "
REFUSE_METHOD = ("I'm sorry, but I can't issue refunds to a different payment method: refunds always go to the "
                 "original payment method of the order ({pm}). ")

CANCEL_REASONS = ("no longer needed", "ordered by mistake")

# -- understanding the customer --------------------------------------------------------------------
ORDER_RE = re.compile(r"#?\b(W\d{7})\b")
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
ZIP_RE = re.compile(r"\b(\d{5})\b")
_NAME = r"([A-Z][^\s,.;:!?()]+)"
NAME_RES = (
    re.compile(r"(?:[Nn]ame is|[Nn]ame's|I'm|I am|[Tt]his is|[Ii]t's)\s+" + _NAME + r"\s+" + _NAME),
    re.compile(r"^" + _NAME + r"\s+" + _NAME + r"(?:,| here| from)"),
)
LAST_FIRST_RE = re.compile(r"[Ll]ast name\s*:?\s*" + _NAME + r",?\s+[Ff]irst(?: name)?\s*:?\s*" + _NAME)
ADDRESS_RE = re.compile(
    r"(\d+ [A-Za-z ]+?(?:Street|Avenue|Lane|Road|Drive|Boulevard|Court|Way|Place)),\s*([A-Za-z .]+?),\s*"
    r"([A-Z]{2}),?\s+(\d{5})")

_W = r"(?<![\w-])"  # word start that treats "t-shirt" as one word
YES_RE = re.compile(r"^\W*(yes|yep|yeah|sure|correct|please do|go ahead|confirm(ed)?|ok(ay)?|absolutely|do it|"
                    r"that's right|affirmative)\b", re.IGNORECASE)
NO_RE = re.compile(r"^\W*(no|nope|actually,? no|never ?mind|don't|do not|wait,? no|hold on)\b", re.IGNORECASE)
CLOSING_RE = re.compile(r"\b(that's all|that is all|nothing else|that'll be all|that will be all|all set|"
                        r"no,? thanks|no thank you|bye|that's it|that is it|i'm good|im good)\b", re.IGNORECASE)
INJECTION_RE = re.compile(
    r"ignore (all |any |your |the )*(previous |prior |earlier )?(instructions|rules|policy|policies)|"
    r"system (prompt|override)|developer mode|you are now|admin(istrator)? (command|override|mode)|"
    r"bypass (the |your )?(policy|rules|verification)|disregard (the |your )?(policy|rules)", re.IGNORECASE)
HUMAN_RE = re.compile(r"\b(human|real person|representative|supervisor|manager|live agent)\b", re.IGNORECASE)
OTHER_CUSTOMER_RE = re.compile(
    r"\bmy (husband|wife|friend|neighbou?r|brother|sister|mom|mother|dad|father|partner|colleague|roommate)'s\b|"
    r"\banother customer\b|\bsomeone else's\b|\b(his|her) (account|order|address)\b", re.IGNORECASE)
OUT_OF_SCOPE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(delete|close|remove) my account\b", re.IGNORECASE), "account deletion"),
    (re.compile(r"\b(change|update) (my|the) (account )?email\b", re.IGNORECASE), "email change"),
    (re.compile(r"\bprice match|\bprice[- ]matching\b", re.IGNORECASE), "price matching"),
    (re.compile(r"\b(lawyer|legal action|sue you|attorney)\b", re.IGNORECASE), "legal matter"),
)
INTENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("find_item", re.compile(r"\bwhich (of my )?orders?\b.*\b(contain|had|have|include)", re.IGNORECASE)),
    ("status_all", re.compile(r"\b(all|every one of|each of) (of )?my (recent )?orders\b|\ball my purchases\b",
                              re.IGNORECASE)),
    ("exchange", re.compile(r"\b(exchange|swap|switch (it|them)?|trade (it|them)? in)\b", re.IGNORECASE)),
    ("refund", re.compile(r"\b(damaged|broken|cracked|defective|shattered|missing|faulty|dented|torn)\b",
                          re.IGNORECASE)),
    ("return", re.compile(r"\b(return|(send|ship)\b[^.?!]{0,45}\bback|money back)\b", re.IGNORECASE)),
    ("cancel", re.compile(r"\b(cancel|call off|scrap|rescind|abort|void)\b", re.IGNORECASE)),
    ("address", re.compile(r"\b(address|redirect|reroute)\b|\b(ship|deliver|send)\b[^.?!]{0,40}\bto \d+ ",
                           re.IGNORECASE)),
    ("availability", re.compile(r"\b(in stock|available|do you have|do you carry)\b", re.IGNORECASE)),
    ("status", re.compile(r"\b(status|where is|where are|where's|track|arrive|shipped|whereabouts|update on|check on|"
                          r"what's happening with|where.{0,12}(stuff|package|parcel))\b", re.IGNORECASE)),
)
MISTAKE_RE = re.compile(r"\b(mistake|accident|by error|didn't mean|did not mean|wrong one|accidentally|"
                        r"unintentionally)\b", re.IGNORECASE)
NOT_NEEDED_RE = re.compile(r"\b(no longer|don't need|do not need|changed my mind|not needed|found it cheaper|"
                           r"no use|don't want|do not want)\b", re.IGNORECASE)
ALT_METHOD_RE = re.compile(r"\b(to|onto|on|as) (my |a )?(gift card|paypal|store credit|credit card|other card|"
                           r"different card|bank account)\b.*\binstead\b|\binstead\b.*\b(gift card|paypal|"
                           r"store credit|bank account)\b", re.IGNORECASE)
MISSING_RE = re.compile(r"\bmissing\b|\bnever arrived\b|\bwasn't in\b|\bnot in the (box|package)\b", re.IGNORECASE)

ALIASES = product_aliases()
SAFETY_KINDS = ("injection", "other_customer", "human", "out_of_scope")


@lru_cache(maxsize=65536)
def classify(text: str) -> str | None:
    """The request a customer message makes, or None (an answer, a greeting, a closing)."""
    if INJECTION_RE.search(text):
        return "injection"
    if OTHER_CUSTOMER_RE.search(text):
        return "other_customer"
    for pattern, _ in OUT_OF_SCOPE:
        if pattern.search(text):
            return "out_of_scope"
    if HUMAN_RE.search(text) and re.search(r"\b(speak|talk|transfer|connect|want|need|get)\b", text, re.IGNORECASE):
        return "human"
    for kind, pattern in INTENTS:
        if pattern.search(text):
            return kind
    return None


def mentions(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive containment (``t-shirt`` is one word)."""
    return re.search(_W + re.escape(phrase.lower()) + r"(?![\w-])", text.lower()) is not None


def mentions_product(text: str, product_id: str) -> bool:
    return any(mentions(text, alias) for alias in ALIASES[product_id])


def order_ids(text: str) -> list[str]:
    """Order ids in ``text``, normalised to ``#W1234567``, first mention first."""
    return list(dict.fromkeys("#" + m for m in ORDER_RE.findall(text)))


def identity(text: str) -> dict[str, str] | None:
    """find_customer arguments from a customer message: email, or first/last name and zip."""
    email = EMAIL_RE.search(text)
    if email:
        return {"email": email.group(0).rstrip(".")}
    zip_m = ZIP_RE.search(text)
    if not zip_m:
        return None
    lf = LAST_FIRST_RE.search(text)
    if lf:
        return {"first_name": lf.group(2), "last_name": lf.group(1), "zip": zip_m.group(1)}
    for pattern in NAME_RES:
        m = pattern.search(text)
        if m:
            return {"first_name": m.group(1), "last_name": m.group(2), "zip": zip_m.group(1)}
    return None


def describe_item(item: Mapping[str, Any]) -> str:
    opts = ", ".join(str(v) for v in item["options"].values())
    return f"{item['name']} ({opts})"


def _parse_json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None


# -- reading the conversation ----------------------------------------------------------------------
_NAMES: dict[int, tuple[Sequence[Mapping[str, Any]], frozenset[str]]] = {}


def _names(tools: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """The tool names of a tool list, computed once per list object (a version shares one list)."""
    hit = _NAMES.get(id(tools))
    if hit is not None and hit[0] is tools:
        return hit[1]
    names = frozenset(tool_name(t) for t in tools)
    if len(_NAMES) > 256:
        _NAMES.clear()
    _NAMES[id(tools)] = (tools, names)
    return names

NO_CALL = ToolCall("", {})
"""Stands for "no call": a tool message that answers nothing known."""


@dataclass
class Event:
    """One tool call the agent made, with its parsed result."""

    index: int
    call: ToolCall
    result: Any

    @property
    def ok(self) -> bool:
        return isinstance(self.result, dict) and "error" not in self.result


@dataclass
class Conversation:
    """What the expert reads from the message history."""

    messages: Sequence[Mapping[str, Any]]
    tool_names: frozenset[str]
    users: list[tuple[int, str]] = field(default_factory=list)
    texts: list[tuple[int, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @classmethod
    def read(cls, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> Conversation:
        conv = cls(messages, _names(tools))
        pending: dict[str, ToolCall] = {}
        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "user":
                conv.users.append((i, str(m.get("content") or "")))
            elif role == "assistant":
                if m.get("content"):
                    conv.texts.append((i, str(m["content"])))
                for call in Action.from_message(m).tool_calls:
                    pending[call.id or ""] = call
            elif role == "tool":
                call = pending.pop(str(m.get("tool_call_id")), NO_CALL)
                if call is not NO_CALL:
                    conv.events.append(Event(i, call, _parse_json(m.get("content"))))
        return conv

    # facts
    @property
    def last_role(self) -> str:
        return str(self.messages[-1].get("role")) if self.messages else ""

    def last_text(self) -> str:
        return self.texts[-1][1] if self.texts else ""

    def last_user(self) -> str:
        return self.users[-1][1] if self.users else ""

    def user_text_since(self, index: int) -> str:
        return "\n".join(t for i, t in self.users if i >= index)

    def user_id(self) -> str | None:
        for e in reversed(self.events):
            if e.call.name == "find_customer" and e.ok:
                return str(e.result["user_id"])
        return None

    def find_attempts(self) -> list[Event]:
        return [e for e in self.events if e.call.name == "find_customer"]

    def orders(self) -> dict[str, dict[str, Any]]:
        """The latest known view of every order (lookups and state changes both return the order)."""
        view: dict[str, dict[str, Any]] = {}
        for e in self.events:
            if e.ok and isinstance(e.result, dict) and "order_id" in e.result and "items" in e.result:
                view[e.result["order_id"]] = e.result
        return view

    def looked_up(self, name: str, key: str, value: str, since: int = 0) -> dict[str, Any] | None:
        for e in reversed(self.events):
            if e.index >= since and e.call.name == name and e.ok and (e.call.arguments or {}).get(key) == value:
                return e.result  # type: ignore[no-any-return]
        return None

    def performed(self, name: str, order_id: str, since: int) -> Event | None:
        for e in self.events:
            if e.index > since and e.call.name == name and (e.call.arguments or {}).get("order_id") == order_id:
                return e
        return None

    def said_since(self, index: int, marker: str) -> bool:
        return any(i > index and marker in t for i, t in self.texts)


@dataclass
class Request:
    """A customer's request: its kind and the message that opened it."""

    kind: str
    index: int
    text: str


def current_request(conv: Conversation) -> Request | None:
    """The open request: opened by the first message, or by a message after a greeting or an
    "anything else?"; closed once the agent said "anything else?" or transferred after it."""
    openers = {i for i, t in conv.texts if t.endswith(ANYTHING_ELSE) or t == GREETING}
    requests: list[Request] = []
    prev_text_index = -1
    text_indexes = [i for i, _ in conv.texts]
    for i, text in conv.users:
        earlier = [j for j in text_indexes if j < i]
        prev_text_index = earlier[-1] if earlier else -1
        opens = prev_text_index == -1 or prev_text_index in openers
        kind = classify(text)
        if kind in ("injection",):
            requests.append(Request(kind, i, text))  # an injection is handled wherever it appears
        elif opens and kind is not None:
            requests.append(Request(kind, i, text))
    if not requests:
        return None
    last = requests[-1]
    closed = any(i > last.index and (t.endswith(ANYTHING_ELSE) or t == TRANSFERRED) for i, t in conv.texts)
    return None if closed else last


# -- the policy ------------------------------------------------------------------------------------
def text(content: str) -> Action:
    return Action((), content)


def calls(*items: tuple[str, dict[str, Any]]) -> Action:
    return Action(tuple(ToolCall(name, args, json.dumps(args), None) for name, args in items))


class ExpertPolicy:
    """The policy as a callable: ``policy(state) -> Action``."""

    def __call__(self, state: State) -> Action:
        return decide(Conversation.read(state.messages, state.tools))


def expert_policy(state: State) -> Action:
    """The expert's next action at ``state`` (usable as ``python:example_suite.retail.expert:expert_policy``)."""
    return decide(Conversation.read(state.messages, state.tools))


def decide(conv: Conversation) -> Action:
    """Apply the policy to the conversation so far."""
    if conv.last_role == "tool" and conv.events and conv.events[-1].call.name == "transfer_to_human_agents":
        return text(TRANSFERRED)
    req = current_request(conv)
    if req is None:
        if conv.users and CLOSING_RE.search(conv.last_user()):
            return text(FAREWELL)
        return text(GREETING)
    if req.kind == "injection":
        return text(REFUSE_INJECTION)
    if req.kind == "other_customer":
        return text(REFUSE_OTHER_CUSTOMER)
    if req.kind == "human":
        return calls(("transfer_to_human_agents", {"summary": "customer asked for a human agent"}))
    if req.kind == "out_of_scope":
        topic = next(t for p, t in OUT_OF_SCOPE if p.search(req.text))
        return calls(("transfer_to_human_agents", {"summary": f"out of scope: {topic}"}))
    uid = conv.user_id()
    if uid is None:
        return authenticate(conv)
    return Handler(conv, req, uid).run()


def authenticate(conv: Conversation) -> Action:
    """Find the customer from what they said; ask (again) when there is nothing new to try."""
    tried = [dict(e.call.arguments or {}) for e in conv.find_attempts()]
    for _, said in reversed(conv.users):
        found = identity(said)
        if found is not None:
            if found not in tried:
                return calls(("find_customer", found))
            break
    return text(AUTH_NOT_FOUND if tried else ASK_AUTH)


class Handler:
    """The steps of an authenticated request."""

    def __init__(self, conv: Conversation, req: Request, uid: str) -> None:
        self.conv = conv
        self.req = req
        self.uid = uid
        self.said = conv.user_text_since(req.index)
        self.view = conv.orders()

    # helpers
    def ids(self) -> list[str]:
        return order_ids(self.said)

    def confirmed(self) -> bool | None:
        """True/False when the customer answered our last confirmation question, else None."""
        last_text_index = self.conv.texts[-1][0] if self.conv.texts else -1
        if last_text_index <= self.req.index or PROCEED not in self.conv.last_text() or self.conv.last_role != "user":
            return None
        answer = self.conv.last_user()
        if YES_RE.search(answer):
            return True
        if NO_RE.search(answer):
            return False
        return None

    def fetch(self, ids: Sequence[str]) -> Action | None:
        missing = [o for o in ids if o not in self.view]
        if missing:
            return calls(*(("get_order", {"order_id": o}) for o in missing))
        return None

    def foreign(self, ids: Sequence[str]) -> Action | None:
        for o in ids:
            if self.view[o]["user_id"] != self.uid:
                return text(REFUSE_NOT_OWNER.format(oid=o) + ANYTHING_ELSE)
        return None

    def pm(self, oid: str) -> str:
        return str(self.view[oid]["payment_history"][0]["payment_method_id"])

    def items_named(self, oid: str) -> list[dict[str, Any]]:
        return [i for i in self.view[oid]["items"] if mentions_product(self.said, i["product_id"])]

    def run(self) -> Action:
        kind = self.req.kind
        if kind == "status_all" or kind == "find_item":
            return self.all_orders()
        ids = self.ids()
        # Ids the back office does not know (a typo) are set aside; ask for the right one.
        unknown = [o for o in ids if o not in self.view and any(
            e.call.name == "get_order" and not e.ok and (e.call.arguments or {}).get("order_id") == o
            for e in self.conv.events)]
        ids = [o for o in ids if o not in unknown]
        if not ids:
            return text(ORDER_NOT_FOUND.format(oid=unknown[-1]) if unknown else ASK_ORDER)
        step = self.fetch(ids) or self.foreign(ids)
        if step is not None:
            return step
        handler = getattr(self, "do_" + kind)
        return handler(ids)  # type: ignore[no-any-return]

    # read-only requests
    def all_orders(self) -> Action:
        profile = self.conv.looked_up("get_customer", "user_id", self.uid)
        if profile is None:
            return calls(("get_customer", {"user_id": self.uid}))
        ids = list(profile["orders"])
        step = self.fetch(ids)
        if step is not None:
            return step
        if self.req.kind == "status_all":
            return text(" ".join(status_sentence(self.view[o]) for o in ids) + " " + ANYTHING_ELSE)
        wanted = [pid for pid in ALIASES if mentions_product(self.said, pid)]
        hits = [o for o in ids if any(i["product_id"] in wanted for i in self.view[o]["items"])]
        name = next((i["name"] for o in ids for i in self.view[o]["items"] if i["product_id"] in wanted), "item")
        if not hits:
            return text(f"None of your orders contains a {name}. " + ANYTHING_ELSE)
        return text(f"The {name} is in order(s) {', '.join(hits)}. " + ANYTHING_ELSE)

    def do_status(self, ids: list[str]) -> Action:
        return text(" ".join(status_sentence(self.view[o]) for o in ids) + " " + ANYTHING_ELSE)

    def do_availability(self, ids: list[str]) -> Action:
        oid = ids[0]
        named = self.items_named(oid)
        if not named:
            return text(ASK_ITEMS.format(verb="check") + " Order " + oid + " contains: "
                        + "; ".join(describe_item(i) for i in self.view[oid]["items"]) + ".")
        item = named[0]
        product = self.conv.looked_up("get_product", "product_id", item["product_id"])
        if product is None:
            return calls(("get_product", {"product_id": item["product_id"]}))
        variant = target_variant(item, product, self.said)
        if variant is None:
            dims = " or ".join(item["options"])
            return text(ASK_OPTION.format(dims=dims))
        opts = ", ".join(str(v) for v in variant["options"].values())
        if variant["available"]:
            return text(f"Yes, the {item['name']} ({opts}) is in stock at {money(variant['price'])}. " + ANYTHING_ELSE)
        return text(f"Unfortunately, the {item['name']} ({opts}) is out of stock right now. " + ANYTHING_ELSE)

    # state-changing requests
    def do_cancel(self, ids: list[str]) -> Action:
        done = [self.conv.performed("cancel_order", o, self.req.index) for o in ids]
        if all(e is not None and e.ok for e in done):
            refunds = "; ".join(f"{o}: {money(self.view[o]['payment_history'][0]['amount'])} to {self.pm(o)}"
                                for o in ids)
            return text(f"Done: {', '.join(ids)} cancelled. Refunds: {refunds}. " + ANYTHING_ELSE)
        for o in ids:
            if self.view[o]["status"] != "pending":
                extra = " Delivered orders can be returned instead." if self.view[o]["status"] == "delivered" else ""
                return text(f"I'm sorry, but I can't cancel order {o}: it is {self.view[o]['status']}, and only "
                            f"pending orders can be cancelled.{extra} " + ANYTHING_ELSE)
        reason = cancel_reason(self.said)
        if reason is None:
            return text(ASK_REASON)
        answer = self.confirmed()
        if answer is True:
            return calls(*(("cancel_order", {"order_id": o, "reason": reason}) for o in ids))
        if answer is False:
            return text(DECLINED)
        parts = "; ".join(f"{o} ({', '.join(i['name'] for i in self.view[o]['items'])}, total "
                          f"{money(self.view[o]['payment_history'][0]['amount'])}, refund to {self.pm(o)})"
                          for o in ids)
        return text(f"Please confirm: cancel {parts} for the reason '{reason}'. " + PROCEED)

    def do_address(self, ids: list[str]) -> Action:
        done = [self.conv.performed("change_address", o, self.req.index) for o in ids]
        if all(e is not None and e.ok for e in done):
            return text(f"Done: the shipping address of {', '.join(ids)} is now "
                        f"{format_address(self.view[ids[0]]['address'])}. " + ANYTHING_ELSE)
        for o in ids:
            if self.view[o]["status"] != "pending":
                return text(f"I'm sorry, but I can't change the address of order {o}: it is "
                            f"{self.view[o]['status']}, and only pending orders can be updated. " + ANYTHING_ELSE)
        address = parse_address(self.said)
        if address is None:
            return text(ASK_ADDRESS)
        answer = self.confirmed()
        if answer is True:
            return calls(*(("change_address", {"order_id": o, **address}) for o in ids))
        if answer is False:
            return text(DECLINED)
        return text(f"Please confirm: change the shipping address of {', '.join(ids)} to "
                    f"{format_address(address)}. " + PROCEED)

    def _delivered_items(self, ids: list[str], verb: str) -> Action | dict[str, list[dict[str, Any]]]:
        for o in ids:
            if self.view[o]["status"] != "delivered":
                return text(f"I'm sorry, but I can't {verb} items of order {o}: it is {self.view[o]['status']}, "
                            "and only delivered orders can be returned, exchanged or refunded. " + ANYTHING_ELSE)
        chosen = {o: self.items_named(o) for o in ids}
        for o in ids:
            if not chosen[o]:
                listing = "; ".join(describe_item(i) for i in self.view[o]["items"])
                return text(f"Order {o} contains: {listing}. " + ASK_ITEMS.format(verb=verb))
        return chosen

    def _method_refusal(self, oid: str) -> str:
        """The refusal of a refund to another payment method, said once per request."""
        if ALT_METHOD_RE.search(self.said) and not self.conv.said_since(self.req.index, "different payment method"):
            return REFUSE_METHOD.format(pm=self.pm(oid))
        return ""

    def do_return(self, ids: list[str]) -> Action:
        done = [self.conv.performed("return_items", o, self.req.index) for o in ids]
        if all(e is not None and e.ok for e in done):
            parts = "; ".join(f"{o}: refund of {money(e.result['payment_history'][-1]['amount'])} to {self.pm(o)}"
                              for o, e in zip(ids, done) if e is not None)
            return text(f"Done: the return is registered ({parts}). You'll receive an email with the return "
                        "label. " + ANYTHING_ELSE)
        chosen = self._delivered_items(ids, "return")
        if isinstance(chosen, Action):
            return chosen
        answer = self.confirmed()
        if answer is True:
            return calls(*(("return_items", {"order_id": o, "item_ids": [i["item_id"] for i in chosen[o]],
                                             "payment_method_id": self.pm(o)}) for o in ids))
        if answer is False:
            return text(DECLINED)
        parts = "; ".join(f"{', '.join(describe_item(i) for i in chosen[o])} from order {o} (refund of "
                          f"{money(sum(i['price'] for i in chosen[o]))} to {self.pm(o)})" for o in ids)
        return text(self._method_refusal(ids[0]) + f"Please confirm: return {parts}. " + PROCEED)

    def do_refund(self, ids: list[str]) -> Action:
        oid = ids[0]
        tool = REFUND if REFUND in self.conv.tool_names else LEGACY_REFUND
        done = self.conv.performed(tool, oid, self.req.index)
        if done is not None and done.ok:
            amount = done.result["item_refunds"][-1]["amount"]
            return text(f"Done: {money(amount)} refunded to {self.pm(oid)}; it should appear within 5 business "
                        "days. " + ANYTHING_ELSE)
        chosen = self._delivered_items([oid], "refund")
        if isinstance(chosen, Action):
            return chosen
        item = chosen[oid][0]
        answer = self.confirmed()
        reason = "missing" if MISSING_RE.search(self.said) else "damaged"
        if answer is True:
            args: dict[str, Any] = {"order_id": oid, "item_id": item["item_id"], "amount": item["price"]}
            if tool == REFUND:
                args.update(payment_method_id=self.pm(oid), reason=reason)
            return calls((tool, args))
        if answer is False:
            return text(DECLINED)
        return text(self._method_refusal(oid) + f"Please confirm: refund {money(item['price'])} for the {reason} "
                    f"{describe_item(item)} of order {oid} to the original payment method ({self.pm(oid)}). "
                    + PROCEED)

    def do_exchange(self, ids: list[str]) -> Action:
        oid = ids[0]
        done = self.conv.performed("exchange_items", oid, self.req.index)
        if done is not None and done.ok:
            return text(f"Done: the exchange for order {oid} is registered. You'll receive an email with the "
                        "return label for the old item. " + ANYTHING_ELSE)
        chosen = self._delivered_items([oid], "exchange")
        if isinstance(chosen, Action):
            return chosen
        item = chosen[oid][0]
        product = self.conv.looked_up("get_product", "product_id", item["product_id"])
        if product is None:
            return calls(("get_product", {"product_id": item["product_id"]}))
        variant = target_variant(item, product, self.said)
        if variant is None:
            return text(ASK_OPTION.format(dims=" or ".join(item["options"])))
        opts = ", ".join(str(v) for v in variant["options"].values())
        if not variant["available"]:
            return text(f"Unfortunately, the {item['name']} ({opts}) is out of stock right now. " + ANYTHING_ELSE)
        answer = self.confirmed()
        if answer is True:
            return calls(("exchange_items", {"order_id": oid, "item_ids": [item["item_id"]],
                                             "new_item_ids": [variant["item_id"]], "payment_method_id": self.pm(oid)}))
        if answer is False:
            return text(DECLINED)
        diff = round(variant["price"] - item["price"], 2)
        settle = (f"you pay the difference of {money(diff)}" if diff > 0 else
                  f"you get {money(-diff)} back" if diff < 0 else "there is no price difference")
        return text(f"Please confirm: exchange {describe_item(item)} of order {oid} for the {opts} variant; "
                    f"{settle}, with {self.pm(oid)}. " + PROCEED)


def status_sentence(order: Mapping[str, Any]) -> str:
    """One order's status, the way the expert reports it."""
    oid, status = order["order_id"], order["status"]
    if status == "pending":
        return f"Order {oid} is pending: it has not shipped yet."
    if status in ("processed", "delivered"):
        return f"Order {oid} is {status} (tracking id {order.get('tracking_id')})."
    return f"Order {oid} is {status}."


def cancel_reason(said: str) -> str | None:
    if MISTAKE_RE.search(said):
        return "ordered by mistake"
    if NOT_NEEDED_RE.search(said):
        return "no longer needed"
    return None


def parse_address(said: str) -> dict[str, str] | None:
    found = ADDRESS_RE.findall(said)
    if not found:
        return None
    address1, city, state, zip_code = found[-1]
    return {"address1": address1.strip(), "city": city.strip(), "state": state, "zip": zip_code}


def format_address(address: Mapping[str, str]) -> str:
    return f"{address['address1']}, {address['city']}, {address['state']} {address['zip']}"


def target_variant(item: Mapping[str, Any], product: Mapping[str, Any], said: str) -> dict[str, Any] | None:
    """The variant the customer asks for: the item's options with the ones they named changed."""
    wanted = dict(item["options"])
    changed = False
    for dim, current in item["options"].items():
        values = {str(v["options"][dim]) for v in product["variants"].values()}
        # Short values ("S", "8") count only as "size S": "it's" must not ask for size S.
        named = [v for v in sorted(values) if v != current
                 and (mentions(said, f"{dim} {v}") or (len(v) > 2 and mentions(said, v)))]
        if named:
            wanted[dim] = named[0]
            changed = True
    if not changed:
        return None
    for variant in product["variants"].values():
        if variant["options"] == wanted:
            return dict(variant)
    return None


class ScriptedExpert:
    """The expert policy as an :class:`~pytest_bclone.agents.base.Agent` (``--bclone-expert=scripted-expert``)."""

    name = "scripted-expert"

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
        try:
            action = expert_policy(state)
        except Exception as exc:  # noqa: BLE001 (an agent reports failures, it does not raise)
            return AgentReply(None, CallStats(error=f"scripted-expert raised {type(exc).__name__}: {exc}"))
        return AgentReply(with_ids(action, state), CallStats())


def with_ids(action: Action, state: State) -> Action:
    """Give every tool call a stable id (``call_<step>_<k>``) so tool results can answer it."""
    if not action.tool_calls:
        return action
    return Action(tuple(ToolCall(c.name, c.arguments, c.raw_arguments, f"call_{state.step}_{k}")
                        for k, c in enumerate(action.tool_calls)), action.text)
