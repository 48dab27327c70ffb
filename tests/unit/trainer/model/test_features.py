"""The one feature encoding: layout, missing/unseen categories, serialisation, both input paths."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from trainer import dataset
from trainer.model import columns
from trainer.model.bundle import records_to_columns
from trainer.model.features import MODEL_EXCLUDED, FeatureEncoder, frame_columns

VOCAB = {
    "workclass": ["Private", "State-gov"],
    "education": ["Bachelors", "HS-grad", "Masters"],
    "marital_status": ["Divorced", "Married-civ-spouse", "Never-married"],
    "occupation": ["Exec-managerial", "Sales"],
    "relationship": ["Husband", "Not-in-family", "Wife"],
    "race": ["Black", "White"],
    "sex": ["Female", "Male"],
    "native_country": ["Mexico", "United-States"],
}


def _record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "age": 39.0,
        "workclass": "State-gov",
        "fnlwgt": 77516.0,
        "education": "Bachelors",
        "education_num": 13.0,
        "marital_status": "Never-married",
        "occupation": "Sales",
        "relationship": "Not-in-family",
        "race": "White",
        "sex": "Male",
        "capital_gain": 2174.0,
        "capital_loss": 0.0,
        "hours_per_week": 40.0,
        "native_country": "United-States",
    }
    base.update(overrides)
    return base


def _encode_one(encoder: FeatureEncoder, **overrides: object) -> dict[str, float]:
    row = encoder.encode(records_to_columns([_record(**overrides)]))[0]
    return dict(zip(encoder.feature_names, row.tolist(), strict=True))


@pytest.fixture(scope="module")
def adult() -> dataset.AdultData:
    return dataset.load_bundled()


@pytest.fixture(scope="module")
def fitted(adult: dataset.AdultData) -> FeatureEncoder:
    return FeatureEncoder.fit(frame_columns(adult.train))


def test_layout_is_numeric_then_one_block_per_categorical_in_order() -> None:
    encoder = FeatureEncoder(VOCAB)
    names = encoder.feature_names
    assert names[:6] == list(columns.NUMERIC_COLUMNS)
    expected_blocks = [f"{c}__{v}" for c in columns.CATEGORICAL_COLUMNS for v in VOCAB[c]]
    assert names[6:] == expected_blocks
    assert encoder.n_features == len(names) == 6 + sum(len(v) for v in VOCAB.values())


def test_numeric_values_pass_through_and_each_category_sets_exactly_its_column() -> None:
    encoder = FeatureEncoder(VOCAB)
    row = _encode_one(encoder)
    assert row["age"] == 39.0
    assert row["fnlwgt"] == 77516.0
    assert row["capital_gain"] == 2174.0
    hot = sorted(name for name, value in row.items() if "__" in name and value == 1.0)
    assert hot == sorted(
        [
            "workclass__State-gov",
            "education__Bachelors",
            "marital_status__Never-married",
            "occupation__Sales",
            "relationship__Not-in-family",
            "race__White",
            "sex__Male",
            "native_country__United-States",
        ]
    )
    assert all(v in (0.0, 1.0) for name, v in row.items() if "__" in name)


@pytest.mark.parametrize("missing", [None, float("nan"), "Atlantis", "", "?", 7])
def test_missing_or_unseen_category_encodes_as_an_all_zero_block(missing: object) -> None:
    encoder = FeatureEncoder(VOCAB)
    # the neighbouring block's last value is not hot, so a leak into it would show
    row = _encode_one(encoder, occupation=missing, marital_status="Divorced")
    assert [row[f"occupation__{v}"] for v in VOCAB["occupation"]] == [0.0, 0.0]
    # everything else is exactly the complete record's encoding
    complete = _encode_one(encoder, marital_status="Divorced")
    complete.update({f"occupation__{v}": 0.0 for v in VOCAB["occupation"]})
    assert row == complete
    assert sum(v for name, v in row.items() if "__" in name) == len(VOCAB) - 1
    batch = encoder.codes(records_to_columns([_record(occupation=missing)]))
    assert batch.codes[0, columns.CATEGORICAL_COLUMNS.index("occupation")] == -1


def test_vocabulary_is_learned_sorted_without_missing_values(
    adult: dataset.AdultData, fitted: FeatureEncoder
) -> None:
    for col in columns.CATEGORICAL_COLUMNS:
        vocab = fitted.vocabularies[col]
        assert list(vocab) == sorted(adult.train[col].dropna().unique())
        assert "?" not in vocab
        assert "" not in vocab


def test_excluded_column_leaves_the_matrix_but_keeps_its_codes() -> None:
    full = FeatureEncoder(VOCAB)
    lean = FeatureEncoder(VOCAB, excluded=["education", "fnlwgt"])
    assert "education__Bachelors" not in lean.feature_names
    assert "fnlwgt" not in lean.feature_names
    assert lean.n_features == full.n_features - len(VOCAB["education"]) - 1
    records = records_to_columns([_record(), _record(education="Masters", fnlwgt=1.0)])
    batch = lean.codes(records)
    # codes still cover every input feature: the drift profile watches all 14
    assert batch.numeric.shape == (2, len(columns.NUMERIC_COLUMNS))
    assert batch.codes.shape == (2, len(columns.CATEGORICAL_COLUMNS))
    edu = columns.CATEGORICAL_COLUMNS.index("education")
    assert batch.codes[:, edu].tolist() == [0, 2]
    # the lean matrix is the full one with those columns dropped
    keep = [full.feature_names.index(name) for name in lean.feature_names]
    np.testing.assert_array_equal(lean.matrix(batch), full.matrix(full.codes(records))[:, keep])


def test_unknown_excluded_column_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        FeatureEncoder(VOCAB, excluded=["salary"])


def test_default_fit_keeps_the_excluded_columns_out_of_the_model(fitted: FeatureEncoder) -> None:
    assert set(fitted.excluded) == set(MODEL_EXCLUDED) == {"education", "fnlwgt"}
    for col in MODEL_EXCLUDED:
        assert not any(n == col or n.startswith(f"{col}__") for n in fitted.feature_names)
    assert set(fitted.categorical) == set(columns.CATEGORICAL_COLUMNS)
    assert set(fitted.numeric) == set(columns.NUMERIC_COLUMNS)


def test_to_dict_from_dict_round_trip_through_json(
    adult: dataset.AdultData, fitted: FeatureEncoder
) -> None:
    restored = FeatureEncoder.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored.feature_names == fitted.feature_names
    assert restored.excluded == fitted.excluded
    assert restored.vocabularies == fitted.vocabularies
    columns = frame_columns(adult.test)
    np.testing.assert_array_equal(restored.encode(columns), fitted.encode(columns))


def test_from_dict_without_excluded_key_keeps_every_column() -> None:
    data = FeatureEncoder(VOCAB).to_dict()
    del data["excluded"]
    assert FeatureEncoder.from_dict(data).feature_names == FeatureEncoder(VOCAB).feature_names


def _reference_one_hot(frame: pd.DataFrame, encoder: FeatureEncoder) -> npt.NDArray[np.float32]:
    """An independent pandas encoding of the same definition, for comparison only."""
    parts = [frame[[c for c in encoder.numeric if c not in encoder.excluded]].astype("float32")]
    for col in encoder.categorical:
        if col in encoder.excluded:
            continue
        cat = pd.Categorical(frame[col], categories=list(encoder.vocabularies[col]))
        parts.append(pd.get_dummies(cat, dtype="float32").set_axis(frame.index))
    matrix: npt.NDArray[np.float32] = pd.concat(parts, axis=1).to_numpy(dtype=np.float32)
    return matrix


def test_numpy_path_equals_frame_path_and_an_independent_encoding(
    adult: dataset.AdultData, fitted: FeatureEncoder
) -> None:
    frame = adult.test
    from_frame = fitted.encode(frame_columns(frame))
    # the worker's path: numpy arrays per column (object arrays for categoricals)
    arrays = {
        **{c: frame[c].to_numpy(dtype=np.float64) for c in columns.NUMERIC_COLUMNS},
        **{c: frame[c].to_numpy(dtype=object) for c in columns.CATEGORICAL_COLUMNS},
    }
    from_arrays = fitted.encode(arrays)
    # the record path: JSON-like dicts, as /predict and the stream see them
    records = frame[list(columns.FEATURE_COLUMNS)].to_dict(orient="records")
    from_records = fitted.encode(records_to_columns(records))
    assert from_frame.dtype == np.float32
    assert from_frame.shape == (len(frame), fitted.n_features)
    np.testing.assert_array_equal(from_arrays, from_frame)
    np.testing.assert_array_equal(from_records, from_frame)
    np.testing.assert_array_equal(from_frame, _reference_one_hot(frame, fitted))


def test_empty_batch_encodes_to_an_empty_matrix(fitted: FeatureEncoder) -> None:
    empty: dict[str, list[object]] = {c: [] for c in columns.FEATURE_COLUMNS}
    assert fitted.encode(empty).shape == (0, fitted.n_features)
