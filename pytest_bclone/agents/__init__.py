"""Agents: the recorded expert, Python callables, litellm models, and the factory that picks one.

Importing this package does not import litellm (only :mod:`.litellm_agent` does, lazily).
"""

from .base import ROLES, Agent
from .factory import AgentHook, AgentSpec, make_agent
from .litellm_agent import LitellmAgent
from .python_agent import PythonAgent
from .recorded import RecordedAgent

__all__ = ["ROLES", "Agent", "AgentHook", "AgentSpec", "LitellmAgent", "PythonAgent", "RecordedAgent", "make_agent"]
