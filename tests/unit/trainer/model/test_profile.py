"""Drift reference profile and the population stability index."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from trainer import dataset
from trainer.model import columns
from trainer.model.features import EncodedBatch, FeatureEncoder, frame_columns
from trainer.model.profile import ReferenceProfile, bin_numeric, psi, quantile_edges


def test_psi_is_zero_for_identical_distributions() -> None:
    props = [0.1, 0.2, 0.3, 0.4]
    assert psi(props, props) == pytest.approx(0.0, abs=1e-15)


def test_psi_compares_proportions_so_counts_and_scale_do_not_matter() -> None:
    assert psi([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-15)
    assert psi([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(
        psi([0.1, 0.2, 0.3, 0.4], [40, 30, 20, 10])
    )


def test_psi_is_positive_and_symmetric() -> None:
    expected, actual = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    value = psi(expected, actual)
    assert value > 0
    assert psi(actual, expected) == pytest.approx(value)
    # the textbook value: sum (a - e) ln(a / e)
    assert value == pytest.approx(2 * 0.3 * math.log(0.5 / 0.2))


def test_psi_grows_as_the_distribution_shifts_further() -> None:
    expected = np.full(10, 0.1)
    values = []
    for shift in (0.0, 0.02, 0.04, 0.06, 0.08):
        actual = expected.copy()
        actual[0] += shift * 4  # move mass from the last four bins into the first
        actual[-4:] -= shift
        values.append(psi(expected, actual))
    assert values[0] == pytest.approx(0.0, abs=1e-15)
    assert all(a < b for a, b in itertools.pairwise(values))


def test_psi_stays_finite_when_a_bin_is_empty_on_either_side() -> None:
    one_sided = psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    other_side = psi([0.4, 0.4, 0.2], [0.5, 0.5, 0.0])
    assert math.isfinite(one_sided)
    assert math.isfinite(other_side)
    assert one_sided > 0.25  # a new category at 20% is a major shift (rule of thumb: > 0.25)


def test_psi_of_an_empty_window_is_zero_not_nan() -> None:
    assert psi([0.5, 0.5], [0, 0]) == 0.0


def test_quantile_edges_collapse_ties() -> None:
    values = np.concatenate([np.zeros(900), np.arange(1, 101)])
    edges = quantile_edges(values, 10)
    assert edges == sorted(set(edges))
    assert edges[0] == 0.0
    assert len(edges) < 9  # nine deciles, but most of them are 0


def test_bin_numeric_puts_edge_values_in_the_upper_bin() -> None:
    bins = bin_numeric([-1.0, 0.0, 0.5, 1.0, 2.0, 9.0], [0.0, 1.0, 2.0])
    assert bins.tolist() == [0, 1, 1, 2, 3, 3]


@pytest.fixture(scope="module")
def reference() -> tuple[FeatureEncoder, EncodedBatch, ReferenceProfile]:
    train = dataset.load_bundled().train
    encoder = FeatureEncoder.fit(frame_columns(train))
    batch = encoder.codes(frame_columns(train))
    scores = np.random.default_rng(0).uniform(size=len(batch))
    return encoder, batch, ReferenceProfile.build(encoder, batch, scores)


def test_profile_covers_every_input_feature_even_ones_the_model_excludes(
    reference: tuple[FeatureEncoder, EncodedBatch, ReferenceProfile],
) -> None:
    encoder, _, profile = reference
    assert encoder.excluded  # the test is only meaningful while something is excluded
    assert sorted(profile.features) == sorted(columns.FEATURE_COLUMNS)


def test_profile_proportions_describe_the_reference_data(
    reference: tuple[FeatureEncoder, EncodedBatch, ReferenceProfile],
) -> None:
    encoder, batch, profile = reference
    for feature in profile.features:
        props = profile.expected(feature)
        assert len(props) == profile.n_bins(feature)
        assert sum(props) == pytest.approx(1.0)
    # a continuous feature binned at its deciles: about 10% per bin
    assert np.allclose(profile.expected("age"), 0.1, atol=0.03)
    # categoricals: vocabulary order then one missing/unseen bin (UCI has 1,836 missing workclass)
    workclass = profile.expected("workclass")
    assert len(workclass) == len(encoder.vocabularies["workclass"]) + 1
    assert workclass[-1] == pytest.approx(1836 / len(batch))
    # the score profile: uniform scores at their deciles
    assert np.allclose(profile.score_props, 0.1, atol=0.01)


def test_feature_bins_of_the_reference_data_reproduce_its_profile(
    reference: tuple[FeatureEncoder, EncodedBatch, ReferenceProfile],
) -> None:
    encoder, batch, profile = reference
    bins = profile.feature_bins(encoder, batch)
    assert sorted(bins) == sorted(columns.FEATURE_COLUMNS)
    for feature, idx in bins.items():
        counts = np.bincount(idx, minlength=profile.n_bins(feature))
        assert len(counts) == profile.n_bins(feature)
        assert psi(profile.expected(feature), counts) == pytest.approx(0.0, abs=1e-12)


def test_a_shifted_batch_shows_drift_only_where_it_shifted(
    reference: tuple[FeatureEncoder, EncodedBatch, ReferenceProfile],
) -> None:
    encoder, batch, profile = reference
    numeric = batch.numeric.copy()
    numeric[:, encoder.numeric.index("age")] += 20
    codes = batch.codes.copy()
    codes[: len(codes) // 2, encoder.categorical.index("education")] = -1  # half unseen
    bins = profile.feature_bins(encoder, EncodedBatch(numeric, codes))

    def drift(feature: str) -> float:
        counts = np.bincount(bins[feature], minlength=profile.n_bins(feature))
        return psi(profile.expected(feature), counts)

    assert drift("age") > 0.25
    assert drift("education") > 0.25
    assert drift("hours_per_week") == pytest.approx(0.0, abs=1e-12)
    assert drift("sex") == pytest.approx(0.0, abs=1e-12)


def test_profile_round_trips_through_json(
    reference: tuple[FeatureEncoder, EncodedBatch, ReferenceProfile],
) -> None:
    _, _, profile = reference
    restored = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert restored == profile
