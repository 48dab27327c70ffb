"""Secured brokers on loopback (Tansu behind a TLS/SASL front) and workers that use them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import PASSWORD, USER
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools.secured_broker import SecuredBroker
from stream_worker.exceptions import BrokerError
from stream_worker.kafka_security import KafkaSecurity
from stream_worker.runtime.admin import delete_topics, ensure_topics

PARTITIONS = 6


def _start(folder: Path, **options: object) -> SecuredBroker:
    broker = SecuredBroker(folder, **options)  # type: ignore[arg-type]
    problem = None
    try:
        broker.start()
    except BrokerError as exc:
        problem = f"cannot start the secured local broker: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    return broker


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """SASL_SSL offering SCRAM-SHA-512 only, one user."""
    broker = _start(
        tmp_path_factory.mktemp("sasl-ssl"),
        protocol="SASL_SSL",
        mechanisms=("SCRAM-SHA-512",),
        users=(("SCRAM-SHA-512", USER, PASSWORD),),
    )
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """TLS alone (security protocol SSL), no authentication."""
    broker = _start(tmp_path_factory.mktemp("ssl"), protocol="SSL")
    yield broker
    broker.stop()


def secured_stack(
    broker: SecuredBroker, model_store: ModelStore, folder: Path
) -> tuple[WorkerStack, KafkaSecurity, list[str]]:
    """Fresh topics on ``broker`` and the env of workers that reach it with its first user."""
    security = broker.security()
    topics = {
        name: f"{name}-{uuid.uuid4().hex}"
        for name in ("applicants", "predictions", "dlq", "outcomes", "outcomes-dlq")
    }
    ensure_topics(broker.bootstrap, list(topics.values()), PARTITIONS, security=security)
    env = {
        **broker.env(security),
        "MLFLOW_TRACKING_URI": model_store.uri,
        "SCORER_INPUT_TOPIC": topics["applicants"],
        "SCORER_OUTPUT_TOPIC": topics["predictions"],
        "SCORER_DLQ_TOPIC": topics["dlq"],
        "SCORER_OUTCOMES_TOPIC": topics["outcomes"],
        "SCORER_OUTCOMES_DLQ_TOPIC": topics["outcomes-dlq"],
        "SCORER_APP_ID": f"scorer-{uuid.uuid4().hex[:12]}",
        "SCORER_DATA_DIR": str(folder / "faust"),
        "SCORER_RELOAD_INTERVAL_SECONDS": "1",
        "SCORER_TOPIC_PARTITIONS": str(PARTITIONS),
    }
    return WorkerStack(broker.bootstrap, env, folder, []), security, list(topics.values())


@pytest.fixture
def scram_stack(
    scram_broker: SecuredBroker, model_store: ModelStore, tmp_path: Path
) -> Iterator[tuple[WorkerStack, KafkaSecurity]]:
    stack, security, topics = secured_stack(scram_broker, model_store, tmp_path)
    try:
        yield stack, security
    finally:
        for worker in stack.workers:
            worker.stop()
        delete_topics(scram_broker.bootstrap, topics, security=security)


@pytest.fixture
def tls_stack(
    tls_broker: SecuredBroker, model_store: ModelStore, tmp_path: Path
) -> Iterator[tuple[WorkerStack, KafkaSecurity]]:
    stack, security, topics = secured_stack(tls_broker, model_store, tmp_path)
    try:
        yield stack, security
    finally:
        for worker in stack.workers:
            worker.stop()
        delete_topics(tls_broker.bootstrap, topics, security=security)
