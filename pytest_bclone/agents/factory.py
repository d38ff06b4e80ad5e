"""Build the clone and the expert from their specs (``--bclone-clone`` / ``--bclone-expert``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..cache import ModelCache
from ..config import BcloneConfig
from ..errors import AgentError
from ..records import Trajectory
from ..retry import RetryPolicy
from .base import ROLES, Agent
from .litellm_agent import LitellmAgent, check_model
from .python_agent import PYTHON_PREFIX, PythonAgent, load_python_spec
from .recorded import RecordedAgent

__all__ = ["AgentHook", "AgentSpec", "make_agent", "make_judge"]

AgentSpec = str | Agent | Callable[..., Any] | None
"""A spec string, an agent object, or a callable ``fn(state)`` (passed directly from Python)."""

AgentHook = Callable[[str, str], Agent | None]
"""``hook(role, spec)``: the plugin's ``pytest_bclone_make_agent`` (firstresult) hook."""

ACCEPTED = (
    "recorded (the dataset's expert actions, no calls), python:MODULE:CALLABLE, a litellm model string "
    "such as openai/gpt-4o-mini or hosted_vllm/my-clone (provider/model), or a name your "
    "pytest_bclone_make_agent hook resolves"
)


def make_agent(
    role: str,
    spec: AgentSpec,
    config: BcloneConfig,
    trajectories: Iterable[Trajectory],
    hook: AgentHook | None = None,
    *,
    cache: ModelCache | None = None,
    retry: RetryPolicy | None = None,
) -> Agent:
    """The agent for ``role`` (``clone`` or ``expert``) given by ``spec``.

    Resolution order: the ``hook`` (first non-None answer wins), an agent or callable passed
    directly, ``recorded``, ``python:module:callable``, then any model litellm can route.
    A litellm agent gets ``config.<role>_params``, ``config.price``, ``cache`` (default: the
    cache of ``--bclone-cache-dir`` / ``--bclone-cache-mode``) and ``retry`` (default:
    ``--bclone-max-retries`` / ``--bclone-timeout``). An unusable spec raises
    :class:`~pytest_bclone.errors.AgentError` naming the spec, its option and the accepted forms.
    """
    if role not in ROLES:
        raise AgentError(f"agent role {role!r} is not one of {', '.join(ROLES)}")
    option = f"--bclone-{role}"
    if isinstance(spec, str) and hook is not None:
        agent = hook(role, spec)
        if agent is not None:
            if not isinstance(agent, Agent):
                raise AgentError(
                    f"pytest_bclone_make_agent returned {type(agent).__name__} for {option}={spec!r}; expected "
                    "an object with a `name` and `async def act(self, state, *, repeat=0) -> AgentReply`"
                )
            return agent
    if spec is None:
        raise AgentError(f"no {role} agent: pass {option}=SPEC, where SPEC is {ACCEPTED}")
    if not isinstance(spec, str):
        if isinstance(spec, Agent):
            return spec
        if callable(spec):
            return PythonAgent(spec, timeout=config.timeout)
        raise AgentError(f"{option}: {type(spec).__name__} {spec!r:.60} is not an agent; expected {ACCEPTED}")
    if spec == "recorded":
        return RecordedAgent(trajectories)
    if spec.startswith(PYTHON_PREFIX):
        obj = load_python_spec(spec, option)
        if isinstance(obj, Agent):
            return obj
        return PythonAgent(obj, name=spec, timeout=config.timeout)
    params = config.clone_params if role == "clone" else config.expert_params
    reason = check_model(spec, params)
    if reason is not None:
        tried = " (the pytest_bclone_make_agent hook returned None)" if hook is not None else ""
        raise AgentError(
            f"{option}={spec!r} is not an agent spec{tried}: expected {ACCEPTED}; litellm cannot route "
            f"it ({reason})"
        )
    return LitellmAgent(
        spec,
        params=params,
        cache=cache if cache is not None else ModelCache.from_config(config),
        retry=retry if retry is not None else RetryPolicy.from_config(config),
        prices=config.price,
        role=role,  # named in the message that stops the run when the provider refuses it
    )


def make_judge(config: BcloneConfig) -> LitellmAgent | None:
    """The judge of the LLM-judge evaluators (``--bclone-judge MODEL``), None when unset. Its calls go
    through the same cache, retries and prices as the agents' calls."""
    if not config.judge:
        return None
    return LitellmAgent(config.judge, cache=ModelCache.from_config(config), retry=RetryPolicy.from_config(config),
                        prices=config.price, role="judge")
