"""Claims check verdicts on runs with known values (real store, no figures)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rtlab.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_COMPARABLE,
    NOT_SUPPORTED,
    SUPPORTED,
    check_claim,
    verdict_of,
)
from rtlab.report.load import load_experiment
from rtlab.report.stats import power_of
from rtlab.spec import Claim
from tests.helpers.report_store import KNOWN, Store


@pytest.fixture(scope="module")
def runs(store: Store):
    return load_experiment("known", store.uri).runs


def val(arm: str) -> np.ndarray:
    return np.array([v[1] for v in KNOWN[arm]])


def welch_pct_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    res = sps.ttest_ind(a, b, equal_var=False)
    low, high = res.confidence_interval(0.95)
    scale = 100 / b.mean()
    return 100 * (a.mean() - b.mean()) / b.mean(), low * scale, high * scale


def test_blog_claim_with_numbers_is_judged_by_direction_and_its_size_reported(runs) -> None:
    claim = Claim(metric="val_loss", arm="reason1", baseline_arm="baseline", expect="lower",
                  value=0.401, baseline_value=0.621, source="blog")
    verdict = check_claim(claim, runs, "baseline")
    measured, low, high = welch_pct_interval(val("reason1"), val("baseline"))
    assert high < 0  # the known values make reason1 lower beyond doubt
    assert verdict.verdict == SUPPORTED
    assert verdict.claimed_change_pct == pytest.approx(100 * (0.401 - 0.621) / 0.621)
    assert verdict.measured_change_pct == pytest.approx(measured)
    assert f"[{low:+.2f}, {high:+.2f}]" in verdict.why
    assert "lies outside it (the measured effect is smaller)" in verdict.why
    assert "absolute losses from the source are not compared" in verdict.compared


def test_claim_in_the_wrong_direction_is_contradicted(runs) -> None:
    claim = {"metric": "val_loss", "arm": "myopic", "baseline_arm": "baseline",
             "expect": "lower", "source": "a hope"}
    verdict = check_claim(claim, runs, "baseline")
    assert verdict.verdict == CONTRADICTED and "against the claim" in verdict.why
    assert check_claim({**claim, "expect": "higher"}, runs, "baseline").verdict == SUPPORTED


@pytest.mark.parametrize(
    ("low", "high", "expect", "detectable", "claimed", "verdict"),
    [
        # the interval contains 0: the power decides
        (-2.0, 1.0, "lower", 3.0, -2.0, INCONCLUSIVE),  # could not see the claimed 2%
        (-2.0, 1.0, "lower", 1.5, -2.0, NOT_SUPPORTED),  # could see 2%, saw nothing
        (-2.0, 1.0, "lower", 2.0, -2.0, NOT_SUPPORTED),  # detectable == claimed: it could see it
        (-2.0, 1.0, "higher", 3.0, 2.0, INCONCLUSIVE),  # the claimed size counts, not its sign
        (-0.5, 0.5, "lower", 1.2, math.nan, INCONCLUSIVE),  # no size claimed: 1% is the bar
        (-0.5, 0.5, "lower", 0.8, math.nan, NOT_SUPPORTED),
        (0.0, 0.0, "lower", 0.0, math.nan, NOT_SUPPORTED),  # exact zero difference
        # the interval excludes 0: the direction decides, whatever the power
        (-3.0, -1.0, "lower", 50.0, -40.0, SUPPORTED),
        (1.0, 3.0, "lower", 50.0, -40.0, CONTRADICTED),
        (1.0, 3.0, "higher", 0.5, math.nan, SUPPORTED),
        (-3.0, -1.0, "higher", 0.5, math.nan, CONTRADICTED),
    ],
)
def test_inconclusive_exactly_when_the_interval_has_0_and_the_claim_is_below_detection(
    low: float, high: float, expect: str, detectable: float, claimed: float, verdict: str
) -> None:
    assert verdict_of(low, high, expect, detectable, claimed) == verdict


def test_interval_containing_zero_is_inconclusive_at_this_power(runs) -> None:
    _, low, high = welch_pct_interval(val("same"), val("baseline"))
    assert low < 0 < high
    detectable = power_of(val("same"), val("baseline")).detectable_pct
    assert detectable > 1.0  # three seeds of this spread cannot see 1%
    verdict = check_claim({"metric": "val_loss", "arm": "same", "baseline_arm": "baseline",
                           "expect": "lower"}, runs, "baseline")
    assert verdict.verdict == INCONCLUSIVE and "contains 0" in verdict.why
    assert f"{detectable:.2f}%, more than 1% (no size claimed)" in verdict.why


def test_a_detectable_claim_not_seen_is_not_supported(runs) -> None:
    detectable = power_of(val("same"), val("baseline")).detectable_pct
    claimed_value = 1.0 * (1 - 2 * detectable / 100)  # claims twice the detectable drop
    verdict = check_claim({"metric": "val_loss", "arm": "same", "baseline_arm": "baseline",
                           "value": claimed_value, "baseline_value": 1.0}, runs, "baseline")
    assert verdict.verdict == NOT_SUPPORTED
    assert f"{detectable:.2f}%, no more than the {2 * detectable:.2f}% claimed" in verdict.why


def test_unstated_loss_that_differs_between_train_and_val_is_not_comparable(runs) -> None:
    # 'same' is clearly lower on train loss but not on val loss: the answer depends on which
    claim = Claim(metric="loss", arm="same", value=0.401, baseline_value=0.621, source="blog")
    assert claim.expect is None  # the direction comes from the numbers
    verdict = check_claim(claim, runs, "baseline")
    assert verdict.verdict == NOT_COMPARABLE
    assert "train vs validation loss" in verdict.why
    assert "does not say train or validation loss" in verdict.compared


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ({"metric": "val_loss", "arm": "single", "expect": "higher"}, "one seed on a side"),
        ({"metric": "val_loss", "arm": "absent", "expect": "lower"}, "'absent' has no runs"),
        ({"metric": "val_loss", "arm": "reason1"}, "no direction"),
    ],
)
def test_claims_that_cannot_be_tested_say_why(runs, claim: dict, reason: str) -> None:
    verdict = check_claim(claim, runs, "baseline")
    assert verdict.verdict == NOT_COMPARABLE and reason in verdict.why
