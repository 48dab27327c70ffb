"""Evaluation of a binary classifier's probabilities: threshold choice, metrics and plots.

Pure functions over numpy arrays; nothing happens at import. The decision rule everywhere is
``proba >= threshold`` → positive, which is the convention of
:func:`sklearn.metrics.precision_recall_curve`, so the threshold chosen on validation data
reproduces exactly the F1 that chose it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

METRIC_NAMES: tuple[str, ...] = (
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
)
"""The keys of :func:`classification_metrics`, in order."""

PLOT_FILENAMES: tuple[str, ...] = (
    "roc_curve.png",
    "pr_curve.png",
    "confusion_matrix.png",
    "calibration_curve.png",
    "feature_importance.png",
)
"""The files written by :func:`save_plots`, in order."""

CLASS_LABELS: tuple[str, str] = ("<=50K", ">50K")

# A threshold of exactly 0 or 1 would make the "(0, 1)" promise false; these bounds are far
# below the resolution of float32 model scores, so clipping never changes a decision there.
_THRESHOLD_EPS = 1e-12
_PLOT_DPI = 100


def _as_labels(y_true: ArrayLike) -> NDArray[np.int_]:
    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        return labels.astype(np.int_)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y_true must contain only 0/1 (or booleans)")
    return labels.astype(np.int_)


def _as_proba(proba: ArrayLike, n: int) -> NDArray[np.float64]:
    scores = np.asarray(proba, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"proba must have shape ({n},), got {scores.shape}")
    if not np.isfinite(scores).all() or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError("proba must be finite probabilities in [0, 1]")
    return scores


def _validated(
    y_true: ArrayLike, proba: ArrayLike, *, need_both_classes: bool
) -> tuple[NDArray[np.int_], NDArray[np.float64]]:
    labels = _as_labels(y_true)
    if labels.size == 0:
        raise ValueError("y_true is empty")
    scores = _as_proba(proba, labels.size)
    if need_both_classes and np.unique(labels).size < 2:
        raise ValueError("y_true must contain both classes")
    return labels, scores


def best_f1_threshold(y_true: ArrayLike, proba: ArrayLike) -> float:
    """Return the threshold that maximises F1 of ``proba >= threshold`` on this data.

    Computed exactly over every distinct score from the precision-recall curve; among
    thresholds with equal F1 (to 1e-12) the larger one wins, which predicts fewer positives
    for the same F1. Meant for validation data, never the test split.
    """
    labels, scores = _validated(y_true, proba, need_both_classes=True)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold; drop it.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2.0 * precision * recall,
        denominator,
        out=np.zeros_like(denominator),
        where=denominator > 0,
    )
    # thresholds increase, so the last index within tolerance of the maximum is the largest.
    best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])
    return float(np.clip(thresholds[best], _THRESHOLD_EPS, 1.0 - _THRESHOLD_EPS))


def expected_calibration_error(y_true: ArrayLike, proba: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1].

    The weighted mean, by bin size, of ``|observed positive rate - mean probability|``;
    a probability of exactly 1.0 falls in the last bin.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    labels, scores = _validated(y_true, proba, need_both_classes=False)
    bins = np.minimum((scores * n_bins).astype(np.int_), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    positives = np.bincount(bins, weights=labels, minlength=n_bins)
    score_sums = np.bincount(bins, weights=scores, minlength=n_bins)
    return float(np.abs(positives - score_sums).sum() / counts.sum())


def classification_metrics(
    y_true: ArrayLike, proba: ArrayLike, threshold: float
) -> dict[str, float]:
    """Threshold and ranking metrics of ``proba`` against 0/1 ``y_true``.

    Keys are :data:`METRIC_NAMES`; ``accuracy``/``precision``/``recall``/``f1``/
    ``positive_rate`` use ``proba >= threshold``, ``accuracy_at_0_5`` uses 0.5.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    labels, scores = _validated(y_true, proba, need_both_classes=True)
    predicted = (scores >= threshold).astype(np.int_)
    metrics = {
        "accuracy": accuracy_score(labels, predicted),
        "precision": precision_score(labels, predicted, zero_division=0),
        "recall": recall_score(labels, predicted, zero_division=0),
        "f1": f1_score(labels, predicted, zero_division=0),
        "accuracy_at_0_5": accuracy_score(labels, (scores >= 0.5).astype(np.int_)),
        "roc_auc": roc_auc_score(labels, scores),
        "pr_auc": average_precision_score(labels, scores),
        "log_loss": log_loss(labels, scores, labels=[0, 1]),
        "brier": brier_score_loss(labels, scores),
        "positive_rate": predicted.mean(),
        "ece": expected_calibration_error(labels, scores),
    }
    return {name: float(metrics[name]) for name in METRIC_NAMES}


def top_features(feature_importance: dict[str, float], k: int = 20) -> list[tuple[str, float]]:
    """The ``k`` most important features, largest first (ties by name for stable output)."""
    ranked = sorted(feature_importance.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:k]


def _save(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path, format="png", dpi=_PLOT_DPI)
    finally:
        # Figures built without pyplot are not tracked globally; clearing drops the artists now.
        fig.clear()
    return path


def _curve_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    return fig, fig.add_subplot()


def _finish_unit_square(ax: Any, legend_loc: str) -> None:
    """Both axes on [0, 1] (a little headroom on y), legend, light grid."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc=legend_loc)
    ax.grid(alpha=0.3)


def _roc_figure(labels: NDArray[np.int_], scores: NDArray[np.float64]) -> Figure:
    fpr, tpr, _ = roc_curve(labels, scores)
    auc = roc_auc_score(labels, scores)
    fig, ax = _curve_figure()
    ax.plot(fpr, tpr, label=f"model (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve")
    _finish_unit_square(ax, legend_loc="lower right")
    return fig


def _pr_figure(labels: NDArray[np.int_], scores: NDArray[np.float64], threshold: float) -> Figure:
    precision, recall, _ = precision_recall_curve(labels, scores)
    ap = average_precision_score(labels, scores)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    chosen_precision = tp / max(int(predicted.sum()), 1)
    chosen_recall = tp / max(int(labels.sum()), 1)
    fig, ax = _curve_figure()
    ax.step(recall, precision, where="post", label=f"model (AP = {ap:.4f})")
    ax.axhline(labels.mean(), linestyle="--", color="grey", label="base rate")
    ax.scatter(
        [chosen_recall],
        [chosen_precision],
        color="tab:red",
        zorder=3,
        label=f"threshold {threshold:.3f}",
    )
    ax.set(xlabel="Recall", ylabel="Precision", title="Precision-recall curve")
    _finish_unit_square(ax, legend_loc="lower left")
    return fig


def _confusion_figure(
    labels: NDArray[np.int_], scores: NDArray[np.float64], threshold: float
) -> Figure:
    matrix = confusion_matrix(labels, (scores >= threshold).astype(np.int_), labels=[0, 1])
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    midpoint = matrix.max() / 2.0
    for (row, col), count in np.ndenumerate(matrix):
        share = count / matrix.sum()
        ax.text(
            col,
            row,
            f"{count:,}\n({share:.1%})",
            ha="center",
            va="center",
            color="white" if count > midpoint else "black",
        )
    ax.set_xticks([0, 1], labels=list(CLASS_LABELS))
    ax.set_yticks([0, 1], labels=list(CLASS_LABELS))
    ax.set(xlabel="Predicted", ylabel="Actual", title=f"Confusion matrix at {threshold:.3f}")
    return fig


def _calibration_figure(labels: NDArray[np.int_], scores: NDArray[np.float64]) -> Figure:
    observed, predicted = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    ece = expected_calibration_error(labels, scores)
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    reliability, histogram = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    reliability.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    reliability.plot(predicted, observed, marker="o", label=f"model (ECE = {ece:.4f})")
    reliability.set(ylabel="Observed positive rate", title="Calibration (reliability diagram)")
    reliability.set_ylim(0, 1)
    reliability.legend(loc="upper left")
    reliability.grid(alpha=0.3)
    histogram.hist(scores, bins=np.linspace(0.0, 1.0, 21), color="tab:blue", alpha=0.7)
    histogram.set(xlabel="Predicted probability", ylabel="Count")
    histogram.set_xlim(0, 1)
    return fig


def _importance_figure(feature_importance: dict[str, float]) -> Figure:
    ranked = top_features(feature_importance, k=20)
    fig = Figure(figsize=(7, max(2.5, 0.3 * len(ranked) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    if ranked:
        names = [name for name, _ in reversed(ranked)]  # largest bar at the top
        values = [value for _, value in reversed(ranked)]
        ax.barh(names, values, color="tab:blue")
        ax.set(xlabel="Importance (gain)")
    else:
        ax.text(0.5, 0.5, "no feature importance available", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title(f"Feature importance (top {len(ranked)} by gain)")
    return fig


def save_plots(
    y_true: ArrayLike,
    proba: ArrayLike,
    threshold: float,
    feature_importance: dict[str, float],
    out_dir: Path,
) -> list[Path]:
    """Write the evaluation plots as PNGs in ``out_dir`` and return their paths.

    The files are :data:`PLOT_FILENAMES`, in that order; ``out_dir`` is created if needed.
    """
    labels, scores = _validated(y_true, proba, need_both_classes=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = (
        _roc_figure(labels, scores),
        _pr_figure(labels, scores, threshold),
        _confusion_figure(labels, scores, threshold),
        _calibration_figure(labels, scores),
        _importance_figure(feature_importance),
    )
    return [_save(fig, out_dir / name) for fig, name in zip(figures, PLOT_FILENAMES, strict=True)]
