"""Unit tests for trainer.evaluate: threshold choice, metrics and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from trainer.evaluate import (
    METRIC_NAMES,
    PLOT_FILENAMES,
    best_f1_threshold,
    classification_metrics,
    expected_calibration_error,
    save_plots,
    top_features,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _skewed_sample(
    rng: np.random.Generator, n: int
) -> tuple[NDArray[np.int_], NDArray[np.float64]]:
    """10 % positives, scores informative but shrunk toward 0, so 0.5 predicts too few."""
    y = (rng.random(n) < 0.1).astype(np.int_)
    logits = rng.normal(loc=np.where(y == 1, 1.5, -1.5), scale=1.0) - 2.5
    return y, 1.0 / (1.0 + np.exp(-logits))


# --- best_f1_threshold -------------------------------------------------------------------


def test_best_f1_threshold_hand_made_example() -> None:
    # Candidates: 0.1 → F1 2/3, 0.35 → F1 0.8 (tp 2, fp 1), 0.4 → 0.5, 0.8 → 2/3.
    y = np.array([0, 0, 1, 1])
    proba = np.array([0.1, 0.4, 0.35, 0.8])
    assert best_f1_threshold(y, proba) == pytest.approx(0.35)


def test_best_f1_threshold_breaks_ties_toward_larger_threshold() -> None:
    # Thresholds 0.2 (p=0.5, r=1) and 0.8 (p=1, r=0.5) both give F1 = 2/3.
    y = np.array([1, 0, 0, 1])
    proba = np.array([0.2, 0.4, 0.6, 0.8])
    threshold = best_f1_threshold(y, proba)
    assert threshold == pytest.approx(0.8)
    assert f1_score(y, proba >= threshold) == pytest.approx(2 / 3)


def test_best_f1_threshold_is_the_maximum_over_all_candidates() -> None:
    rng = np.random.default_rng(7)
    y, proba = _skewed_sample(rng, 2_000)
    threshold = best_f1_threshold(y, proba)
    best = f1_score(y, proba >= threshold)
    candidates = np.unique(proba)
    brute_force = max(f1_score(y, proba >= t) for t in candidates[::7])
    assert best >= brute_force - 1e-12
    assert 0.0 < threshold < 1.0


def test_best_f1_threshold_beats_half_on_held_out_skewed_data() -> None:
    rng = np.random.default_rng(0)
    y_val, p_val = _skewed_sample(rng, 5_000)
    y_test, p_test = _skewed_sample(rng, 5_000)
    threshold = best_f1_threshold(y_val, p_val)
    assert threshold < 0.5
    assert f1_score(y_test, p_test >= threshold) > f1_score(y_test, p_test >= 0.5) + 0.05


def test_best_f1_threshold_stays_inside_open_interval_for_extreme_scores() -> None:
    y = np.array([0, 1, 1])
    proba = np.array([0.0, 1.0, 1.0])
    threshold = best_f1_threshold(y, proba)
    assert 0.0 < threshold < 1.0
    assert f1_score(y, proba >= threshold) == 1.0


@pytest.mark.parametrize(
    ("y", "proba"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.9]),  # one class only
        ([0, 1, 2], [0.2, 0.5, 0.9]),  # not binary
        ([0, 1, 1], [0.2, 0.5]),  # length mismatch
        ([0, 1, 1], [0.2, 1.5, 0.9]),  # not a probability
        ([0, 1, 1], [0.2, np.nan, 0.9]),
    ],
)
def test_best_f1_threshold_rejects_bad_input(y: list[int], proba: list[float]) -> None:
    with pytest.raises(ValueError, match=r"y_true|proba"):
        best_f1_threshold(np.array(y), np.array(proba))


# --- classification_metrics --------------------------------------------------------------


def test_metrics_have_exactly_the_documented_keys() -> None:
    metrics = classification_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.6, 0.4]), 0.5)
    assert tuple(metrics) == METRIC_NAMES
    assert set(metrics) == {
        "accuracy",
        "precision",
        "recall",
        "f1",
        "accuracy_at_0_5",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "positive_rate",
        "ece",
    }
    assert all(type(value) is float for value in metrics.values())


def test_metrics_match_sklearn_on_a_known_case() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    proba = np.array([0.05, 0.2, 0.3, 0.45, 0.4, 0.55, 0.9, 0.7, 0.35, 0.1])
    threshold = 0.38
    predicted = proba >= threshold  # 0.45, 0.4, 0.55, 0.9, 0.7 → tp 3, fp 2, fn 1
    metrics = classification_metrics(y, proba, threshold)

    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["positive_rate"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(y, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(y, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(y, predicted))
    assert metrics["accuracy_at_0_5"] == pytest.approx(accuracy_score(y, proba >= 0.5))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, proba))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, proba))
    assert metrics["log_loss"] == pytest.approx(log_loss(y, proba))
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, proba))


def test_threshold_moves_threshold_metrics_but_not_ranking_metrics() -> None:
    rng = np.random.default_rng(3)
    y, proba = _skewed_sample(rng, 1_000)
    low = classification_metrics(y, proba, 0.05)
    high = classification_metrics(y, proba, 0.6)
    assert low["positive_rate"] > high["positive_rate"]
    assert low["recall"] > high["recall"]
    for name in ("accuracy_at_0_5", "roc_auc", "pr_auc", "log_loss", "brier", "ece"):
        assert low[name] == high[name]


def test_perfect_classifier() -> None:
    y = np.array([0, 1, 1, 0, 1])
    metrics = classification_metrics(y, y.astype(float), 0.5)
    assert metrics["roc_auc"] == 1.0
    assert metrics["pr_auc"] == 1.0
    assert metrics["brier"] == 0.0
    assert metrics["ece"] == 0.0
    assert metrics["accuracy"] == metrics["f1"] == metrics["accuracy_at_0_5"] == 1.0
    assert metrics["log_loss"] < 1e-6


def test_metrics_accept_boolean_labels() -> None:
    y = np.array([False, True, True, False])
    proba = np.array([0.2, 0.7, 0.4, 0.6])
    assert classification_metrics(y, proba, 0.5) == classification_metrics(
        y.astype(int), proba, 0.5
    )


# --- expected calibration error ----------------------------------------------------------


def test_ece_hand_computed() -> None:
    # Bin [0.1, 0.2): scores 0.1, 0.1, labels 0, 1 → |0.5 - 0.1| = 0.4, weight 1/2.
    # Bin [0.9, 1.0]: scores 0.9, 1.0, labels 1, 1 → |1 - 0.95| = 0.05, weight 1/2.
    y = np.array([0, 1, 1, 1])
    proba = np.array([0.1, 0.1, 0.9, 1.0])
    assert expected_calibration_error(y, proba) == pytest.approx(0.5 * 0.4 + 0.5 * 0.05)


def test_ece_small_for_calibrated_and_large_for_miscalibrated() -> None:
    rng = np.random.default_rng(11)
    proba = rng.random(50_000)
    y = (rng.random(proba.size) < proba).astype(np.int_)
    calibrated = classification_metrics(y, proba, 0.5)["ece"]
    overconfident = expected_calibration_error(y, np.clip(2 * proba - 0.5, 0, 1))
    assert calibrated < 0.01
    assert overconfident > 0.1


# --- plots -------------------------------------------------------------------------------


def test_save_plots_writes_non_empty_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    y, proba = _skewed_sample(rng, 3_000)
    importance = {f"feature_{i:02d}": float(i) for i in range(30)}
    out_dir = tmp_path / "nested" / "plots"

    paths = save_plots(y, proba, best_f1_threshold(y, proba), importance, out_dir)

    assert [path.name for path in paths] == list(PLOT_FILENAMES)
    assert {path.name for path in out_dir.iterdir()} == set(PLOT_FILENAMES)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC), path.name
        assert len(data) > 5_000, path.name


def test_save_plots_handles_empty_importance(tmp_path: Path) -> None:
    paths = save_plots(np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.4, 0.6]), 0.5, {}, tmp_path)
    importance_png = paths[PLOT_FILENAMES.index("feature_importance.png")]
    assert importance_png.read_bytes().startswith(PNG_MAGIC)


def test_top_features_keeps_the_largest_gains_in_order() -> None:
    importance = {f"f{i}": float(i) for i in range(25)}
    ranked = top_features(importance, k=20)
    assert len(ranked) == 20
    assert ranked[0] == ("f24", 24.0)
    assert ranked[-1] == ("f5", 5.0)
    assert [value for _, value in ranked] == sorted((v for _, v in ranked), reverse=True)
