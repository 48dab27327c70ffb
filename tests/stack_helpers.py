"""Test-side handles for a trained MLflow store and for worker processes (used by fixtures)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import ManagedProcess, worker_process
from trainer.settings import TrainerSettings


@dataclass
class ModelStore:
    """A SQLite MLflow store in a temp folder; ``register`` trains and registers a quick version."""

    folder: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    def settings(self, **overrides: Any) -> TrainerSettings:
        quick = {
            "mlflow_tracking_uri": self.uri,
            "trials": 1,
            "max_rounds": 120,
            "early_stopping_rounds": 10,
            "timeout_seconds": 60,
            "gate_min_roc_auc": 0.5,
            "gate_tolerance": 1.0,
        }
        return TrainerSettings(**{**quick, **overrides})

    def register(self, **overrides: Any) -> str:
        """Train, register and (through a permissive gate) promote a version; return it."""
        from trainer.pipeline import run_once

        return run_once(self.settings(**overrides)).version

    def register_unpromoted(self) -> str:
        """Train and register a version that the gate refuses (floor 1.0): the alias stays."""
        return self.register(gate_min_roc_auc=1.0)

    def promote(self, version: str) -> None:
        """Point ``adult-income@champion`` at ``version`` now, as ``trainer promote`` does."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        client.set_registered_model_alias("adult-income", "champion", version)


@dataclass
class WorkerStack:
    """Topics, env and processes of one test's workers (one consumer group)."""

    bootstrap: str
    env: dict[str, str]
    folder: Path
    workers: list[ManagedProcess]

    @property
    def input_topic(self) -> str:
        return self.env["SCORER_INPUT_TOPIC"]

    @property
    def output_topic(self) -> str:
        return self.env["SCORER_OUTPUT_TOPIC"]

    @property
    def dlq_topic(self) -> str:
        return self.env["SCORER_DLQ_TOPIC"]

    def start_worker(self, timeout: float = 90.0, **env: str) -> ManagedProcess:
        port = free_port()
        proc = worker_process(
            {**self.env, **env}, port, self.folder / f"worker-{len(self.workers)}.log"
        )
        self.workers.append(proc)
        proc.start(timeout=timeout)
        return proc

    def metrics(self, worker: ManagedProcess) -> str:
        assert worker.ready_url is not None
        url = worker.ready_url.replace("/health", "/metrics")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())


def prometheus_query(base_url: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query against a real Prometheus at ``base_url``."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def prometheus_alerts(base_url: str) -> list[dict[str, Any]]:
    """Active (pending or firing) alerts of a real Prometheus."""
    with urllib.request.urlopen(f"{base_url}/api/v1/alerts", timeout=10) as resp:
        return list(json.loads(resp.read())["data"]["alerts"])


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target of one shipped Grafana dashboard."""
    model = json.loads(path.read_text(encoding="utf-8"))
    return [
        (str(panel.get("title")), str(target["expr"]))
        for panel in model.get("panels", [])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
