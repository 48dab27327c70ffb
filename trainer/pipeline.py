"""The training pipeline's steps as plain functions; ``flow.py`` runs them as Prefect tasks."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd

from trainer import dataset
from trainer.evaluate import classification_metrics, save_plots
from trainer.exceptions import RegistryError
from trainer.model.bundle import BUNDLE_ARTIFACT, ModelBundle
from trainer.model.features import frame_columns
from trainer.provenance import git_commit
from trainer.pyfunc import AdultIncomeModel, model_signature
from trainer.registry import GATE_METRIC, GateDecision, Registry, connect, gate
from trainer.report import data_report
from trainer.settings import TrainerSettings
from trainer.train import TrainedModel, feature_importance, train_model

log = logging.getLogger(__name__)

PIP_REQUIREMENTS = ["xgboost", "numpy", "pandas", "income-stream-scorer"]
#: Bundle metadata also set as run tags, so runs can be searched by where they came from.
PROVENANCE_TAGS = ("data_checksum", "data_source", "git_commit")


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # prefixed test_*, plus threshold
    y_test: npt.NDArray[np.int8]
    probabilities: npt.NDArray[np.float64]


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    version: str
    metrics: dict[str, float]
    decision: GateDecision
    wall_seconds: float


def check_registry(settings: TrainerSettings) -> Registry:
    """Connect first, so an unreachable server fails before minutes of training."""
    return Registry(
        connect(settings.mlflow_tracking_uri), settings.model_name, settings.model_alias
    )


def load_data(settings: TrainerSettings) -> dataset.AdultData:
    return dataset.load(settings.source, settings.data_dir)


def train(
    data: dataset.AdultData,
    settings: TrainerSettings,
    params_override: dict[str, Any] | None = None,
) -> TrainedModel:
    splits = dataset.split(data, settings.validation_fraction, settings.seed)
    return train_model(splits, settings, params_override=params_override)


def evaluate(trained: TrainedModel, data: dataset.AdultData) -> Evaluation:
    """Score the untouched official test split once, at the validation-chosen threshold."""
    bundle = trained.bundle
    y_test = dataset.labels(data.test)
    proba = bundle.predict(frame_columns(data.test))
    raw = classification_metrics(y_test, proba, bundle.threshold)
    metrics = {f"test_{k}": v for k, v in raw.items()}
    metrics["threshold"] = bundle.threshold
    return Evaluation(metrics, y_test, proba)


def log_and_register(
    settings: TrainerSettings,
    data: dataset.AdultData,
    trained: TrainedModel,
    evaluation: Evaluation,
) -> tuple[str, str]:
    """Log params, metrics, plots, report and bundle; register a version: (run id, version)."""
    _use_store(settings)
    bundle = trained.bundle
    bundle.metadata.update(_bundle_metadata(data, trained, evaluation))
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _log_run_record(settings, trained, evaluation)
        _log_plots_and_report(data, bundle, evaluation, workdir)
        version = _register_model(settings, bundle, workdir)
        log.info("run %s registered %s version %s", run.info.run_id, settings.model_name, version)
        return run.info.run_id, version


def _use_store(settings: TrainerSettings) -> None:
    """Point MLflow's tracking and registry at the store; create the experiment if new."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    _ensure_experiment(settings)


def _bundle_metadata(
    data: dataset.AdultData, trained: TrainedModel, evaluation: Evaluation
) -> dict[str, Any]:
    """What the bundle carries about its own making: provenance, test metrics, the ensemble."""
    return {
        "metrics": evaluation.metrics,
        "data_checksum": data.checksum,
        "data_source": data.source,
        "git_commit": git_commit(),
        "params": _loggable(trained.params),
        "rounds": trained.rounds,
        "members": _member_records(trained),
    }


def _log_run_record(
    settings: TrainerSettings, trained: TrainedModel, evaluation: Evaluation
) -> None:
    """The active run's provenance tags, parameters, metrics and ensemble description."""
    metadata = trained.bundle.metadata
    mlflow.set_tags({key: metadata[key] for key in PROVENANCE_TAGS})
    mlflow.log_params(_run_params(settings, trained))
    mlflow.log_metrics({**evaluation.metrics, "valid_roc_auc": trained.tuning.best_valid_auc})
    mlflow.log_dict({"members": metadata["members"]}, "ensemble.json")


def _run_params(settings: TrainerSettings, trained: TrainedModel) -> dict[str, Any]:
    return {
        **_loggable(trained.params),
        "rounds": trained.rounds,
        "ensemble_size": len(trained.members),
        "max_trees": settings.max_trees,
        "trials_requested": settings.trials,
        "trials_completed": trained.tuning.trials_completed,
        "trials_pruned": trained.tuning.trials_pruned,
        "validation_fraction": settings.validation_fraction,
        "n_features": trained.bundle.encoder.n_features,
    }


def _log_plots_and_report(
    data: dataset.AdultData, bundle: ModelBundle, evaluation: Evaluation, workdir: Path
) -> None:
    plots = save_plots(
        evaluation.y_test,
        evaluation.probabilities,
        bundle.threshold,
        feature_importance(bundle),
        workdir / "plots",
    )
    for path in plots:
        mlflow.log_artifact(str(path), artifact_path="plots")
    report = data_report(data.train, data.test, workdir / "report")
    mlflow.log_artifact(str(report), artifact_path="report")


def _register_model(settings: TrainerSettings, bundle: ModelBundle, workdir: Path) -> str:
    """Log the bundle as a pyfunc model and register it as a new version of the model name."""
    bundle_dir = bundle.save(workdir / BUNDLE_ARTIFACT)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=AdultIncomeModel(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=model_signature(),
        input_example=pd.DataFrame(bundle.reference_records[:5]),
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=settings.model_name,
    )
    return str(info.registered_model_version)


def _loggable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "eval_metric"}


def _member_records(trained: TrainedModel) -> list[dict[str, Any]]:
    """Each averaged refit: its parameters, rounds and its trial's validation AUC."""
    return [
        {"params": _loggable(m.params), "rounds": m.rounds, "valid_roc_auc": m.valid_auc}
        for m in trained.members
    ]


def artifact_location(settings: TrainerSettings) -> str | None:
    """Where a new experiment keeps artifacts: the setting, else beside a SQLite store.

    MLflow's own default for a SQLite store is ``./mlruns`` under whatever the working
    directory happens to be; a folder next to the database keeps store and artifacts together.
    """
    if settings.artifact_location:
        return settings.artifact_location
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_absolute():
            db = Path.cwd() / db
        return (db.parent / "mlartifacts").as_uri()
    return None  # a tracking server decides (e.g. --artifacts-destination)


def _ensure_experiment(settings: TrainerSettings) -> None:
    client = mlflow.tracking.MlflowClient()
    if client.get_experiment_by_name(settings.experiment_name) is None:
        client.create_experiment(
            settings.experiment_name, artifact_location=artifact_location(settings)
        )
    mlflow.set_experiment(settings.experiment_name)


def gate_and_promote(
    registry: Registry, settings: TrainerSettings, version: str, metrics: dict[str, float]
) -> GateDecision:
    decision = gate(
        metrics[GATE_METRIC],
        registry.champion_metric(),
        settings.gate_min_roc_auc,
        settings.gate_tolerance,
    )
    if decision.passed:
        registry.promote(version, decision.reason)
    else:
        registry.reject(version, decision.reason)
    log.info(
        "version %s %s: %s", version, "promoted" if decision.passed else "rejected", decision.reason
    )
    return decision


def run_once(
    settings: TrainerSettings, params_override: dict[str, Any] | None = None
) -> RunOutcome:
    """The whole pipeline without Prefect (tests and the library use this)."""
    started = time.perf_counter()
    registry = check_registry(settings)
    data = load_data(settings)
    trained = train(data, settings, params_override)
    evaluation = evaluate(trained, data)
    try:
        run_id, version = log_and_register(settings, data, trained, evaluation)
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(f"logging to MLflow failed: {exc}") from exc
    decision = gate_and_promote(registry, settings, version, evaluation.metrics)
    return RunOutcome(run_id, version, evaluation.metrics, decision, time.perf_counter() - started)
