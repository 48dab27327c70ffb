"""The drift reference: how each feature and the score were distributed when the model was made.

Numeric features are binned at the training deciles, categoricals by vocabulary code (plus one
bin for missing/unseen), scores at the deciles of held-out validation scores. The worker bins
live traffic the same way and compares with :func:`psi`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.model.features import EncodedBatch, FeatureEncoder

PSI_EPSILON = 1e-4
N_QUANTILE_BINS = 10


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected`` (both proportions or counts).

    Empty bins are floored at ``epsilon`` so a category that appears only on one side adds a
    large but finite term instead of infinity.
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(values: npt.ArrayLike, n_bins: int = N_QUANTILE_BINS) -> list[float]:
    """Interior bin edges at the quantiles, de-duplicated.

    Heavy ties collapse bins: capital gain is 0 for 92 % of applicants, so all its deciles
    are 0 and a plain decile binning could never see it drift. When ties leave fewer than
    half the bins, the tied value gets a bin of its own and the values above it are binned
    at their quartiles.
    """
    arr = np.asarray(values, dtype=np.float64)
    qs = np.quantile(arr, np.linspace(0, 1, n_bins + 1)[1:-1])
    edges = {float(q) for q in qs}
    if len(edges) < n_bins // 2:
        top = max(edges)
        tail = arr[arr > top]
        if tail.size:
            edges.add(float(np.nextafter(top, np.inf)))  # [top, top⁺) holds the tied value only
            edges.update(float(q) for q in np.quantile(tail, [0.25, 0.5, 0.75]))
    return sorted(edges)


def bin_numeric(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Bin index in ``0..len(edges)``; a value equal to an edge falls in the upper bin."""
    return np.searchsorted(np.asarray(edges), np.asarray(values), side="right")


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature bin edges / bin counts and the score distribution of the reference data."""

    numeric_edges: dict[str, list[float]]
    numeric_props: dict[str, list[float]]
    categorical_props: dict[str, list[float]]  # vocabulary order, last bin = missing/unseen
    score_edges: list[float]
    score_props: list[float]

    @property
    def features(self) -> list[str]:
        return [*self.numeric_edges, *self.categorical_props]

    def n_bins(self, feature: str) -> int:
        if feature in self.numeric_edges:
            return len(self.numeric_edges[feature]) + 1
        return len(self.categorical_props[feature])

    def feature_bins(
        self, encoder: FeatureEncoder, batch: EncodedBatch
    ) -> dict[str, npt.NDArray[np.intp]]:
        """Bin every record of an encoded batch, per feature (vectorised)."""
        out: dict[str, npt.NDArray[np.intp]] = {}
        for i, col in enumerate(encoder.numeric):
            out[col] = bin_numeric(batch.numeric[:, i], self.numeric_edges[col])
        for j, col in enumerate(encoder.categorical):
            codes = batch.codes[:, j].astype(np.intp)
            missing_bin = len(self.categorical_props[col]) - 1
            out[col] = np.where(codes < 0, missing_bin, codes)
        return out

    def score_bins(self, scores: npt.ArrayLike) -> npt.NDArray[np.intp]:
        return bin_numeric(scores, self.score_edges)

    @classmethod
    def build(
        cls, encoder: FeatureEncoder, batch: EncodedBatch, scores: npt.ArrayLike
    ) -> ReferenceProfile:
        numeric_edges: dict[str, list[float]] = {}
        numeric_props: dict[str, list[float]] = {}
        for i, col in enumerate(encoder.numeric):
            edges = quantile_edges(batch.numeric[:, i])
            counts = np.bincount(bin_numeric(batch.numeric[:, i], edges), minlength=len(edges) + 1)
            numeric_edges[col] = edges
            numeric_props[col] = _proportions(counts)
        categorical_props: dict[str, list[float]] = {}
        for j, col in enumerate(encoder.categorical):
            size = len(encoder.vocabularies[col]) + 1
            codes = batch.codes[:, j].astype(np.intp)
            counts = np.bincount(np.where(codes < 0, size - 1, codes), minlength=size)
            categorical_props[col] = _proportions(counts)
        score_edges = quantile_edges(scores)
        score_counts = np.bincount(bin_numeric(scores, score_edges), minlength=len(score_edges) + 1)
        return cls(
            numeric_edges, numeric_props, categorical_props, score_edges, _proportions(score_counts)
        )

    def expected(self, feature: str) -> list[float]:
        if feature in self.numeric_props:
            return self.numeric_props[feature]
        return self.categorical_props[feature]

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric_edges": self.numeric_edges,
            "numeric_props": self.numeric_props,
            "categorical_props": self.categorical_props,
            "score_edges": self.score_edges,
            "score_props": self.score_props,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        return cls(
            {k: list(v) for k, v in data["numeric_edges"].items()},
            {k: list(v) for k, v in data["numeric_props"].items()},
            {k: list(v) for k, v in data["categorical_props"].items()},
            list(data["score_edges"]),
            list(data["score_props"]),
        )


def _proportions(counts: npt.NDArray[np.int64]) -> list[float]:
    total = counts.sum()
    return [float(c) / float(total) for c in counts] if total else [0.0] * len(counts)
