"""Behavioural checks of a trained model: minimum functionality, direction, invariance.

One small model is trained per module through the real training path
(:func:`trainer.train.train_model`) with fixed parameters instead of a tuning study, so the
suite stays quick while exercising the threshold choice, refit and prior correction.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer import dataset
from trainer.evaluate import best_f1_threshold
from trainer.model.bundle import records_to_columns
from trainer.model.features import frame_columns
from trainer.settings import TrainerSettings
from trainer.train import TrainedModel, train_model
from trainer.tune import TuningResult, base_params

QUICK_PARAMS = {
    "eta": 0.1,
    "max_depth": 5,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.5,
    "reg_lambda": 1.0,
    "scale_pos_weight": 3.0,  # strong weighting: the prior correction has work to do
}
# n_jobs=1: OpenMP threads spin-wait and crawl when other processes share the two cores
SETTINGS = TrainerSettings(max_rounds=300, early_stopping_rounds=20, seed=42, n_jobs=1)


def _quick_tuning() -> TuningResult:
    return TuningResult(
        params={**base_params(SETTINGS.seed, SETTINGS.n_jobs), **QUICK_PARAMS},
        best_valid_auc=float("nan"),
        trials_completed=0,
        trials_pruned=0,
    )


@pytest.fixture(scope="module")
def adult() -> dataset.AdultData:
    return dataset.load_bundled()


@pytest.fixture(scope="module")
def splits(adult: dataset.AdultData) -> dataset.Splits:
    return dataset.split(adult, SETTINGS.validation_fraction, SETTINGS.seed)


@pytest.fixture(scope="module")
def trained(splits: dataset.Splits) -> TrainedModel:
    return train_model(splits, SETTINGS, tuning=_quick_tuning())


def _applicant(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "age": 38.0,
        "workclass": "Private",
        "fnlwgt": 180000.0,
        "education": "HS-grad",
        "education_num": 9.0,
        "marital_status": "Never-married",
        "occupation": "Adm-clerical",
        "relationship": "Not-in-family",
        "race": "White",
        "sex": "Female",
        "capital_gain": 0.0,
        "capital_loss": 0.0,
        "hours_per_week": 40.0,
        "native_country": "United-States",
    }
    record.update(overrides)
    return record


def test_minimum_functionality_on_clear_cases(trained: TrainedModel) -> None:
    bundle = trained.bundle
    rich = _applicant(
        age=48.0,
        education="Doctorate",
        education_num=16.0,
        marital_status="Married-civ-spouse",
        occupation="Prof-specialty",
        relationship="Husband",
        sex="Male",
        capital_gain=15024.0,
        hours_per_week=55.0,
    )
    poor = _applicant(
        age=19.0,
        education="11th",
        education_num=7.0,
        occupation="Other-service",
        relationship="Own-child",
        hours_per_week=15.0,
    )
    p_rich, p_poor = bundle.predict(records_to_columns([rich, poor]))
    assert p_rich > 0.9
    assert p_poor < 0.02
    assert bundle.labels(np.array([p_rich, p_poor])) == [">50K", "<=50K"]


def test_model_is_clearly_better_than_chance_on_the_validation_split(
    trained: TrainedModel, splits: dataset.Splits
) -> None:
    from sklearn.metrics import roc_auc_score

    y = dataset.labels(splits.valid)
    assert roc_auc_score(y, trained.valid_probabilities) > 0.91


def test_missing_and_unseen_categories_are_scored(trained: TrainedModel) -> None:
    records = [
        _applicant(workclass=None, occupation=None, native_country=None),
        _applicant(workclass="Space-agency", occupation="Astronaut", native_country="Mars"),
    ]
    probabilities = trained.bundle.predict(records_to_columns(records))
    assert probabilities.shape == (2,)
    assert np.all((probabilities > 0) & (probabilities < 1))


def test_direction_more_capital_gain_raises_the_average_score(
    trained: TrainedModel, adult: dataset.AdultData
) -> None:
    sample = adult.test[adult.test["capital_gain"] == 0].head(1000)
    columns = frame_columns(sample)
    before = trained.bundle.predict(columns)
    columns["capital_gain"] = [20000.0] * len(sample)
    after = trained.bundle.predict(columns)
    assert after.mean() > before.mean() + 0.2
    assert np.mean(after >= before) > 0.95


def test_invariance_swapping_fnlwgt_barely_moves_scores(
    trained: TrainedModel, adult: dataset.AdultData
) -> None:
    sample = adult.test.head(2000)
    columns = frame_columns(sample)
    before = trained.bundle.predict(columns)
    columns["fnlwgt"] = list(np.random.default_rng(0).permutation(columns["fnlwgt"]))
    after = trained.bundle.predict(columns)
    change = np.abs(after - before)
    assert change.mean() < 0.01
    assert np.quantile(change, 0.99) < 0.1
    # the label (at the chosen threshold) changes for very few applicants
    flipped = (after >= trained.bundle.threshold) != (before >= trained.bundle.threshold)
    assert flipped.mean() < 0.02


def test_threshold_is_the_f1_optimum_on_validation_inside_the_unit_interval(
    trained: TrainedModel, splits: dataset.Splits
) -> None:
    threshold = trained.bundle.threshold
    assert 0.0 < threshold < 1.0
    y = dataset.labels(splits.valid)
    assert threshold == best_f1_threshold(y, trained.valid_probabilities)

    def f1_at(t: float) -> float:
        predicted = trained.valid_probabilities >= t
        tp = float(np.sum(predicted & (y == 1)))
        return 2 * tp / (float(predicted.sum()) + float(y.sum()))

    best = f1_at(threshold)
    assert all(f1_at(t) <= best + 1e-12 for t in np.linspace(0.05, 0.95, 91))


def test_prior_correction_keeps_probabilities_calibrated(
    trained: TrainedModel, adult: dataset.AdultData
) -> None:
    """With scale_pos_weight 3 the raw margins overstate P(>50K); the bundle undoes that."""
    y = dataset.labels(adult.test)
    probabilities = trained.bundle.predict(frame_columns(adult.test))
    assert trained.bundle.log_class_weight == pytest.approx(np.log(3.0))
    assert abs(probabilities.mean() - y.mean()) < 0.02
    uncorrected = 1 / (1 + np.exp(-(np.log(probabilities / (1 - probabilities)) + np.log(3.0))))
    assert uncorrected.mean() - y.mean() > 0.05  # the correction is doing real work


def test_same_inputs_same_model(trained: TrainedModel, splits: dataset.Splits) -> None:
    again = train_model(splits, SETTINGS, tuning=_quick_tuning())
    assert again.rounds == trained.rounds
    assert again.bundle.threshold == trained.bundle.threshold
    columns = frame_columns(splits.test.head(500))
    np.testing.assert_array_equal(again.bundle.predict(columns), trained.bundle.predict(columns))
