"""The worker against a real ``mlflow server``: scoring survives the registry going away."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka_helpers import consume_all
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import ManagedProcess, mlflow_server
from trainer.pipeline import run_once

pytestmark = pytest.mark.integration


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    server = mlflow_server(tmp_path / "mlflow-server", free_port())
    server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


def _scored(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('scorer_records_total{outcome="scored"}'):
            return float(line.split()[-1])
    raise AssertionError("scorer_records_total{outcome=scored} not exported")


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_scoring_continues_while_the_registry_is_down(
    worker_stack: WorkerStack,
    model_store: ModelStore,
    tracking_server: ManagedProcess,
) -> None:
    assert tracking_server.ready_url is not None
    uri = tracking_server.ready_url.removesuffix("/health")
    version = run_once(model_store.settings(mlflow_tracking_uri=uri)).version

    worker = worker_stack.start_worker(MLFLOW_TRACKING_URI=uri)
    assert worker.ready_url is not None
    base = worker.ready_url.removesuffix("/health")
    records = tools.test_records()[:2000]
    tools.produce(worker_stack.bootstrap, worker_stack.input_topic, records[:1000])
    assert len(consume_all(worker_stack.bootstrap, worker_stack.output_topic, 1000, 60)) == 1000

    tracking_server.stop()  # the registry is gone
    time.sleep(3)  # a few reload polls fail meanwhile
    tools.produce(worker_stack.bootstrap, worker_stack.input_topic, records[1000:])
    preds = [
        orjson.loads(r.value)
        for r in consume_all(worker_stack.bootstrap, worker_stack.output_topic, 2000, 60)
    ]
    assert {p["applicant_id"] for p in preds} == {r["applicant_id"] for r in records}
    assert {p["model_version"] for p in preds} == {version}

    status, health = _get(f"{base}/health")
    assert status == 200
    assert health["model_loaded"] is True
    _, info = _get(f"{base}/model_info")
    assert info["version"] == version
    assert info["last_error"]  # the failed polls are visible, not hidden


def test_worker_waits_for_a_model_before_consuming(
    worker_stack: WorkerStack, tmp_path: Path
) -> None:
    (tmp_path / "late").mkdir()
    empty_store = ModelStore(tmp_path / "late").uri  # no model registered yet
    port = free_port()
    from stream_worker.devtools.processes import worker_process

    worker = worker_process(
        {**worker_stack.env, "MLFLOW_TRACKING_URI": empty_store}, port, tmp_path / "w.log"
    )
    worker.ready_url = None  # it never becomes healthy: start without waiting
    worker_stack.workers.append(worker)
    worker.start()
    deadline = time.monotonic() + 60
    status, body = 0, {}
    while time.monotonic() < deadline:
        try:
            status, body = _get(f"http://127.0.0.1:{port}/health")
            break
        except OSError:
            time.sleep(0.5)
    assert status == 503
    assert body["model_loaded"] is False
    records = tools.test_records()[:50]
    tools.produce(worker_stack.bootstrap, worker_stack.input_topic, records)
    time.sleep(6)  # past the group join (~4 s): records are fetched, none may be scored
    assert worker.running
    assert _scored(port) == 0

    # A champion appears later: the held records are scored by it, each exactly once.
    version = ModelStore(tmp_path / "late").register()
    assert ModelStore(tmp_path / "late").uri == empty_store
    preds = consume_all(worker_stack.bootstrap, worker_stack.output_topic, len(records), 90)
    ids = [orjson.loads(p.value)["applicant_id"] for p in preds]
    assert sorted(ids) == sorted(r["applicant_id"] for r in records)
    assert {orjson.loads(p.value)["model_version"] for p in preds} == {version}
