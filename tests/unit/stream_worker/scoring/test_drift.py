"""Drift windows and PSI: incremental counts stay exact; PSI sees a shift and nothing else."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from stream_worker.scoring.drift import DriftMonitor, _Window
from trainer.dataset import AdultData
from trainer.model.bundle import ModelBundle
from trainer.model.features import FeatureEncoder, frame_columns
from trainer.model.profile import ReferenceProfile

WINDOW = 500


def _check_window(window: _Window, history: list[int]) -> None:
    expected = np.bincount(
        np.asarray(history[-window.size :], dtype=np.intp), minlength=window.n_bins
    )
    assert window.counts.tolist() == expected.tolist()
    assert window.filled == min(window.size, len(history))
    assert int(window.counts.sum()) == window.filled


def _batch_sizes(rng: np.random.Generator, size: int) -> Iterator[int]:
    """Small, mid, exactly-the-window, just-below and larger-than-window batches, shuffled."""
    fixed = [0, 1, size - 1, size, size + 1, 3 * size + 7]
    randoms = rng.integers(1, 2 * size, size=40).tolist()
    sizes = fixed + randoms
    rng.shuffle(sizes)
    yield from sizes


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("size", [1, 7, 100])
def test_window_counts_equal_bincount_of_last_window_bins(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    n_bins = int(rng.integers(2, 12))
    window = _Window(size, n_bins)
    history: list[int] = []
    _check_window(window, history)
    for n in _batch_sizes(rng, size):
        bins = rng.integers(0, n_bins, size=n).astype(np.intp)
        window.add(bins)
        history.extend(bins.tolist())
        _check_window(window, history)


def test_window_fills_in_order_before_wrapping() -> None:
    window = _Window(4, 3)
    window.add(np.array([0, 1], dtype=np.intp))
    window.add(np.array([2], dtype=np.intp))
    assert window.counts.tolist() == [1, 1, 1]
    window.add(np.array([2, 2, 2], dtype=np.intp))  # evicts the 0 and the 1
    assert window.counts.tolist() == [0, 0, 4]


@pytest.fixture(scope="module")
def reference(adult_data: AdultData) -> tuple[FeatureEncoder, ReferenceProfile, pd.DataFrame]:
    """A profile of 600 training rows (scores: a fixed function of age), plus 3,000 fresh rows."""
    ref_frame = adult_data.train.iloc[:600]
    columns = frame_columns(ref_frame)
    encoder = FeatureEncoder.fit(columns)
    batch = encoder.codes(columns)
    profile = ReferenceProfile.build(encoder, batch, _scores(ref_frame))
    return encoder, profile, adult_data.train.iloc[10_000:13_000]


def _scores(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    age = frame["age"].to_numpy(dtype=np.float64)
    scores: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(age - 40.0) / 10.0))
    return scores


def _monitor_after(
    encoder: FeatureEncoder, profile: ReferenceProfile, frame: pd.DataFrame, batch_size: int = 250
) -> DriftMonitor:
    monitor = DriftMonitor(profile, window=2000)
    for start in range(0, len(frame), batch_size):
        part = frame.iloc[start : start + batch_size]
        batch = encoder.codes(frame_columns(part))
        monitor.update(profile.feature_bins(encoder, batch), _scores(part))
    return monitor


def test_psi_is_near_zero_for_data_from_the_reference_distribution(
    reference: tuple[FeatureEncoder, ReferenceProfile, pd.DataFrame],
) -> None:
    encoder, profile, fresh = reference
    monitor = _monitor_after(encoder, profile, fresh)
    assert monitor.observed == 2000
    psi = monitor.feature_psi()
    assert set(psi) == set(profile.features)
    # native_country has many rare categories: sampling noise alone gives it a little PSI
    assert max(psi.values()) < 0.1, psi
    assert np.median(list(psi.values())) < 0.03
    assert monitor.prediction_psi() < 0.05


def test_psi_flags_a_clearly_shifted_feature(
    reference: tuple[FeatureEncoder, ReferenceProfile, pd.DataFrame],
) -> None:
    encoder, profile, fresh = reference
    shifted = fresh.copy()
    shifted["age"] = shifted["age"] + 25.0
    shifted["sex"] = "Female"
    monitor = _monitor_after(encoder, profile, shifted)
    psi = monitor.feature_psi()
    assert psi["age"] > 0.2
    assert psi["sex"] > 0.2
    assert psi["hours_per_week"] < 0.1  # untouched features stay quiet
    assert psi["education"] < 0.1
    assert monitor.prediction_psi() > 0.2  # the score depends on age here


def test_window_forgets_old_drift(
    reference: tuple[FeatureEncoder, ReferenceProfile, pd.DataFrame],
) -> None:
    encoder, profile, fresh = reference
    shifted = fresh.iloc[:1000].copy()
    shifted["age"] = shifted["age"] + 25.0
    monitor = _monitor_after(encoder, profile, pd.concat([shifted, fresh.iloc[1000:]]))
    assert monitor.feature_psi()["age"] < 0.1  # the last 2,000 records are unshifted


def test_empty_monitor_reports_zero(tiny_bundle: ModelBundle) -> None:
    monitor = DriftMonitor(tiny_bundle.profile, window=100)
    assert monitor.observed == 0
    assert set(monitor.feature_psi().values()) == {0.0}
    assert monitor.prediction_psi() == 0.0


def test_zero_inflated_feature_can_drift() -> None:
    """Capital gain is 0 for most applicants; its profile must still see a shift in the tail."""
    from trainer.dataset import load_bundled
    from trainer.model.profile import bin_numeric, psi, quantile_edges

    gains = load_bundled().train["capital_gain"].to_numpy()
    edges = quantile_edges(gains)
    assert len(edges) >= 4
    expected = np.bincount(bin_numeric(gains, edges), minlength=len(edges) + 1)
    shifted = gains.copy()
    shifted[: len(shifted) // 5] = 20000  # a fifth of applicants now report large gains
    actual = np.bincount(bin_numeric(shifted, edges), minlength=len(edges) + 1)
    assert psi(expected, actual) > 0.2
    assert psi(expected, expected) == 0.0
