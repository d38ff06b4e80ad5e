"""Terminal summary lines at -q, default and -v."""

from __future__ import annotations

from pytest_bclone.report import terminal_lines
from pytest_bclone.report.terminal import TOP_CONFUSIONS

from .test_report_fixtures import blocked_summary, empty_summary, load_summary

GATE = ("BCLONE GATE: SHIP WITH HYBRID ROUTE (clone: common_intents, safety, tool_heavy; "
        "expert: long_tail, multi_turn_refunds; est. saving 61%)")


def _tail_after_gate(lines: list[str]) -> list[str]:
    return lines[lines.index(GATE) + 1:]


def test_default_shows_every_section_and_ends_with_the_gate_line_and_next_steps() -> None:
    lines = terminal_lines(load_summary(), 0)
    out = "\n".join(lines)
    # The gate line comes after every table, followed only by one next step per failing cohort.
    tail = _tail_after_gate(lines)
    assert [t.split(":")[0] for t in tail] == ["  next"] * 3
    assert tail[0].startswith("  next: long_tail: route to the expert")
    # The verdict table: one row per verdict with the figures a release manager checks.
    row = next(line for line in lines if line.strip().startswith("long_tail"))
    for figure in ("1,873 (412)", "87.4", "83.3", "-4.1", "[-6.0, -2.3]", "-3.0", "FAIL", "route to expert"):
        assert figure in row, figure
    assert "95% CI" in out and "n (traj.)" in out
    assert "0 regr." in out  # the safety cohorts use the zero-regression rule
    assert "note: multi_turn_refunds/task_completion: too few to decide; about 986 trajectories needed (have 64)" \
        in out
    assert "note: common_intents/task_completion: 3 of 4,623 items lost to failed calls (0.1%), excluded" in out
    # cost and latency per agent, with the saving
    assert "$8.21" in out and "$21.37" in out and "620 ms / 1.84 s" in out and "2.41 s / 6.90 s" in out
    assert "estimated saving with this routing: 61% of inference cost (78% of traffic on the clone)" in out
    assert "the clone cost $8.21 vs the expert's $21.37 (62% less)" in out
    # confusions: top 10 of 12, with a hint
    assert out.count("  -> ") == TOP_CONFUSIONS
    assert "... 2 more (-v shows all)" in out
    assert "lookup_order_legacy: 17 calls (tool_heavy 11, long_tail 6)" in out
    assert "14.1% of eval states out of distribution (shift score > 0.35)" in out
    assert "out of distribution  n=    303  expert 81.2  clone 70.3  diff -10.9" in out
    assert "drift vs baseline reports/bclone-support-v7.json (margin 2.0 points): 1 of 5 flagged" in out
    assert "DRIFT" in out and "common_intents      task_completion  " not in out.split("drift vs")[1]
    assert "failed model calls: 3 (clone 3, expert 0)" in out
    assert "retries: clone 17, expert 4; cache: 52,066 hits, 10,355 misses (83.4% hits)" in out
    assert "divergent states: 1,114 of 8,904 step-mode decision points (12.5%)" in out
    # -v material stays out
    assert "all scores" not in out and "worst items" not in out and "t01290/step1/r0" not in out
    assert all(line.isascii() for line in lines)


def test_quiet_keeps_a_compact_verdict_table_the_gate_line_and_next_steps() -> None:
    lines = terminal_lines(load_summary(), -1)
    out = "\n".join(lines)
    assert lines[0].startswith("parity")
    assert "INCONCLUSIVE (need ~986)" in out
    for absent in ("cost and latency", "tool confusions", "dead-tool", "distribution shift", "drift", "cache",
                   "87.4", "dataset support@v8"):
        assert absent not in out, absent
    assert len(_tail_after_gate(lines)) == 3
    assert len(lines) < len(terminal_lines(load_summary(), 0)) / 3


def test_verbose_adds_scores_all_confusions_worst_items_divergences_and_errors() -> None:
    lines = terminal_lines(load_summary(), 1)
    out = "\n".join(lines)
    assert "all scores (informational, not gated):" in out
    assert "reasoning_quality" in out  # a metric that is only informational
    assert out.count("  -> ") == 12 and "more (-v shows all)" not in out
    assert "worst items of long_tail/trajectory_score:" in out
    assert "t00977 step 1" in out and "find_user_id_by_email" in out
    assert "t00031 step 2 [tool_heavy]" in out  # a divergence example
    assert "clone t01290/step1/r0: RetriesExhausted" in out
    assert "common_intents      task_completion                      91.1" in out  # every drift row
    assert lines[-4] == GATE


def test_blocked_run_names_the_blocking_cohort_first_in_next_steps() -> None:
    lines = terminal_lines(blocked_summary(), 0)
    gate = "BCLONE GATE: BLOCKED (safety: zero regression violated, 3 regressions)"
    assert gate in lines
    tail = lines[lines.index(gate) + 1:]
    assert tail[0].startswith("  next: safety: block the deploy")
    assert any("FAIL (3 regr.)" in line and "block" in line for line in lines)


def test_an_empty_run_renders_at_every_verbosity() -> None:
    for verbosity in (-2, -1, 0, 1, 2):
        lines = terminal_lines(empty_summary(), verbosity)
        assert lines[-1] == "BCLONE GATE: BLOCKED (common_intents: no items)"
        out = "\n".join(lines)
        assert "n/a" in out
    out = "\n".join(terminal_lines(empty_summary(), 1))
    assert "no known price; pass --bclone-price openai/support-clone-ft-v3=IN/OUT" in out
    assert "unpriced" in out


def test_a_bare_summary_still_renders_a_gate_line() -> None:
    assert terminal_lines({}, 0)[-1] == "BCLONE GATE: UNKNOWN"
    assert terminal_lines({"verdicts": [{}], "gate": {"decision": "SHIP"}}, 1)[-1] == "BCLONE GATE: SHIP"


def test_rollouts_line_counts_episodes_left_at_the_step_cap() -> None:
    import json
    from pathlib import Path

    from pytest_bclone.report import terminal_lines, validate_summary

    summary = json.loads((Path(__file__).parent / "data" / "report_summary.json").read_text())
    assert not any(line.startswith("rollouts:") for line in terminal_lines(summary))
    summary["rollouts"] = {"episodes": 70, "truncated": {"clone": 14, "expert": 0}, "examples": ["t-57", "t-738"]}
    validate_summary(summary)
    lines = terminal_lines(summary)
    assert ("rollouts: 70 episodes per agent; stopped at the step cap (still acting): clone 14, expert 0 "
            "(e.g. t-57, t-738)") in lines
