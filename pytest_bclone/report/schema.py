"""The report summary: one JSON-able dict per run, documented field by field as a JSON Schema.

The session builds the summary; every renderer takes only this dict, and the JSON report *is*
this dict. :data:`REPORT_SCHEMA` is the contract between the two sides (and for anyone reading
the JSON report downstream: dashboards, the next run's drift check). Conventions:

* Means (``expert_mean``, ``clone_mean``, ``baseline_clone``...) are scores in [0, 1].
* Differences, intervals, margins and drops (``diff``, ``ci_low``, ``ci_high``, ``within``,
  ``drop``) are in points, i.e. x100: ``diff = (clone_mean - expert_mean) * 100``.
* Percentages (``*_pct``) are already x100; shares/rates (``rate``, ``ood_share``,
  ``error_rate``) are in [0, 1].
* A number is ``null`` when there is nothing to compute it from (``n == 0`` -> null means).
* Consumers must ignore keys they do not know: minor additions do not bump :data:`SCHEMA_ID`.

:func:`validate_summary` checks a dict against the schema (jsonschema is imported lazily).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._common import DECISIONS, SCHEMA_ID, ReportError

__all__ = ["REPORT_SCHEMA", "SCHEMA_ID", "validate_summary"]

_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"], "minimum": 0}
_STR = {"type": ["string", "null"]}
_COUNT = {"type": "integer", "minimum": 0}


def _d(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema fragment with its documentation attached."""
    return {**schema, "description": description}


def _object(properties: dict[str, dict[str, Any]], required: list[str] | None = None,
            description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if description:
        out["description"] = description
    return out


# An action as recorded in examples: a readable string (``get_order(order_id="W1")``,
# ``text: "Your refund is on its way"``), or the raw action object when the session keeps it.
_ACTION = {"type": ["string", "object", "null"]}

_AGENT = _object(
    {
        "name": _d("agent name: litellm model string, python:module:callable, or 'recorded'", {"type": "string"}),
        "calls": _d("model calls made (cache hits included; each call of a rollout episode; 0 for the recorded "
                    "expert, whose actions are read from the dataset)", _COUNT),
        "cost_source": _d("calls: priced from this run's calls; recorded: the dataset's recorded cost of serving "
                          "the evaluated trajectories (the recorded expert makes no call)",
                          {"enum": ["calls", "recorded"]}),
        "failed": _d("calls that finally failed after retries (excluded from scores, counted as errors)", _COUNT),
        "cached": _d("calls answered from the record/replay cache", _COUNT),
        "prompt_tokens": _d("input tokens over all calls", _INT),
        "completion_tokens": _d("output tokens over all calls", _INT),
        "cost_usd": _d("cost in USD (cache hits cost nothing); null when unpriced", _NUM),
        "price_known": _d("false when the model has no known price (set --bclone-price MODEL=IN/OUT)",
                          {"type": "boolean"}),
        "latency_p50_s": _d("median latency of live calls, seconds", _NUM),
        "latency_p95_s": _d("95th percentile latency of live calls, seconds", _NUM),
        "retries": _d("retried attempts (429, 5xx, timeouts) over all calls", _COUNT),
    },
    description="usage, cost and latency of one agent over the run",
)
_AGENT["required"].remove("cost_source")  # optional: baselines saved before it existed still load

_WORST = _object(
    {
        "trajectory_id": _d("the trajectory", {"type": "string"}),
        "step": _d("decision point index in the trajectory (null for rollout-level items)", _INT),
        "expert_action": _d("what the expert did, human-readable", _ACTION),
        "clone_action": _d("what the clone did, human-readable", _ACTION),
    },
    description="one of the worst items of a verdict (largest expert-minus-clone score)",
)

_VERDICT = _object(
    {
        # parity.Verdict.to_dict()
        "cohort": _d("cohort name", {"type": "string"}),
        "metric": _d("evaluator name", {"type": "string"}),
        "n": _d("scored items (decision points or trajectories)", _COUNT),
        "n_clusters": _d("trajectories the items belong to, when resampled by trajectory; else null", _INT),
        "expert_mean": _d("expert's mean score in [0, 1]; null when n == 0", _NUM),
        "clone_mean": _d("clone's mean score in [0, 1]; null when n == 0", _NUM),
        "diff": _d("clone minus expert, points", _NUM),
        "ci_low": _d("lower end of the paired-bootstrap interval of diff, points", _NUM),
        "ci_high": _d("upper end of the interval, points", _NUM),
        "confidence": _d("two-sided confidence level of the interval, e.g. 0.95", {"type": "number"}),
        "within": _d("margin in points: pass iff ci_low > -within; 0 is the exact zero-regression rule",
                     {"type": "number", "minimum": 0}),
        "status": _d("the statistical verdict", {"enum": ["pass", "fail", "inconclusive"]}),
        "reason": _d("one sentence explaining the status", {"type": "string"}),
        "n_needed": _d("items (or trajectories) needed to resolve the margin, when inconclusive for size", _INT),
        "regressions": _d("items the expert solved (1) and the clone failed (0); null for non-binary metrics",
                          _INT),
        "errors": _d("items excluded because a model call failed", _COUNT),
        "total": _d("items attempted (n + errors)", _COUNT),
        "error_rate": _d("errors / total, in [0, 1]", {"type": "number", "minimum": 0, "maximum": 1}),
        "p_value": _d("one-sided non-inferiority p-value (compare with (1 - confidence) / 2)", _NUM),
        "holm_adjusted": _d("true once Holm's correction across the run's cohorts was applied",
                            {"type": "boolean"}),
        "p_adjusted": _d("Holm-adjusted p-value", _NUM),
        "regression_units": _d("zero-regression verdicts: units (trajectories when clustered, else items) with at "
                               "least one regression; else null", _INT),
        "regression_rate_upper": _d("zero-regression verdicts: one-sided upper confidence bound on the share of "
                                    "regressing units (3/n at 95% when none was seen), in [0, 1]; else null", _NUM),
        "remedy": _d("the declared next step of this cohort when it fails (assertion or ini bclone_policy)", _STR),
        # added by the session
        "mode": _d("replay mode: step (teacher-forced decision points) or rollout (whole episodes)",
                   {"enum": ["step", "rollout"]}),
        "on_fail": _d("what a failure does: block the release, route the cohort to the expert, or warn",
                      {"enum": ["block", "route", "warn"]}),
        "test": _d("pytest node id of the parity test", {"type": "string"}),
        "outcome": _d("how pytest reported the test", {"enum": ["passed", "failed", "xfailed", "warned"]}),
        "action": _d("consequence for the release", {"enum": ["ship", "route to expert", "block", "warn"]}),
        "worst": _d("up to 3 worst items, for a quick look at what went wrong",
                    {"type": "array", "items": _WORST, "maxItems": 3}),
    },
    required=["cohort", "metric", "n", "n_clusters", "expert_mean", "clone_mean", "diff", "ci_low", "ci_high",
              "confidence", "within", "status", "reason", "n_needed", "regressions", "errors", "total",
              "error_rate", "p_value", "holm_adjusted", "p_adjusted", "regression_units", "regression_rate_upper",
              "mode", "on_fail", "test", "outcome",
              "action", "worst"],
    description="one parity assertion (one cohort, one metric) and what it did to the release",
)

_SCORE = _object(
    {
        "cohort": _d("cohort name", {"type": "string"}),
        "metric": _d("evaluator name", {"type": "string"}),
        "mode": _d("replay mode", {"enum": ["step", "rollout"]}),
        "n": _d("scored items", _COUNT),
        "expert_mean": _d("expert's mean in [0, 1]", _NUM),
        "clone_mean": _d("clone's mean in [0, 1]", _NUM),
        "diff": _d("clone minus expert, points", _NUM),
        "expert_recorded": _d("the dataset's recorded expert score of the same name, mean in [0, 1]; null when "
                              "the rows recorded none", _NUM),
    },
    required=["cohort", "metric", "mode", "n", "expert_mean", "clone_mean", "diff"],
    description="an informational score: every metric computed, per cohort, asserted or not",
)

_SPLIT = _object(
    {
        "n": _d("trajectories on this side of the threshold", _COUNT),
        "expert_mean": _d("expert's mean of the metric in [0, 1]", _NUM),
        "clone_mean": _d("clone's mean of the metric in [0, 1]", _NUM),
    }
)

_NEXT_STEP = _object(
    {
        "cohort": _d("the failing or undecided cohort", {"type": "string"}),
        "metric": _d("its gating metric", {"type": "string"}),
        "status": _d("its verdict; missing: a gate test ended without one; failed: a gate test failed after it",
                     {"enum": ["pass", "fail", "inconclusive", "missing", "failed"]}),
        "action": _d("the kind of remedy (the text is the declared remedy, or advice by metric)",
                     {"enum": ["retrain", "route", "block", "inspect_tools", "sample_more", "collect_more",
                               "fix_test"]}),
        "text": _d("the next step in one sentence, printed under the gate line", {"type": "string"}),
    }
)

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://pytest-bclone.invalid/schemas/report-1.json",
    "title": "pytest-bclone report summary",
    "description": __doc__,
    "type": "object",
    "required": ["schema", "created", "dataset", "run", "gate", "verdicts", "scores", "agents",
                 "tool_confusions", "dead_tools", "distribution_shift", "errors", "cache", "divergences",
                 "drift"],
    "properties": {
        "sequential": {
            "description": "--bclone-sequential: per cohort, the trajectories replayed, the rounds and why it "
                           "stopped (pass/fail settled early, or full: the fixed-n rule); for the run, what a full "
                           "replay would have spent on top; optional",
            "anyOf": [{"type": "null"}, _object({
                "cohorts": {"type": "array", "items": _object({
                    "cohort": {"type": "string"}, "metric": {"type": "string"}, "mode": {"type": "string"},
                    "replayed": _COUNT, "total": _COUNT, "rounds": _COUNT,
                    "stopped": {"enum": ["pass", "fail", "full", "too small"]}, "reason": {"type": "string"},
                })},
                "saved_trajectories": _COUNT,
                "saved_calls": _COUNT,
                "saved_unit": {"type": "string"},
                "saved_usd": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0}]},
            })],
        },
        "malformed_arguments": {
            "description": "actions per role whose tool-call arguments were not a JSON object (scored as wrong, "
                           "never a crash), at step items and every rollout turn; optional",
            "type": "object", "additionalProperties": _COUNT,
        },
        "batch": {
            "description": "--bclone-batch: per agent and replay, the cache misses sent through the provider "
                           "batch API, how many it answered (now in the cache), failed or left unanswered (those "
                           "were called live), its batch ids and final status; optional",
            "anyOf": [{"type": "null"}, {"type": "array", "items": {"type": "object"}}],
        },
        "rollouts": {
            "description": "rollout mode: episodes driven and how many each agent left at the step cap "
                           "(still acting: usually a loop); null without rollouts; optional",
            "anyOf": [{"type": "null"}, _object({
                "episodes": _COUNT,
                "truncated": {"type": "object", "additionalProperties": _COUNT},
                "examples": {"type": "array", "items": {"type": "string"}},
                "user": _d("who answered the agents between turns (--bclone-user / pytest_bclone_make_user): "
                           "mode, whose episodes met it, the recorded expert's own task_completion (points) "
                           "overall and per cohort, the user's model-call totals (null when it made none)",
                           _object({
                               "mode": {"type": "string"}, "recorded": {"type": "boolean"},
                               "clone_episode": {"type": "string"}, "expert_episode": {"type": "string"},
                               "expert_recorded_task_completion": {"type": ["number", "null"]},
                               "expert_recorded_n": _COUNT,
                               "expert_recorded_by_cohort": {"type": "object"},
                               "calls": {"type": ["object", "null"]},
                           })),
            }, required=["episodes", "truncated", "examples"])],
        },
        "schema": _d(f"format identifier, always {SCHEMA_ID!r}", {"const": SCHEMA_ID}),
        "created": _d("when the run finished, ISO 8601 with timezone", {"type": "string", "minLength": 10}),
        "dataset": _object(
            {
                "name": _d("dataset name", {"type": "string"}),
                "version": _d("dataset version, e.g. v8", {"type": "string"}),
                "ref": _d("the reference as resolved, e.g. support@v8", {"type": "string"}),
                "fingerprint": _d("sha256 over the version's data files (manifest hashes)", {"type": "string"}),
                "split": _d("evaluated split", {"enum": ["eval", "train", "all"]}),
                "trajectories": _d("trajectories evaluated", _COUNT),
                "decision_points": _d("decision points (assistant turns) evaluated", _COUNT),
            },
            description="the versioned dataset the gate ran on",
        ),
        "run": _object(
            {
                "clone": _d("clone agent name", {"type": "string"}),
                "expert": _d("expert agent name ('recorded' = actions from the dataset)", {"type": "string"}),
                "modes": _d("replay modes used", {"type": "array", "items": {"enum": ["step", "rollout"]}}),
                "repeats": _d("samples per state and agent", {"type": "integer", "minimum": 1}),
                "seed": _d("base seed (sampling, bootstrap)", {"type": "integer"}),
                "confidence": _d("confidence level of the intervals", {"type": "number"}),
                "holm": _d("whether p-values were Holm-corrected across cohorts", {"type": "boolean"}),
                "wall_s": _d("wall time of the gate, seconds", _NUM),
                "phases_s": _d("seconds per phase of the run (startup, load, replay, scoring, shift, statistics, "
                               "report; exclusive, summed over xdist workers; teardown is not in it); optional",
                               {"type": "object", "additionalProperties": _NUM}),
            },
            description="how the gate was run",
        ),
        "gate": _object(
            {
                "decision": _d("the release decision", {"enum": list(DECISIONS)}),
                "line": _d("the exact final line printed by the run",
                           {"type": "string", "pattern": "^BCLONE GATE: "}),
                "routes": _d("where each cohort's traffic goes",
                             {"type": "object", "additionalProperties": {"enum": ["clone", "expert"]}}),
                "blocking": _d("cohorts whose failure blocks the release",
                               {"type": "array", "items": {"type": "string"}}),
                "traffic_on_clone_pct": _d("share of evaluated traffic routed to the clone, percent", _NUM),
                "estimated_saving_pct": _d("estimated inference cost saving of the routing, percent", _NUM),
                "next_steps": _d("one remedy per failing or undecided cohort, from the release table",
                                 {"type": "array", "items": _NEXT_STEP}),
            },
            description="the decision, the routing and the next steps",
        ),
        "verdicts": _d("every parity assertion of the run", {"type": "array", "items": _VERDICT}),
        "scores": _d("informational: every metric computed, per cohort and mode",
                     {"type": "array", "items": _SCORE}),
        "recorded_expert": _d(
            "the expert's own scores as the dataset recorded them (expert_scores: the source's rewards and "
            "evaluator scores), per cohort, beside the replayed figures",
            {"type": "array", "items": _object({
                "cohort": _d("cohort name", {"type": "string"}),
                "score": _d("the recorded score's name", {"type": "string"}),
                "n": _d("evaluated trajectories of the cohort that recorded it", _COUNT),
                "mean": _d("its mean in [0, 1]", _NUM),
            })}),
        "agents": _object({"clone": _AGENT, "expert": _AGENT}, description="usage and cost per role"),
        "tool_confusions": _d(
            "expert tool -> clone tool at the same state, where they differ; '(text reply)' when an agent "
            "answered in text, '(none)' when it did nothing",
            {"type": "array", "items": _object({
                "expert_tool": {"type": "string"}, "clone_tool": {"type": "string"}, "count": _COUNT})},
        ),
        "dead_tools": _d(
            "calls by the clone to tools absent from the dataset's current toolset (deprecated tools)",
            {"type": "array", "items": _object({
                "tool": {"type": "string"},
                "count": _COUNT,
                "cohorts": {"type": "object", "additionalProperties": _COUNT},
            })},
        ),
        "distribution_shift": {
            "description": "null, or the share of out-of-distribution trajectories and scores on each side",
            "oneOf": [
                {"type": "null"},
                _object({
                    "threshold": _d("shift score above which a trajectory is out of distribution", _NUM),
                    "ood_share": _d("share of evaluated states (decision points) that are OOD, in [0, 1]", _NUM),
                    "metric": _d("metric whose means are split", {"type": "string"}),
                    "in_distribution": _SPLIT,
                    "out_of_distribution": _SPLIT,
                }),
            ],
        },
        "errors": _object(
            {
                "count": _d("failed model calls (after retries)", _COUNT),
                "by_role": {"type": "object", "additionalProperties": _COUNT},
                "examples": {"type": "array", "items": _object({
                    "key": _d("which call (trajectory/step/repeat)", {"type": "string"}),
                    "role": {"enum": ["clone", "expert", "judge"]},
                    "error": _d("the error message", {"type": "string"}),
                })},
            },
            description="model calls that finally failed: counted, excluded, never scored as clone mistakes",
        ),
        "cache": _object({"hits": _COUNT, "misses": _COUNT}, description="record/replay cache"),
        "divergences": _object(
            {
                "count": _d("decision points where the clone's action differs from the expert's", _COUNT),
                "states": _d("decision points compared", _COUNT),
                "rate": _d("count / states, in [0, 1]", _NUM),
                "examples": {"type": "array", "items": _object({
                    "trajectory_id": {"type": "string"},
                    "step": _INT,
                    "cohorts": {"type": "array", "items": {"type": "string"}},
                    "expert_action": _ACTION,
                    "clone_action": _ACTION,
                })},
            },
            description="action disagreement (the active-learning signal); full list via --bclone-divergences",
        ),
        "drift": {
            "description": "null, or the comparison with a baseline report (--bclone-baseline)",
            "oneOf": [
                {"type": "null"},
                _object(
                    {
                        "baseline": _d("the baseline's path or reference", {"type": "string"}),
                        "margin": _d("points a clone mean may drop before it is flagged", {"type": "number"}),
                        "rows": {"type": "array", "items": _object({
                            "cohort": {"type": "string"},
                            "metric": {"type": "string"},
                            "baseline_clone": _d("clone mean in the baseline, [0, 1]", _NUM),
                            "clone": _d("clone mean now, [0, 1]", _NUM),
                            "drop": _d("baseline_clone - clone, points (positive = worse)", _NUM),
                            "flagged": _d("drop > margin", {"type": "boolean"}),
                        }, required=["cohort", "metric", "baseline_clone", "clone", "drop", "flagged"])},
                    },
                    required=["baseline", "margin", "rows"],
                ),
            ],
        },
    },
}
REPORT_SCHEMA["properties"]["run"]["required"].remove("phases_s")  # optional: summaries built outside a run


def validate_summary(summary: object, *, source: str = "the report summary") -> None:
    """Raise :class:`ReportError` listing where ``summary`` breaks :data:`REPORT_SCHEMA`.

    ``source`` names where the dict came from (``baseline report 'x.json'``) for the message.
    """
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    if not isinstance(summary, Mapping):
        raise ReportError(
            f"{source} is a {type(summary).__name__}, not a JSON object: expected the dict the bclone "
            f"session builds (schema {SCHEMA_ID})"
        )
    if summary.get("schema") != SCHEMA_ID:
        raise ReportError(
            f"{source} has schema={summary.get('schema')!r}: this pytest-bclone reads {SCHEMA_ID!r}; "
            "regenerate it with this version of pytest-bclone"
        )
    validator = Draft202012Validator(REPORT_SCHEMA)
    errors = sorted(validator.iter_errors(summary), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return
    shown = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        shown.append(f"at {where}: {_short(err.message)}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise ReportError(
        f"{source} does not match report schema {SCHEMA_ID}: " + "; ".join(shown) + more
        + "; fix the fields named (pytest_bclone.report.REPORT_SCHEMA documents each one)"
    )


def _short(message: str, width: int = 200) -> str:
    return message if len(message) <= width else message[: width - 3] + "..."
