"""The plugin's own hooks. Implement them in a ``conftest.py`` (or a plugin) of the suite under test.

Each spec carries a paste-able example. Registered through ``pytest_addhooks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .agents.base import Agent
    from .records import Trajectory


@pytest.hookspec(firstresult=True)
def pytest_bclone_make_agent(role: str, spec: str, config: pytest.Config) -> Agent | None:
    """Build the agent for ``role`` (``"clone"`` or ``"expert"``) from its ``spec`` string, or return
    None to let pytest-bclone build it (recorded, ``python:mod:fn``, or a litellm model string).

    Example::

        def pytest_bclone_make_agent(role, spec, config):
            if spec == "my-router":
                return MyRouterAgent()   # has .name and `async def act(state, *, repeat=0) -> AgentReply`
    """


@pytest.hookspec(firstresult=True)
def pytest_bclone_make_environment(trajectory: Trajectory) -> Any:
    """Return the environment that executes tool calls for one rollout of ``trajectory``
    (``--bclone-mode rollout``): an object with ``tools`` (OpenAI tool list), ``execute(call) -> str``
    and optionally ``final_state_ok() -> bool | None``.

    Example::

        def pytest_bclone_make_environment(trajectory):
            return RetailEnvironment(seed_db_for(trajectory))
    """


@pytest.hookspec
def pytest_bclone_register_evaluators(registry: Any) -> None:
    """Add your own evaluators to ``registry`` (see ``pytest_bclone.evaluators``).

    Example::

        def pytest_bclone_register_evaluators(registry):
            registry.register(PolitenessEvaluator())   # name "politeness", usable as metric="politeness"
    """
