"""Benchmark of the deterministic evaluators on synthetic decision points (not run in CI).

    .venv/bin/python bench/evaluators.py                 # 1,000,000 decision points
    .venv/bin/python bench/evaluators.py --points 100000

Builds seeded synthetic trajectories in memory (a retail-like toolset with schema defaults; single,
parallel and duplicated calls, text replies, refusals and transfers), a clone action per decision
point (mostly the expert's, else a perturbation: changed argument, swapped parallel calls, missing or
duplicated call, dead tool, text instead of a call), then times:

* each step metric alone and all of them in one ``score_steps`` pass, in steps per second, with the
  ratio to the baseline: building the per-step context and parsing the recorded expert action
  (work every metric needs, so the floor);
* the trajectory metrics in step mode (``score_trajectories``) and rollout mode (``score_episodes``);
* the distribution-shift detector on 10,000 train x 10,000 eval states.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_bclone.evaluators import (
    DistributionShift,
    Step,
    default_registry,
    group_by_trajectory,
    score_episodes,
    score_steps,
    score_trajectories,
)
from pytest_bclone.records import Action, DecisionPoint, Episode, ToolCall, Trajectory


def _tool(name: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": props, "required": required}}}


TOOLS = [
    _tool("get_order_details", {"order_id": {"type": "string"}}, ["order_id"]),
    _tool("get_user_details", {"user_id": {"type": "string"}}, ["user_id"]),
    _tool("find_user_id_by_email", {"email": {"type": "string"}}, ["email"]),
    _tool("search_products", {"query": {"type": "string"}, "limit": {"type": "integer", "default": 10},
                              "include_archived": {"type": "boolean", "default": False}}, ["query"]),
    _tool("cancel_pending_order", {"order_id": {"type": "string"}, "reason": {"type": "string"}},
          ["order_id", "reason"]),
    _tool("modify_pending_order_items", {"order_id": {"type": "string"}, "item_ids": {"type": "array"},
                                         "new_item_ids": {"type": "array"}}, ["order_id", "item_ids"]),
    _tool("return_delivered_order_items", {"order_id": {"type": "string"}, "item_ids": {"type": "array"},
                                           "payment_method_id": {"type": "string"}}, ["order_id"]),
    _tool("transfer_to_human_agents", {"summary": {"type": "string"}}, ["summary"]),
] + [_tool(f"lookup_extra_{i}", {"key": {"type": "string"}, "mode": {"type": "string", "default": "fast"}}, ["key"])
     for i in range(8)]

WORDS = [
    "order", "refund", "cancel", "exchange", "item", "shipping", "address", "payment", "gift", "card", "delivered",
    "pending", "status", "where", "is", "my", "package", "broken", "wrong", "size", "color", "return", "label",
    "account", "email", "password", "help",
]


def _call(rng: random.Random, order: str) -> ToolCall:
    kind = rng.randrange(7)
    if kind == 0:
        args: dict[str, Any] = {"order_id": order}
        name = "get_order_details"
    elif kind == 1:
        name, args = "find_user_id_by_email", {"email": f"user{rng.randrange(999)}@example.com"}
    elif kind == 2:
        name, args = "search_products", {"query": rng.choice(WORDS), "limit": rng.choice([10, 5, 20])}
    elif kind == 3:
        name, args = "cancel_pending_order", {"order_id": order, "reason": rng.choice(["no longer needed", "ordered by mistake"])}
    elif kind == 4:
        name, args = "modify_pending_order_items", {"order_id": order, "item_ids": [str(rng.randrange(10**9)) for _ in range(2)],
                                                     "new_item_ids": [str(rng.randrange(10**9))]}
    elif kind == 5:
        name, args = "get_user_details", {"user_id": f"u_{rng.randrange(9999)}"}
    else:
        name, args = f"lookup_extra_{rng.randrange(8)}", {"key": order, "mode": "fast"}
    return ToolCall.parse(name, json.dumps(args))


def _expert_action(rng: random.Random, order: str) -> Action:
    r = rng.random()
    if r < 0.25:
        return Action((), rng.choice(["Sure, let me check that for you.", "Your order is on its way.",
                                      "I'm sorry, but I can't process a refund for that order."]))
    if r < 0.30:
        return Action((ToolCall.parse("transfer_to_human_agents", json.dumps({"summary": "needs a human"})),), None)
    n = 1 if r < 0.75 else rng.choice([2, 2, 3])
    return Action(tuple(_call(rng, order) for _ in range(n)), None)


def make_trajectories(rng: random.Random, count: int, steps: int) -> list[Trajectory]:
    """``count`` trajectories of ``steps`` decision points each. Each has its own tool list object (as
    rows loaded from a store do, so the toolset cache works per trajectory) sharing the tool dicts
    (to keep a million decision points in a few GB)."""
    out = []
    for t in range(count):
        order = f"#W{rng.randrange(10**7)}"
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a retail agent."}]
        for _ in range(steps):
            messages.append({"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(12)) + " " + order})
            msg = _expert_action(rng, order).to_message()
            messages.append(msg)
            for tc in msg.get("tool_calls", []):
                messages.append({"role": "tool", "tool_call_id": tc["id"], "content": '{"status": "ok"}'})
        out.append(Trajectory(f"t{t}", ("common_intents",), "eval", messages, list(TOOLS)))
    return out


def perturb(rng: random.Random, expert: Action) -> Action:
    """A clone action: the expert's most of the time, else one of the typical mistakes."""
    calls = list(expert.tool_calls)
    r = rng.random()
    if r < 0.70 or (not calls and r < 0.9):
        return expert
    if not calls:
        return Action((ToolCall.parse("get_order_details", '{"order_id": "#W1"}'),), None)
    if r < 0.78:  # change one argument
        c = calls[0]
        args = dict(c.arguments or {})
        if args:
            key = min(args)
            args[key] = "changed"
        calls[0] = ToolCall.parse(c.name, json.dumps(args))
    elif r < 0.83:
        calls.reverse()
    elif r < 0.87:
        calls = calls[1:]
    elif r < 0.91:
        calls.append(calls[0])
    elif r < 0.95:
        calls.append(ToolCall.parse("get_refund_status_v1", '{"order_id": "#W1"}'))
    else:
        return Action((), "Let me look into it.")
    return Action(tuple(calls), None)


def timed(label: str, n: int, fn: Any, baseline: float | None = None) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    rate = n / elapsed
    ratio = f"  {baseline / rate:5.2f}x baseline time" if baseline else ""
    print(f"  {label:<34} {elapsed:7.2f} s  {rate:>12,.0f} items/s{ratio}", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000, help="decision points to score")
    parser.add_argument("--steps", type=int, default=10, help="decision points per trajectory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() the synthetic dataset before timing")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    trajectories = make_trajectories(rng, max(1, args.points // args.steps), args.steps)
    points: list[DecisionPoint] = [p for t in trajectories for p in t.decision_points()][: args.points]
    pairs = [(p, perturb(rng, p.expert_action)) for p in points]
    print(f"{len(pairs):,} decision points in {len(trajectories):,} trajectories "
          f"(built in {time.perf_counter() - t0:.1f} s); python {sys.version.split()[0]}")

    if args.freeze:
        gc.collect()
        gc.freeze()
    registry = default_registry()
    step_metrics = ["tool_selection", "tool_arguments", "action_match", "safety_refusal", "dead_tool"]
    n = len(pairs)
    print("step metrics (score_steps):")
    def baseline() -> None:
        # the same conditions as the entry points: cyclic GC paused, nothing retained
        gc.disable()
        try:
            for p, a in pairs:
                Step(p, a).expert  # noqa: B018 (the parse is the point)
        finally:
            gc.enable()

    base = timed("baseline: Step + expert parse", n, baseline)
    for metric in step_metrics:
        timed(metric, n, lambda metric=metric: score_steps(registry, [metric], pairs), base)
    timed(f"all {len(step_metrics)} in one pass", n, lambda: score_steps(registry, step_metrics, pairs), base)

    groups = group_by_trajectory(pairs)
    print(f"trajectory metrics, step mode (score_trajectories, {len(groups):,} trajectories; items = points):")
    for metric in ("trajectory_score", "task_completion"):
        timed(metric, n, lambda metric=metric: score_trajectories(registry, [metric], groups))

    episodes = [(g[0][0].trajectory, Episode(g[0][0].trajectory_id, tuple(a for _, a in g), ())) for g in groups]
    print(f"trajectory metrics, rollout mode (score_episodes, {len(episodes):,} episodes; items = episodes):")
    for metric in ("trajectory_score", "task_completion", "step_count"):
        timed(metric, len(episodes), lambda metric=metric: score_episodes(registry, [metric], episodes))

    print("distribution_shift (10,000 train x 10,000 eval states):")
    shift_rng = random.Random(args.seed + 1)
    train = make_trajectories(shift_rng, 1000, 10)
    evals = [p for t in make_trajectories(shift_rng, 1000, 10) for p in t.decision_points()]
    detector = DistributionShift()
    timed("fit (incl. threshold)", 10_000, lambda: detector.fit(train))
    flags: list[Any] = []
    timed("flag", len(evals), lambda: flags.extend(detector.flag(evals)))
    print(f"  threshold {detector.threshold:.3f}, flagged {sum(f.is_ood for f in flags):,} of {len(flags):,}")


if __name__ == "__main__":
    main()
