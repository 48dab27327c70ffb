"""Shared unit fixtures: the bundled data and a tiny real model bundle, built once a session.

The bundle is made by hand (encoder fit, 20 boosting rounds, reference profile, reference
sample), so unit tests score with a real booster without MLflow or the tuning pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from trainer.dataset import AdultData, labels, load_bundled
from trainer.model.bundle import ModelBundle, records_to_columns
from trainer.model.columns import FEATURE_COLUMNS
from trainer.model.features import FeatureEncoder, frame_columns
from trainer.model.profile import ReferenceProfile

TINY_TRAIN_ROWS = 2000
TINY_ROUNDS = 20
REFERENCE_SAMPLE = 20


@pytest.fixture(scope="session")
def adult_data() -> AdultData:
    return load_bundled()


@pytest.fixture(scope="session")
def tiny_bundle(adult_data: AdultData) -> ModelBundle:
    """A real, small XGBoost bundle: fit on the first 2,000 training rows, threshold 0.5."""
    train = adult_data.train.iloc[:TINY_TRAIN_ROWS]
    columns = frame_columns(train)
    encoder = FeatureEncoder.fit(columns)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "nthread": 1, "seed": 0},
        xgb.DMatrix(encoder.encode(columns), label=labels(train)),
        num_boost_round=TINY_ROUNDS,
    )
    batch = encoder.codes(columns)
    margins = booster.inplace_predict(encoder.matrix(batch), predict_type="margin")
    scores = 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64)))
    bundle = ModelBundle(
        booster=booster,
        encoder=encoder,
        threshold=0.5,
        profile=ReferenceProfile.build(encoder, batch, scores),
        metadata={"purpose": "unit tests"},
    )
    sample = applicant_dicts(adult_data, REFERENCE_SAMPLE, id_prefix="ref")
    bundle.reference_records = [{c: r[c] for c in FEATURE_COLUMNS} for r in sample]
    bundle.reference_probabilities = bundle.predict(
        records_to_columns(bundle.reference_records)
    ).tolist()
    return bundle


@pytest.fixture(scope="session")
def sample_applicants(adult_data: AdultData) -> list[dict[str, Any]]:
    """200 applicant records from the test split, as producers send them (snake_case)."""
    return applicant_dicts(adult_data, 200, id_prefix="app")


def applicant_dicts(data: AdultData, n: int, *, id_prefix: str) -> list[dict[str, Any]]:
    frame = data.test.iloc[:n]
    columns = frame_columns(frame)
    return [
        {"applicant_id": f"{id_prefix}-{i}", **{c: columns[c][i] for c in FEATURE_COLUMNS}}
        for i in range(len(frame))
    ]
