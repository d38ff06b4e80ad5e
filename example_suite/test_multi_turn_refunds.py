"""Multi-turn refunds: returns and damaged-item refunds spread over several customer turns.

Release table:
| Multi-turn refunds | Within 2 points | TaskCompletion + step count | Sample more multi-turn rows for next clone |
Checked in rollout mode: each agent drives the whole conversation in the retail environment (the
customer's turns are replayed), so a wrong or dead tool call changes what happens next.
"""

import pytest

from pytest_bclone import assert_parity

pytestmark = pytest.mark.bclone(cohort="multi_turn_refunds", mode="rollout")


def test_multi_turn_refunds_task_completion() -> None:
    assert_parity(cohort="multi_turn_refunds", within=2, metric="task_completion", mode="rollout")


def test_multi_turn_refunds_step_count() -> None:
    assert_parity(cohort="multi_turn_refunds", within=2, metric="step_count", mode="rollout")
