"""The training pipeline's steps as plain functions; ``flow.py`` runs them as Prefect tasks."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow.entities import Metric, RunTag

from trainer import captured, dataset
from trainer.evaluate import classification_metrics, save_plots
from trainer.exceptions import DataError, RegistryError
from trainer.model.bundle import BUNDLE_ARTIFACT, ModelBundle
from trainer.model.columns import TARGET
from trainer.model.features import frame_columns
from trainer.provenance import git_commit
from trainer.pyfunc import AdultIncomeModel, model_signature
from trainer.registry import GATE_METRIC, ChampionScore, GateDecision, Registry, connect, gate
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
    """adult.data/adult.test, verified; with ``capture_uri``, plus the labelled capture.

    Which rows then train and which evaluate: trainer/captured.py. An empty capture changes
    nothing.
    """
    data = dataset.load(settings.source, settings.data_dir)
    if settings.capture_uri is None:
        return data
    shown = captured.display_uri(settings.capture_uri)
    try:
        combined = captured.with_capture(
            data, settings.capture_uri, settings.capture_cutoff, settings.capture_eval_fraction
        )
    except (ValueError, ImportError) as exc:  # an unknown scheme, a missing fsspec backend
        raise DataError(f"cannot read the capture at {shown}: {exc}") from exc
    summary = captured.summary_of(combined)
    if summary is None:
        log.info("the capture at %s holds no labelled records: adult.data only", shown)
    else:
        log.info(
            "capture %s: %d labelled rows to %s: %d train, %d evaluate (%d dropped as seen); "
            "%d adult.test rows evaluate (%d left out as captured); refused %s",
            summary.uri,
            summary.labelled,
            summary.cutoff.isoformat(),
            summary.train_rows,
            summary.eval_rows,
            summary.eval_dropped,
            summary.test_rows,
            summary.test_removed,
            summary.rejected or "none",
        )
    return combined


def train(
    data: dataset.AdultData,
    settings: TrainerSettings,
    params_override: dict[str, Any] | None = None,
) -> TrainedModel:
    splits = dataset.split(data, settings.validation_fraction, settings.seed)
    return train_model(splits, settings, params_override=params_override)


def evaluate(trained: TrainedModel, data: dataset.AdultData) -> Evaluation:
    """Score the evaluation rows once, at the validation-chosen threshold.

    The evaluation rows are the untouched official test split, or with a capture that part of
    it training never saw plus the newest captured rows (trainer/captured.py).
    """
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
        _log_data(data)
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


def _log_data(data: dataset.AdultData) -> None:
    """Which rows trained and which evaluated: one MLflow dataset per block, counts, capture."""
    for part in captured.data_parts(data):
        mlflow.log_input(_mlflow_dataset(part), context=part.context)
    mlflow.log_params(captured.run_params(data))
    tags = captured.run_tags(data)
    if tags:
        mlflow.set_tags(tags)


def _mlflow_dataset(part: captured.DataPart) -> Any:
    """The block as an ``mlflow.data`` dataset: name, digest, source and schema; no rows."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.pandas_dataset import from_pandas

    try:
        with warnings.catch_warnings():  # a local path resolves "in multiple ways", all local
            warnings.simplefilter("ignore")
            source: Any = resolve_dataset_source(part.source)
    except Exception:  # no MLflow source type for this scheme (memory://, …): just name it
        source = CodeDatasetSource({"uri": part.source})
    return from_pandas(
        part.frame, source=source, targets=TARGET, name=part.name, digest=part.digest
    )


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


def score_champion(registry: Registry, data: dataset.AdultData) -> ChampionScore | None:
    """The champion's bundle, downloaded now and scored on ``data.test``; None: no champion.

    If its bundle cannot be loaded or scored (artifacts deleted, an unreadable bundle), its
    own run's logged ``test_roc_auc`` stands in, and the score says why.
    """
    version = registry.champion_version()
    if version is None:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
            bundle = ModelBundle.load(registry.download(version, Path(tmp)))
        probabilities = bundle.predict(frame_columns(data.test))
        metrics = classification_metrics(dataset.labels(data.test), probabilities, bundle.threshold)
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning(
            "champion version %s cannot be scored, using its logged metric: %s", version, why
        )
        return ChampionScore(version, registry.champion_metric(), fallback=why)
    return ChampionScore(version, metrics["roc_auc"], rows=len(data.test), metrics=metrics)


def gate_and_promote(
    registry: Registry,
    settings: TrainerSettings,
    version: str,
    metrics: dict[str, float],
    data: dataset.AdultData | None = None,
) -> GateDecision:
    """Gate version ``version`` (its ``metrics`` measured on ``data.test``), then promote or not.

    With ``data`` the champion is scored on the same evaluation rows, now, and the decision,
    the champion's version and its metrics there (``champion_eval_*``) go into the
    candidate's run. Without, the champion's logged metric is compared (its own rows).
    """
    champion = score_champion(registry, data) if data is not None else registry.champion_metric()
    decision = gate(
        metrics[GATE_METRIC], champion, settings.gate_min_roc_auc, settings.gate_tolerance
    )
    if data is not None:
        _log_gate(registry, version, decision)
    if decision.passed:
        registry.promote(version, decision.reason)
    else:
        registry.reject(version, decision.reason)
    log.info(
        "version %s %s: %s", version, "promoted" if decision.passed else "rejected", decision.reason
    )
    return decision


def _log_gate(registry: Registry, version: str, decision: GateDecision) -> None:
    """The gate's decision and the champion's side of it, in the candidate's run."""
    run_id = registry.run_id(version)
    if run_id is None:
        return
    tags = {"gate": "passed" if decision.passed else "rejected", "gate_reason": decision.reason}
    metrics: dict[str, float] = {}
    champion = decision.champion
    if champion is not None:
        tags["champion_version"] = champion.version
        tags["champion_scored_on"] = "evaluation rows" if champion.rows is not None else "logged"
        metrics = {f"champion_eval_{k}": v for k, v in champion.metrics.items()}
    now = int(time.time() * 1000)
    registry.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


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
    decision = gate_and_promote(registry, settings, version, evaluation.metrics, data)
    return RunOutcome(run_id, version, evaluation.metrics, decision, time.perf_counter() - started)
