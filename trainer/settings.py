"""Every setting of the trainer, and the only place its environment names live."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataSource(StrEnum):
    bundled = "bundled"
    uci = "uci"


class TrainerSettings(BaseSettings):
    """Settings of a training run; env prefix ``TRAINER_`` (plus the standard MLflow name)."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", frozen=True, extra="ignore")

    mlflow_tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "TRAINER_MLFLOW_TRACKING_URI"),
    )
    experiment_name: str = "adult-income"
    model_name: str = "adult-income"
    model_alias: str = "champion"
    source: DataSource = DataSource.bundled
    seed: int = 42
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.5)
    trials: int = Field(default=25, ge=1)
    timeout_seconds: float = Field(default=180.0, gt=0)
    max_rounds: int = Field(default=2000, ge=1)
    early_stopping_rounds: int = Field(default=50, ge=1)
    # The final model averages the refits of up to this many best trials (one booster; the
    # cross-validation that chose 3: docs/decisions.md). 1 = the best trial alone.
    ensemble_size: int = Field(default=3, ge=1)
    # Scoring budget: at most this many trees in the final booster (fewer members, or larger
    # refit steps, when the members would need more). 700 keeps one worker above the 20k
    # records/s goal: see docs/decisions.md (throughput figures: docs/benchmark.md, "Throughput
    # against the model's size").
    max_trees: int = Field(default=700, ge=1)
    # One XGBoost thread: on this data a boosting round is too small for a second thread to pay
    # for its synchronisation when waiting passively, and spinning threads slow down many times
    # over as soon as anything else (the worker) wants a core; see docs/decisions.md. The model
    # is bit-identical for any thread count.
    n_jobs: int = Field(default=1, ge=1)
    gate_min_roc_auc: float = Field(default=0.92, ge=0.0, le=1.0)
    gate_tolerance: float = Field(default=0.002, ge=0.0, le=1.0)
    schedule_cron: str = "0 3 * * *"
    artifact_location: str | None = None
    # The bundled snapshot's folder by default; another folder laid out the same way (the three
    # files and SHA256SUMS) for tests and air-gapped mirrors. Not a CLI option on purpose.
    data_dir: str | None = None
    # `trainer schedule`: a fixed interval instead of the cron expression (setting both is an
    # error). Runs that would overlap a run still in progress are cancelled, not queued.
    schedule_interval_seconds: float | None = Field(default=None, ge=1)
    # The Prefect server whose scheduler fires the schedule (Prefect's own name, read here too).
    # Unset: `trainer schedule` starts a private one on 127.0.0.1, its database in prefect_home.
    prefect_api_url: str | None = Field(
        default=None, validation_alias=AliasChoices("PREFECT_API_URL")
    )
    prefect_home: str = ".prefect"
    # A first start migrates the server's database: about 20 s here, more on a busy machine.
    prefect_server_startup_timeout_seconds: float = Field(default=120.0, gt=0)
    # Retraining on the capture (trainer/captured.py): the capture's root URI (as the worker's
    # SCORER_CAPTURE_URI). Unset: adult.data trains and adult.test evaluates, as without one.
    capture_uri: str | None = None
    # Only outcomes observed at or before this instant (naive = UTC). Unset: when data loads.
    capture_cutoff: datetime | None = None
    # The newest fraction of the labelled capture (by observed_at) evaluates; the rest trains.
    capture_eval_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
