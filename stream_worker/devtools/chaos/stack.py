"""The real processes a chaos scenario runs against, all on loopback and stopped by PID.

A run has one memory broker and one SQLite MLflow store (a quickly trained champion, plus two
broken copies of it: one that cannot predict, one whose drift profile does not fit); each
scenario gets fresh topics and a fresh consumer group, and may bring its own broker (durable)
or registry (``mlflow server``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.devtools.processes import ManagedProcess, http_json, http_ok, worker_process
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import delete_topics, ensure_topics

if TYPE_CHECKING:
    from trainer.model.bundle import ModelBundle

Say = Callable[[str], None]

PARTITIONS = 6
MODEL_NAME = "adult-income"
MODEL_ALIAS = "champion"
EXPERIMENT = "adult-income"
#: Small batches: the kill -9 bound (2 batches in flight) stays meaningful at chaos rates.
BATCH_MAX = 200


@dataclass
class ModelVersions:
    """The store of a run: the good champion and the broken versions registered beside it."""

    uri: str
    good: str
    cannot_predict: str = ""
    profile_misfit: str = ""
    copy_of_good: str = ""

    def promote(self, version: str, uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        store = uri or self.uri
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        client.set_registered_model_alias(MODEL_NAME, MODEL_ALIAS, version)


def train_store(folder: Path, say: Say) -> ModelVersions:
    """A quick champion (one trial) and broken copies of its bundle, in a SQLite store."""
    from stream_worker.devtools.bench.model import quick_model

    uri = quick_model(folder, MODEL_NAME, MODEL_ALIAS, say)
    versions = ModelVersions(uri, good="1")
    bundle = _download(uri, versions.good)
    versions.cannot_predict = register_bundle(
        uri, dataclasses.replace(bundle, log_class_weight=math.nan), "cannot predict"
    )
    profile = bundle.profile
    props = {k: list(v) for k, v in profile.categorical_props.items()}
    first = sorted(props)[0]
    props[first] = props[first][:-1]  # one bin short: the drift update cannot fit it
    misfit = dataclasses.replace(profile, categorical_props=props)
    versions.profile_misfit = register_bundle(
        uri, dataclasses.replace(bundle, profile=misfit), "drift profile misfit"
    )
    versions.copy_of_good = register_bundle(uri, bundle, "copy of the champion")
    versions.promote(versions.good)
    return versions


def _download(uri: str, version: str) -> ModelBundle:
    from trainer.model.bundle import BUNDLE_IN_MODEL, ModelBundle
    from trainer.registry import connect, download_version

    client = connect(uri)
    folder = Path(tempfile.mkdtemp(prefix="chaos-bundle-"))
    path = download_version(client, MODEL_NAME, version, folder)
    model_dir = path / BUNDLE_IN_MODEL if (path / BUNDLE_IN_MODEL).is_dir() else path
    return ModelBundle.load(model_dir)


def register_bundle(uri: str, bundle: ModelBundle, why: str) -> str:
    """Log ``bundle`` as a pyfunc model (as the trainer does) and register it; its version."""
    import mlflow

    from trainer.model.bundle import BUNDLE_ARTIFACT
    from trainer.pyfunc import AdultIncomeModel, model_signature

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(EXPERIMENT)  # the trainer's: its artifacts sit beside the store
    with mlflow.start_run(run_name=f"chaos: {why}"), tempfile.TemporaryDirectory() as tmp:
        folder = bundle.save(Path(tmp) / BUNDLE_ARTIFACT)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=AdultIncomeModel(),
            artifacts={BUNDLE_ARTIFACT: str(folder)},
            signature=model_signature(),
            pip_requirements=["xgboost", "numpy", "pandas", "income-stream-scorer"],
            registered_model_name=MODEL_NAME,
        )
    return str(info.registered_model_version)


@dataclass
class ScenarioStack:
    """One scenario's topics, consumer group and worker processes."""

    name: str
    bootstrap: str
    tracking_uri: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[ManagedProcess] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        run = uuid.uuid4().hex[:10]
        kinds = ("applicants", "predictions", "dlq", "outcomes", "outcomes-dlq")
        self.topics = [f"chaos-{self.name}-{kind}-{run}" for kind in kinds]
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "SCORER_MODEL_NAME": MODEL_NAME,
            "SCORER_MODEL_ALIAS": MODEL_ALIAS,
            "SCORER_INPUT_TOPIC": self.topics[0],
            "SCORER_OUTPUT_TOPIC": self.topics[1],
            "SCORER_DLQ_TOPIC": self.topics[2],
            "SCORER_OUTCOMES_TOPIC": self.topics[3],
            "SCORER_OUTCOMES_DLQ_TOPIC": self.topics[4],
            "SCORER_TOPIC_PARTITIONS": str(PARTITIONS),
            "SCORER_APP_ID": f"chaos-{self.name}-{run}",
            "SCORER_DATA_DIR": str(self.folder / "faust"),
            "SCORER_RELOAD_INTERVAL_SECONDS": "1",
            "SCORER_SESSION_TIMEOUT_SECONDS": "6",
            "SCORER_HEARTBEAT_INTERVAL_SECONDS": "2",
            "SCORER_BATCH_MAX": str(BATCH_MAX),
            "SCORER_LOG_LEVEL": "warning",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        ensure_topics(self.bootstrap, self.topics, PARTITIONS)

    @property
    def input_topic(self) -> str:
        return self.topics[0]

    @property
    def output_topic(self) -> str:
        return self.topics[1]

    @property
    def dlq_topic(self) -> str:
        return self.topics[2]

    def start_workers(self, n: int, timeout: float = 120.0) -> list[ManagedProcess]:
        """Start ``n`` workers together; return once every one answers /health 200."""
        started = []
        for _ in range(n):
            proc = worker_process(
                self.env, free_port(), self.folder / f"worker-{len(self.workers)}.log"
            )
            proc.name = f"worker-{len(self.workers)}"
            ready, proc.ready_url = proc.ready_url, None
            proc.start()
            proc.ready_url = ready
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            proc.wait_ready(timeout)
        return started

    @property
    def running(self) -> list[ManagedProcess]:
        return [w for w in self.workers if w.running]

    def healthy(self, timeout: float = 30.0) -> bool:
        """Every running worker answers /health 200 (within ``timeout``); at least one runs."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            procs = self.running
            ok = bool(procs) and all(p.ready_url and http_ok(p.ready_url) for p in procs)
            if ok or time.monotonic() > deadline:
                return ok
            time.sleep(0.5)

    def model_info(self, proc: ManagedProcess) -> dict[str, object]:
        assert proc.ready_url is not None
        with contextlib.suppress(OSError):
            return http_json(proc.ready_url.replace("/health", "/model_info"))
        return {}

    def close(self) -> None:
        for proc in self.workers:
            with contextlib.suppress(Exception):
                proc.stop()
        with contextlib.suppress(ScorerError):
            delete_topics(self.bootstrap, self.topics)


def start_broker(folder: Path, durable: bool = False) -> LocalBroker:
    from stream_worker.devtools.broker import DurableStorage

    storage = DurableStorage() if durable else None  # moto outlives broker restarts
    name = "broker-durable.log" if durable else "broker.log"
    return LocalBroker(log_path=folder / name, storage=storage).start()
