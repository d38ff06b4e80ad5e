"""Import from and export to OpenAI fine-tuning JSONL: the file a clone is trained on.

A line is ``{"messages": [...], "tools": [...]}``. On import, our own optional keys (``id``,
``cohorts``, ``split``, ``expected``, ``expert_scores``, ``metadata``) are kept when present;
otherwise the id is ``<file stem>-<line>`` and cohorts and split come from the caller.
Tool-call arguments are normalised to compact JSON with sorted keys, so an export of an import
equals the input up to that normalisation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from ..errors import BcloneError, ImportFormatError, RowError
from ..records import Trajectory
from .importers import ImportOptions, SkippedSource, iter_text_lines
from .schema import canonical_encoder, canonical_json, trajectory_to_row, unknown_keys_message, validate_row

_OUR_KEYS = ("id", "cohorts", "split", "expected", "expert_scores", "metadata")


def normalise_messages(messages: Sequence[Mapping[str, Any]], *, copy: bool = True) -> list[dict[str, Any]]:
    """Canonical form of OpenAI messages: arguments as sorted compact JSON, ``content`` always present.

    ``copy=False`` edits the given message and tool-call dicts in place (an importer's freshly
    parsed objects, which nobody else holds): no per-message or per-call copy on the import path.
    """
    out = []
    for m in messages:
        msg = m if not copy and type(m) is dict else dict(m)
        if msg.get("role") == "assistant":
            if "content" not in msg:
                msg["content"] = None
            tool_calls = msg.get("tool_calls")
            if tool_calls and type(tool_calls) is list:
                msg["tool_calls"] = [_normalise_call(tc, copy) for tc in tool_calls]
            elif "tool_calls" in msg and not tool_calls:
                del msg["tool_calls"]  # an empty list means no call
        out.append(msg)
    return out


# Arguments parsed from a JSON string cannot be circular, so one encoder without the circular
# check serves every call (and every thread); NaN stays allowed, as canonical_json allows it.
_canonical_parsed = canonical_encoder(check_circular=False)


def _normalise_call(tc: Any, copy: bool) -> Any:
    """One tool call with canonical arguments and a ``type`` (a copy unless ``copy`` is False)."""
    if type(tc) is not dict:
        return tc  # malformed: kept as given, validation names it
    fn = tc.get("function") or {}
    if type(fn) is not dict:
        return tc  # malformed: kept as given, validation names it
    if copy:
        fn = dict(fn)
    args = fn.get("arguments")
    if type(args) is str:
        try:
            fn["arguments"] = _canonical_parsed(json.loads(args))
        except ValueError:
            pass  # keep malformed arguments as recorded: the store loses nothing
    elif isinstance(args, Mapping):
        fn["arguments"] = canonical_json(args)
    elif isinstance(args, str):  # a str subclass
        try:
            fn["arguments"] = canonical_json(json.loads(args))
        except ValueError:
            pass
    if copy:
        return {**tc, "type": tc.get("type", "function"), "function": fn}
    if "type" not in tc:
        tc["type"] = "function"
    tc["function"] = fn
    return tc


def _eval_split(row_id: str, eval_fraction: float) -> str:
    # Hash of the id, not a random draw: re-importing the same file gives the same split.
    h = int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big") / 0xFFFFFFFF  # the first 8 hex digits
    return "eval" if h < eval_fraction else "train"


def read_openai_jsonl(
    path: str,
    *,
    cohorts: Sequence[str] = (),
    split: str | None = None,
    eval_fraction: float = 0.2,
) -> list[dict[str, Any]]:
    """Read and validate every line of ``path``; returns rows. The first bad line raises RowError.

    ``split`` forces every row's split; otherwise a row's own ``split`` key, else a stable hash of
    its id puts ``eval_fraction`` of rows in ``eval``. (A list-returning wrapper of
    :func:`iter_rows`, kept for callers that want every row at once.)
    """
    options = ImportOptions(cohorts=tuple(cohorts), split=split, eval_fraction=eval_fraction, strict=True)
    rows = list(iter_rows(path, options, []))
    if not rows:
        raise ImportFormatError(f"{path} holds no trajectories (every line is blank); expected OpenAI chat JSONL")
    return rows


def iter_rows(path: str, options: ImportOptions, skipped: list[SkippedSource]) -> Iterator[dict[str, Any]]:
    """The ``openai-jsonl`` importer: stream validated rows, one per line, in bounded memory.

    This is our own row format, so a bad line is an error naming ``file:line`` (not a skipped
    source): a wrong line means a wrong file. Unknown keys are refused unless
    ``options.keep_unknown_keys`` (then kept under ``metadata.import_extra``). Nothing is kept
    per row: duplicate ids are caught by the store's writer (``bclone dataset validate`` names
    both lines of a duplicate).
    """
    for lineno, row in iter_openai_jsonl(path, cohorts=options.cohorts, split=options.split,
                                         eval_fraction=options.eval_fraction,
                                         keep_unknown_keys=options.keep_unknown_keys):
        validate_row(row, f"{path}:{lineno}")
        yield row


def check_unique_id(row_id: str, lineno: int, seen: dict[str, int], where: str) -> None:
    """Raise RowError when ``row_id`` was already seen (``seen`` maps ids to their first line)."""
    first = seen.setdefault(row_id, lineno)
    if first != lineno:
        raise RowError(f"{where}: row id {row_id!r} appears 2 times (lines {first} and {lineno}); ids must be "
                       "unique: rename one or drop the duplicate line")


def iter_openai_jsonl(
    path: str,
    *,
    cohorts: Sequence[str] = (),
    split: str | None = None,
    eval_fraction: float = 0.2,
    keep_unknown_keys: bool = False,
    on_error: Callable[[BcloneError], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) for every non-blank line, unvalidated (``validate`` lists all problems).

    A line without an ``id`` gets ``<file stem>-<line number>``. A line that is not UTF-8, not
    JSON or has unknown keys raises, or with ``on_error`` is reported there and skipped.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    for lineno, line in iter_text_lines(path, "OpenAI chat JSONL", on_error):
        try:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                    "JSON object {\"messages\": [...], \"tools\": [...]}"
                ) from None
            row = _line_to_row(obj, f"{path}:{lineno}", lineno, cohorts, split, eval_fraction, stem,
                               keep_unknown_keys)
        except BcloneError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        yield lineno, row


_LINE_KEYS = ("messages", "tools", *_OUR_KEYS, "parallel_tool_calls")
_LINE_KEYSET = frozenset(_LINE_KEYS)


def _line_to_row(
    obj: Any, where: str, lineno: int, cohorts: Sequence[str], split: str | None, eval_fraction: float, stem: str,
    keep_unknown_keys: bool,
) -> dict[str, Any]:
    if type(obj) is not dict:
        return {"_not_an_object": obj}  # validate_row names the problem with its line
    row_id = obj.get("id")
    if row_id is None or row_id == "":
        row_id = f"{stem}-{lineno:06d}"
    get = obj.get
    # Values are kept as given (not coerced) so that validation sees a wrong type: a cohorts
    # string "c1" must be refused, not split into cohorts "c" and "1".
    msgs = get("messages")
    row: dict[str, Any] = {
        "id": row_id,
        "cohorts": list(cohorts) if get("cohorts") is None else obj["cohorts"],
        "split": split or get("split") or (_eval_split(row_id, eval_fraction) if isinstance(row_id, str) else "eval"),
        "messages": normalise_messages(msgs, copy=False) if type(msgs) is list and all(type(m) is dict for m in msgs)
        else msgs,
        "tools": [] if get("tools") is None else obj["tools"],
        "expected": get("expected"),
        "expert_scores": {} if get("expert_scores") is None else obj["expert_scores"],
        "metadata": {} if get("metadata") is None else obj["metadata"],
    }
    if not obj.keys() <= _LINE_KEYSET:
        unknown = [k for k in obj if k not in _LINE_KEYSET]
        if unknown:
            if not keep_unknown_keys:
                raise RowError(unknown_keys_message(where, row_id, sorted(unknown), _LINE_KEYS))
            meta = row["metadata"] if isinstance(row["metadata"], dict) else {}
            row["metadata"] = {**meta, "import_extra": {k: obj[k] for k in sorted(unknown)}}
    return row


def write_openai_jsonl(trajectories: Iterable[Trajectory], out: TextIO, *, with_ids: bool = False) -> int:
    """Write one fine-tuning line per trajectory; returns the count.

    Plain lines hold only ``messages`` and ``tools`` (what the fine-tuning API accepts);
    ``with_ids`` adds our keys so a re-import keeps ids, cohorts and splits.
    """
    n = 0
    for t in trajectories:
        row = trajectory_to_row(t)
        line: dict[str, Any] = {"messages": normalise_messages(row["messages"])}
        if row["tools"]:
            line["tools"] = row["tools"]
        if with_ids:
            line.update({k: row[k] for k in _OUR_KEYS if row.get(k) not in (None, {}, [])})
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n
