"""docker-compose.yml's production topology, run natively on loopback (``make topology``).

Every command comes from docker-compose.yml itself (tests/topology.py adapts host names, ports
and volumes, nothing else): PostgreSQL from Debian's packages with the compose user, password,
database and init script; ``mlflow server`` with the PostgreSQL backend and ``--serve-artifacts``;
the Prefect server on its PostgreSQL database; the trainer's first command (``trainer run``, the
Prefect flow, against the Prefect server) with artifacts through the tracking server; the two
workers scoring from a Kafka broker (the suite's, Tansu by default); Prometheus with the
compose scrape configuration. The test asserts what compose promises: a champion registered
with ``mlflow-artifacts:`` URIs whose runs live in PostgreSQL, both workers serving it and
scoring, Prometheus's targets up and the scorer's metrics queryable.

PostgreSQL missing fails the test (it never skips): CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import TopicFactory, consume_all
from stack_helpers import prometheus_query
from topology import (
    Adapter,
    Addresses,
    NativeService,
    Postgres,
    assert_native,
    load_compose,
    postgres_bin,
    project_console_script,
    prometheus_service,
    wait_for,
)

from stream_worker.devtools.processes import ManagedProcess, http_json
from stream_worker.scoring.schema import example_request

pytestmark = pytest.mark.integration

WORKERS = ("worker-1", "worker-2")
RECORDS = 600
# The quick training settings of the tests (tests/stack_helpers.py, ModelStore.settings).
QUICK_TRAINING = {
    "TRAINER_TRIALS": "1",
    "TRAINER_MAX_ROUNDS": "120",
    "TRAINER_EARLY_STOPPING_ROUNDS": "10",
    "TRAINER_TIMEOUT_SECONDS": "60",
    "TRAINER_GATE_MIN_ROC_AUC": "0.5",
    "TRAINER_GATE_TOLERANCE": "1.0",
}


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def launch(
    processes: list[ManagedProcess], service: NativeService, folder: Path, **env: str
) -> ManagedProcess:
    """Start the service's process without waiting for it (see ``wait_ready``)."""
    proc = service.process(folder, env)
    proc.argv = project_console_script(list(proc.argv))
    processes.append(proc)
    url, proc.ready_url = proc.ready_url, None
    proc.start()
    proc.ready_url = url
    return proc


def trainer_first_command(service: NativeService) -> list[str]:
    """``trainer run`` out of ``sh -c 'trainer run; exec trainer schedule --cron ...'``: the run
    at start-up; the schedule after it waits for cron and is left out here."""
    assert service.argv[:2] == ["sh", "-c"], service.argv
    first, _, rest = service.argv[2].partition(";")
    assert shlex.split(rest)[:3] == ["exec", "trainer", "schedule"], rest
    return shlex.split(first)


def test_the_compose_topology_runs_natively(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    kafka_producer: Any,
    processes: list[ManagedProcess],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    postgres_bin()  # fails with what to install, never skips
    compose = load_compose()
    addresses = Addresses(tmp_path)
    adapter = Adapter(compose, addresses, elsewhere={"kafka:9092": kafka_bootstrap})
    native = {name: adapter.service(name) for name in ("mlflow", "prefect-server", "trainer")}
    native |= {name: adapter.service(name) for name in WORKERS}
    native["prometheus"] = prometheus_service(compose, adapter, tmp_path, running=set(WORKERS))
    assert_native(list(native.values()), compose)

    # PostgreSQL: the compose user/password/database; its init script made Prefect's database.
    postgres = Postgres.from_compose(compose, addresses)
    try:
        postgres.start()
        databases = set(postgres.psql("postgres", "SELECT datname FROM pg_database").split())
        assert {"mlflow", "prefect"} <= databases

        # MLflow and the Prefect server, both on PostgreSQL, started together.
        mlflow = launch(processes, native["mlflow"], tmp_path)
        prefect = launch(
            processes,
            native["prefect-server"],
            tmp_path,
            PREFECT_HOME=str(tmp_path / "prefect-server"),
        )
        mlflow.wait_ready(120)
        prefect.wait_ready(180)

        # The trainer's start-up run, the flow through the Prefect server, artifacts via MLflow.
        trainer = native["trainer"]
        run = ManagedProcess(
            "trainer",
            project_console_script(
                [*trainer_first_command(trainer), "--result-json", str(tmp_path / "run.json")]
            ),
            None,
            tmp_path / "trainer.log",
            env={**trainer.env, **QUICK_TRAINING, "PREFECT_HOME": str(tmp_path / "prefect")},
            cwd=tmp_path,
        )
        run.start()
        assert run.process is not None
        assert run.process.wait(timeout=300) == 0, run.tail(30)
        outcome = json.loads((tmp_path / "run.json").read_text())
        assert outcome["promoted"] is True, outcome
        version = outcome["version"]
        assert trainer.env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
        # The run and the registry live in PostgreSQL; the artifacts went through the server.
        artifact_uri = postgres.psql(
            "mlflow", f"SELECT artifact_uri FROM runs WHERE run_uuid = '{outcome['run_id']}'"
        ).strip()
        assert artifact_uri.startswith("mlflow-artifacts:"), artifact_uri
        assert postgres.psql(
            "mlflow", "SELECT version FROM registered_model_aliases WHERE alias = 'champion'"
        ).split() == [version]
        stored = [p for p in (tmp_path / "volumes" / "mlflow-artifacts").rglob("*") if p.is_file()]
        assert len(stored) > 5, "the artifacts did not reach the server's artifact volume"
        assert postgres.psql("prefect", "SELECT count(*) FROM flow_run").strip() != "0"

        # Two workers, one consumer group, the compose environment plus test-owned topics.
        topics = {
            "SCORER_INPUT_TOPIC": topic_factory(6, prefix="applicants"),
            "SCORER_OUTPUT_TOPIC": topic_factory(6, prefix="predictions"),
            "SCORER_DLQ_TOPIC": topic_factory(6, prefix="dlq"),
            "SCORER_OUTCOMES_TOPIC": topic_factory(6, prefix="outcomes"),
            "SCORER_OUTCOMES_DLQ_TOPIC": topic_factory(6, prefix="outcomes-dlq"),
            "SCORER_APP_ID": f"topology-{uuid.uuid4().hex[:8]}",
        }
        workers = [launch(processes, native[name], tmp_path, **topics) for name in WORKERS]
        for proc in workers:
            proc.wait_ready(120)
            assert proc.ready_url is not None
            assert http_json(proc.ready_url)["model_version"] == version

        for i in range(RECORDS):
            record = {**example_request(), "applicant_id": f"t-{i}"}
            kafka_producer.send(
                topics["SCORER_INPUT_TOPIC"], json.dumps(record).encode(), key=f"t-{i}".encode()
            )
        kafka_producer.flush(timeout=30)
        out = consume_all(kafka_bootstrap, topics["SCORER_OUTPUT_TOPIC"], RECORDS, 120)
        assert {json.loads(r.value)["applicant_id"] for r in out} == {
            f"t-{i}" for i in range(RECORDS)
        }
        assert {json.loads(r.value)["model_version"] for r in out} == {version}

        # Prometheus, the compose command and scrape configuration on loopback.
        prom = launch(processes, native["prometheus"], tmp_path)
        prom.wait_ready(60)
        assert prom.ready_url is not None
        base = prom.ready_url.removesuffix("/-/ready")

        def targets_up() -> list[dict[str, Any]]:
            result = prometheus_query(base, 'up{job="income-scorer"} == 1')
            return result if len(result) == len(WORKERS) else []

        wait_for(targets_up, 60, "both workers' targets up")

        def scored() -> list[dict[str, Any]]:
            result = prometheus_query(
                base, 'sum by (instance) (scorer_records_total{outcome="scored"})'
            )
            total = sum(float(r["value"][1]) for r in result)
            return result if total >= RECORDS else []

        per_worker = wait_for(scored, 60, "scorer_records_total in Prometheus")
        assert sum(float(r["value"][1]) for r in per_worker) >= RECORDS
        assert prometheus_query(base, f'scorer_model_info{{model_version="{version}"}}')
        assert prometheus_query(base, "scorer_event_latency_seconds_count > 0")
    finally:
        for proc in reversed(processes):
            proc.stop()
        postgres.stop()
    assert time.monotonic() - started < 300
