"""The end-to-end demo on loopback: broker, MLflow, training, a worker, Prometheus, a replay.

Every process it starts is stopped by PID when it ends, unless ``keep_running`` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_worker.devtools import replay as tools
from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.devtools.monitoring_files import alert_rules_path, local_prometheus_config
from stream_worker.devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    console_script,
    mlflow_server,
    prometheus_server,
    worker_process,
)
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import ensure_topics


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    trials: int = 5
    train_timeout: float = 90.0
    limit: int | None = None
    keep_running: bool = False


def _port(preferred: int) -> int:
    """The conventional port when it is free, else any free one."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, preferred))
            return preferred
        except OSError:
            return free_port()


def run_demo(opts: DemoOptions, say: Callable[[str], None]) -> dict[str, Any]:
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started: list[ManagedProcess] = []
    broker = LocalBroker(port=_port(9092), log_path=work / "broker.log")
    summary: dict[str, Any] = {}
    try:
        say("1/6 starting the Kafka-compatible broker (Tansu) …")
        broker.start()
        say(f"    broker at {broker.bootstrap} (pid {broker.pid})")

        say("2/6 starting the MLflow tracking server …")
        mlflow = mlflow_server(work / "mlflow", _port(5000))
        started.append(mlflow.start(timeout=120))
        assert mlflow.ready_url is not None
        tracking = mlflow.ready_url.removesuffix("/health")
        say(f"    MLflow at {tracking} (pid {mlflow.pid})")

        say(f"3/6 training ({opts.trials} Optuna trials) through the Prefect flow …")
        version = _train(tracking, opts, work)
        say(f"    registered and promoted adult-income version {version}")

        say("4/6 starting the scoring worker …")
        run_id = uuid.uuid4().hex[:8]
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "MLFLOW_TRACKING_URI": tracking,
            "SCORER_APP_ID": f"income-scorer-demo-{run_id}",
            "SCORER_DATA_DIR": str(work / "faust"),
        }
        ensure_topics(broker.bootstrap, ["applicants", "predictions", "applicants.dlq"], 6)
        web_port = _port(6066)
        worker = worker_process(env, web_port, work / "worker.log")
        started.append(worker.start(timeout=120))
        metrics_url = f"http://{LOOPBACK}:{web_port}/metrics"
        say(f"    worker ready (pid {worker.pid}), metrics at {metrics_url}")

        prometheus_url = None
        try:
            prom_port = _port(9090)
            config = local_prometheus_config(work / "prometheus.yml", [f"{LOOPBACK}:{web_port}"])
            prom = prometheus_server(config, work / "prometheus", prom_port)
            started.append(prom.start(timeout=60))
            prometheus_url = f"http://{LOOPBACK}:{prom_port}"
            say(f"    Prometheus at {prometheus_url} (pid {prom.pid}), rules {alert_rules_path()}")
        except ScorerError as exc:
            say(f"    Prometheus not started: {exc}")

        say("5/6 replaying the official test split into 'applicants' …")
        records = tools.test_records()
        total = opts.limit or len(records)
        t0 = time.time()
        sent = tools.produce(broker.bootstrap, "applicants", records, limit=total)
        say(f"    sent {sent.sent} records in {sent.seconds:.1f}s")

        say("6/6 reading the predictions topic …")
        labels = {r["applicant_id"]: r["_label"] for r in records}
        shown: list[dict[str, Any]] = []

        def keep(pred: dict[str, Any]) -> None:
            if len(shown) < 3:
                shown.append(pred)

        result = tools.consume(
            broker.bootstrap, "predictions", limit=total, timeout=30, labels=labels, on_record=keep
        )
        # first record sent → last prediction written (its Kafka timestamp)
        elapsed = max(result.last_timestamp - t0, 1e-9)
        lat = np.asarray(result.latencies_ms or [0.0])
        summary = {
            "records_scored": result.predictions,
            "unique_applicants": result.unique_ids,
            "throughput_rps": round(result.predictions / elapsed, 1),
            "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
            "accuracy": round(result.accuracy, 4) if result.accuracy is not None else None,
            "model_versions": result.versions,
            "mlflow_ui": tracking,
            "worker_metrics": metrics_url,
            "prometheus": prometheus_url,
        }
        for pred in shown:
            say("    " + json.dumps(pred))
        say("")
        say("Summary")
        for key, value in summary.items():
            say(f"  {key:<18} {value}")
        if result.predictions < total:
            raise ScorerError(f"only {result.predictions} of {total} records were scored")
        if opts.keep_running:
            say("Everything keeps running; Ctrl-C stops it.")
            while all(p.running for p in started):
                time.sleep(1)
        return summary
    finally:
        for proc in reversed(started):
            proc.stop()
        broker.stop()


def _train(tracking: str, opts: DemoOptions, work: Path) -> str:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    outcome_file = work / "training-outcome.json"
    argv = [
        console_script("trainer"), "run",
        "--trials", str(opts.trials),
        "--timeout", str(opts.train_timeout),
        "--result-json", str(outcome_file),
    ]  # fmt: skip
    log = work / "trainer.log"
    with log.open("wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise ScorerError(f"training failed (see {log}): {' | '.join(tail)}")
    outcome = json.loads(outcome_file.read_text())
    if not outcome.get("promoted"):
        raise ScorerError(f"the trained model was not promoted: {outcome.get('reason')}")
    return str(outcome["version"])
