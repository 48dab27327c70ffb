"""Shared fixtures. Only integration tests request the Kafka ones; nothing starts otherwise.

The Kafka broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` when set, a
testcontainers Kafka when a Docker engine answers, else a local Tansu broker that lives for
the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capture_helpers import CaptureStack
from kafka_helpers import TopicFactory
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools.broker import LocalBroker
from stream_worker.exceptions import BrokerError
from stream_worker.kafka_security import KafkaSecurity, kafka_python_kwargs
from stream_worker.runtime.admin import delete_topics, ensure_topics, wait_for_kafka
from stream_worker.settings import WorkerSettings


def _configured_bootstrap() -> str | None:
    """The bootstrap address from the environment, None when it is not set there."""
    settings = WorkerSettings()
    if "kafka_bootstrap_servers" in settings.model_fields_set:
        return settings.kafka_bootstrap_servers
    return None


def _configured_security() -> KafkaSecurity:
    """TLS/SASL for a broker named by KAFKA_BOOTSTRAP_SERVERS (KAFKA_SECURITY_PROTOCOL, ...)."""
    return WorkerSettings().kafka_security


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission: all mean "no Docker here"
        return False


def _testcontainers_kafka() -> Iterator[str]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka broker that answers, shared by the whole session."""
    configured = _configured_bootstrap()
    if configured is not None:
        problem: str | None = None
        try:
            wait_for_kafka(configured, timeout=30, security=_configured_security())
        except BrokerError as exc:
            problem = f"KAFKA_BOOTSTRAP_SERVERS is set but unusable: {exc}"
        if problem is not None:  # failed outside the except block: no chained traceback
            pytest.fail(problem, pytrace=False)
        yield configured
        return
    if _docker_engine_answers():
        yield from _testcontainers_kafka()
        return
    log_path = tmp_path_factory.mktemp("tansu") / "broker.log"
    broker = LocalBroker(log_path=log_path)
    problem = None
    try:
        broker.start()
    except BrokerError as exc:
        problem = f"cannot start the local Tansu broker: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """``make(partitions=1, *, prefix="test") -> name``: a fresh uuid-named topic, deleted after."""
    created: list[str] = []

    def make(partitions: int = 1, *, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        ensure_topics(kafka_bootstrap, [name], partitions, security=_configured_security())
        created.append(name)
        return name

    yield make
    if created:
        delete_topics(kafka_bootstrap, created, security=_configured_security())


@pytest.fixture
def kafka_producer(kafka_bootstrap: str) -> Iterator[Any]:
    """A kafka-python producer on the session broker (acks=all, 2 MB requests).

    It does not auto-create topics: produce only to topics made by ``topic_factory`` (Tansu
    would otherwise create them with 4 partitions).
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        client_id="tests-producer",
        acks="all",
        linger_ms=5,
        max_request_size=2_000_000,
        allow_auto_create_topics=False,
        max_block_ms=15_000,
        **kafka_python_kwargs(_configured_security()),
    )
    try:
        yield producer
    finally:
        producer.close(timeout=5)


# --- MLflow store with a champion, and scoring workers as real processes -------------------


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store whose ``adult-income@champion`` is a quickly trained real model."""
    store = ModelStore(tmp_path_factory.mktemp("mlflow"))
    store.register()
    return store


@pytest.fixture
def worker_stack(
    kafka_bootstrap: str, topic_factory: TopicFactory, model_store: ModelStore, tmp_path: Path
) -> Iterator[WorkerStack]:
    """Fresh uuid-named topics (6 partitions) and consumer group; workers stopped after."""
    partitions = 6
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MLFLOW_TRACKING_URI": model_store.uri,
        "SCORER_INPUT_TOPIC": topic_factory(partitions, prefix="applicants"),
        "SCORER_OUTPUT_TOPIC": topic_factory(partitions, prefix="predictions"),
        "SCORER_DLQ_TOPIC": topic_factory(partitions, prefix="dlq"),
        "SCORER_OUTCOMES_TOPIC": topic_factory(partitions, prefix="outcomes"),
        "SCORER_OUTCOMES_DLQ_TOPIC": topic_factory(partitions, prefix="outcomes-dlq"),
        "SCORER_APP_ID": f"scorer-{uuid.uuid4().hex[:12]}",
        "SCORER_DATA_DIR": str(tmp_path / "faust"),
        "SCORER_RELOAD_INTERVAL_SECONDS": "1",
        "SCORER_TOPIC_PARTITIONS": str(partitions),
    }
    stack = WorkerStack(kafka_bootstrap, env, tmp_path, [])
    try:
        yield stack
    finally:
        for worker in stack.workers:
            worker.stop()


# --- The capture: outcomes topics, a capture folder, `stream-worker capture` processes ----


@pytest.fixture
def capture_stack(worker_stack: WorkerStack, tmp_path: Path) -> Iterator[CaptureStack]:
    """The worker stack plus a capture folder and group; capture processes stopped after."""
    worker_stack.env.update(
        {
            "SCORER_CAPTURE_GROUP": f"capture-{uuid.uuid4().hex[:12]}",
            "SCORER_CAPTURE_URI": str(tmp_path / "capture"),
            "SCORER_CAPTURE_FLUSH_SECONDS": "1",
            # a dead member is evicted after this; the join takes about half of it (Tansu)
            "SCORER_SESSION_TIMEOUT_SECONDS": "6",
        }
    )
    stack = CaptureStack(worker_stack, tmp_path)
    try:
        yield stack
    finally:
        for proc in stack.captures:
            proc.stop()
