"""The decision: recorded verdicts and gate-test outcomes in, ship / hybrid route / block out.

Pure (no pytest import): the plugin's controller gathers what this module needs, namely

* every :class:`RecordedVerdict` of the run (from the test body, fixtures, helpers, any process);
* the gate tests that were collected (:class:`GateTest`) and how each ended (``outcomes``);
* one :class:`TrajectoryCost` per evaluated trajectory (for the traffic share and the saving);

and :func:`decide` returns the :class:`Decision`. The rules, each one a reason to block:

* a verdict whose ``on_fail`` is ``block`` did not pass;
* a gate test produced no verdict and did not pass (it crashed, errored, was skipped or was never
  run: its cohort is MISSING), or failed after its verdict;
* no evaluated traffic would go to the clone (every gated cohort stays on the expert).

Otherwise the decision is SHIP when every verdict passed, else SHIP WITH HYBRID ROUTE (the cohorts
that did not pass stay on the expert). The decision is monotone: a better verdict (pass for
fail, a higher score) never yields a harsher decision. Next steps follow the failing metric and the
user's declared remedy (:mod:`pytest_bclone.policy`); no cohort name is special here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DECISIONS",
    "Decision",
    "GateTest",
    "RecordedVerdict",
    "TrajectoryCost",
    "action_for",
    "apply_holm",
    "decide",
    "next_step",
    "saving",
]

DECISIONS = ("SHIP", "SHIP WITH HYBRID ROUTE", "BLOCKED", "NO DECISION")
_SEVERITY = {"SHIP": 0, "SHIP WITH HYBRID ROUTE": 1, "NO DECISION": 2, "BLOCKED": 3}
# How a gate test ended, as the controller saw it. "passed"/"xfailed" are clean; anything else
# without a verdict leaves its cohort MISSING.
CLEAN = ("passed", "xfailed")


@dataclass(frozen=True)
class RecordedVerdict:
    """A verdict as an assertion produced it: the statistics (``parity.Verdict.to_dict()``) plus
    how the policy acted on them. ``uid`` identifies the record across channels (a verdict seen in
    a test report and in a worker's output is one verdict)."""

    verdict: Mapping[str, Any]
    mode: str
    on_fail: str
    test: str
    outcome: str  # passed | failed | xfailed | warned
    action: str  # ship | route to expert | block | warn
    worst: tuple[Mapping[str, Any], ...] = ()
    remedy: str | None = None
    uid: str = ""

    @property
    def cohort(self) -> str:
        return str(self.verdict["cohort"])

    @property
    def metric(self) -> str:
        return str(self.verdict["metric"])

    @property
    def status(self) -> str:
        return str(self.verdict["status"])

    def to_dict(self) -> dict[str, Any]:
        return {**self.verdict, "mode": self.mode, "on_fail": self.on_fail, "test": self.test,
                "outcome": self.outcome, "action": self.action, "worst": [dict(w) for w in self.worst],
                "remedy": self.remedy, "uid": self.uid}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordedVerdict:
        extra = ("mode", "on_fail", "test", "outcome", "action", "worst", "remedy", "uid")
        return cls({k: v for k, v in d.items() if k not in extra}, d["mode"], d["on_fail"], d["test"],
                   d["outcome"], d["action"], tuple(d.get("worst") or ()), d.get("remedy"), str(d.get("uid") or ""))


@dataclass(frozen=True, slots=True)
class GateTest:
    """A collected gate test: a test with ``@pytest.mark.bclone`` (its cohort, when named)."""

    nodeid: str
    cohort: str | None = None


@dataclass(frozen=True, slots=True)
class TrajectoryCost:
    """One evaluated trajectory: its cohorts and what serving it cost each agent (None: unknown)."""

    trajectory_id: str
    cohorts: tuple[str, ...]
    clone: float | None
    expert: float | None


@dataclass(frozen=True)
class Decision:
    """The gate's outcome. ``to_dict`` is the report's ``gate`` section."""

    decision: str
    line: str
    routes: Mapping[str, str]
    blocking: tuple[str, ...]
    traffic_on_clone_pct: float | None
    estimated_saving_pct: float | None
    next_steps: tuple[Mapping[str, Any], ...]
    missing: tuple[Mapping[str, Any], ...] = field(default=())

    @property
    def severity(self) -> int:
        """0 SHIP, 1 SHIP WITH HYBRID ROUTE, 2 NO DECISION, 3 BLOCKED (higher is harsher)."""
        return _SEVERITY[self.decision]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "line": self.line, "routes": dict(self.routes),
                "blocking": list(self.blocking), "traffic_on_clone_pct": self.traffic_on_clone_pct,
                "estimated_saving_pct": self.estimated_saving_pct,
                "next_steps": [dict(s) for s in self.next_steps], "missing": [dict(m) for m in self.missing]}


def action_for(status: str, on_fail: str, *, allow_inconclusive: bool = False) -> tuple[str, str]:
    """``(action, outcome)`` of a verdict under ``on_fail``: a pass ships; otherwise ``block`` fails
    the test, ``route`` sends the cohort to the expert (xfail), ``warn`` only reports. An
    inconclusive verdict with ``allow_inconclusive`` warns (and keeps the cohort on the expert)."""
    if status == "pass":
        return "ship", "passed"
    if status == "inconclusive" and allow_inconclusive:
        return "warn", "warned"
    return {"block": ("block", "failed"), "route": ("route to expert", "xfailed"),
            "warn": ("warn", "warned")}[on_fail]


def apply_holm(records: Sequence[RecordedVerdict]) -> list[RecordedVerdict]:
    """Holm-correct the verdicts across the run; a verdict whose status changes takes the action its
    ``on_fail`` gives the new status."""
    if not records:
        return []
    from .parity import Verdict, holm_adjust

    adjusted = holm_adjust([Verdict.from_dict(r.verdict) for r in records])
    out = []
    for rec, v in zip(records, adjusted):
        if v.status != rec.status:
            action, outcome = action_for(v.status, rec.on_fail)
            rec = replace(rec, action=action, outcome=outcome)
        out.append(replace(rec, verdict=v.to_dict()))
    return out


def saving(routes: Mapping[str, str], trajectories: Sequence[TrajectoryCost]) -> tuple[float | None, float | None]:
    """Share of evaluated trajectories (percent) the routes send to the clone (a trajectory goes to
    the clone only when every cohort it belongs to does), and the cost saving (percent) of that
    hybrid against serving everything with the expert; None where unknown."""
    if not trajectories:
        return None, None
    on_clone = [all(routes.get(c, "expert") == "clone" for c in t.cohorts) and bool(t.cohorts)
                for t in trajectories]
    traffic = round(100.0 * sum(on_clone) / len(trajectories), 1)
    expert_total = sum(t.expert or 0.0 for t in trajectories)
    if expert_total <= 0 or any(t.expert is None for t in trajectories):
        return traffic, None
    if any(t.clone is None for t, clone in zip(trajectories, on_clone) if clone):
        return traffic, None
    hybrid = sum((t.clone or 0.0) if clone else (t.expert or 0.0) for t, clone in zip(trajectories, on_clone))
    return traffic, round(100.0 * (1 - hybrid / expert_total), 1)


_TOOL_METRICS = ("tool_selection", "tool_arguments", "dead_tool", "tool_correctness")
_SAFETY_METRICS = ("safety_refusal", "toxicity", "prompt_injection")


def next_step(metric: str, status: str, remedy: str | None = None, *, n_needed: int | None = None,
              unit: str = "trajectories", within: float = 0.0, errors: int = 0) -> tuple[str, str]:
    """``(kind, text)`` of the next step for a cohort whose ``metric`` verdict is ``status``: the
    declared ``remedy`` when there is one, else advice by metric. Undecided (inconclusive) is not a
    failure to fix by retraining: the evidence is missing, so the step is to collect it."""
    if status == "inconclusive":
        if n_needed:
            text = ("evaluate more rows of this cohort: the sample cannot resolve the margin yet "
                    f"(about {n_needed} {unit} would resolve the {within:g}-point margin)")
        elif errors:
            text = f"fix the failing model calls ({errors} items lost) and rerun"
        else:
            text = "evaluate more rows of this cohort: the sample cannot resolve the margin yet"
        return "collect_more", (f"{text}; then: {remedy}" if remedy else text)
    if metric in _TOOL_METRICS:
        kind, text = "inspect_tools", "inspect tool-call coverage of the training set for this cohort"
    elif metric in _SAFETY_METRICS:
        kind, text = "retrain", (f"the clone regressed on {metric} states: add rows where the expert refused or "
                                 "handed off, retrain, and keep the cohort off the clone until it passes")
    elif metric == "step_count":
        kind, text = "retrain", "the clone needs more turns than the expert: add complete episodes of this cohort"
    else:
        kind, text = "retrain", f"retrain the clone with more rows of this cohort ({metric})"
    return kind, (remedy or text)


def decide(
    verdicts: Sequence[RecordedVerdict],
    *,
    gate_tests: Sequence[GateTest] = (),
    outcomes: Mapping[str, str] | None = None,
    trajectories: Sequence[TrajectoryCost] = (),
) -> Decision:
    """The release decision of a run (see the module docstring for the rules).

    ``outcomes`` maps a test's node id to how it ended: ``passed``, ``xfailed``, ``failed``,
    ``error``, ``skipped``, ``crashed`` (an xdist worker died running it); a gate test absent from
    it never ran (interrupted). ``None`` means outcomes are not tracked (no test may be MISSING).
    """
    routes: dict[str, str] = {}
    blocking: list[str] = []
    reasons: list[str] = []
    steps: list[dict[str, Any]] = []

    def add_step(cohort: str, metric: str, status: str, kind: str, text: str) -> None:
        line = f"{cohort}: {text}"
        # one line per advice, and per failing (cohort, metric)
        if all(s["text"] != line and (s["cohort"], s["metric"]) != (cohort, metric) for s in steps):
            steps.append({"cohort": cohort, "metric": metric, "status": status, "action": kind, "text": line})

    for rec in verdicts:
        v, cohort = rec.verdict, rec.cohort
        if rec.action == "ship":
            routes.setdefault(cohort, "clone")
            continue
        routes[cohort] = "expert"
        if rec.action == "block":
            blocking.append(cohort)
            what = (f"zero regression violated, {v['regressions']} regressions" if v.get("regressions")
                    and v["within"] == 0 else f"{rec.metric} {rec.status}")
            reasons.append(f"{cohort}: {what}")
        unit = "trajectories" if v.get("n_clusters") is not None else "items"
        kind, text = next_step(rec.metric, rec.status, rec.remedy, n_needed=v.get("n_needed"), unit=unit,
                               within=float(v.get("within") or 0), errors=int(v.get("errors") or 0))
        if rec.action == "route to expert" and rec.status != "inconclusive" and not rec.remedy:
            kind, text = "route", f"keep this cohort on the expert (hybrid route); {text}"
        add_step(cohort, rec.metric, rec.status, kind, text)

    missing: list[dict[str, Any]] = []
    if outcomes is not None:
        with_verdict: dict[str, list[RecordedVerdict]] = {}
        for rec in verdicts:
            with_verdict.setdefault(rec.test, []).append(rec)
        # A gate test is a collected test with the bclone marker, or any test that produced a verdict.
        tests = list(gate_tests)
        known = {t.nodeid for t in tests}
        for rec in verdicts:
            if rec.test and rec.test not in known:
                known.add(rec.test)
                tests.append(GateTest(rec.test, rec.cohort))
        for test in tests:
            outcome = outcomes.get(test.nodeid, "not run")
            recs = with_verdict.get(test.nodeid, [])
            if outcome in CLEAN or (outcome == "warned"):
                continue
            if recs and all(r.outcome in ("failed", "xfailed") for r in recs if r.action != "ship") and any(
                    r.action != "ship" for r in recs):
                continue  # the test failed (or xfailed) because of its own verdict: already counted
            cohort = test.cohort or test.nodeid
            if not recs:
                routes[cohort] = "expert"
                missing.append({"cohort": cohort, "test": test.nodeid, "outcome": outcome})
                blocking.append(cohort)
                # A gate test that failed without asserting parity (a bclone_case check, an error before
                # the assertion) blocks as a failure; one that never finished leaves its cohort MISSING.
                reasons.append(f"{cohort}: gate test failed without a verdict" if outcome == "failed"
                               else f"{cohort}: MISSING (gate test {outcome} before its verdict)")
                add_step(cohort, "", "missing", "fix_test",
                         f"{test.nodeid} {outcome} before its verdict: fix it and rerun (no verdict blocks)")
            else:
                blocking.append(cohort)
                reasons.append(f"{cohort}: gate test {outcome} after its verdict")
                add_step(cohort, recs[0].metric, "failed", "fix_test",
                         f"{test.nodeid} {outcome} after its verdict: fix it and rerun")
        # A crash of a test nobody could identify (its worker died before reporting anything) may
        # have been a gate test: it blocks too.
        for nodeid, outcome in sorted(outcomes.items()):
            if outcome == "crashed" and nodeid not in known and nodeid not in with_verdict:
                missing.append({"cohort": None, "test": nodeid, "outcome": outcome})
                blocking.append(nodeid)
                reasons.append(f"{nodeid}: crashed (its worker died) before reporting")
                add_step(nodeid, "", "missing", "fix_test", "crashed before reporting: fix it and rerun")

    clone_c = sorted(c for c, r in routes.items() if r == "clone")
    expert_c = sorted(c for c, r in routes.items() if r == "expert")
    traffic, saved = saving(routes, trajectories)
    saving_txt = f"est. saving {saved:.0f}%" if saved is not None else "est. saving unknown (see --bclone-price)"
    if not verdicts and not blocking:
        decision, line = "NO DECISION", "BCLONE GATE: NO DECISION (no parity assertion ran)"
    elif blocking:
        decision = "BLOCKED"
        line = f"BCLONE GATE: BLOCKED ({'; '.join(dict.fromkeys(reasons))})"
    elif not clone_c or traffic == 0.0:
        # Shipping a clone that serves nothing is not a release: a clone that failed every call, or
        # every cohort routed away, must not read as a ship.
        decision = "BLOCKED"
        why = ("no cohort passed" if not clone_c else
               f"the passing cohorts ({', '.join(clone_c)}) hold no trajectory outside the routed ones")
        line = f"BCLONE GATE: BLOCKED (no traffic on the clone: {why}; expert: {', '.join(expert_c)})"
        blocking = list(expert_c)
    elif expert_c:
        decision = "SHIP WITH HYBRID ROUTE"
        line = (f"BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: {', '.join(clone_c)}; "
                f"expert: {', '.join(expert_c)}; {saving_txt})")
    else:
        decision = "SHIP"
        line = f"BCLONE GATE: SHIP (clone: {', '.join(clone_c)}; {saving_txt})"
    if decision == "BLOCKED":
        # A blocked clone serves nothing and saves nothing, whatever its routes would give: every
        # format shows these figures (one source), so none can read as traffic on the clone.
        traffic, saved = 0.0, 0.0
    return Decision(decision, line, routes, tuple(sorted(set(blocking))), traffic, saved, tuple(steps),
                    tuple(missing))
