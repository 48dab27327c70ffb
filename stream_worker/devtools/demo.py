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
from dataclasses import dataclass, field
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


@dataclass
class _Demo:
    """What one demo run started, and where it wrote."""

    opts: DemoOptions
    say: Callable[[str], None]
    work: Path
    broker: LocalBroker
    started: list[ManagedProcess] = field(default_factory=list)

    def start(self, proc: ManagedProcess, timeout: float) -> ManagedProcess:
        self.started.append(proc.start(timeout=timeout))
        return proc

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.broker.stop()


def run_demo(opts: DemoOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """The six steps; prints a summary and returns it. Raises if records went unscored."""
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = _Demo(opts, say, work, LocalBroker(port=_port(9092), log_path=work / "broker.log"))
    try:
        say("1/6 starting the Kafka-compatible broker (Tansu) …")
        demo.broker.start()
        say(f"    broker at {demo.broker.bootstrap} (pid {demo.broker.pid})")
        tracking = _start_mlflow(demo)
        say(f"3/6 training ({opts.trials} Optuna trials) through the Prefect flow …")
        version = _train(tracking, opts, work)
        say(f"    registered and promoted adult-income version {version}")
        web_port = _start_worker(demo, tracking)
        prometheus_url = _start_prometheus(demo, web_port)
        records, total, t0 = _replay(demo)
        summary = _read_predictions(demo, records, total, t0)
        summary.update(
            mlflow_ui=tracking,
            worker_metrics=f"http://{LOOPBACK}:{web_port}/metrics",
            prometheus=prometheus_url,
        )
        _print_summary(say, summary)
        if summary["records_scored"] < total:
            raise ScorerError(f"only {summary['records_scored']} of {total} records were scored")
        if opts.keep_running:
            say("Everything keeps running; Ctrl-C stops it.")
            while all(p.running for p in demo.started):
                time.sleep(1)
        return summary
    finally:
        demo.close()


def _start_mlflow(demo: _Demo) -> str:
    """Step 2: the MLflow tracking server; its URL."""
    demo.say("2/6 starting the MLflow tracking server …")
    mlflow = demo.start(mlflow_server(demo.work / "mlflow", _port(5000)), timeout=120)
    assert mlflow.ready_url is not None
    tracking = mlflow.ready_url.removesuffix("/health")
    demo.say(f"    MLflow at {tracking} (pid {mlflow.pid})")
    return tracking


def _start_worker(demo: _Demo, tracking: str) -> int:
    """Step 4: the topics and one scoring worker; its web port."""
    demo.say("4/6 starting the scoring worker …")
    bootstrap = demo.broker.bootstrap
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MLFLOW_TRACKING_URI": tracking,
        "SCORER_APP_ID": f"income-scorer-demo-{uuid.uuid4().hex[:8]}",
        "SCORER_DATA_DIR": str(demo.work / "faust"),
    }
    ensure_topics(bootstrap, ["applicants", "predictions", "applicants.dlq"], 6)
    web_port = _port(6066)
    worker = demo.start(worker_process(env, web_port, demo.work / "worker.log"), timeout=120)
    metrics_url = f"http://{LOOPBACK}:{web_port}/metrics"
    demo.say(f"    worker ready (pid {worker.pid}), metrics at {metrics_url}")
    return web_port


def _start_prometheus(demo: _Demo, web_port: int) -> str | None:
    """Prometheus scraping the worker, when it is installed; its URL, or None."""
    try:
        prom_port = _port(9090)
        targets = [f"{LOOPBACK}:{web_port}"]
        config = local_prometheus_config(demo.work / "prometheus.yml", targets)
        prom = demo.start(prometheus_server(config, demo.work / "prometheus", prom_port), 60)
    except ScorerError as exc:
        demo.say(f"    Prometheus not started: {exc}")
        return None
    url = f"http://{LOOPBACK}:{prom_port}"
    demo.say(f"    Prometheus at {url} (pid {prom.pid}), rules {alert_rules_path()}")
    return url


def _replay(demo: _Demo) -> tuple[list[dict[str, Any]], int, float]:
    """Step 5: the test split into 'applicants'; the records, how many were sent, and when."""
    demo.say("5/6 replaying the official test split into 'applicants' …")
    records = tools.test_records()
    total = demo.opts.limit or len(records)
    t0 = time.time()
    sent = tools.produce(demo.broker.bootstrap, "applicants", records, limit=total)
    demo.say(f"    sent {sent.sent} records in {sent.seconds:.1f}s")
    return records, total, t0


def _read_predictions(
    demo: _Demo, records: list[dict[str, Any]], total: int, t0: float
) -> dict[str, Any]:
    """Step 6: read the predictions back; show three, sum up the rest."""
    demo.say("6/6 reading the predictions topic …")
    labels = {r["applicant_id"]: r["_label"] for r in records}
    shown: list[dict[str, Any]] = []

    def keep(pred: dict[str, Any]) -> None:
        if len(shown) < 3:
            shown.append(pred)

    result = tools.consume(
        demo.broker.bootstrap, "predictions", limit=total, timeout=30, labels=labels, on_record=keep
    )
    for pred in shown:
        demo.say("    " + json.dumps(pred))
    # first record sent → last prediction written (its Kafka timestamp)
    elapsed = max(result.last_timestamp - t0, 1e-9)
    lat = np.asarray(result.latencies_ms or [0.0])
    return {
        "records_scored": result.predictions,
        "unique_applicants": result.unique_ids,
        "throughput_rps": round(result.predictions / elapsed, 1),
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "accuracy": round(result.accuracy, 4) if result.accuracy is not None else None,
        "model_versions": result.versions,
    }


def _print_summary(say: Callable[[str], None], summary: dict[str, Any]) -> None:
    say("")
    say("Summary")
    for key, value in summary.items():
        say(f"  {key:<18} {value}")


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
