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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from ..errors import ImportFormatError, RowError
from ..records import Trajectory
from .schema import canonical_json, trajectory_to_row, validate_row

_OUR_KEYS = ("id", "cohorts", "split", "expected", "expert_scores", "metadata")


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Canonical form of OpenAI messages: arguments as sorted compact JSON, ``content`` always present."""
    out = []
    for m in messages:
        msg = dict(m)
        if msg.get("role") == "assistant":
            msg.setdefault("content", None)
            if msg.get("tool_calls"):
                calls = []
                for tc in msg["tool_calls"]:
                    fn = dict(tc.get("function") or {})
                    args = fn.get("arguments")
                    if isinstance(args, Mapping):
                        fn["arguments"] = canonical_json(args)
                    elif isinstance(args, str):
                        try:
                            fn["arguments"] = canonical_json(json.loads(args))
                        except ValueError:
                            pass  # keep malformed arguments as recorded: the store loses nothing
                    calls.append({**tc, "type": tc.get("type", "function"), "function": fn})
                msg["tool_calls"] = calls
            elif "tool_calls" in msg:
                del msg["tool_calls"]  # an empty list means no call
        out.append(msg)
    return out


def _eval_split(row_id: str, eval_fraction: float) -> str:
    # Hash of the id, not a random draw: re-importing the same file gives the same split.
    h = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
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
    its id puts ``eval_fraction`` of rows in ``eval``.
    """
    rows = []
    for lineno, row in iter_openai_jsonl(path, cohorts=cohorts, split=split, eval_fraction=eval_fraction):
        validate_row(row, f"{path}:{lineno}")
        rows.append(row)
    if not rows:
        raise ImportFormatError(f"{path} holds no trajectories (every line is blank); expected OpenAI chat JSONL")
    return rows


def iter_openai_jsonl(
    path: str,
    *,
    cohorts: Sequence[str] = (),
    split: str | None = None,
    eval_fraction: float = 0.2,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) for every non-blank line, unvalidated (``validate`` lists all problems).

    A line without an ``id`` gets ``<file stem>-<line number>``.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (closed by the `with f` below; opened apart to name the error)
    except OSError as exc:
        raise ImportFormatError(f"cannot read import file {path!r}: {exc.strerror}; check the path") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                    "JSON object {\"messages\": [...], \"tools\": [...]}"
                ) from None
            yield lineno, _line_to_row(obj, lineno, cohorts, split, eval_fraction, stem)


def _line_to_row(
    obj: Any, lineno: int, cohorts: Sequence[str], split: str | None, eval_fraction: float, stem: str
) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {"_not_an_object": obj}  # validate_row names the problem with its line
    row_id = str(obj.get("id") or f"{stem}-{lineno:06d}")
    row: dict[str, Any] = {
        "id": row_id,
        "cohorts": list(obj.get("cohorts") or cohorts),
        "split": split or obj.get("split") or _eval_split(row_id, eval_fraction),
        "messages": normalise_messages(obj["messages"]) if isinstance(obj.get("messages"), list)
        else obj.get("messages"),
        "tools": obj.get("tools") or [],
        "expected": obj.get("expected"),
        "expert_scores": obj.get("expert_scores") or {},
        "metadata": obj.get("metadata") or {},
    }
    unknown = set(obj) - set(_OUR_KEYS) - {"messages", "tools", "parallel_tool_calls"}
    if unknown:
        row["metadata"] = {**row["metadata"], "import_extra": {k: obj[k] for k in sorted(unknown)}}
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
