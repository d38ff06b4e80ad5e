"""Common intents (order status, cancellation, address change).

Release table: | Common intents | Within 1 point | TaskCompletion | Retrain with more common-intent rows |
"""

import pytest

from pytest_bclone import assert_parity

pytestmark = pytest.mark.bclone(cohort="common_intents")


def test_common_intents_task_completion() -> None:
    # metric: task_completion (pytest.ini bclone_cohort_metrics); a miss blocks the release
    # (pytest.ini bclone_policy: common_intents = block | retrain ...)
    assert_parity(cohort="common_intents", within=1)
