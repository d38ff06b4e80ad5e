"""pytest-bclone's ``tool_selection`` + ``tool_arguments`` against DeepEval's ``ToolCorrectnessMetric``.

DeepEval is not a dependency of pytest-bclone. Install it for this script only, beside the
project's virtualenv rather than into it (``pip install deepeval`` into the venv would also upgrade
``openai`` past what litellm supports and add pytest plugins to every test run)::

    .venv/bin/pip install --target .deepeval deepeval
    PYTHONPATH=.deepeval .venv/bin/python bench/vs_deepeval.py            # writes bench/out/vs_deepeval.md

The cases: 1,000 tool-call decision points of the example suite's ``retail@v8`` eval split, the
recorded expert's action as the reference. Half (``--clone-share``) are answered by the example
clone (``bc-clone@v7``, which mostly agrees with the expert); the rest are seeded perturbations of
the expert's action (wrong tool, changed argument, extra call, missing call, reordered parallel
calls, letter case, a boolean for a number, a schema default left out, or unchanged).

Both scorers are deterministic here: DeepEval's metric gets ``evaluation_params=[INPUT_PARAMETERS]``
and a model object that raises if called (no ``available_tools``, so it never asks one);
telemetry is off (``DEEPEVAL_TELEMETRY_OPT_OUT``) and every socket connection raises, so a network
attempt fails the run. Timings are CPU seconds, best of alternating rounds in one process:

* DeepEval's fastest loop: ``metric.measure(case, _show_indicator=False)`` with ``async_mode=False``
  and ``include_reason=False`` over prebuilt ``LLMTestCase`` objects;
* DeepEval's documented call: ``evaluate(test_cases, [metric])`` (printing and caching off);
* ours: ``score_steps_columns(registry, ["tool_selection", "tool_arguments"], pairs)``, warm (the
  recorded actions parsed at load, as in a gate run) and cold (a fresh load each round: the parse
  and the per-trajectory compilation included).

Verdicts: DeepEval's ``success`` (score >= its default threshold 0.5) against ours at the same
threshold on the step credit ``tool_selection * tool_arguments``; the report lists where they
differ, by cause, with one example each, and the same for exact scores (1.0 or not).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")
os.environ.setdefault("DEEPEVAL_DISABLE_DOTENV", "1")

from pytest_bclone.evaluators import default_registry, score_steps_columns
from pytest_bclone.evaluators.normalize import normalize_args, toolset
from pytest_bclone.records import Action, DecisionPoint, ToolCall, Trajectory

INSTALL = ("DeepEval is not installed. It is not a dependency of pytest-bclone; install it beside the venv:\n"
           "    .venv/bin/pip install --target .deepeval deepeval\n"
           "    PYTHONPATH=.deepeval .venv/bin/python bench/vs_deepeval.py")


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError(f"network access attempted during the comparison: {args!r}")


# --- cases ------------------------------------------------------------------------------------------

def load_cases(count: int, seed: int, clone_share: float) -> list[tuple[DecisionPoint, Action, str]]:
    """``(point, answer, source)``: the example clone's answers at v8's tool-call states (at most
    ``clone_share`` of ``count``), then perturbations of the expert's action to reach ``count``."""
    sys.path.insert(0, str(ROOT))
    from example_suite.retail.clone import train_clone
    from pytest_bclone.dataset.store import DatasetStore

    store = DatasetStore(str(ROOT / "example_suite" / "bclone_datasets"), str(ROOT), "bench/vs_deepeval.py")
    v7 = store.load("retail@v7")
    v8 = store.load("retail@v8")
    clone = train_clone(v7.select("train"), "bc-clone@v7")
    points = [p for t in v8.select("eval") for p in t.decision_points()]
    cases: list[tuple[DecisionPoint, Action, str]] = []
    for p in points:
        expert = p.expert_action
        answer = clone.predict(p.state.messages)
        if expert.tool_calls or answer.tool_calls:
            cases.append((p, answer, "clone"))
    rng = random.Random(seed)
    rng.shuffle(cases)
    cases = cases[: round(count * clone_share)]
    tool_points = [p for p in points if p.expert_action.tool_calls]
    while len(cases) < count:
        p = rng.choice(tool_points)
        kind, answer = perturb(rng, p)
        cases.append((p, answer, kind))
    return cases


def _with_args(call: ToolCall, args: dict[str, Any]) -> ToolCall:
    return ToolCall.parse(call.name, json.dumps(args), call.id)


def perturb(rng: random.Random, p: DecisionPoint) -> tuple[str, Action]:
    """One typical mistake (or a harmless variation) of the expert's action at ``p``."""
    expert = p.expert_action
    calls = list(expert.tool_calls)
    names = sorted(toolset(p.trajectory.tools).names)
    kind = rng.choice(["same", "wrong tool", "changed argument", "extra call", "missing call", "reordered",
                       "letter case", "boolean for number", "default left out"])
    first = calls[0]
    args = dict(first.arguments or {})
    if kind == "wrong tool":
        calls[0] = ToolCall.parse(rng.choice([n for n in names if n != first.name] or ["other_tool"]),
                                  first.raw_arguments)
    elif kind == "changed argument" and args:
        args[rng.choice(sorted(args))] = "changed"
        calls[0] = _with_args(first, args)
    elif kind == "extra call":
        calls.append(rng.choice(calls))
    elif kind == "missing call" and len(calls) > 1:
        calls.pop(rng.randrange(len(calls)))
    elif kind == "reordered" and len(calls) > 1:
        calls.reverse()
    elif kind == "letter case" and any(isinstance(v, str) for v in args.values()):
        key = next(k for k in sorted(args) if isinstance(args[k], str))
        args[key] = f" {args[key].upper()} "
        calls[0] = _with_args(first, args)
    elif kind == "boolean for number":
        found = next((k for k in sorted(args) if type(args[k]) is int and args[k] in (0, 1)), None)
        if found is not None:
            args[found] = bool(args[found])
            calls[0] = _with_args(first, args)
    elif kind == "default left out":
        info = toolset(p.trajectory.tools).get(first.name)
        if info is not None and info.defaults:
            key = min(info.defaults)
            if key in args:
                args.pop(key)
            else:
                spec = next(t for t in p.trajectory.tools if (t.get("function") or t).get("name") == first.name)
                args[key] = (spec.get("function") or spec)["parameters"]["properties"][key]["default"]
            calls[0] = _with_args(first, args)
    if kind == "same" or calls == list(expert.tool_calls):
        kind = "same"  # (also when the chosen mistake did not apply to this action)
        calls = [_with_args(c, dict(c.arguments)) if c.arguments is not None else c for c in calls]
    return f"perturbed: {kind}", Action(tuple(calls), expert.text)


# --- DeepEval ---------------------------------------------------------------------------------------

def deepeval_cases(cases: list[tuple[DecisionPoint, Action, str]]) -> list[Any]:
    from deepeval.test_case import LLMTestCase  # type: ignore[import-not-found]
    from deepeval.test_case import ToolCall as DEToolCall

    def tools(action: Action) -> list[Any]:
        return [DEToolCall(name=c.name, input_parameters=dict(c.arguments) if c.arguments is not None else {})
                for c in action.tool_calls]

    out = []
    for p, answer, _ in cases:
        last_user = next((m.get("content") for m in reversed(p.state.messages) if m.get("role") == "user"), "")
        out.append(LLMTestCase(input=str(last_user or "-"), actual_output=answer.text or "",
                               tools_called=tools(answer), expected_tools=tools(p.expert_action)))
    return out


def deepeval_metric(**kw: Any) -> Any:
    from deepeval.metrics import ToolCorrectnessMetric  # type: ignore[import-not-found]
    from deepeval.models import DeepEvalBaseLLM  # type: ignore[import-not-found]
    from deepeval.test_case import ToolCallParams

    class NoLLM(DeepEvalBaseLLM):  # type: ignore[misc]
        """Stands in for the judge model: the comparison must never call one."""

        def __init__(self) -> None:
            super().__init__("no-llm")

        def load_model(self, *args: Any, **kwargs: Any) -> Any:
            return None

        def generate(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError("DeepEval asked an LLM: the comparison must stay deterministic")

        async def a_generate(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError("DeepEval asked an LLM: the comparison must stay deterministic")

        def get_model_name(self, *args: Any, **kwargs: Any) -> str:
            return "no-llm"

    return ToolCorrectnessMetric(evaluation_params=[ToolCallParams.INPUT_PARAMETERS], model=NoLLM(), **kw)


# --- causes of disagreement -------------------------------------------------------------------------

def _norm_calls(action: Action, p: DecisionPoint) -> list[tuple[str, Any]]:
    tools = toolset(p.trajectory.tools)
    return [(c.name, None if (a := normalize_args(c, tools)) is None else frozenset(a.items()))
            for c in action.tool_calls]


def cause(p: DecisionPoint, answer: Action) -> str:
    """Why DeepEval's tool correctness and our credit can disagree on this case (first that applies)."""
    expert = p.expert_action
    e, a = list(expert.tool_calls), list(answer.tool_calls)
    e_names, a_names = Counter(c.name for c in e), Counter(c.name for c in a)
    if not e and a:
        return "expert replied with text, answer called tools (DeepEval: nothing expected, so 0)"
    if e and not a:
        return "answer replied with text where the expert called tools"
    raw_equal = sorted((c.name, json.dumps(c.arguments, sort_keys=True, default=str)) for c in e) == sorted(
        (c.name, json.dumps(c.arguments, sort_keys=True, default=str)) for c in a)
    python_equal = len(e) == len(a) and all(any(x.name == y.name and x.arguments == y.arguments for y in a)
                                            for x in e)
    norm_equal = Counter(_norm_calls(expert, p)) == Counter(_norm_calls(answer, p))
    if python_equal and not norm_equal:
        return "look-alike values: Python's True == 1 passes a boolean for a number in DeepEval"
    if norm_equal and not raw_equal:
        flat = [(x, y) for x in e for y in a if x.name == y.name and x.arguments and y.arguments]
        if all(set(x.arguments or {}) != set(y.arguments or {}) for x, y in flat):
            return "schema default or optional null left out: same call for us, a missing key for DeepEval"
        return "letter case or spaces in a string: equal after our normalisation, unequal for DeepEval"
    if sum((a_names - e_names).values()) > 0 and not (e_names - a_names):
        return "extra or duplicate call: DeepEval ignores calls beyond the expected ones, ours counts them"
    if any(v > 1 for v in e_names.values()) and set(e_names) & set(a_names):
        return "a tool the expert called more than once: DeepEval pairs greedily in expected order, ours optimally"
    if e_names - a_names:
        return "missing or wrong tool: DeepEval divides by the expected calls, ours by max(expected, called)"
    nested = any(isinstance(v, dict) for c in e for v in (c.arguments or {}).values())
    if nested:
        return "nested object: DeepEval gives partial credit inside it, ours compares the value whole"
    return "argument agreement rounding (both share keys, scaled differently)"


# --- timing -----------------------------------------------------------------------------------------

def cpu(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


def fresh_pairs(cases: list[tuple[DecisionPoint, Action, str]]) -> list[tuple[DecisionPoint, Action]]:
    """The cases over new trajectory objects (nothing parsed or compiled yet): a fresh load."""
    copies: dict[int, Trajectory] = {}
    out = []
    for p, answer, _ in cases:
        t = copies.get(id(p.trajectory))
        if t is None:
            t = copies[id(p.trajectory)] = dataclasses.replace(p.trajectory, messages=list(p.trajectory.messages))
        out.append((DecisionPoint(t, p.step, p.message_index), answer))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clone-share", type=float, default=0.5,
                        help="share of the cases answered by the example clone (the rest: perturbations)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "vs_deepeval.md"))
    args = parser.parse_args()
    try:
        import deepeval  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print(INSTALL)
        return 0
    socket.socket.connect = _no_network  # type: ignore[method-assign]
    socket.socket.connect_ex = _no_network  # type: ignore[method-assign,assignment]
    socket.create_connection = _no_network  # type: ignore[assignment]
    from deepeval import evaluate
    from deepeval.evaluate.configs import AsyncConfig, CacheConfig, DisplayConfig  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    cases = load_cases(args.cases, args.seed, args.clone_share)
    print(f"{len(cases):,} cases ({Counter(s for *_, s in cases).most_common()}) in {time.perf_counter() - t0:.1f} s")
    de_cases = deepeval_cases(cases)
    pairs = [(p, a) for p, a, _ in cases]
    registry = default_registry()
    metrics = ["tool_selection", "tool_arguments"]

    # the scores, once, for the verdict table
    metric = deepeval_metric(async_mode=False, include_reason=False)
    de_scores = []
    for case in de_cases:
        metric.measure(case, _show_indicator=False)
        de_scores.append((float(metric.score), bool(metric.success)))
    ours_cols = score_steps_columns(registry, metrics, pairs)
    ours = [float(s) * float(a) for s, a in zip(ours_cols.values["tool_selection"], ours_cols.values["tool_arguments"])]
    threshold = metric.threshold

    import numpy  # noqa: F401  (one-time imports out of the timings)
    import scipy.optimize  # type: ignore[import-untyped]  # noqa: F401

    best: dict[str, float] = {}

    def keep(label: str, seconds: float) -> None:
        best[label] = min(seconds, best.get(label, float("inf")))

    workdir = tempfile.mkdtemp(prefix="bclone-vs-deepeval-")
    here = os.getcwd()
    os.chdir(workdir)  # evaluate() may write a .deepeval folder: keep it out of the repository
    try:
        for _ in range(args.rounds):
            def fastest() -> None:
                m = deepeval_metric(async_mode=False, include_reason=False)
                for case in de_cases:
                    m.measure(case, _show_indicator=False)

            keep("deepeval_loop", cpu(fastest))
            unparsed = fresh_pairs(cases)
            keep("ours_cold", cpu(partial(score_steps_columns, registry, metrics, unparsed)))
            keep("ours_warm", cpu(lambda: score_steps_columns(registry, metrics, pairs)))
            keep("deepeval_build", cpu(lambda: deepeval_cases(cases)))
        for _ in range(max(1, args.rounds // 2)):
            keep("deepeval_evaluate", cpu(lambda: evaluate(
                de_cases, [deepeval_metric()],
                async_config=AsyncConfig(run_async=False),
                display_config=DisplayConfig(print_results=False, show_indicator=False, verbose_mode=False),
                cache_config=CacheConfig(write_cache=False, use_cache=False))))
            keep("ours_warm", cpu(lambda: score_steps_columns(registry, metrics, pairs)))
    finally:
        os.chdir(here)

    n = len(cases)
    us = {k: v / n * 1e6 for k, v in best.items()}
    loop, docs, warm, cold = (best[k] for k in ("deepeval_loop", "deepeval_evaluate", "ours_warm", "ours_cold"))
    cases_by_source = ", ".join(f"{c} {s}" for s, c in Counter(s for *_, s in cases).most_common())
    lines = [
        "# pytest-bclone vs DeepEval's ToolCorrectnessMetric",
        "",
        (f"{n:,} tool-call cases from the example suite's retail@v8 eval split ({cases_by_source}); CPU time "
         f"per case, best of {args.rounds} alternating rounds in one process; python {sys.version.split()[0]}, "
         f"deepeval {sys.modules['deepeval'].__version__}."),
        "",
        "| scorer | us per case | ours is faster by |",
        "|---|---:|---:|",
        (f"| DeepEval `measure()` loop, async off, no reason (its fastest) | {us['deepeval_loop']:.1f} | "
         f"{loop / warm:.1f}x (warm), {loop / cold:.1f}x (cold) |"),
        (f"| DeepEval `evaluate(test_cases, [metric])` (its documented call) | {us['deepeval_evaluate']:.1f} | "
         f"{docs / warm:.1f}x (warm), {docs / cold:.1f}x (cold) |"),
        f"| DeepEval: building the `LLMTestCase`s (not in the rows above) | {us['deepeval_build']:.1f} | |",
        (f"| ours, `score_steps_columns` tool_selection + tool_arguments, warm (parsed at load) | "
         f"{us['ours_warm']:.2f} | |"),
        f"| ours, the same on a fresh load (parse + per-trajectory compile included) | {us['ours_cold']:.2f} | |",
        "",
        (f"Verdicts at DeepEval's default threshold ({threshold}): DeepEval's `success` against ours on the "
         "step credit `tool_selection * tool_arguments` (matched calls' summed argument agreement / "
         "max(expected, called))."),
        "",
    ]
    differ: dict[str, list[int]] = {}
    exact_differ: dict[str, list[int]] = {}
    for i, ((p, answer, _), (de_score, de_ok), our) in enumerate(zip(cases, de_scores, ours)):
        if de_ok != (our >= threshold):
            differ.setdefault(cause(p, answer), []).append(i)
        if (de_score == 1.0) != (our == 1.0):
            exact_differ.setdefault(cause(p, answer), []).append(i)
    agree = n - sum(len(v) for v in differ.values())
    lines.append(f"Same verdict on {agree:,} of {n:,} cases; they differ on {n - agree:,}:")
    lines.append("")

    def table(groups: dict[str, list[int]]) -> None:
        lines.append("| cause | cases | DeepEval passes | example (expert -> answer: DeepEval score, ours) |")
        lines.append("|---|---:|---:|---|")
        for why, idx in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            i = idx[0]
            p, answer, _ = cases[i]
            example = (f"`{p.expert_action.describe()[:90]}` -> `{answer.describe()[:90]}`: "
                       f"{de_scores[i][0]:.2f}, {ours[i]:.2f}").replace("|", "\\|")
            lines.append(f"| {why} | {len(idx)} | {sum(de_scores[j][1] for j in idx)} | {example} |")
        lines.append("")

    table(differ)
    exact_agree = n - sum(len(v) for v in exact_differ.values())
    lines.append(f"Full agreement (score 1.0) judged the same on {exact_agree:,} of {n:,} cases; differing:")
    lines.append("")
    table(exact_differ)
    lines.append("No LLM was called (DeepEval's model slot held an object that raises) and every socket "
                 "connection raised during the run; telemetry was opted out.")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
