"""The system as a user drives it: CLI replay into Kafka, predictions topic, real Prometheus.

One worker scores the replayed test split while a real Prometheus scrapes it with the shipped
alert rules. Every Grafana panel's PromQL must return data, and the drift replay must put the
FeatureDrift alert into pending (or firing).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack_helpers import WorkerStack

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.monitoring_files import dashboards, local_prometheus_config
from stream_worker.devtools.processes import ManagedProcess, prometheus_server

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CLI = str(Path(sys.executable).parent / "stream-worker")


def _cli(stack: WorkerStack, *args: str, timeout: float = 180) -> str:
    proc = subprocess.run(
        [CLI, *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


# Panels of `stream-worker monitor` (live performance from the capture), which this stack does
# not run: tests/integration/monitoring/test_live_performance.py proves them on a monitor.
MONITOR_DASHBOARDS = {"scorer-model-performance"}


def _panel_exprs() -> list[tuple[str, str]]:
    found = []
    for path in dashboards():
        if path.stem in MONITOR_DASHBOARDS:
            continue
        model = json.loads(path.read_text())
        for panel in model.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{path.stem}: {panel.get('title')}", target["expr"]))
    assert found, "no dashboard panels found"
    return found


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[ManagedProcess, Path]]:
    """A real Prometheus; the test writes its scrape config, then starts it."""
    config = tmp_path / "prometheus.yml"
    proc = prometheus_server(config, tmp_path / "prom", free_port())
    try:
        yield proc, config
    finally:
        proc.stop()


def test_replay_predictions_metrics_dashboards_and_drift_alert(
    worker_stack: WorkerStack, prometheus: tuple[ManagedProcess, Path]
) -> None:
    worker = worker_stack.start_worker()
    assert worker.ready_url is not None
    target = re.sub(r"^http://|/health$", "", worker.ready_url)
    prom_proc, config = prometheus
    local_prometheus_config(config, [target], interval="1s")
    prom_proc.start(timeout=60)
    assert prom_proc.ready_url is not None
    prom = prom_proc.ready_url.removesuffix("/-/ready")

    # 1. A user replays the test split and tails the predictions topic.
    out = _cli(worker_stack, "produce")
    assert "sent 16281 records" in out
    summary = _cli(worker_stack, "consume", "--quiet", "--timeout", "15").strip().splitlines()[-1]
    assert summary.startswith("16281 predictions, 16281 applicants")
    accuracy = float(re.search(r"accuracy on 16281 labelled: ([0-9.]+)", summary).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.8

    # 2. Prometheus has scraped it; keep traffic flowing so rate() windows hold samples.
    _cli(worker_stack, "produce", "--synthetic", "--limit", "3000", "--rate", "1000", "--seed", "1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _query(
        prom, 'scorer_records_total{outcome="scored"} > 16000'
    ):
        time.sleep(1)
    assert _query(prom, 'up{job="income-scorer"} == 1')
    empty = [(title, expr) for title, expr in _panel_exprs() if not _query(prom, expr)]
    assert not empty, f"panels without data: {empty}"

    # 3. The drift replay: FeatureDrift goes pending (its `for: 5m` keeps it from firing yet).
    _cli(worker_stack, "produce", "--drift", "--limit", "8000", "--rate", "4000", "--seed", "2")
    deadline = time.monotonic() + 60
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{prom}/api/v1/alerts", timeout=10) as resp:
            alerts = json.loads(resp.read())["data"]["alerts"]
        states = {a["labels"].get("feature", a["labels"]["alertname"]): a["state"]
                  for a in alerts if a["labels"]["alertname"] == "FeatureDrift"}  # fmt: skip
        if {"age", "hours_per_week"} <= set(states):
            break
        time.sleep(1)
    assert states.get("age") in {"pending", "firing"}, states
    assert states.get("hours_per_week") in {"pending", "firing"}, states
    psi = _query(prom, 'scorer_feature_drift_psi{feature="age"}')
    assert float(psi[0]["value"][1]) > 0.2
