"""From cleaned splits to a finished bundle: encode, tune, fit, pick the threshold, refit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from trainer import dataset, ensemble
from trainer.evaluate import best_f1_threshold
from trainer.model import columns
from trainer.model.bundle import ModelBundle, class_weight_offset
from trainer.model.features import EncodedBatch, FeatureEncoder, frame_columns
from trainer.model.profile import ReferenceProfile
from trainer.settings import TrainerSettings
from trainer.tune import Candidate, TrainingData, TuningResult, fit, tune

log = logging.getLogger(__name__)

REFERENCE_SAMPLE_SIZE = 200
REFIT_ETA_FACTOR = 0.25
"""The final refit on train + validation uses this fraction of the tuned learning rate and
1 / fraction times the early-stopped rounds (the same total step size, in smaller steps).

Chosen by 5-fold cross-validation of the whole pipeline on adult.data (never adult.test):
smaller steps scored better out of fold than refitting at the tuned rate, and adding rounds
for the larger refit data set did not help, so it adds none (figures: docs/decisions.md).
"""

# Why the final model averages the best trials (``TrainerSettings.ensemble_size``): in nested
# 5-fold cross-validation on adult.data (the whole tuning pipeline inside each fold, never
# adult.test) the best 3 trials, refit at 1/4 of their rate, beat the best trial alone and
# seed-bagging; more members added nothing (figures: docs/decisions.md). But every tree costs
# time at scoring and 3 members at 1/4 can reach thousands of trees (throughput per tree count:
# docs/benchmark.md), so ``refit_plan`` holds the booster to ``TrainerSettings.max_trees``
# (by default mostly the best trial alone, refit at between 1/4 and 1/2 of its rate; more
# members when trials stop early).


@dataclass(frozen=True)
class Encoded:
    encoder: FeatureEncoder
    train: EncodedBatch
    valid: EncodedBatch
    data: TrainingData


@dataclass(frozen=True)
class Member:
    """One refit in the final ensemble: what it was trained with, and for how many rounds."""

    params: dict[str, Any]
    rounds: int
    valid_auc: float


@dataclass(frozen=True)
class TrainedModel:
    bundle: ModelBundle
    tuning: TuningResult
    rounds: int  # trees in the final (averaged) booster
    valid_probabilities: npt.NDArray[np.float64]
    params: dict[str, Any]  # the best member's refit parameters (tuned, overrides, refit eta)
    members: tuple[Member, ...] = ()


def encode_splits(splits: dataset.Splits) -> Encoded:
    encoder = FeatureEncoder.fit(frame_columns(splits.train))
    train = encoder.codes(frame_columns(splits.train))
    valid = encoder.codes(frame_columns(splits.valid))
    data = TrainingData(
        x_train=encoder.matrix(train),
        y_train=dataset.labels(splits.train),
        x_valid=encoder.matrix(valid),
        y_valid=dataset.labels(splits.valid),
        feature_names=encoder.feature_names,
    )
    return Encoded(encoder, train, valid, data)


def _sigmoid_corrected(margin: npt.ArrayLike, offset: float) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-(np.asarray(margin, dtype=np.float64) - offset)))


def _members(
    enc: Encoded,
    tuning: TuningResult,
    settings: TrainerSettings,
    params_override: dict[str, Any] | None,
) -> list[Candidate]:
    """The trials the final model may average, each with its early-stopped booster.

    Overridden or hand-given parameters make one candidate, fitted here.
    """
    if tuning.candidates and not params_override:
        return list(tuning.candidates[: settings.ensemble_size])
    params = {**tuning.params, **(params_override or {})}
    early = fit(enc.data, params, settings.max_rounds, settings.early_stopping_rounds)
    return [Candidate(params, int(early.best_iteration) + 1, tuning.best_valid_auc, early)]


def refit_plan(members: Sequence[Candidate], max_trees: int) -> tuple[list[Candidate], float]:
    """Which members to refit, and the learning-rate factor, within a budget of trees.

    Scoring time grows with the trees (figures in docs/benchmark.md), so the final booster is
    held to ``max_trees``: the most of the best members that fit when refit at
    ``REFIT_ETA_FACTOR``; if not even the best one fits, the best alone in steps just large
    enough to fit, never larger than its tuned rate.
    """
    for k in range(len(members), 0, -1):
        if sum(m.rounds for m in members[:k]) / REFIT_ETA_FACTOR <= max_trees:
            return list(members[:k]), REFIT_ETA_FACTOR
    best = members[0]
    return [best], min(1.0, best.rounds / max_trees)


def train_model(
    splits: dataset.Splits,
    settings: TrainerSettings,
    tuning: TuningResult | None = None,
    params_override: dict[str, Any] | None = None,
) -> TrainedModel:
    """Tune (unless given), pick the threshold on validation, refit the best trials on all of
    adult.data and average them into one booster (why: the comment above ``Encoded``)."""
    enc = encode_splits(splits)
    if tuning is None:
        tuning = _tune(enc, settings)
    members, factor = refit_plan(
        _members(enc, tuning, settings, params_override), settings.max_trees
    )
    offset = _mean_class_weight_offset(members)
    valid_proba = _sigmoid_corrected(_valid_margin(enc, members), offset)
    threshold = best_f1_threshold(enc.data.y_valid, valid_proba)
    final, refit_members = _refit(enc, members, factor)
    bundle = ModelBundle(
        booster=final,
        encoder=enc.encoder,
        threshold=threshold,
        profile=ReferenceProfile.build(enc.encoder, enc.train, valid_proba),
        log_class_weight=offset,
    )
    _attach_reference_sample(bundle, splits.valid)
    trees = int(final.num_boosted_rounds())
    log.info(
        "trained: %d member(s), early-stopped rounds %s, %d trees, threshold %.4f",
        len(members),
        [m.rounds for m in members],
        trees,
        threshold,
    )
    return TrainedModel(
        bundle, tuning, trees, valid_proba, refit_members[0].params, tuple(refit_members)
    )


def _tune(enc: Encoded, settings: TrainerSettings) -> TuningResult:
    """The Optuna study with the run's settings, keeping as many trials as may be averaged."""
    return tune(
        enc.data,
        trials=settings.trials,
        timeout_seconds=settings.timeout_seconds,
        seed=settings.seed,
        n_jobs=settings.n_jobs,
        max_rounds=settings.max_rounds,
        early_stopping_rounds=settings.early_stopping_rounds,
        keep=settings.ensemble_size,
    )


def _mean_class_weight_offset(members: Sequence[Candidate]) -> float:
    """The prior correction of the averaged booster.

    Each member's probabilities are prior-corrected for its own class weight; the average
    of corrected margins is the booster average minus the average correction.
    """
    offsets = [class_weight_offset(float(m.params.get("scale_pos_weight", 1.0))) for m in members]
    return float(np.mean(offsets))


def _attach_reference_sample(bundle: ModelBundle, valid: Any) -> None:
    """Store the first validation rows and the final model's scores for the smoke test."""
    sample = valid.head(REFERENCE_SAMPLE_SIZE)
    bundle.reference_records = _records(sample)
    bundle.reference_probabilities = [float(p) for p in bundle.predict(frame_columns(sample))]


def _valid_margin(enc: Encoded, members: Sequence[Candidate]) -> npt.NDArray[np.float64]:
    """Out-of-sample validation margins of the early-stopped members, averaged: they choose
    the threshold and make the score profile."""
    margins = [
        np.asarray(
            m.booster.inplace_predict(
                enc.data.x_valid, predict_type="margin", iteration_range=(0, m.rounds)
            ),
            dtype=np.float64,
        )
        for m in members
    ]
    return np.asarray(np.mean(margins, axis=0), dtype=np.float64)


def _refit(
    enc: Encoded, members: Sequence[Candidate], factor: float
) -> tuple[xgb.Booster, list[Member]]:
    """Refit each member's recipe on train + validation in smaller steps (``refit_plan``),
    merged into one booster."""
    x_all = np.vstack([enc.data.x_train, enc.data.x_valid])
    y_all = np.concatenate([enc.data.y_train, enc.data.y_valid])
    d_all = xgb.DMatrix(x_all, y_all, feature_names=enc.data.feature_names)
    refits: list[xgb.Booster] = []
    refit_members: list[Member] = []
    for m in members:
        final_params = {**m.params, "eta": float(m.params.get("eta", 0.3)) * factor}
        refit_rounds = max(1, round(m.rounds / factor))
        refits.append(xgb.train(final_params, d_all, num_boost_round=refit_rounds))
        refit_members.append(Member(final_params, refit_rounds, m.valid_auc))
    return ensemble.average(refits), refit_members


def _records(frame: Any) -> list[dict[str, Any]]:
    cols = frame_columns(frame)
    n = len(frame)
    return [
        {
            c: (int(v) if c in columns.NUMERIC_COLUMNS else v)
            for c, v in ((c, cols[c][i]) for c in cols)
        }
        for i in range(n)
    ]


def feature_importance(bundle: ModelBundle) -> dict[str, float]:
    scores = bundle.booster.get_score(importance_type="gain")
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, (int, float))}
