"""Model performance from labels and probabilities, in numpy alone (no scikit-learn at runtime).

Every function takes 0/1 ``labels`` and probabilities of the positive class, as arrays of the
same length, and returns a float; NaN when the quantity is undefined (no records, or one class
only for ROC-AUC). Thresholds may be one number or one per record (each prediction carries
the threshold it was made with). The definitions match the trainer's offline report
(``trainer/evaluate.py``), so a live figure and its offline counterpart compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Probabilities are clipped to [EPS, 1 - EPS] before the logarithm, as scikit-learn does.
EPS = float(np.finfo(np.float64).eps)
CALIBRATION_BINS = 10


def _arrays(labels: npt.ArrayLike, probabilities: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    return y, p


def average_ranks(values: npt.ArrayLike) -> FloatArray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    # Start index of each run of equal values in sorted order, and the run lengths.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lengths = np.diff(np.r_[starts, x.size])
    mean_rank = starts + (lengths + 1) / 2.0  # ranks starts+1 .. starts+lengths, averaged
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(labels: npt.ArrayLike, probabilities: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U / n⁺n⁻); ties count one half; NaN if one class."""
    y, p = _arrays(labels, probabilities)
    positives = y == 1.0
    n_pos = int(positives.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(average_ranks(p)[positives].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels: npt.ArrayLike, probabilities: npt.ArrayLike, eps: float = EPS) -> float:
    """Mean negative log-likelihood, probabilities clipped to [eps, 1 - eps]."""
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        return float("nan")
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def brier(labels: npt.ArrayLike, probabilities: npt.ArrayLike) -> float:
    """Mean squared difference between probability and outcome."""
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))


def predicted_positive(
    probabilities: npt.ArrayLike, threshold: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """``p ≥ threshold``: the worker's rule for the label ``>50K``."""
    return np.asarray(probabilities, dtype=np.float64) >= np.asarray(threshold, dtype=np.float64)


def accuracy(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, threshold: npt.ArrayLike
) -> float:
    """Share of records whose thresholded prediction equals the outcome."""
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        return float("nan")
    return float(np.mean(predicted_positive(p, threshold) == (y == 1.0)))


def calibration_error(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, n_bins: int = CALIBRATION_BINS
) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of [0, 1].

    The mean over bins, weighted by each bin's record count, of |positive rate − mean
    probability|. Bin i holds [i/n, (i+1)/n); a probability of exactly 1 falls in the last bin
    (as in the trainer's ``test_ece``).
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    y, p = _arrays(labels, probabilities)
    if y.size == 0:
        return float("nan")
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    positives = np.bincount(bins, weights=y, minlength=n_bins)
    prob_sums = np.bincount(bins, weights=p, minlength=n_bins)
    # Σ_b (n_b / N) · |pos_b / n_b − sum_b / n_b| = Σ_b |pos_b − sum_b| / N
    return float(np.abs(positives - prob_sums).sum() / y.size)


def expected_correct(probabilities: npt.ArrayLike, threshold: npt.ArrayLike) -> FloatArray:
    """Per record, the probability that its prediction is right if ``p`` is calibrated.

    Predicted positive (p ≥ threshold): right with probability p; else with probability 1 − p.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    return np.where(predicted_positive(p, threshold), p, 1.0 - p)


def estimated_accuracy(probabilities: npt.ArrayLike, threshold: npt.ArrayLike) -> float:
    """Accuracy expected before any label arrives (confidence-based, as NannyML's CBPE).

    The mean of :func:`expected_correct`: unbiased for the realised accuracy when the
    probabilities are calibrated on the population scored; a gap between the two on the same
    records means the model is miscalibrated there (a sign of concept drift).
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return float("nan")
    return float(np.mean(expected_correct(p, threshold)))


@dataclass(frozen=True)
class Performance:
    """Realised performance of labelled records; every figure NaN when there are none."""

    records: int
    roc_auc: float
    log_loss: float
    brier: float
    accuracy: float
    calibration_error: float
    estimated_accuracy: float  # on the same records, for comparison with ``accuracy``

    @classmethod
    def of(
        cls, labels: npt.ArrayLike, probabilities: npt.ArrayLike, threshold: npt.ArrayLike
    ) -> Performance:
        y, p = _arrays(labels, probabilities)
        return cls(
            records=int(y.size),
            roc_auc=roc_auc(y, p),
            log_loss=log_loss(y, p),
            brier=brier(y, p),
            accuracy=accuracy(y, p, threshold),
            calibration_error=calibration_error(y, p),
            estimated_accuracy=estimated_accuracy(p, threshold),
        )
