"""The plugin's own hooks. Implement them in a ``conftest.py`` (or a plugin) of the suite under test.

Each spec carries a paste-able example. Registered through ``pytest_addhooks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .agents.base import Agent
    from .agents.user import User
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


@pytest.hookspec(firstresult=True)
def pytest_bclone_make_user(trajectory: Trajectory, config: pytest.Config) -> User | None:
    """Return the customer who answers the agent in one rollout episode of ``trajectory``
    (``--bclone-mode rollout``), or None to let ``--bclone-user`` decide (``recorded``: the next
    recorded user message; ``python:mod:factory``; or a litellm model string: an LLM user).

    Called once per episode, for the clone and for a live expert alike (the same user process
    for both; the recorded expert's episode is its recording). The user has
    ``respond(messages) -> str | None | UserTurn`` (sync or async; None ends the conversation) and
    optionally a ``name`` for the report. Asked before ``--bclone-user``: to let an explicit
    option win, return None when it is given.

    Example::

        def pytest_bclone_make_user(trajectory, config):
            if config.getoption("bclone_user"):       # an explicit --bclone-user wins
                return None
            return ScriptedCustomer(trajectory)        # answers whatever the agent asks
    """


@pytest.hookspec
def pytest_bclone_register_evaluators(registry: Any) -> None:
    """Add your own evaluators to ``registry`` (see ``pytest_bclone.evaluators``).

    Example::

        def pytest_bclone_register_evaluators(registry):
            registry.register(PolitenessEvaluator())   # name "politeness", usable as metric="politeness"
    """
