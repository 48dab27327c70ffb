"""The training pipeline as a Prefect flow: tasks retry on transient (registry/IO) failures."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from trainer import dataset, pipeline
from trainer.exceptions import CredentialsError, DataError
from trainer.registry import Registry
from trainer.settings import TrainerSettings
from trainer.train import TrainedModel

RETRIES = 2
RETRY_DELAY_SECONDS = 3


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless a retry would fail the same way: a bad file, refused credentials."""
    try:
        state.result()
    except (DataError, CredentialsError):
        return False
    except Exception:
        return True
    return False


def _task(fn: Any, retries: int = RETRIES) -> Any:
    return task(
        fn,
        retries=retries,
        retry_delay_seconds=RETRY_DELAY_SECONDS,
        retry_condition_fn=_transient,
        cache_policy=NO_CACHE,
    )


check_registry = _task(pipeline.check_registry)
load_data = _task(pipeline.load_data)
train = _task(pipeline.train, retries=0)  # deterministic: a retry would fail the same way
evaluate = _task(pipeline.evaluate, retries=0)
log_and_register = _task(pipeline.log_and_register)
gate_and_promote = _task(pipeline.gate_and_promote)


@flow(name="train-adult-income", log_prints=False)
def training_flow(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, evaluate, register and (through the gate) promote one model version.

    Settings come from the environment (``TRAINER_*``, ``MLFLOW_TRACKING_URI``) with
    ``overrides`` on top, so a scheduled run and ``trainer run`` behave the same; with
    ``capture_uri`` (``TRAINER_CAPTURE_URI``, ``--capture-uri``) the labelled capture trains
    and evaluates too, and the gate scores the champion on the same evaluation rows.
    """
    settings = TrainerSettings(**(overrides or {}))
    registry: Registry = check_registry(settings)
    data: dataset.AdultData = load_data(settings)
    trained: TrainedModel = train(data, settings)
    evaluation: pipeline.Evaluation = evaluate(trained, data)
    run_id, version = log_and_register(settings, data, trained, evaluation)
    decision = gate_and_promote(registry, settings, version, evaluation.metrics, data)
    return {
        "run_id": run_id,
        "version": version,
        "promoted": decision.passed,
        "reason": decision.reason,
        "metrics": evaluation.metrics,
    }
