"""The monitor's numpy maths against scikit-learn (and the trainer's ECE) on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from stream_worker.monitor import performance as perf
from trainer.evaluate import expected_calibration_error as trainer_ece

ADULT_TEST_ROWS = 16_281


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities shaped like the model's (mean ≈ 0.24) and labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.2, 0.63, n)
    y = (rng.random(n) < p).astype(np.float64)
    return y, p


@pytest.fixture(scope="module")
def fixed() -> tuple[np.ndarray, np.ndarray]:
    return calibrated(3000, seed=7)


# ------------------------------------------------------------------------------ ROC-AUC


def test_roc_auc_equals_sklearn(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = fixed
    assert perf.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_roc_auc_averages_ties_like_sklearn(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = fixed
    coarse = np.round(p, 1)  # eleven distinct values: ties everywhere, across both classes
    assert np.unique(coarse).size <= 11
    assert perf.roc_auc(y, coarse) == pytest.approx(roc_auc_score(y, coarse), abs=1e-12)
    # All scores tied: no ranking information at all.
    assert perf.roc_auc(y, np.full(y.size, 0.3)) == pytest.approx(0.5)


def test_roc_auc_small_cases_by_hand() -> None:
    assert perf.roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert perf.roc_auc([0, 1], [0.8, 0.2]) == 0.0
    # 2 positives x 2 negatives: pairs (pos, neg) won 3, tied 1 of 4 -> (3 + 0.5) / 4.
    assert perf.roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)


def test_roc_auc_is_nan_with_one_class_or_none() -> None:
    assert math.isnan(perf.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(perf.roc_auc([0, 0], [0.2, 0.5]))
    assert math.isnan(perf.roc_auc([], []))


def test_average_ranks() -> None:
    np.testing.assert_allclose(perf.average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


# ------------------------------------------------------------------- log loss, Brier


def test_log_loss_equals_sklearn(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = fixed
    assert perf.log_loss(y, p) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_log_loss_clips_certain_mistakes_like_sklearn() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.0, 1.0, 1.0, 0.0])  # two certain mistakes, two certain hits
    ours = perf.log_loss(y, p)
    assert math.isfinite(ours)
    assert ours == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), rel=1e-9)
    assert ours == pytest.approx(-math.log(perf.EPS) / 2, rel=1e-9)


def test_brier_equals_sklearn(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = fixed
    assert perf.brier(y, p) == pytest.approx(brier_score_loss(y, p), rel=1e-12)


def test_empty_inputs_give_nan_and_mismatched_lengths_raise() -> None:
    for fn in (perf.log_loss, perf.brier, perf.calibration_error):
        assert math.isnan(fn([], []))
    assert math.isnan(perf.accuracy([], [], 0.5))
    assert math.isnan(perf.estimated_accuracy([], 0.5))
    with pytest.raises(ValueError, match="differ in length"):
        perf.brier([0, 1], [0.5])


# -------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("threshold", [0.1, 0.3915, 0.5, 0.9])
def test_accuracy_at_a_threshold_equals_sklearn(
    fixed: tuple[np.ndarray, np.ndarray], threshold: float
) -> None:
    y, p = fixed
    expected = accuracy_score(y, (p >= threshold).astype(np.float64))
    assert perf.accuracy(y, p, threshold) == pytest.approx(expected, abs=1e-12)


def test_accuracy_uses_each_records_own_threshold() -> None:
    y = np.array([1.0, 1.0, 0.0, 0.0])
    p = np.array([0.4, 0.4, 0.45, 0.45])
    # At 0.3 both positives are right and both negatives wrong; at 0.5 the reverse.
    assert perf.accuracy(y, p, 0.3) == 0.5
    assert perf.accuracy(y, p, np.array([0.3, 0.3, 0.5, 0.5])) == 1.0
    # p == threshold predicts positive (the worker's rule).
    assert perf.accuracy([1.0], [0.5], 0.5) == 1.0


# ---------------------------------------------------------------- calibration error


def test_calibration_error_by_hand() -> None:
    y = [0, 1, 1, 1]
    p = [0.05, 0.05, 0.95, 0.95]
    # bin 0: rate 0.5 vs mean 0.05 (2 records); bin 9: rate 1.0 vs 0.95 (2 records).
    assert perf.calibration_error(y, p) == pytest.approx((0.45 * 2 + 0.05 * 2) / 4)
    # 1.0 belongs to the last bin, 0.1 to the second: both are right there.
    assert perf.calibration_error([1, 0, 1], [1.0, 0.1, 0.95]) == pytest.approx(
        (abs(2 - 1.95) + abs(0 - 0.1)) / 3
    )


def test_calibration_error_equals_the_trainers_offline_ece(
    fixed: tuple[np.ndarray, np.ndarray],
) -> None:
    y, p = fixed
    edges = np.r_[p, np.linspace(0, 1, 11)]  # bin edges exactly, where conventions differ
    labels = np.r_[y, np.arange(11) % 2]
    assert perf.calibration_error(y, p) == pytest.approx(trainer_ece(y, p), abs=1e-12)
    assert perf.calibration_error(labels, edges) == pytest.approx(
        trainer_ece(labels, edges), abs=1e-12
    )


def test_calibration_error_equals_sklearn_reliability_curve(
    fixed: tuple[np.ndarray, np.ndarray],
) -> None:
    y, p = fixed  # continuous draws: no probability sits on a bin edge
    rate, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]  # calibration_curve drops empty bins
    expected = float(np.sum(counts * np.abs(rate - mean_p)) / counts.sum())
    assert perf.calibration_error(y, p) == pytest.approx(expected, abs=1e-12)


def test_calibration_error_separates_calibrated_from_overconfident() -> None:
    y, p = calibrated(ADULT_TEST_ROWS, seed=3)
    overconfident = np.where(p >= 0.5, np.sqrt(p), p**2)
    assert perf.calibration_error(y, p) < 0.02
    assert perf.calibration_error(y, overconfident) > 0.05


# --------------------------------------------------------------- estimated accuracy


def test_estimated_accuracy_by_hand() -> None:
    # positive at 0.9 -> right w.p. 0.9; negative at 0.2 -> 0.8; at the threshold -> 0.4.
    assert perf.estimated_accuracy([0.9, 0.2, 0.4], 0.4) == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    np.testing.assert_allclose(
        perf.expected_correct([0.9, 0.2, 0.4], [0.5, 0.5, 0.3]), [0.9, 0.8, 0.4]
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("threshold", [0.3915, 0.5])
def test_estimated_accuracy_within_two_points_at_adult_test_scale(
    seed: int, threshold: float
) -> None:
    """16,281 calibrated probabilities, labels ~ Bernoulli(p): the estimate is within 0.02."""
    y, p = calibrated(ADULT_TEST_ROWS, seed)
    realised = perf.accuracy(y, p, threshold)
    estimate = perf.estimated_accuracy(p, threshold)
    assert abs(estimate - realised) < 0.02, (estimate, realised)


def test_estimated_accuracy_misses_when_probabilities_are_miscalibrated() -> None:
    """The estimate rests on calibration: the same check fails for overconfident scores."""
    y, p = calibrated(ADULT_TEST_ROWS, seed=0)
    overconfident = np.where(p >= 0.5, np.sqrt(p), p**2)
    gap = perf.estimated_accuracy(overconfident, 0.5) - perf.accuracy(y, overconfident, 0.5)
    assert gap > 0.02


def test_performance_of_bundles_every_figure(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = fixed
    result = perf.Performance.of(y, p, 0.4)
    assert result.records == y.size
    assert result.roc_auc == pytest.approx(roc_auc_score(y, p))
    assert result.accuracy == pytest.approx(accuracy_score(y, p >= 0.4))
    assert result.estimated_accuracy == pytest.approx(perf.estimated_accuracy(p, 0.4))
    none = perf.Performance.of([], [], 0.4)
    assert none.records == 0
    assert math.isnan(none.roc_auc)
    assert math.isnan(none.calibration_error)
