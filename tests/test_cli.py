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


# -- CLI polish and bad inputs (issues 12, 16) ------------------------------------------------------
def test_version_and_root_anywhere(tmp_path, capsys, monkeypatch):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("bclone (pytest-bclone) ")
    root = str(tmp_path / "ds")
    src = _write_jsonl(tmp_path / "f.jsonl", [TEXT_LINE])
    assert run(capsys, "dataset", "import", str(src), "--name", "s", "--version", "v1", "--root", root)[0] == 0
    assert run(capsys, "dataset", "import", str(src), "--root", root, "--name", "s", "--version", "v2")[0] == 0
    assert run(capsys, "dataset", "ls", "--root", root)[1].strip() == "s: v1, v2"
    code, out, _ = run(capsys, "dataset", "diff", "--root", root, "v1", "v2")
    assert code == 0
    monkeypatch.setenv("BCLONE_DATASET_ROOT", root)
    assert run(capsys, "dataset", "ls")[1].strip() == "s: v1, v2"
    # --root after the verb wins over the environment, and an error names where the root came from.
    code, _, err = run(capsys, "dataset", "ls", "--root", str(tmp_path / "nope"))
    assert code == 2 and "(from --root)" in err
    monkeypatch.setenv("BCLONE_DATASET_ROOT", str(tmp_path / "gone"))
    code, _, err = run(capsys, "dataset", "show", "v1")
    assert code == 2 and "(from $BCLONE_DATASET_ROOT) does not exist" in err


def test_ls_without_a_root_says_how_to_set_one_for_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BCLONE_DATASET_ROOT", raising=False)
    code, _, err = run(capsys, "dataset", "ls")
    assert code == 2 and err.count("\n") == 1
    assert "pass --root DIR (before or after the verb) or set $BCLONE_DATASET_ROOT" in err
    assert "--bclone-dataset-root" not in err and "bclone_dataset_root" not in err


def test_every_argument_has_help():
    import argparse

    from pytest_bclone.cli import _parser

    def walk(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from walk(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield p.prog, action
    missing = [f"{prog} {a.dest}" for prog, a in walk(_parser()) if not a.help]
    assert missing == []
    helps = {(prog, a.dest): a.help for prog, a in walk(_parser())}
    assert "tau-bench" in helps[("bclone dataset import", "format")]
    assert helps[("bclone dataset import", "file")]
    for prog in sorted({prog for prog, _ in helps}):  # every help page renders (a stray % would break it)
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args([*prog.split()[1:], "--help"])
        assert exc.value.code == 0


def test_validate_lists_every_bad_line_including_non_json_and_non_utf8(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"{not json\n" + json.dumps(TEXT_LINE).encode() + b"\n"
                     + b'{"messages": [{"role": "user", "content": "\xff"}]}\n'
                     + json.dumps({**TEXT_LINE, "scores": {"x": 1}}).encode() + b"\n"
                     + json.dumps({**TEXT_LINE, "cohorts": "c1"}).encode() + b"\n")
    code, out, _ = run(capsys, "dataset", "validate", str(path), "--format", "openai-jsonl")
    assert code == 1
    assert f"{path}:1: not valid JSON" in out
    assert f"{path}:3: not UTF-8 text (byte 0xff" in out
    assert f"{path}:4: row 'mixed-000004' has unknown key 'scores'" in out
    assert f"{path}:5: row 'mixed-000005', field cohorts: 'c1' is a string" in out
    assert out.strip().endswith("1 valid, 4 invalid")


def test_keep_unknown_keys_keeps_them_in_metadata(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "f.jsonl", [{**TEXT_LINE, "scores": {"x": 1}}])
    root = str(tmp_path / "ds")
    assert run(capsys, "dataset", "--root", root, "import", str(src), "--name", "s", "--version", "v1",
               "--keep-unknown-keys")[0] == 0
    from pytest_bclone.dataset.store import DatasetStore

    (t,) = DatasetStore(root).load("s@v1").trajectories
    assert t.metadata["import_extra"] == {"scores": {"x": 1}} and t.expert_scores == {}


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv after `dataset --root R`, text the one error line must contain)."""
    def write(name: str, data: bytes | str) -> str:
        p = tmp_path / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(p)

    line = json.dumps(TEXT_LINE)
    imp = ["import", "--name", "d", "--version", "v1"]
    only_user = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    no_assistant_run = json.dumps([{"task_id": 1, "trial": 0, "reward": 1.0, "info": {"task": {"actions": []}},
                                    "traj": [{"role": "system", "content": "# Retail agent policy"},
                                             {"role": "user", "content": "hi"}]}])
    return {
        "non-utf8": ([*imp, write("latin1.jsonl", line.encode() + b"\n" + b'{"messages": "caf\xe9"}\n')],
                     "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 18)"),
        "binary": ([*imp, write("blob.jsonl", b"\x00\x01\x02binary\n"), "--format", "openai-jsonl"],
                   "blob.jsonl:1: binary data (a NUL byte at column 1)"),
        "parquet-to-json-importer": ([*imp, write("spans.parquet", b"PAR1\x00\x00rest"), "--format", "openai-jsonl"],
                                     "spans.parquet is a Parquet file, not OpenAI chat JSONL"),
        "not-json": ([*imp, write("broken.jsonl", line + "\n{oops\n")], "broken.jsonl:2: not valid JSON"),
        "no-assistant-turn": ([*imp, write("user_only.jsonl", only_user + "\n")],
                              "user_only.jsonl:1: row 'user_only-000001', field messages"),
        "run-without-assistant-turn": ([*imp, write("runs.json", no_assistant_run), "--strict"],
                                       "runs.json[run 0] (task 1, trial 0): the run has no assistant turn"),
        "unknown-key": ([*imp, write("scores.jsonl", json.dumps({**TEXT_LINE, "scores": {"tc": 1}}) + "\n")],
                        "has unknown key 'scores' (did you mean scores -> expert_scores?); known keys:"),
        "cohorts-string": ([*imp, write("coh.jsonl", json.dumps({**TEXT_LINE, "cohorts": "c1"}) + "\n")],
                           "field cohorts: 'c1' is a string; cohorts is a list of names"),
        "nan-score": ([*imp, write("nan.jsonl", line[:-1] + ', "expert_scores": {"task_completion": NaN}}\n')],
                      "field expert_scores.task_completion: nan is not a number in [0, 1]"),
        "eval-fraction-2": ([*imp, write("ok.jsonl", line + "\n"), "--eval-fraction", "2"],
                            "argument --eval-fraction: 2 is outside [0, 1]"),
        "eval-fraction-nan": ([*imp, write("ok2.jsonl", line + "\n"), "--eval-fraction", "nan"],
                              "argument --eval-fraction: nan is outside [0, 1]"),
        "missing-file": ([*imp, str(tmp_path / "nowhere.jsonl"), "--format", "openai-jsonl"],
                         "cannot read import file"),
        "directory-as-file": ([*imp, str(tmp_path), "--format", "openai-jsonl"], "is a directory; give the"),
        "unknown-format": ([*imp, write("plain.txt", "hello\n")], "cannot tell the format of"),
        "empty-file": ([*imp, write("empty.jsonl", "\n\n"), "--format", "openai-jsonl"],
                       "no trajectory imported from"),
        "tau-runs-not-json": ([*imp, write("r.json", "[\n{\"traj\": [}\n]"), "--format", "tau-bench"],
                              "r.json:2: not valid JSON"),
        "export-to-missing-dir": (["export", "v0", "-o", str(tmp_path / "no" / "such" / "out.jsonl")],
                                  "does not exist; create it first"),
        "export-to-a-directory": (["export", "v0", "-o", str(tmp_path)], "is a directory; give a file path"),
        "validate-non-utf8": (["validate", write("v.jsonl", b"\xfe\xff\n"), "--format", "openai-jsonl"],
                              "not UTF-8 text"),
        "validate-non-utf8-auto": (["validate", write("w.jsonl", b"{}\n\xfe\xff\n")], "w.jsonl:2: not UTF-8 text"),
        "unknown-version": (["show", "v99"], "'v99' (from bclone dataset show) is not in"),
        "version-outside-root": (["show", "../../etc"], "is not a plain name"),
    }


BAD_INPUTS = ["non-utf8", "binary", "parquet-to-json-importer", "not-json", "no-assistant-turn",
              "run-without-assistant-turn", "unknown-key", "cohorts-string", "nan-score", "eval-fraction-2",
              "eval-fraction-nan", "missing-file", "directory-as-file", "unknown-format", "empty-file",
              "tau-runs-not-json", "export-to-missing-dir", "export-to-a-directory", "unknown-version",
              "version-outside-root", "validate-non-utf8-auto"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_exit_2(case, tmp_path, capsys):
    root = str(tmp_path / "ds")
    seed = _write_jsonl(tmp_path / "seed.jsonl", [TEXT_LINE])
    assert run(capsys, "dataset", "--root", root, "import", str(seed), "--name", "d", "--version", "v0")[0] == 0
    argv, expected = _bad_inputs(tmp_path)[case]
    code, out, err = run(capsys, "dataset", "--root", root, *argv)
    assert code == 2, (out, err)
    assert err.startswith("bclone: error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Traceback" not in err + out
    from pytest_bclone.dataset.store import DatasetStore

    assert DatasetStore(root).versions("d") == ["v0"]  # nothing half-written
    assert not [p for p in (tmp_path / "ds" / "d").iterdir() if p.name.startswith(".staging")]


def test_validate_of_a_non_utf8_file_lists_it(tmp_path, capsys):
    argv, expected = _bad_inputs(tmp_path)["validate-non-utf8"]
    code, out, _ = run(capsys, "dataset", *argv)
    assert code == 1 and expected in out and "0 valid, 1 invalid" in out


def test_binary_input_through_the_console_script_has_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("bclone")
    if not exe.exists():
        pytest.skip("bclone console script not installed in this interpreter's environment")
    blob = tmp_path / "blob.jsonl"
    blob.write_bytes(bytes(range(256)) * 4)
    res = subprocess.run([str(exe), "dataset", "import", str(blob), "--name", "d", "--version", "v1", "--root",
                          str(tmp_path / "ds")], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and res.stderr.startswith("bclone: error: ") and res.stderr.count("\n") == 1
    assert "Traceback" not in res.stderr and str(blob) in res.stderr


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        (json.dumps(TEXT_LINE) + "\n", "openai-jsonl"),
        (json.dumps({"resourceSpans": []}) + "\n", "otel"),
        (('{\n    "name": "ChatCompletion",\n    "context": {\n        "trace_id": "0x5b8aa5a2d2c872e8321cf37308d69df2",\n'
         '        "span_id": "0x051581bf3cb55c13"\n    }\n}\n'), "otel"),  # ConsoleSpanExporter's pretty JSON
        (json.dumps({"context.trace_id": "abc", "attributes.llm.input_messages": []}) + "\n", "otel"),  # Phoenix
        (json.dumps({"id": "o", "traceId": "t", "type": "GENERATION"}) + "\n", "langfuse"),
        (json.dumps([{"task_id": 0, "reward": 1.0, "trial": 0, "info": {}, "traj": []}]), "tau-bench"),
        (json.dumps({"info": {}, "tasks": [], "simulations": []}, indent=2), "tau-bench"),
    ],
    ids=["openai-jsonl", "otlp-json", "console-exporter", "phoenix-jsonl", "langfuse", "tau-bench-runs",
         "tau2-results"],
)
def test_format_auto_sniffs_each_format(tmp_path, content, fmt):
    from pytest_bclone.dataset.importers import sniff_format

    path = tmp_path / "input"
    path.write_text(content)
    assert sniff_format(str(path)) == fmt
    (tmp_path / "p.parquet").write_bytes(b"PAR1....")
    assert sniff_format(str(tmp_path / "p.parquet")) == "otel"


def test_openai_jsonl_import_streams_and_names_duplicate_ids(tmp_path, capsys):
    from pytest_bclone.dataset.importers import ImportOptions
    from pytest_bclone.dataset.openai_jsonl import iter_rows

    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(TEXT_LINE) + "\n" + json.dumps(PARALLEL_LINE) + "\n{broken\n")
    rows = iter_rows(str(path), ImportOptions(), [])
    assert next(rows)["id"] == "big-000001" and next(rows)["id"] == "big-000002"  # read before line 3 is reached
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{**TEXT_LINE, "id": "x"}, TEXT_LINE, {**TEXT_LINE, "id": "x"}])
    code, _, err = run(capsys, "dataset", "--root", str(tmp_path / "ds"), "import", str(dup), "--name", "d",
                       "--version", "v1")
    assert code == 2 and err.count("\n") == 1 and "'x' appears 2 times" in err
    code, out, _ = run(capsys, "dataset", "validate", str(dup))
    assert code == 1 and f"{dup}:3: row id 'x' appears 2 times" in out and "2 valid, 1 invalid" in out


def test_validate_of_a_stored_version_lists_every_problem_and_exits_2(tmp_path, capsys):
    from pytest_bclone.dataset.store import DatasetStore

    root = tmp_path / "store"
    DatasetStore(str(root)).write_version("support", "v1", [make_row(i) for i in range(6)])
    code, out, _ = run(capsys, "dataset", "--root", str(root), "validate", "support@v1")
    assert code == 0, out
    version = root / "support" / "v1"
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["counts"]["trajectories"] = 99  # an edited count: the fingerprint no longer matches
    (version / "manifest.json").write_text(json.dumps(manifest))
    data = next(version.glob("*.parquet"))
    data.write_bytes(data.read_bytes()[:-40])  # and a truncated data file
    code, out, _ = run(capsys, "dataset", "validate", "support@v1", "--root", str(root))
    assert code == 2
    assert "fingerprint" in out and data.name in out  # both problems, not only the first
    assert "Traceback" not in out


def test_ls_notes_a_killed_imports_staging_directory(tmp_path, capsys):
    from pytest_bclone.dataset.store import DatasetStore

    root = tmp_path / "store"
    DatasetStore(str(root)).write_version("support", "v1", [make_row(i) for i in range(2)])
    (root / "support" / ".staging-v2-deadbeef").mkdir()  # what a killed import leaves
    code, out, _ = run(capsys, "dataset", "ls", "--root", str(root))
    assert code == 0 and "support: v1" in out
    assert "note:" in out and ".staging-v2-deadbeef" in out


def _reference_normalise(messages):
    """normalise_messages as it was before it edited parsed calls in place (kept as the reference)."""
    from pytest_bclone.dataset.schema import canonical_json

    out = []
    for m in messages:
        msg = dict(m)
        if msg.get("role") == "assistant":
            msg.setdefault("content", None)
            if msg.get("tool_calls") and type(msg["tool_calls"]) is list:
                calls = []
                for tc in msg["tool_calls"]:
                    if type(tc) is not dict or type(tc.get("function") or {}) is not dict:
                        calls.append(tc)
                        continue
                    fn = dict(tc.get("function") or {})
                    args = fn.get("arguments")
                    if isinstance(args, dict):
                        fn["arguments"] = canonical_json(args)
                    elif isinstance(args, str):
                        try:
                            fn["arguments"] = canonical_json(json.loads(args))
                        except ValueError:
                            pass
                    calls.append({**tc, "type": tc.get("type", "function"), "function": fn})
                msg["tool_calls"] = calls
            elif "tool_calls" in msg and not msg["tool_calls"]:
                del msg["tool_calls"]
        out.append(msg)
    return out


def _plain_json(value):
    """How the store encoded a value before it kept one encoder per write (json.dumps, these options)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def test_import_stores_each_line_as_the_canonical_json_of_its_normalised_copy(tmp_path, capsys):
    import copy

    import pyarrow.parquet as pq

    def tools(minimum):
        return [{"type": "function", "function": {"name": "get_order", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": minimum}}}}},
                {"type": "function", "function": {"name": "cancel_order", "description": "Annuler é 😀"}}]

    lines = []
    for i, minimum in enumerate([0, 0, 0.0, False, -0.0, 1, True, 1.0, 1.0]):
        line = copy.deepcopy(PARALLEL_LINE)
        line["tools"] = tools(minimum)
        msgs = line["messages"]
        msgs[1]["content"] = f"Cancel W{i} — «vite»"
        if i % 2:
            del msgs[2]["tool_calls"][0]["type"]  # the type is filled in
            msgs[2]["tool_calls"][1]["function"]["arguments"] = '{"order_id": "W2", "a": [1, 1.0, true, -0.0]}'
        if i % 3 == 0:
            msgs[5]["tool_calls"][0]["function"]["arguments"] = "{not json"  # kept as recorded
            msgs[7]["tool_calls"] = []  # an empty list means no call
        lines.append(line)
    src = _write_jsonl(tmp_path / "ft.jsonl", lines)
    root = tmp_path / "ds"
    code, out, _ = run(capsys, "dataset", "--root", str(root), "import", str(src), "--name", "support", "--version",
                       "v1", "--format", "openai-jsonl")
    assert code == 0, out
    manifest = json.loads((root / "support/v1/manifest.json").read_text())
    stored = pq.read_table(root / "support/v1" / manifest["files"][0]["path"]).to_pylist()
    assert len(stored) == len(lines)
    for line, got in zip(lines, stored, strict=True):
        # What the import stored, byte for byte: the earlier normalisation of the line as read.
        assert got["messages"] == _plain_json(_reference_normalise(line["messages"]))
        assert got["tools"] == _plain_json(line["tools"])
        assert (got["expert_scores"], got["metadata"], got["expected"]) == ("{}", "{}", None)
    minima = [json.loads(g["tools"])[0]["function"]["parameters"]["properties"]["n"]["minimum"] for g in stored]
    assert [repr(m) for m in minima] == ["0", "0", "0.0", "False", "-0.0", "1", "True", "1.0", "1.0"]


def test_normalisation_in_place_or_copying_equals_the_earlier_one_and_the_copy_leaves_its_input_alone():
    import copy

    from hypothesis import example, given, settings
    from hypothesis import strategies as st

    args = st.sampled_from(['{"b": 1, "a": [1.0, true]}', "{not json", "", "NaN", '"x"', "[1e400]"]) | st.text(
        max_size=5) | st.dictionaries(st.sampled_from("ba"), st.integers(), max_size=2) | st.none() | st.integers()
    function = st.none() | st.just({}) | st.just("f") | st.fixed_dictionaries(
        {}, optional={"name": st.sampled_from(["f", ""]), "arguments": args, "x": st.integers()})
    call = st.just("call") | st.fixed_dictionaries(
        {}, optional={"id": st.sampled_from(["c1", ""]), "type": st.sampled_from(["function", None, "other"]),
                      "function": function})
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["assistant", "user", "tool"])},
        optional={"content": st.none() | st.text(max_size=3),
                  "tool_calls": st.none() | st.just("x") | st.lists(call, max_size=3)})

    @settings(max_examples=300, deadline=None)
    @given(st.lists(message, max_size=4))
    @example([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": 2}}}]}])
    @example([{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "c1", "function": {"arguments": '{"b": 1, "a": [1.0, true]}'}}, {"type": None}, "call", {}]}])
    def check(messages):
        before = copy.deepcopy(messages)
        want = json.dumps(_reference_normalise(messages), sort_keys=True)  # exact types and text too
        assert json.dumps(normalise_messages(messages), sort_keys=True) == want
        assert messages == before  # the copying form edits nothing it was given
        assert json.dumps(normalise_messages(messages, copy=False), sort_keys=True) == want

    check()
