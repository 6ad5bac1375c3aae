"""Claims check verdicts on runs with known values (real store, no figures)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from rtlab.report.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_COMPARABLE,
    SUPPORTED,
    check_claim,
)
from rtlab.report.load import load_experiment
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


def test_interval_containing_zero_is_inconclusive(runs) -> None:
    _, low, high = welch_pct_interval(val("same"), val("baseline"))
    assert low < 0 < high
    verdict = check_claim({"metric": "val_loss", "arm": "same", "baseline_arm": "baseline",
                           "expect": "lower"}, runs, "baseline")
    assert verdict.verdict == INCONCLUSIVE and "contains 0" in verdict.why


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
