"""Sliding-window drift: PSI of each feature and of the score against the bundle's reference.

Each feature keeps a ring buffer of the last ``window`` bin indices and the bin counts of that
window; a batch adds its bins and subtracts the ones it evicts (two ``bincount`` calls per
feature), so the cost per record is a few array operations, independent of the window size.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from trainer.model.profile import ReferenceProfile, psi

SCORE = "__score__"


class _Window:
    """Counts of the last ``size`` bin indices."""

    def __init__(self, size: int, n_bins: int) -> None:
        self.size = size
        self.n_bins = n_bins
        self.ring = np.zeros(size, dtype=np.int32)
        self.counts = np.zeros(n_bins, dtype=np.int64)
        self.pos = 0
        self.filled = 0

    def add(self, bins: npt.NDArray[np.intp]) -> None:
        n = len(bins)
        if n == 0:
            return
        if n >= self.size:
            tail = bins[-self.size :]
            self.ring[:] = tail
            self.counts = np.bincount(tail, minlength=self.n_bins).astype(np.int64)
            self.pos = 0
            self.filled = self.size
            return
        idx = (self.pos + np.arange(n)) % self.size
        evicted = idx[idx < self.filled]  # slots 0..filled-1 hold data; the ring fills in order
        if len(evicted):
            self.counts -= np.bincount(self.ring[evicted], minlength=self.n_bins)
        self.ring[idx] = bins
        self.counts += np.bincount(bins, minlength=self.n_bins)
        self.pos = int((self.pos + n) % self.size)
        self.filled = min(self.size, self.filled + n)


class DriftMonitor:
    """PSI per feature and for the score over the most recent ``window`` scored records."""

    def __init__(self, profile: ReferenceProfile, window: int) -> None:
        self.profile = profile
        self.window = window
        self._features = {f: _Window(window, profile.n_bins(f)) for f in profile.features}
        self._score = _Window(window, len(profile.score_props))

    @property
    def observed(self) -> int:
        return self._score.filled

    def update(
        self, feature_bins: Mapping[str, npt.NDArray[np.intp]], scores: npt.ArrayLike
    ) -> None:
        for feature, bins in feature_bins.items():
            self._features[feature].add(bins)
        self._score.add(self.profile.score_bins(scores))

    def feature_psi(self) -> dict[str, float]:
        return {f: psi(self.profile.expected(f), w.counts) for f, w in self._features.items()}

    def prediction_psi(self) -> float:
        return psi(self.profile.score_props, self._score.counts)
