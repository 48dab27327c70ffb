"""Hyperparameter search: a seeded Optuna TPE study with pruning over XGBoost's usual knobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import xgboost as xgb

log = logging.getLogger(__name__)

PRUNE_EVERY = 25


@dataclass(frozen=True)
class TrainingData:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int8]
    x_valid: npt.NDArray[np.float32]
    y_valid: npt.NDArray[np.int8]
    feature_names: list[str]

    @property
    def negative_positive_ratio(self) -> float:
        positives = int(self.y_train.sum())
        return float(len(self.y_train) - positives) / max(positives, 1)


@dataclass(frozen=True)
class Candidate:
    """A completed trial: its full parameters and its early-stopped booster."""

    params: dict[str, Any]
    rounds: int
    valid_auc: float
    booster: xgb.Booster


@dataclass(frozen=True)
class TuningResult:
    """``params`` and ``best_valid_auc`` are the best trial's; ``candidates`` holds the best
    completed trials, best first (at most ``keep``), with their early-stopped boosters. A
    result built by hand (fixed parameters, no study) has no candidates."""

    params: dict[str, Any]
    best_valid_auc: float
    trials_completed: int
    trials_pruned: int
    candidates: tuple[Candidate, ...] = ()


def base_params(seed: int, n_jobs: int) -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "eval_metric": ["logloss", "auc"],  # the last one drives early stopping
        "tree_method": "hist",
        "seed": seed,
        "nthread": n_jobs,
        "verbosity": 0,
    }


def default_params(ratio: float) -> dict[str, Any]:
    """A strong hand-picked point; enqueued as the first trial so tuning never does worse."""
    return {
        "eta": 0.02,
        "max_depth": 5,
        "min_child_weight": 1.0,
        "subsample": 0.8,
        "colsample_bytree": 0.4,
        "reg_lambda": 5.0,
        "reg_alpha": 0.01,
        "gamma": 0.0,
        "scale_pos_weight": min(2.0, ratio),
    }


def suggest(trial: optuna.Trial, ratio: float) -> dict[str, Any]:
    return {
        "eta": trial.suggest_float("eta", 0.01, 0.2, log=True),
        "max_depth": trial.suggest_int("max_depth", 3, 8),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 20.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.6, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.25, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-2, 20.0, log=True),
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-3, 5.0, log=True),
        "gamma": trial.suggest_float("gamma", 0.0, 2.0),
        # class weighting: from none up to fully balanced (neg/pos)
        "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, max(ratio, 1.0)),
    }


class _PruningCallback(xgb.callback.TrainingCallback):  # type: ignore[misc]
    """Report validation AUC to Optuna every few rounds and stop hopeless trials early."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        if epoch % PRUNE_EVERY == 0:
            self.trial.report(float(evals_log["valid"]["auc"][-1]), step=epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at round {epoch}")
        return False


def fit(
    data: TrainingData,
    params: dict[str, Any],
    max_rounds: int,
    early_stopping_rounds: int,
    callbacks: list[Any] | None = None,
) -> xgb.Booster:
    """Train on the train split with early stopping on validation AUC."""
    dtrain = xgb.DMatrix(data.x_train, data.y_train, feature_names=data.feature_names)
    dvalid = xgb.DMatrix(data.x_valid, data.y_valid, feature_names=data.feature_names)
    return xgb.train(
        params,
        dtrain,
        num_boost_round=max_rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=early_stopping_rounds,
        verbose_eval=False,
        callbacks=callbacks or [],
    )


def tune(
    data: TrainingData,
    *,
    trials: int,
    timeout_seconds: float,
    seed: int,
    n_jobs: int,
    max_rounds: int,
    early_stopping_rounds: int,
    keep: int = 1,
) -> TuningResult:
    """Run the study; keep the ``keep`` best trials' boosters (ties: the earlier trial first)."""
    ratio = data.negative_positive_ratio
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, trials))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=100)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(default_params(ratio))
    kept: list[tuple[float, int, Candidate]] = []  # (-score, trial number, candidate), sorted

    def objective(trial: optuna.Trial) -> float:
        params = {**base_params(seed, n_jobs), **suggest(trial, ratio)}
        booster = fit(data, params, max_rounds, early_stopping_rounds, [_PruningCallback(trial)])
        score = float(booster.best_score)
        candidate = Candidate(params, int(booster.best_iteration) + 1, score, booster)
        kept.append((-score, trial.number, candidate))
        kept.sort(key=lambda k: (k[0], k[1]))
        del kept[max(keep, 1) :]
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=trials, timeout=timeout_seconds)
    states = [t.state for t in study.trials]
    candidates = tuple(c for _, _, c in kept)
    best = candidates[0]  # the study's best trial: the same (score, trial number) order
    log.info("tuning: best valid AUC %.5f after %d trials", best.valid_auc, len(states))
    return TuningResult(
        params=best.params,
        best_valid_auc=best.valid_auc,
        trials_completed=states.count(optuna.trial.TrialState.COMPLETE),
        trials_pruned=states.count(optuna.trial.TrialState.PRUNED),
        candidates=candidates,
    )
