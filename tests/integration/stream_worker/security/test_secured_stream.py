"""The whole test split scored through a real worker over SASL_SSL (SCRAM-SHA-512) and over
TLS alone, every client (worker, tools, admin, test helpers) using the same settings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kafka_helpers import consume_all
from stack_helpers import WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.devtools.secured_broker import SecuredBroker
from stream_worker.kafka_security import KafkaSecurity

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_split() -> list[dict[str, Any]]:
    return tools.test_records()


def _score_all(
    stack: WorkerStack, security: KafkaSecurity, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    stack.start_worker()
    tools.produce(stack.bootstrap, stack.input_topic, records, security=security)
    return [
        orjson.loads(r.value)
        for r in consume_all(
            stack.bootstrap, stack.output_topic, len(records), 120, security=security
        )
    ]


def _assert_each_scored_once(preds: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    ids = [p["applicant_id"] for p in preds]
    assert len(ids) == len(records)
    assert set(ids) == {r["applicant_id"] for r in records}
    assert {p["model_name"] for p in preds} == {"adult-income"}
    assert all(0.0 <= p["probability"] <= 1.0 for p in preds)


def test_sasl_ssl_scram_sha_512_scores_the_whole_test_split(
    scram_stack: tuple[WorkerStack, KafkaSecurity],
    scram_broker: SecuredBroker,
    test_split: list[dict[str, Any]],
) -> None:
    stack, security = scram_stack
    assert security.security_protocol == "SASL_SSL"
    assert security.sasl_mechanism == "SCRAM-SHA-512"
    assert scram_broker.front is not None
    failed_before = scram_broker.front.authentications["failed"]

    preds = _score_all(stack, security, test_split)

    _assert_each_scored_once(preds, test_split)
    # Every connection (worker, producer, consumer, admin) authenticated; none was refused.
    assert scram_broker.front.authentications["ok"] >= 4
    assert scram_broker.front.authentications["failed"] == failed_before


def test_tls_alone_scores_the_whole_test_split(
    tls_stack: tuple[WorkerStack, KafkaSecurity],
    test_split: list[dict[str, Any]],
) -> None:
    stack, security = tls_stack
    assert security.security_protocol == "SSL"
    assert security.ssl_check_hostname

    preds = _score_all(stack, security, test_split)

    _assert_each_scored_once(preds, test_split)
