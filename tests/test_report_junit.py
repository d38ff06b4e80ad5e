"""JUnit properties of a parity test, and that pytest's --junitxml writes them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pytest_bclone.report import junit_properties
from pytest_bclone.report.junit import JUNIT_FIELDS

from .test_report_fixtures import empty_summary, load_summary


def test_properties_carry_the_figures_of_one_parity_test() -> None:
    record = load_summary()["verdicts"][1]  # long_tail / trajectory_score
    props = dict(junit_properties(record))
    assert props == {
        "bclone_cohort": "long_tail", "bclone_metric": "trajectory_score", "bclone_mode": "step",
        "bclone_n": "1873", "bclone_n_clusters": "412", "bclone_expert": "0.874", "bclone_clone": "0.833",
        "bclone_diff": "-4.1", "bclone_ci_low": "-6", "bclone_ci_high": "-2.3", "bclone_confidence": "0.95",
        "bclone_within": "3", "bclone_status": "fail", "bclone_reason": record["reason"], "bclone_n_needed": "",
        "bclone_regressions": "", "bclone_errors": "0", "bclone_total": "1873", "bclone_error_rate": "0",
        "bclone_p_value": "0.91", "bclone_p_adjusted": "", "bclone_on_fail": "route",
        "bclone_action": "route to expert",
    }
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in junit_properties(record))


def test_every_property_is_present_even_when_unknown() -> None:
    props = junit_properties(empty_summary()["verdicts"][0])
    assert [n for n, _ in props] == [n for n, _ in JUNIT_FIELDS]
    assert dict(props)["bclone_diff"] == "" and dict(props)["bclone_n"] == "0"
    assert [n for n, _ in junit_properties({})] == [n for n, _ in JUNIT_FIELDS]


def test_float_noise_is_trimmed() -> None:
    props = dict(junit_properties({"diff": -4.100000000000001, "n": 12.0, "holm_adjusted": True}))
    assert props["bclone_diff"] == "-4.1" and props["bclone_n"] == "12"


def test_pytest_junitxml_writes_the_properties(pytester: pytest.Pytester) -> None:
    record = load_summary()["verdicts"][1]
    pytester.makepyfile(
        f"""
        from pytest_bclone.report import junit_properties

        def test_long_tail(request):
            request.node.user_properties.extend(junit_properties({record!r}))
        """
    )
    result = pytester.runpytest_inprocess("--junitxml=junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    tree = ET.parse(pytester.path / "junit.xml")
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert props["bclone_cohort"] == "long_tail" and props["bclone_diff"] == "-4.1"
    assert props["bclone_ci_low"] == "-6" and props["bclone_status"] == "fail"
