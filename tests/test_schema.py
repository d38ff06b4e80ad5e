"""The row schema: the hand-checked fast path agrees with jsonschema; strict refusals and their messages."""

from __future__ import annotations

import copy
import math
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_bclone.dataset.schema import ROW_SCHEMA, fast_valid, validate_row
from pytest_bclone.errors import RowError

from .conftest import make_row

VALIDATOR = jsonschema.Draft202012Validator(ROW_SCHEMA)

PATHS: list[tuple[Any, ...]] = [
    ("id",), ("cohorts",), ("cohorts", 0), ("split",), ("messages",), ("messages", 0), ("messages", 0, "role"),
    ("messages", 1, "content"), ("messages", 5, "role"), ("messages", 5, "content"), ("messages", 2, "tool_calls"),
    ("messages", 2, "tool_calls", 0), ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "name"), ("messages", 2, "tool_calls", 0, "function", "arguments"),
    ("messages", 2, "tool_calls", 0, "id"), ("messages", 2, "tool_calls", 0, "type"), ("messages", 3, "tool_call_id"),
    ("messages", 3, "content"), ("messages", 3, "name"), ("messages", 3, "role"), ("tools",), ("tools", 0),
    ("tools", 0, "type"), ("tools", 0, "function"), ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"), ("expected",), ("expected", "actions"), ("expected", "actions", 0),
    ("expected", "actions", 0, "name"), ("expected", "actions", 0, "arguments"), ("expected", "outputs"),
    ("expert_scores",), ("expert_scores", "task_completion"), ("metadata",), ("scores",), ("messages", 0, "extra"),
]
VALUES = st.sampled_from([
    None, "", "x", "assistant", "tool", "user", "function", "train", "eval", "c1", "bad cohort", 0, 1, 2, 0.5, -0.1,
    1.5, True, False, math.nan, math.inf, [], {}, ["a"], [{}], {"a": 1}, {"name": "f"}, [{"role": "assistant"}],
])


def _mutate(row: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> None:
    target: Any = row
    for p in path[:-1]:
        try:
            target = target[p]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if isinstance(target, dict):
        if delete:
            target.pop(last, None)
        else:
            target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        if delete:
            del target[last]
        else:
            target[last] = value


def _schema_accepts(row: Any) -> bool:
    scores = row.get("expert_scores") if isinstance(row, dict) else None
    finite = not isinstance(scores, dict) or all(not isinstance(v, float) or math.isfinite(v) for v in scores.values())
    return not list(VALIDATOR.iter_errors(row)) and finite


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES, st.booleans()), min_size=1, max_size=3))
def test_fast_path_agrees_with_jsonschema(mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    row = make_row(1)
    for path, value, delete in mutations:
        _mutate(row, path, copy.deepcopy(value), delete)
    assert fast_valid(row) == _schema_accepts(row), row


def test_valid_rows_take_the_fast_path() -> None:
    row = make_row(1)
    assert fast_valid(row) and _schema_accepts(row)
    validate_row(row, "f.jsonl:1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scores": {"task_completion": 1}}, ("has unknown key 'scores' (did you mean scores -> expert_scores?); known "
                                            "keys: id, cohorts, split, messages, tools, expected, expert_scores, "
                                            "metadata; rename it, or pass --keep-unknown-keys")),
        ({"cohorts": "c1"}, "field cohorts: 'c1' is a string; cohorts is a list of names, e.g. ['c1']"),
        ({"expert_scores": {"task_completion": math.nan}}, ("field expert_scores.task_completion: nan is not a number "
                                                          "in [0, 1]")),
        ({"expert_scores": {"task_completion": math.inf}}, ("field expert_scores.task_completion: inf is greater than "
                                                          "the maximum of 1")),
        ({"expert_scores": {"task_completion": True}}, "field expert_scores.task_completion: True is not of type"),
        ({"split": "test"}, "field split: 'test' is not one of ['train', 'eval']"),
    ],
)
def test_refusals_name_the_field_and_the_fix(change: dict[str, Any], message: str) -> None:
    row = {**make_row(1), **change}
    with pytest.raises(RowError) as exc:
        validate_row(row, "f.jsonl:7")
    assert str(exc.value).startswith("f.jsonl:7: row 't0001'")
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.insert(3, m.pop(2)), "messages[2].tool_call_id: 'c1'"),  # the answer before its call
        (lambda m: m[3].__setitem__("tool_call_id", "c9"), "messages[3].tool_call_id: 'c9'"),  # no such call
        (lambda m: (m[2]["tool_calls"][0].__setitem__("id", ""), m[3].__setitem__("tool_call_id", "")),
         "messages[3].tool_call_id: ''"),  # an empty id names no call
        (lambda m: m[2]["tool_calls"][0].pop("id"), "messages[3].tool_call_id: 'c1'"),  # no id
    ],
    ids=["before-call", "unknown-call", "empty-call-id", "no-call-id"],
)
def test_a_tool_message_must_answer_an_earlier_call(edit: Any, field: str) -> None:
    row = make_row(1)
    edit(row["messages"])
    assert _schema_accepts(row) and fast_valid(row)  # the schema cannot say it: the row check does
    with pytest.raises(RowError) as exc:
        validate_row(row, "f.jsonl:3")
    assert str(exc.value).startswith(f"f.jsonl:3: row 't0001', field {field} answers no earlier tool call")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_canonical_encoders_give_canonical_json_text(value: Any) -> None:
    from pytest_bclone.dataset.schema import canonical_encoder, canonical_json

    want = canonical_json(value)
    assert canonical_encoder()(value) == want
    assert canonical_encoder(check_circular=False)(value) == want
    reused = canonical_encoder(allow_nan=False)
    assert reused(value) == reused(value) == want


def test_a_canonical_encoder_without_nan_refuses_it_like_json_dumps() -> None:
    from pytest_bclone.dataset.schema import canonical_encoder, canonical_json

    assert canonical_encoder()([math.nan]) == canonical_json([math.nan]) == "[NaN]"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_encoder(allow_nan=False)({"a": [math.inf]})
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        canonical_encoder()({1})
