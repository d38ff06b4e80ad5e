"""Tool-heavy conversations: many calls, parallel lookups of several orders.

Release table: | Tool-heavy | Within 2 points | ToolSelectionAccuracy | Inspect tool-call coverage in training set |
tool_selection is also where tool-deprecation drift shows first (a clone calling a retired tool).
"""

import pytest

from pytest_bclone import assert_parity

pytestmark = pytest.mark.bclone(cohort="tool_heavy")


def test_tool_heavy_tool_selection() -> None:
    # (pytest.ini bclone_policy: tool_heavy = block | inspect tool-call coverage ...)
    assert_parity(cohort="tool_heavy", within=2, metric="tool_selection")
