"""The end-to-end demo on loopback: the whole loop in a few minutes.

Broker, MLflow, training, a worker, the capture, the monitor and Prometheus; a replay with
outcomes; live performance beside the offline figures; a retrain on the capture gated on the
same rows; the worker swaps; live figures per version.

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
    capture_process,
    console_script,
    http_json,
    http_text,
    mlflow_server,
    monitor_process,
    prometheus_server,
    worker_process,
)
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import ensure_topics
from stream_worker.settings import WorkerSettings

#: The first replay sends this many test rows with outcomes; the retrained version then
#: serves the rest, which neither version was trained on.
FIRST_PASS = 12000


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    trials: int = 5
    train_timeout: float = 90.0
    limit: int | None = None
    keep_running: bool = False
    outcome_delay: float = 2.0


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
    """The eight steps; prints a summary and returns it. Raises if records went unscored."""
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = _Demo(opts, say, work, LocalBroker(port=_port(9092), log_path=work / "broker.log"))
    try:
        say("1/8 starting the Kafka-compatible broker (Tansu) …")
        demo.broker.start()
        say(f"    broker at {demo.broker.bootstrap} (pid {demo.broker.pid})")
        tracking = _start_mlflow(demo)
        say(f"3/8 training ({opts.trials} Optuna trials) through the Prefect flow …")
        first = _train(tracking, opts, work)
        say(f"    registered and promoted adult-income version {first['version']}")
        env = _stack_env(demo, tracking)
        ports = _start_services(demo, env)
        prometheus_url = _start_prometheus(demo, ports)
        records, total, t0 = _replay(demo, env, 0, opts.limit or FIRST_PASS)
        summary = _read_predictions(demo, records, total, t0)
        summary["live"] = {first["version"]: _live(demo, ports, first, total)}
        _loop(demo, env, ports, tracking, total, summary)
        summary.update(
            mlflow_ui=tracking,
            worker_metrics=f"http://{LOOPBACK}:{ports['worker']}/metrics",
            monitor_metrics=f"http://{LOOPBACK}:{ports['monitor']}/metrics",
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


def _loop(
    demo: _Demo,
    env: dict[str, str],
    ports: dict[str, int],
    tracking: str,
    first_total: int,
    summary: dict[str, Any],
) -> None:
    """Steps 7–8: retrain on the capture; if the gate promotes, the worker swaps and serves
    the rest of the test split, and the monitor shows live figures for both versions."""
    demo.say("7/8 retraining on adult.data plus the labelled capture, gated on the same rows …")
    capture = env["SCORER_CAPTURE_URI"]
    second = _train(tracking, demo.opts, demo.work, capture_uri=capture, require_promotion=False)
    summary["retrain"] = {k: second[k] for k in ("version", "promoted", "reason")}
    demo.say(f"    version {second['version']}: {second['reason']}")
    if not second["promoted"]:
        demo.say("8/8 the gate kept the champion; no swap to show")
        return
    demo.say(f"8/8 the worker swaps to version {second['version']}; replaying the rest …")
    _wait_for_version(ports["worker"], str(second["version"]))
    rest = len(tools.test_records()) - first_total
    if rest <= 0:
        return
    _replay(demo, env, first_total, rest)
    summary["live"][str(second["version"])] = _live(demo, ports, second, rest)


def _stack_env(demo: _Demo, tracking: str) -> dict[str, str]:
    """What the worker, capture and monitor share: broker, store, capture, short intervals."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": demo.broker.bootstrap,
        "MLFLOW_TRACKING_URI": tracking,
        "SCORER_APP_ID": f"income-scorer-demo-{uuid.uuid4().hex[:8]}",
        "SCORER_DATA_DIR": str(demo.work / "faust"),
        "SCORER_CAPTURE_URI": str(demo.work / "capture"),
        "SCORER_CAPTURE_FLUSH_SECONDS": "1",
        "SCORER_MONITOR_INTERVAL_SECONDS": "2",
        "SCORER_RELOAD_INTERVAL_SECONDS": "2",
    }


def _start_mlflow(demo: _Demo) -> str:
    """Step 2: the MLflow tracking server; its URL."""
    demo.say("2/8 starting the MLflow tracking server …")
    mlflow = demo.start(mlflow_server(demo.work / "mlflow", _port(5000)), timeout=120)
    assert mlflow.ready_url is not None
    tracking = mlflow.ready_url.removesuffix("/health")
    demo.say(f"    MLflow at {tracking} (pid {mlflow.pid})")
    return tracking


def _start_services(demo: _Demo, env: dict[str, str]) -> dict[str, int]:
    """Step 4: the topics, one scoring worker, the capture and the monitor; their ports."""
    demo.say("4/8 starting the scoring worker, the capture and the monitor …")
    ensure_topics(demo.broker.bootstrap, WorkerSettings().topics(), 6)
    ports = {"worker": _port(6066), "capture": _port(6069), "monitor": _port(6068)}
    work = demo.work
    worker = demo.start(worker_process(env, ports["worker"], work / "worker.log"), timeout=120)
    demo.start(capture_process(env, ports["capture"], work / "capture.log"), timeout=90)
    demo.start(monitor_process(env, ports["monitor"], work / "monitor.log"), timeout=90)
    demo.say(
        f"    worker ready (pid {worker.pid}), metrics at "
        f"http://{LOOPBACK}:{ports['worker']}/metrics; capture in {env['SCORER_CAPTURE_URI']}"
    )
    return ports


def _start_prometheus(demo: _Demo, ports: dict[str, int]) -> str | None:
    """Prometheus scraping the worker and the monitor, when it is installed; its URL."""
    try:
        prom_port = _port(9090)
        config = local_prometheus_config(
            demo.work / "prometheus.yml",
            [f"{LOOPBACK}:{ports['worker']}"],
            monitor_targets=[f"{LOOPBACK}:{ports['monitor']}"],
        )
        prom = demo.start(prometheus_server(config, demo.work / "prometheus", prom_port), 60)
    except ScorerError as exc:
        demo.say(f"    Prometheus not started: {exc}")
        return None
    url = f"http://{LOOPBACK}:{prom_port}"
    demo.say(f"    Prometheus at {url} (pid {prom.pid}), rules {alert_rules_path()}")
    return url


def _replay(
    demo: _Demo, env: dict[str, str], start: int, count: int
) -> tuple[list[dict[str, Any]], int, float]:
    """Steps 5 and 8: test rows ``start``… into 'applicants', each true label following
    on 'outcomes' after the delay; the records, how many were sent, and when."""
    demo.say(
        f"5/8 replaying {count} test rows from row {start} with their outcomes "
        f"({demo.opts.outcome_delay:g} s later) …"
        if start == 0
        else f"    replaying {count} test rows from row {start} with their outcomes …"
    )
    records = tools.test_records()
    t0 = time.time()
    plan = tools.OutcomePlan("outcomes", demo.opts.outcome_delay, 1.0, 0)
    sent = tools.produce(
        env["KAFKA_BOOTSTRAP_SERVERS"], "applicants", records, limit=count, start=start,
        outcomes=plan,
    )  # fmt: skip
    demo.say(f"    sent {sent.sent} records and {sent.outcomes} outcomes in {sent.seconds:.1f}s")
    return records, sent.sent, t0


def _live(
    demo: _Demo, ports: dict[str, int], trained: dict[str, Any], expected: int
) -> dict[str, float]:
    """Wait until the monitor has joined ``expected`` outcomes for the version; its figures."""
    version = str(trained["version"])
    url = f"http://{LOOPBACK}:{ports['monitor']}/metrics"
    deadline = time.monotonic() + 120
    figures: dict[str, float] = {}
    while time.monotonic() < deadline:
        figures = _version_figures(url, version)
        if figures.get("labelled_records", 0) >= expected:
            break
        time.sleep(1)
    offline = trained.get("metrics", {})
    figures["offline_roc_auc"] = round(float(offline.get("test_roc_auc", float("nan"))), 4)
    figures["offline_accuracy"] = round(float(offline.get("test_accuracy", float("nan"))), 4)
    demo.say(
        f"    live, version {version}: ROC-AUC {figures.get('roc_auc')} (offline "
        f"{figures['offline_roc_auc']}), accuracy {figures.get('accuracy')} (offline "
        f"{figures['offline_accuracy']}, estimated before labels "
        f"{figures.get('estimated_accuracy')}), {int(figures.get('labelled_records', 0))} "
        "labelled"
    )
    return figures


def _version_figures(metrics_url: str, version: str) -> dict[str, float]:
    """The monitor's ``scorer_live_*`` gauges of one version, prefix dropped."""
    try:
        text = http_text(metrics_url)
    except OSError:
        return {}
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("scorer_live_") or f'model_version="{version}"' not in line:
            continue
        if 'population="scored"' in line:  # the estimate over the labelled rows is the one shown
            continue
        name = line.partition("{")[0].removeprefix("scorer_live_")
        if not name.endswith(("_bucket", "_sum", "_count", "_created")):
            figures[name] = round(float(line.rsplit(" ", 1)[-1]), 4)
    return figures


def _wait_for_version(web_port: int, version: str, timeout: float = 60.0) -> None:
    url = f"http://{LOOPBACK}:{web_port}/model_info"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if str(http_json(url).get("version")) == version:
                return
        except OSError:
            pass
        time.sleep(1)
    raise ScorerError(f"the worker did not swap to version {version} within {timeout:.0f}s")


def _read_predictions(
    demo: _Demo, records: list[dict[str, Any]], total: int, t0: float
) -> dict[str, Any]:
    """Step 6: read the predictions back; show three, sum up the rest."""
    demo.say("6/8 reading the predictions topic and waiting for the monitor's join …")
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
        if key == "live":
            continue
        if key == "retrain":
            value = f"version {value['version']} promoted={value['promoted']}"
        say(f"  {key:<18} {value}")
    say("")
    say("Live performance per version (monitor) against the offline test figures (MLflow)")
    say(f"  {'version':>7} {'labelled':>8} {'ROC-AUC':>8} {'offline':>8} {'accuracy':>8} "
        f"{'offline':>8} {'estimated':>9} {'ECE':>7}")  # fmt: skip
    for version, f in summary.get("live", {}).items():
        say(
            f"  {version:>7} {int(f.get('labelled_records', 0)):>8} {f.get('roc_auc', '-'):>8} "
            f"{f['offline_roc_auc']:>8} {f.get('accuracy', '-'):>8} {f['offline_accuracy']:>8} "
            f"{f.get('estimated_accuracy', '-'):>9} {f.get('calibration_error', '-'):>7}"
        )


def _train(
    tracking: str,
    opts: DemoOptions,
    work: Path,
    *,
    capture_uri: str | None = None,
    require_promotion: bool = True,
) -> dict[str, Any]:
    """``trainer run`` (optionally on the capture too); the outcome it wrote."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    name = "retrain" if capture_uri else "training"
    outcome_file = work / f"{name}-outcome.json"
    argv = [
        console_script("trainer"), "run",
        "--trials", str(opts.trials),
        "--timeout", str(opts.train_timeout),
        "--result-json", str(outcome_file),
    ]  # fmt: skip
    if capture_uri:
        argv += ["--capture-uri", capture_uri]
    log = work / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise ScorerError(f"{name} failed (see {log}): {' | '.join(tail)}")
    outcome: dict[str, Any] = json.loads(outcome_file.read_text())
    if require_promotion and not outcome.get("promoted"):
        raise ScorerError(f"the trained model was not promoted: {outcome.get('reason')}")
    return outcome
