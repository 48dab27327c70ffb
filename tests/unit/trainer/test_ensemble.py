"""The final model averages the best trials: the merged booster must equal that average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import xgboost as xgb

from trainer import dataset
from trainer.ensemble import average
from trainer.exceptions import TrainerError
from trainer.model.bundle import ModelBundle, class_weight_offset
from trainer.model.features import FeatureEncoder, frame_columns
from trainer.settings import TrainerSettings
from trainer.train import REFIT_ETA_FACTOR, TrainedModel, refit_plan, train_model
from trainer.tune import Candidate

SETTINGS = TrainerSettings(
    trials=4,
    max_rounds=60,
    early_stopping_rounds=10,
    seed=7,
    n_jobs=1,
    ensemble_size=3,
    max_trees=2000,  # room for all three members: the budget has its own test below
)


@pytest.fixture(scope="module")
def adult() -> dataset.AdultData:
    return dataset.load_bundled()


@pytest.fixture(scope="module")
def encoded(
    adult: dataset.AdultData,
) -> tuple[FeatureEncoder, npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    sample = adult.train.sample(6000, random_state=1)
    encoder = FeatureEncoder.fit(frame_columns(sample))
    return encoder, encoder.encode(frame_columns(sample)), dataset.labels(sample)


def _train(
    encoded: tuple[FeatureEncoder, npt.NDArray[np.float32], npt.NDArray[np.int8]],
    rounds: int,
    **params: object,
) -> xgb.Booster:
    encoder, x, y = encoded
    base = {"objective": "binary:logistic", "tree_method": "hist", "nthread": 1, "eta": 0.2}
    return xgb.train(
        {**base, **params}, xgb.DMatrix(x, y, feature_names=encoder.feature_names), rounds
    )


def _margin(booster: xgb.Booster, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    return np.asarray(booster.inplace_predict(x, predict_type="margin"), dtype=np.float64)


def test_averaged_booster_predicts_the_mean_margin_of_different_members(
    encoded: tuple[FeatureEncoder, npt.NDArray[np.float32], npt.NDArray[np.int8]],
    tmp_path: Path,
) -> None:
    # Different depths, rounds, seeds and class weights: the last gives each member its own
    # base_score, which the average must carry over too.
    members = [
        _train(encoded, 30, max_depth=3, seed=1),
        _train(encoded, 50, max_depth=6, seed=2, scale_pos_weight=3.0, subsample=0.7),
        _train(encoded, 20, max_depth=8, seed=3, scale_pos_weight=1.7, colsample_bytree=0.5),
    ]
    merged = average(members)
    _, x, _ = encoded
    want = np.mean([_margin(m, x) for m in members], axis=0)
    assert merged.num_boosted_rounds() == 100
    np.testing.assert_allclose(_margin(merged, x), want, atol=1e-5)

    path = tmp_path / "merged.ubj"
    merged.save_model(str(path))
    reloaded = xgb.Booster()
    reloaded.load_model(str(path))
    np.testing.assert_array_equal(_margin(reloaded, x), _margin(merged, x))


def test_average_of_one_booster_is_that_booster(
    encoded: tuple[FeatureEncoder, npt.NDArray[np.float32], npt.NDArray[np.int8]],
) -> None:
    only = _train(encoded, 10)
    assert average([only]) is only


def test_average_refuses_what_it_cannot_merge(
    encoded: tuple[FeatureEncoder, npt.NDArray[np.float32], npt.NDArray[np.int8]],
) -> None:
    with pytest.raises(TrainerError, match="empty"):
        average([])
    logistic = _train(encoded, 5)
    squared = _train(encoded, 5, objective="reg:squarederror")
    with pytest.raises(TrainerError, match="binary:logistic"):
        average([logistic, squared])
    encoder, x, y = encoded
    renamed = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(x, y, feature_names=[f"f_{n}" for n in encoder.feature_names]),
        5,
    )
    with pytest.raises(TrainerError, match="feature names"):
        average([logistic, renamed])


@pytest.fixture(scope="module")
def splits(adult: dataset.AdultData) -> dataset.Splits:
    return dataset.split(adult, SETTINGS.validation_fraction, SETTINGS.seed)


@pytest.fixture(scope="module")
def trained(splits: dataset.Splits) -> TrainedModel:
    return train_model(splits, SETTINGS)


def test_tuning_keeps_the_best_trials_best_first(trained: TrainedModel) -> None:
    tuning = trained.tuning
    aucs = [c.valid_auc for c in tuning.candidates]
    assert len(tuning.candidates) == 3
    assert aucs == sorted(aucs, reverse=True)
    assert tuning.params == tuning.candidates[0].params
    assert tuning.best_valid_auc == aucs[0]


def test_trained_bundle_scores_as_the_average_of_the_member_refits(
    adult: dataset.AdultData, splits: dataset.Splits, trained: TrainedModel
) -> None:
    """Rebuild each member from what the run reports and average by hand: same probabilities.

    Also checks that each member is prior-corrected for its own class weight.
    """
    bundle: ModelBundle = trained.bundle
    assert len(trained.members) == 3
    assert trained.rounds == sum(m.rounds for m in trained.members)
    assert bundle.booster.num_boosted_rounds() == trained.rounds

    encoder = bundle.encoder
    train_valid = [splits.train, splits.valid]
    x = np.vstack([encoder.encode(frame_columns(f)) for f in train_valid])
    y = np.concatenate([dataset.labels(f) for f in train_valid])
    d_all = xgb.DMatrix(x, y, feature_names=encoder.feature_names)
    x_test = encoder.encode(frame_columns(adult.test))
    corrected = [
        _margin(xgb.train(m.params, d_all, m.rounds), x_test)
        - class_weight_offset(float(m.params["scale_pos_weight"]))
        for m in trained.members
    ]
    want = 1.0 / (1.0 + np.exp(-np.mean(corrected, axis=0)))
    got = bundle.predict(frame_columns(adult.test))
    np.testing.assert_allclose(got, want, atol=1e-5)


def _candidates(*rounds: int) -> list[Candidate]:
    booster = xgb.Booster()
    return [Candidate({"eta": 0.1}, r, 0.9 - i / 100, booster) for i, r in enumerate(rounds)]


@pytest.mark.parametrize(
    ("rounds", "max_trees", "members", "factor"),
    [
        ((100, 100, 100), 1200, 3, REFIT_ETA_FACTOR),  # all fit at the small steps
        ((100, 150, 100), 1000, 2, REFIT_ETA_FACTOR),  # the worst member is dropped
        ((300, 100, 100), 1000, 1, 0.3),  # the best alone, in steps just large enough
        ((900, 100), 600, 1, 1.0),  # never larger than the tuned rate: over budget
    ],
)
def test_refit_plan_keeps_the_final_booster_within_the_tree_budget(
    rounds: tuple[int, ...], max_trees: int, members: int, factor: float
) -> None:
    candidates = _candidates(*rounds)
    chosen, got = refit_plan(candidates, max_trees)
    assert chosen == candidates[:members]
    assert got == pytest.approx(factor)
    trees = sum(round(c.rounds / got) for c in chosen)
    assert trees <= max_trees or got == 1.0


def test_a_tight_tree_budget_shrinks_the_final_booster(
    splits: dataset.Splits, trained: TrainedModel
) -> None:
    assert trained.rounds <= SETTINGS.max_trees
    budget = max(c.rounds for c in trained.tuning.candidates)  # < 3 members at 1/4 rate fit
    tight = SETTINGS.model_copy(update={"max_trees": budget})
    small = train_model(splits, tight, tuning=trained.tuning)
    assert small.rounds <= budget
    assert len(small.members) < len(trained.members)
    assert small.bundle.booster.num_boosted_rounds() == small.rounds
