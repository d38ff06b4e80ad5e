"""Benchmark of the deterministic evaluators on synthetic decision points (not run in CI).

    .venv/bin/python bench/evaluators.py                  # 200,000 decision points
    .venv/bin/python bench/evaluators.py --points 1000000 --rounds 1
    .venv/bin/python bench/evaluators.py --general --rollout --shift   # the slower paths too

Builds seeded synthetic trajectories in memory (a retail-like toolset with schema defaults; single,
parallel and duplicated calls, text replies, refusals and transfers; an expected outcome that the
recorded expert misses in about one trajectory in five), a clone action per decision point (mostly
the expert's, else a perturbation: changed argument, swapped parallel calls, missing or duplicated
call, dead tool, text instead of a call), each a fresh object re-parsed from its OpenAI message as
a model's reply would be. Then times, in CPU seconds, best of ``--rounds`` alternating rounds:

* the baseline: deriving the decision points (on a load whose points were never derived),
  building the per-step context and parsing each recorded expert action with
  ``Action.from_message`` (what a load must do once; the floor the issue sets);
* the columnar step metrics (``score_steps_columns``): each alone and all five in one pass, the
  first pass over a fresh load (with the once-per-load parse, and after a parse done apart: the
  once-per-load compile of the expert's side) and the warm passes after it (the clone, the expert
  and each repeat of a real run); the recorded expert scored on its own parsed actions;
* the step-mode trajectory metrics (``score_trajectories_columns``), items = decision points: the
  first pass after the step metrics (a run's order), the warm passes, the recorded expert;
* with ``--general``: the general path (``score_steps``, a Score with its reason per item) on the
  same pairs; ``--rollout``: ``score_episodes``; ``--shift``: the distribution-shift detector.

Each rate is printed with its ratio to the baseline of the same run (time per point / baseline's).
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
    score_steps_columns,
    score_trajectories,
    score_trajectories_columns,
)
from pytest_bclone.records import Action, DecisionPoint, Episode, ExpectedOutcome, ToolCall, Trajectory


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
    """``count`` trajectories of ``steps`` decision points each, sharing one tool list object as rows
    of one toolset loaded from a store do (the store's tools column is dictionary-encoded)."""
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
        out.append(Trajectory(f"t{t}", ("common_intents",), "eval", messages, TOOLS, _expected(rng, messages)))
    return out


def _expected(rng: random.Random, messages: list[dict[str, Any]]) -> ExpectedOutcome | None:
    """The expert's state-changing calls as the expected outcome; in one trajectory in five the
    outcome asks for one more call, which the recording never makes (a failed expert run)."""
    if rng.random() < 0.2:
        return None
    calls = [ToolCall.parse(tc["function"]["name"], tc["function"]["arguments"])
             for m in messages if m.get("role") == "assistant" for tc in m.get("tool_calls") or ()]
    required = tuple(c for c in calls if c.name.startswith(("cancel_", "modify_", "return_")))
    if rng.random() < 0.2:
        required += (ToolCall.parse("return_delivered_order_items", {"order_id": "#W0", "item_ids": ["1"]}),)
    return ExpectedOutcome(required, ())


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


def fresh(action: Action) -> Action:
    """The action as a new object, re-parsed from its OpenAI message (as a model's reply is)."""
    return Action.from_message(action.to_message())


def cpu(fn: Any) -> float:
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


def report(label: str, n: int, seconds: float, baseline: float | None) -> None:
    rate = n / seconds
    ratio = f"  {seconds / baseline:5.2f}x baseline time" if baseline else ""
    print(f"  {label:<52} {seconds:7.2f} s  {rate:>11,.0f} points/s{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=200_000, help="decision points to score")
    parser.add_argument("--steps", type=int, default=10, help="decision points per trajectory")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--general", action="store_true", help="also time score_steps (Score objects)")
    parser.add_argument("--rollout", action="store_true", help="also time score_episodes")
    parser.add_argument("--shift", action="store_true", help="also time the distribution-shift detector")
    args = parser.parse_args()

    def load() -> list[Trajectory]:
        # the same seeded dataset each time: a fresh load has nothing parsed yet
        return make_trajectories(random.Random(args.seed), max(1, args.points // args.steps), args.steps)

    t0 = time.perf_counter()
    trajectories = load()
    points: list[DecisionPoint] = [p for t in trajectories for p in t.decision_points()][: args.points]
    rng = random.Random(args.seed + 7)
    clone = [fresh(perturb(rng, p.expert_action)) for p in points]
    n = len(points)
    print(f"{n:,} decision points in {len(trajectories):,} trajectories (built in {time.perf_counter() - t0:.1f} s); "
          f"python {sys.version.split()[0]}; CPU seconds, best of {args.rounds} alternating rounds")

    # imported by the first scoring call otherwise (numpy for the columns, scipy for an ambiguous
    # parallel-call assignment): one-time costs, kept out of the timings
    import numpy  # noqa: F401
    import scipy.optimize  # type: ignore[import-untyped]  # noqa: F401

    registry = default_registry()
    step_metrics = ["tool_selection", "tool_arguments", "action_match", "safety_refusal", "dead_tool"]
    traj_metrics = ["trajectory_score", "task_completion"]
    best: dict[str, float] = {}

    def keep(label: str, seconds: float) -> None:
        best[label] = min(seconds, best.get(label, float("inf")))

    def one_round() -> None:
        fresh_load = load()  # nothing parsed yet: the first pass pays the once-per-load work
        fresh_points = [p for t in fresh_load for p in t.decision_points()][:n]
        fresh_pairs = list(zip(fresh_points, clone))
        # a load of its own, its points not yet derived: a trajectory keeps the indexes of its
        # assistant messages once derived, and the baseline pays that scan of the roles
        base_load = load()

        def baseline() -> None:
            # derive the decision points, build the per-step context, parse each recorded action
            gc.disable()
            try:
                for t in base_load:
                    for p in t.decision_points():
                        Step(p, clone[0])
                        Action.from_message(t.messages[p.message_index])
            finally:
                gc.enable()

        keep("baseline", cpu(baseline))
        keep("cold", cpu(lambda: score_steps_columns(registry, step_metrics, fresh_pairs)))
        parsed_load = load()  # parsed apart: the first pass then pays the compile, not the parse
        parsed_pairs = list(zip([p for t in parsed_load for p in t.decision_points()][:n], clone))
        for t in parsed_load:
            t.expert_actions()
        keep("cold_parsed", cpu(lambda: score_steps_columns(registry, step_metrics, parsed_pairs)))
        recorded = [(p, p.expert_action) for p, _ in fresh_pairs]
        for metric in step_metrics:
            keep(metric, cpu(lambda metric=metric: score_steps_columns(registry, [metric], fresh_pairs)))
        keep("all5", cpu(lambda: score_steps_columns(registry, step_metrics, fresh_pairs)))
        keep("all5_expert", cpu(lambda: score_steps_columns(registry, step_metrics, recorded)))
        groups = group_by_trajectory(fresh_pairs)
        keep("traj_cold", cpu(lambda: score_trajectories_columns(registry, traj_metrics, groups)))
        for metric in traj_metrics:
            keep(metric, cpu(lambda metric=metric: score_trajectories_columns(registry, [metric], groups)))
        keep("traj2", cpu(lambda: score_trajectories_columns(registry, traj_metrics, groups)))
        expert_groups = group_by_trajectory(recorded)
        keep("traj2_expert", cpu(lambda: score_trajectories_columns(registry, traj_metrics, expert_groups)))

    for r in range(args.rounds):
        one_round()
        print(f"  round {r + 1}: baseline {best['baseline']:.2f} s, all five {best['all5']:.2f} s, "
              f"trajectory metrics {best['traj2']:.2f} s (best so far)", flush=True)

    base = best["baseline"]
    print("step metrics:")
    report("baseline: points + Step + expert parse", n, base, None)
    report("all 5, first pass after load (incl. parse)", n, best["cold"], base)
    report("all 5, first pass after the load's parse", n, best["cold_parsed"], base)
    for metric in step_metrics:
        report(f"{metric} (score_steps_columns)", n, best[metric], base)
    report(f"all {len(step_metrics)} in one pass (score_steps_columns)", n, best["all5"], base)
    report(f"all {len(step_metrics)}, the recorded expert's own actions", n, best["all5_expert"], base)
    print("trajectory metrics, step mode (score_trajectories_columns; per decision point):")
    report("both, first pass (incl. per-load requirement plans)", n, best["traj_cold"], base)
    for metric in traj_metrics:
        report(metric, n, best[metric], base)
    report("both in one pass", n, best["traj2"], base)
    report("both, the recorded expert's own actions", n, best["traj2_expert"], base)

    pairs = list(zip(points, clone))
    if args.general:
        print("general path (score_steps / score_trajectories, a Score with its reason per item):")
        report(f"all {len(step_metrics)} (score_steps)", n, cpu(lambda: score_steps(registry, step_metrics, pairs)), base)
        groups = group_by_trajectory(pairs)
        report("both trajectory metrics (score_trajectories)", n,
               cpu(lambda: score_trajectories(registry, traj_metrics, groups)), base)

    if args.rollout:
        groups = group_by_trajectory(pairs)
        episodes = [(g[0][0].trajectory, Episode(g[0][0].trajectory_id, tuple(a for _, a in g), ())) for g in groups]
        print(f"trajectory metrics, rollout mode (score_episodes, {len(episodes):,} episodes; items = episodes):")
        for metric in ("trajectory_score", "task_completion", "step_count"):
            seconds = cpu(lambda metric=metric: score_episodes(registry, [metric], episodes))
            print(f"  {metric:<44} {seconds:7.2f} s  {len(episodes) / seconds:>11,.0f} episodes/s")

    if args.shift:
        print("distribution_shift (10,000 train x 10,000 eval states):")
        shift_rng = random.Random(args.seed + 1)
        train = make_trajectories(shift_rng, 1000, 10)
        evals = [p for t in make_trajectories(shift_rng, 1000, 10) for p in t.decision_points()]
        detector = DistributionShift()
        print(f"  fit (incl. threshold) {cpu(lambda: detector.fit(train)):.2f} s")
        flags: list[Any] = []
        print(f"  flag {cpu(lambda: flags.extend(detector.flag(evals))):.2f} s")
        print(f"  threshold {detector.threshold:.3f}, flagged {sum(f.is_ood for f in flags):,} of {len(flags):,}")


if __name__ == "__main__":
    main()
