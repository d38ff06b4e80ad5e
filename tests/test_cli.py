"""The `bclone dataset` command: import, export (round trip), ls, show, diff, validate, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_bclone.cli import main
from pytest_bclone.dataset.openai_jsonl import normalise_messages

from .conftest import make_row

PARALLEL_LINE = {
    "messages": [
        {"role": "system", "content": "You are support."},
        {"role": "user", "content": "Cancel W1 and tell me about W2"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_order", "arguments": "{\"order_id\": \"W1\"}"}},
            {"id": "b", "type": "function", "function": {"name": "get_order", "arguments": "{\"order_id\":\"W2\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "a", "content": "{\"status\": \"pending\"}"},
        {"role": "tool", "tool_call_id": "b", "content": "{\"status\": \"delivered\"}"},
        {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "cancel_order", "arguments": "{\"reason\": \"no longer needed\", \"order_id\": \"W1\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "c", "content": "{\"status\": \"cancelled\"}"},
        {"role": "assistant", "content": "W1 is cancelled; W2 was delivered."},
    ],
    "tools": [
        {"type": "function", "function": {"name": "get_order", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "cancel_order", "parameters": {"type": "object", "properties": {}}}},
    ],
}
TEXT_LINE = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]}


def _write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_openai_jsonl_import_export_round_trips(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "ft.jsonl", [PARALLEL_LINE, TEXT_LINE])
    root = str(tmp_path / "ds")
    code, out, _ = run(capsys, "dataset", "--root", root, "import", str(src), "--name", "support", "--version", "v1",
                       "--split", "train", "--cohort", "refunds")
    assert code == 0 and "2 trajectories, 4 decision points" in out
    out_file = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "dataset", "--root", root, "export", "v1", "--split", "train", "-o", str(out_file))
    assert code == 0 and "exported 2 train trajectories of support@v1" in err
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    originals = [PARALLEL_LINE, TEXT_LINE]
    for got, want in zip(exported, originals):
        assert got["messages"] == normalise_messages(want["messages"])
        assert got.get("tools", []) == want.get("tools", [])
        assert set(got) <= {"messages", "tools"}  # plain fine-tuning lines
    # The second assistant turn had no content key: normalised to None; arguments sorted compact JSON.
    calls = exported[0]["messages"][5]["tool_calls"][0]["function"]
    assert calls["arguments"] == '{"order_id":"W1","reason":"no longer needed"}'
    # Eval split is empty: the export of eval writes nothing.
    code, _, err = run(capsys, "dataset", "--root", root, "export", "v1", "--split", "eval", "-o", str(out_file))
    assert code == 0 and "exported 0 eval" in err


def test_ls_show_and_diff_report_cohorts_rows_and_removed_tools(tmp_path, capsys):
    root = str(tmp_path / "ds")
    v7 = [make_row(i) for i in range(4)]
    legacy = make_row(9, cohorts=("multi_turn_refunds",))
    legacy["tools"].append({"type": "function", "function": {"name": "issue_refund_legacy"}})
    legacy["messages"][5] = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "r", "type": "function", "function": {"name": "issue_refund_legacy", "arguments": "{}"}}]}
    legacy["messages"].append({"role": "tool", "tool_call_id": "r", "content": "ok"})
    legacy["messages"].append({"role": "assistant", "content": "Refunded."})
    v8 = [make_row(i) for i in range(1, 6)]
    _write_jsonl(tmp_path / "v7.jsonl", [*v7, legacy])
    _write_jsonl(tmp_path / "v8.jsonl", v8)
    assert run(capsys, "dataset", "--root", root, "import", str(tmp_path / "v7.jsonl"), "--name", "s", "--version",
               "v7")[0] == 0
    assert run(capsys, "dataset", "--root", root, "import", str(tmp_path / "v8.jsonl"), "--name", "s", "--version",
               "v8", "--parent", "v7")[0] == 0
    assert run(capsys, "dataset", "--root", root, "ls")[1].strip() == "s: v7, v8"
    code, out, _ = run(capsys, "dataset", "--root", root, "show", "v8")
    shown = json.loads(out)
    assert shown["parent"] == "v7" and shown["counts"]["trajectories"] == 5 and len(shown["fingerprint"]) == 12
    code, out, _ = run(capsys, "dataset", "--root", root, "diff", "v7", "v8", "--json")
    d = json.loads(out)
    assert d["added"] == ["t0004", "t0005"] and d["removed"] == ["t0000", "t0009"]
    assert d["tools_removed"] == ["issue_refund_legacy"]
    assert d["removed_tools_still_called"] == {"issue_refund_legacy": 1}
    assert d["cohort_counts"]["multi_turn_refunds"] == [1, 0]
    code, out, _ = run(capsys, "dataset", "--root", root, "diff", "v7", "v8")
    assert code == 0
    assert "tools removed: issue_refund_legacy" in out and "calls removed tool 'issue_refund_legacy' 1 times" in out


def test_validate_lists_every_bad_line(tmp_path, capsys):
    bad1 = dict(TEXT_LINE, messages=[{"role": "user", "content": "only a user turn"}])
    bad2 = {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}
    src = _write_jsonl(tmp_path / "f.jsonl", [TEXT_LINE, bad1, bad2])
    code, out, _ = run(capsys, "dataset", "validate", str(src))
    assert code == 1
    assert f"{src}:2: row 'f-000002', field messages:" in out and "contain" in out
    assert f"{src}:3: row 'f-000003', field messages[0].role: 'wizard' is not one of" in out
    assert "1 valid, 2 invalid" in out


def test_import_errors_are_one_line_naming_value_source_and_fix(tmp_path, capsys):
    root = str(tmp_path / "ds")
    src = _write_jsonl(tmp_path / "f.jsonl", [TEXT_LINE])
    (tmp_path / "broken.jsonl").write_text(json.dumps(TEXT_LINE) + "\n{not json\n")
    code, _, err = run(capsys, "dataset", "--root", root, "import", str(tmp_path / "broken.jsonl"), "--name", "s",
                       "--version", "v1")
    assert code == 2 and f"{tmp_path / 'broken.jsonl'}:2: not valid JSON" in err and err.count("\n") == 1
    code, _, err = run(capsys, "dataset", "--root", root, "import", str(src), "--name", "s", "--version", "../x")
    assert code == 2 and "'../x' (from bclone dataset import --version)" in err
    assert run(capsys, "dataset", "--root", root, "import", str(src), "--name", "s", "--version", "v1")[0] == 0
    code, _, err = run(capsys, "dataset", "--root", root, "import", str(src), "--name", "s", "--version", "v1")
    assert code == 2 and "s@v1 already exists" in err
    code, _, err = run(capsys, "dataset", "--root", str(tmp_path / "missing"), "ls")
    assert code == 2 and "does not exist" in err and "--root" in err


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).with_name("bclone")
    if not exe.exists():
        pytest.skip("bclone console script not installed in this interpreter's environment")
    res = subprocess.run([str(exe), "dataset", "--root", str(tmp_path / "missing"), "ls"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "does not exist" in res.stderr
