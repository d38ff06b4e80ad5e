"""pytest-bclone: the release gate of a behavior-cloned LLM agent as an ordinary pytest suite.

Cheap to import: no litellm, no pyarrow. Use in a test while the plugin is active::

    from pytest_bclone import assert_parity

    def test_long_tail():
        assert_parity(cohort="long_tail", within=3, on_fail="route")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .agents.base import Agent
from .assertions import assert_no_regression, assert_parity
from .config import BcloneConfig
from .errors import (
    AgentError,
    BcloneError,
    CacheMiss,
    ConfigError,
    DatasetError,
    DatasetNotFound,
    EvaluatorError,
    GateError,
    IntegrityError,
    ModelCallError,
    RowError,
    UnsafeVersionName,
    VersionExists,
)
from .records import Action, AgentReply, CallStats, DecisionPoint, Episode, Score, State, ToolCall, Trajectory

if TYPE_CHECKING:
    from .parity import Verdict

__all__ = [
    "Action",
    "Agent",
    "AgentError",
    "AgentReply",
    "BcloneConfig",
    "BcloneError",
    "CacheMiss",
    "CallStats",
    "ConfigError",
    "DatasetError",
    "DatasetNotFound",
    "DecisionPoint",
    "Episode",
    "EvaluatorError",
    "GateError",
    "IntegrityError",
    "ModelCallError",
    "RowError",
    "Score",
    "State",
    "ToolCall",
    "Trajectory",
    "UnsafeVersionName",
    "Verdict",
    "VersionExists",
    "assert_no_regression",
    "assert_parity",
]


def __getattr__(name: str) -> Any:
    # Verdict lives in parity.py (numpy); import it only when asked for.
    if name == "Verdict":
        from .parity import Verdict

        return Verdict
    raise AttributeError(f"module 'pytest_bclone' has no attribute {name!r}")
