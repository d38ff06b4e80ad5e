"""`bclone dataset build`: score filters, cohort rules, grouped split, dedup, toolset drift, warnings, lineage."""

from __future__ import annotations

import copy
import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.build import (
    BuildSpec,
    assign_cohorts,
    build,
    cohort_warnings,
    dedup,
    grouped_split,
    min_scores,
    needed_for_margin,
    parse_rules,
    time_window,
    toolset_drift,
)
from pytest_bclone.dataset.store import DatasetStore
from pytest_bclone.errors import ConfigError

from .conftest import make_row


def _row(i: int, *, task: str, tc: float = 1.0, ts: float = 1.0, tool: str = "get_order", channel: str = "chat",
         intent: str = "order_status", when: str = "2025-06-10T12:00:00Z", user: str | None = None,
         second_user_turn: bool = False) -> dict[str, Any]:
    row = make_row(i, order=f"W{i}")
    row["id"] = f"r{i:03d}"
    row["cohorts"] = []
    for call in row["messages"][2]["tool_calls"]:
        call["function"]["name"] = tool
    if user is not None:
        row["messages"][1]["content"] = user
    if second_user_turn:
        row["messages"].append({"role": "user", "content": "And one more thing?"})
        row["messages"].append({"role": "assistant", "content": "Sure."})
    row["expert_scores"] = {"task_completion": tc, "tool_selection": ts}
    row["metadata"] = {"task_id": task, "channel": channel, "intent": intent, "timestamp": when}
    return row


RULES = """
keep_source_cohorts = false

[[cohort]]
name = "refunds"
tools = ["issue_refund"]

[[cohort]]
name = "multi_turn"
min_user_turns = 2

[[cohort]]
name = "voice"
metadata = { channel = ["voice", "phone"] }

[[cohort]]
name = "safety"
keywords = ["\\\\b(lawyer|sue)\\\\b"]

[rarity]
field = "intent"
below_share = 0.2
cohort = "long_tail"
else = "common_intents"
"""


def _mixed_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Two sources: a stored version and a JSONL file, with overlap, low scores, drift, old rows."""
    version_rows = [
        _row(1, task="T1"),
        _row(2, task="T1", tool="issue_refund", intent="refund"),
        _row(3, task="T2", tc=0.5),  # below task_completion 0.8
        _row(4, task="T2", ts=0.85),  # below tool_selection 0.9
        _row(5, task="T3", channel="voice", second_user_turn=True),
        _row(6, task="T3", user="I will call my lawyer about W6"),
        _row(7, task="T4", tool="issue_refund_legacy", intent="refund"),  # drift: tool no longer exists
        _row(8, task="T5", when="2025-01-01T00:00:00Z"),  # before --since
    ]
    file_rows = [
        _row(11, task="T6"),
        _row(12, task="T7", intent="address_change"),
        _row(13, task="T8"),
        _row(14, task="T9"),
    ]
    dup = copy.deepcopy(version_rows[0])  # the same conversation again, under another id
    dup["id"] = "r900"
    file_rows.append(dup)
    no_score = _row(15, task="T10")
    del no_score["expert_scores"]["tool_selection"]
    file_rows.append(no_score)
    return version_rows, file_rows


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_cli_on_a_mixed_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version_rows, file_rows = _mixed_rows()
    root = str(tmp_path / "store")
    assert main(["dataset", "import", str(_jsonl(tmp_path / "old.jsonl", version_rows)), "--name", "support",
                 "--version", "v1", "--root", root]) == 0
    src = _jsonl(tmp_path / "new.jsonl", file_rows)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    toolset = tmp_path / "tools.json"
    toolset.write_text(json.dumps([{"type": "function", "function": {"name": n}} for n in ("get_order",
                                                                                          "issue_refund")]))
    capsys.readouterr()
    code = main(["dataset", "build", "support@v1", str(src), "--name", "support", "--version", "v2", "--parent", "v1",
                 "--min-score", "task_completion=0.8", "--min-score", "tool_selection=0.9", "--rules", str(rules),
                 "--split-by", "task_id", "--eval-fraction", "0.5", "--seed", "7", "--toolset", str(toolset),
                 "--since", "2025-06-01", "--min-cohort-rows", "2", "--margin", "3", "--root", root])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("built support@v2: 8 trajectories from 2 source(s)")

    version = DatasetStore(root).load("support@v2")
    lineage = version.manifest["lineage"]
    steps = {s["step"]: s for s in lineage["steps"]}
    assert [s["step"] for s in lineage["steps"]] == ["load", "time_window", "min_score", "dedup", "toolset",
                                                     "cohorts", "split"]
    assert steps["load"]["rows"] == 14
    assert steps["time_window"]["dropped_before"] == 1 and steps["time_window"]["rows"] == 13
    assert steps["min_score"]["dropped_below"] == {"task_completion": 1, "tool_selection": 1}
    assert steps["min_score"]["dropped_missing_score"] == {"tool_selection": 1} and steps["min_score"]["rows"] == 10
    assert steps["dedup"]["dropped"] == 1 and steps["dedup"]["rows"] == 9
    assert steps["toolset"]["dropped_by_tool"] == {"issue_refund_legacy": 1} and steps["toolset"]["rows"] == 8
    assert steps["cohorts"]["rules_sha256"] == hashlib.sha256(RULES.encode()).hexdigest()
    assert [r["name"] for r in steps["cohorts"]["rules"]] == ["refunds", "multi_turn", "voice", "safety"]
    assert lineage["sources"][0] == {"kind": "version", "ref": "support@v1", "rows": 8,
                                     "fingerprint": DatasetStore(root).load("support@v1").fingerprint}
    assert lineage["sources"][1]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert version.manifest["parent"] == "v1"

    cohorts = {t.id: set(t.cohorts) for t in version.trajectories}
    assert cohorts["r002"] == {"refunds", "long_tail"}  # refund is 1 of 8 rows: under 20% of traffic
    assert cohorts["r005"] == {"multi_turn", "voice", "common_intents"}
    assert cohorts["r006"] == {"safety", "common_intents"}
    assert cohorts["r012"] == {"long_tail"}
    assert cohorts["r001"] == {"common_intents"}
    sides = defaultdict(set)
    for t in version.trajectories:
        sides[t.metadata["task_id"]].add(t.split)
    assert all(len(s) == 1 for s in sides.values())

    # One warning per cohort under --min-cohort-rows 2, and one per eval cohort under 100 (margin 3).
    warnings = [line for line in err.splitlines() if line.startswith("bclone: warning: ")]
    assert any("cohort 'refunds' has 1 trajectories, fewer than --min-cohort-rows 2" in w for w in warnings)
    assert any("eval cohort 'common_intents' has" in w and "needs at least 100" in w for w in warnings)
    assert lineage["warnings"] == [w.removeprefix("bclone: warning: ") for w in warnings]

    # Lineage round-trips through `show` (JSON) and reads as text with --lineage.
    assert main(["dataset", "show", "support@v2", "--root", root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lineage"] == lineage
    assert main(["dataset", "--root", root, "show", "v2", "--lineage"]) == 0
    text = capsys.readouterr().out
    assert "source version support@v1: 8 rows" in text and "toolset: 8 rows" in text and "warning: cohort" in text


def test_score_filter_drops_low_and_missing_scores() -> None:
    rows = [_row(1, task="a"), _row(2, task="a", tc=0.79), _row(3, task="a", tc=0.8, ts=0.9)]
    del rows[0]["expert_scores"]["tool_selection"]
    kept, step = min_scores(rows, {"task_completion": 0.8, "tool_selection": 0.9})
    assert [r["id"] for r in kept] == ["r003"]  # thresholds are inclusive
    assert step["dropped_below"] == {"task_completion": 1} and step["dropped_missing_score"] == {"tool_selection": 1}


@pytest.mark.parametrize(
    ("rule", "matching"),
    [
        ('tools = ["issue_refund", "cancel_order"]', {"r002", "r003"}),
        ('tools_all = ["cancel_order"]', {"r003"}),
        ("min_user_turns = 2", {"r004"}),
        ("max_user_turns = 1", {"r001", "r002", "r003", "r005", "r006"}),
        ('metadata = { channel = "voice" }', {"r005"}),
        ('metadata = { intent = ["refund", "cancel"] }', {"r002", "r003"}),
        ('keywords = ["lawyer"]', {"r006"}),
        ('keywords = ["LAWYER"]', {"r006"}),  # case-insensitive
        ('keywords = ["has shipped"]\nkeyword_scope = "all"', {"r001", "r002", "r003", "r004", "r005", "r006"}),
        ('tools = ["issue_refund"]\nmetadata = { channel = "voice" }', set()),  # every criterion must hold
    ],
)
def test_each_cohort_rule(rule: str, matching: set[str]) -> None:
    rows = [_row(1, task="a"), _row(2, task="b", tool="issue_refund", intent="refund"),
            _row(3, task="c", tool="cancel_order", intent="cancel"), _row(4, task="d", second_user_turn=True),
            _row(5, task="e", channel="voice"), _row(6, task="f", user="My lawyer says hi")]
    rules = parse_rules(f'[[cohort]]\nname = "x"\n{rule}\n')
    assign_cohorts(rows, rules)
    assert {r["id"] for r in rows if "x" in r["cohorts"]} == matching


def test_rarity_makes_rare_intents_long_tail_and_keeps_source_cohorts() -> None:
    rows = [_row(i, task=str(i), intent="common") for i in range(18)]
    rows += [_row(18, task="x", intent="rare"), _row(19, task="y", intent="")]
    rows[19]["messages"][2]["tool_calls"][0]["function"]["name"] = "odd_tool"  # no intent: its tool set is used
    rows[0]["cohorts"] = ["vip"]
    step = assign_cohorts(rows, parse_rules('[rarity]\nbelow_share = 0.1\ncohort = "tail"\nelse = "head"\n'))
    assert rows[18]["cohorts"] == ["tail"] and rows[19]["cohorts"] == ["tail"]
    assert rows[0]["cohorts"] == ["vip", "head"] and rows[1]["cohorts"] == ["head"]
    assert step["rarity"]["long_tail_intents"] == ["get_order+odd_tool", "rare"]
    assert step["counts"] == {"head": 18, "tail": 2, "vip": 1}


def test_grouped_split_keeps_groups_on_one_side_and_is_stable() -> None:
    rows = [_row(i, task=f"T{i % 40}") for i in range(200)]
    step = grouped_split(rows, "task_id", 0.25, seed=3)
    sides = defaultdict(set)
    for r in rows:
        sides[r["metadata"]["task_id"]].add(r["split"])
    assert all(len(s) == 1 for s in sides.values()) and step["groups"] == 40
    assert 0 < step["eval_groups"] < 40 and step["rows"]["eval"] == 5 * step["eval_groups"]
    before = {r["id"]: r["split"] for r in rows}
    more = rows + [_row(500 + i, task=f"T{i}") for i in range(60)]  # a refresh with new rows and new tasks
    grouped_split(more, "task_id", 0.25, seed=3)
    assert all(before[r["id"]] == r["split"] for r in more if r["id"] in before)
    grouped_split(rows, "task_id", 0.25, seed=4)
    assert {r["id"]: r["split"] for r in rows} != before  # the seed matters


def test_dedup_keeps_the_first_copy_whatever_the_id_or_metadata() -> None:
    a, b, c = _row(1, task="a"), _row(1, task="other"), _row(2, task="a")
    b["id"] = "copy"
    kept, step = dedup([a, b, c])
    assert [r["id"] for r in kept] == ["r001", "r002"] and step["dropped"] == 1


def test_toolset_drift_drops_and_counts_by_tool() -> None:
    rows = [_row(1, task="a"), _row(2, task="b", tool="legacy_refund"), _row(3, task="c", tool="legacy_refund"),
            _row(4, task="d", tool="gone")]
    kept, step = toolset_drift(rows, ["get_order"], "--toolset t.json")
    assert [r["id"] for r in kept] == ["r001"]
    assert step["dropped"] == 3 and step["dropped_by_tool"] == {"gone": 1, "legacy_refund": 2}


def test_time_window_drops_rows_outside_and_undated() -> None:
    rows = [_row(1, task="a", when="2025-05-31T23:59:59Z"), _row(2, task="a", when="2025-06-01T00:00:00+00:00"),
            _row(3, task="a", when="2025-07-01T00:00:00Z"), _row(4, task="a")]
    rows[3]["metadata"]["timestamp"] = 1748779200  # epoch seconds: 2025-06-01T12:00Z
    undated = _row(5, task="a")
    del undated["metadata"]["timestamp"]
    kept, step = time_window([*rows, undated], datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 7, 1, tzinfo=UTC))
    assert [r["id"] for r in kept] == ["r002", "r004"]
    assert (step["dropped_before"], step["dropped_after"], step["dropped_no_timestamp"]) == (1, 1, 1)


def test_small_cohort_warnings_give_the_number_that_would_resolve_the_margin() -> None:
    assert needed_for_margin(3, 0.95) == 100 and needed_for_margin(1, 0.95) == 300
    rows = [{"cohorts": ["big"], "split": "eval"}] * 120 + [{"cohorts": ["small", "big"], "split": "eval"}] * 2
    rows += [{"cohorts": ["small"], "split": "train"}]
    warnings = cohort_warnings(rows, min_rows=5, margin=3, confidence=0.95)
    assert warnings == [
        ("cohort 'small' has 3 trajectories, fewer than --min-cohort-rows 5: its verdicts will rest on very few "
        "conversations; add traffic or merge it into another cohort"),
        ("eval cohort 'small' has 2 trajectories; resolving --margin 3 needs at least 100 (rule of three at 95%: even "
        "a clone with zero regressions cannot pass with fewer); gather 98 more eval trajectories or widen the margin"),
    ]


def test_build_chain_without_rules_keeps_source_cohorts() -> None:
    rows = [_row(i, task="t") for i in range(3)]
    for r in rows:
        r["cohorts"] = ["kept"]
    result = build(rows, BuildSpec(min_cohort_rows=0, margin=50))
    assert [s["step"] for s in result.steps] == ["load", "dedup", "split"]
    assert all(r["cohorts"] == ["kept"] for r in result.rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[cohort]]\nname = "x"\ntool = ["a"]\n', "unknown key 'tool'; known keys: name, tools, tools_all"),
        ('[[cohort]]\nname = "x"\nkeywords = ["(unclosed"]\n', "keyword pattern '(unclosed' is not a valid regex"),
        ('[[cohort]]\nname = "x"\n', "the rule has no criterion"),
        ('[[cohort]]\nname = "bad name"\ntools = ["a"]\n', "cohort name 'bad name' must be"),
        ("[rarity]\nbelow_share = 2\n", "below_share = 2; expected a share in (0, 1)"),
        ("cohort = 3\n", "'cohort' must be an array of tables"),
        ("[[cohort]\n", "not valid TOML"),
    ],
)
def test_rules_file_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^rules.toml: ") as exc:
        parse_rules(text)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-score", "task_completion"], "--min-score 'task_completion': expected NAME=THRESHOLD"),
        (["--min-score", "task_completion=1.5"], "--min-score 'task_completion=1.5': expected NAME=THRESHOLD"),
        (["--since", "last tuesday"], "--since 'last tuesday' is not an ISO 8601 time"),
        (["--eval-fraction", "2"], "argument --eval-fraction: 2 is outside [0, 1]"),
        (["--margin", "0"], "--margin 0.0 must be a positive number of points"),
        (["--rules", "missing.toml"], "cannot read rules file 'missing.toml'"),
        (["--min-score", "task_completion=0.99", "--min-score", "tool_selection=0.99", "--since", "2030-01-01"],
         "the build kept no trajectory"),
    ],
)
def test_build_bad_options_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                              message: str) -> None:
    src = _jsonl(tmp_path / "f.jsonl", [_row(1, task="a", tc=0.9)])
    code = main(["dataset", "--root", str(tmp_path / "s"), "build", str(src), "--name", "d", "--version", "v1",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("bclone: error: ") and message in err, err
    assert "Traceback" not in err


def test_toolset_from_a_version_and_split_key_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "store")
    current = [_row(1, task="a"), _row(2, task="b", tool="issue_refund")]
    current[1]["tools"].append({"type": "function", "function": {"name": "issue_refund"}})
    assert main(["dataset", "--root", root, "import", str(_jsonl(tmp_path / "cur.jsonl", current)), "--name", "tools",
                 "--version", "v1"]) == 0
    old = [_row(10, task="a"), _row(11, task="c", tool="legacy_refund"), _row(12, task="d")]
    del old[2]["metadata"]["task_id"]
    capsys.readouterr()
    assert main(["dataset", "build", str(_jsonl(tmp_path / "old.jsonl", old)), "--toolset-from", "tools@v1",
                 "--split-by", "task_id", "--name", "curated", "--version", "v1", "--root", root,
                 "--min-cohort-rows", "0", "--margin", "100"]) == 0
    err = capsys.readouterr().err
    step = next(s for s in DatasetStore(root).load("curated@v1").manifest["lineage"]["steps"] if s["step"] == "toolset")
    assert step["dropped_by_tool"] == {"legacy_refund": 1} and step["source"].startswith("--toolset-from tools@v1 ")
    assert step["toolset"] == ["get_order", "issue_refund"]
    assert "bclone: warning: 1 trajectories have no metadata field 'task_id'" in err
