"""The example release gate's wiring: which agents the specs name, and the rollout environment.

``pytest example_suite --bclone-dataset=v8`` gates the clone named by ini ``bclone_clone``
(``bc-clone@v7``: behaviour-cloned from v7's train split) against the recorded expert on v8's
eval split. The two hooks below resolve the example's own agent specs and give rollouts an
environment; every other spec falls through to pytest-bclone (``recorded``, ``python:...``,
litellm model strings).

Pointing the same suite at real models changes options, not tests::

    # a fine-tuned clone served by an OpenAI-compatible endpoint, the recorded expert as reference
    #   pytest example_suite --bclone-dataset=v8 \\
    #       --bclone-clone=openai/ft:gpt-4o-mini:acme:clone-v8 --bclone-expert=recorded \\
    #       --bclone-price=openai/ft:gpt-4o-mini:acme:clone-v8=0.30/1.20
    # with, in pytest.ini:
    #   bclone_clone_params = {"api_base": "http://127.0.0.1:8000/v1", "temperature": 0}
    # or a live expert model instead of the recording:  --bclone-expert=anthropic/claude-opus-4-7
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from example_suite.retail.clone import BCClone, train_clone
from example_suite.retail.env import RetailEnvironment
from example_suite.retail.expert import ScriptedExpert
from example_suite.retail.user import ScriptedCustomer
from pytest_bclone.agents.base import Agent
from pytest_bclone.records import Trajectory

CLONE_PREFIX = "bc-clone@"
"""``bc-clone@v7`` (dataset ``retail``) or ``bc-clone@NAME@v7``: a clone trained on that version."""
EXPERT_SPEC = "scripted-expert"
"""The scripted expert acting live (it reproduces the recorded expert action for action)."""


@lru_cache(maxsize=4)
def trained_clone(root: str, base_dir: str, ref: str, name: str) -> BCClone:
    """Train (once per process and version) a clone on the train split of dataset version ``ref``."""
    from pytest_bclone.dataset.store import DatasetStore  # pyarrow: only when a clone is asked for

    version = DatasetStore(root, base_dir, "ini bclone_dataset_root").load(ref, source=f"--bclone-clone={name}")
    return train_clone(version.select("train"), name)


# optionalhook: the suite still loads under `pytest -p no:bclone`; its gate tests then fail with a
# message saying how to activate the gate (a gate must never pass by being switched off).
@pytest.hookimpl(optionalhook=True)
def pytest_bclone_make_agent(role: str, spec: str, config: pytest.Config) -> Agent | None:
    """``bc-clone@VERSION`` -> the behaviour-cloned clone; ``scripted-expert`` -> the live expert."""
    if spec == EXPERT_SPEC:
        return ScriptedExpert()
    if spec.startswith(CLONE_PREFIX):
        ref = spec.removeprefix(CLONE_PREFIX)
        ref = ref if "@" in ref else f"retail@{ref}"
        root = config.getoption("bclone_dataset_root") or config.getini("bclone_dataset_root") or "bclone_datasets"
        return trained_clone(str(root), str(config.rootpath), ref, spec)
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_bclone_make_user(trajectory: Trajectory, config: pytest.Config) -> ScriptedCustomer | None:
    """Rollout mode: the customer the dataset was recorded with answers whatever the agent asks (the
    recorded turns would answer the expert's questions, in the expert's order). An explicit
    ``--bclone-user`` (``recorded``, a model, ``python:...``) wins."""
    if config.getoption("bclone_user") or config.getini("bclone_user"):
        return None
    return ScriptedCustomer.for_trajectory(trajectory)


@pytest.hookimpl(optionalhook=True)
def pytest_bclone_make_environment(trajectory: Trajectory) -> RetailEnvironment:
    """Rollout mode: the trajectory's toolset and store, checked against its gold outcome."""
    return RetailEnvironment.for_trajectory(trajectory)
