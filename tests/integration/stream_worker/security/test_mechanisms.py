"""PLAIN and SCRAM-SHA-256 over SASL_PLAINTEXT: a round trip with the tools' clients and the
security check (kafka-python and aiokafka), and the topic admin, on a fresh front each."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka_helpers import consume_all
from security_helpers import PASSWORD, USER

from stream_worker.devtools import replay as tools
from stream_worker.devtools.secured_broker import SecuredBroker
from stream_worker.kafka_security import check_security
from stream_worker.runtime.admin import delete_topics, ensure_topics, topic_partitions

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_plaintext_round_trip(tmp_path: Path, mechanism: str) -> None:
    with SecuredBroker(
        tmp_path,
        protocol="SASL_PLAINTEXT",
        mechanisms=(mechanism,),
        users=((mechanism, USER, PASSWORD),),
    ) as broker:
        security = broker.security()
        assert security.sasl_mechanism == mechanism
        assert security.ssl_cafile is None
        check_security(broker.bootstrap, security)  # aiokafka's SASL exchange
        topic = f"mechanism-{uuid.uuid4().hex}"
        assert ensure_topics(broker.bootstrap, [topic], 2, security=security) == [topic]
        assert topic_partitions(broker.bootstrap, topic, security=security) == 2
        records = tools.test_records()[:200]
        tools.produce(broker.bootstrap, topic, records, security=security)
        got = consume_all(broker.bootstrap, topic, len(records), 30, security=security)
        assert {r.key.decode() for r in got} == {r["applicant_id"] for r in records}
        assert delete_topics(broker.bootstrap, [topic], security=security) == [topic]
        assert broker.front is not None
        assert broker.front.authentications["failed"] == 0
