"""The embedded broker and topic administration against a real broker."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from kafka_helpers import TopicFactory, consume_all

from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.exceptions import BrokerError
from stream_worker.runtime.admin import (
    delete_topics,
    ensure_topics,
    topic_partitions,
    wait_for_kafka,
)

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_fixture_broker_answers_and_lists_new_topics(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    from kafka import KafkaAdminClient

    wait_for_kafka(kafka_bootstrap, timeout=5)
    name = topic_factory(2)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert name in admin.list_topics()
    finally:
        admin.close()


def test_ensure_topics_creates_the_partitions_asked_for_and_is_idempotent(
    kafka_bootstrap: str,
) -> None:
    first, second = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    try:
        assert ensure_topics(kafka_bootstrap, [first], partitions=6) == [first]
        assert topic_partitions(kafka_bootstrap, first) == 6

        assert ensure_topics(kafka_bootstrap, [first], partitions=6) == []
        assert ensure_topics(kafka_bootstrap, [first, second, second], partitions=6) == [second]
        assert topic_partitions(kafka_bootstrap, first) == 6
        assert topic_partitions(kafka_bootstrap, second) == 6
    finally:
        delete_topics(kafka_bootstrap, [first, second])


def test_delete_topics_removes_them_and_skips_missing_ones(kafka_bootstrap: str) -> None:
    name, never_made = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    ensure_topics(kafka_bootstrap, [name], partitions=1)

    assert delete_topics(kafka_bootstrap, [name, never_made]) == [name]
    with pytest.raises(BrokerError, match="UnknownTopicOrPartition"):
        topic_partitions(kafka_bootstrap, name)
    with pytest.raises(BrokerError, match=never_made):
        delete_topics(kafka_bootstrap, [never_made], missing_ok=False)


def test_records_with_keys_and_headers_make_the_round_trip(
    kafka_bootstrap: str, topic_factory: TopicFactory, kafka_producer: Any
) -> None:
    topic = topic_factory(3)
    sent = {
        f"applicant-{i}".encode(): (f'{{"n": {i}}}'.encode(), [("source", f"test-{i}".encode())])
        for i in range(12)
    }
    for key, (value, headers) in sent.items():
        kafka_producer.send(topic, key=key, value=value, headers=headers)
    kafka_producer.flush(timeout=10)

    records = consume_all(kafka_bootstrap, topic, expected=len(sent), timeout=20)

    assert {r.key: (r.value, list(r.headers)) for r in records} == sent
    assert len(records) == len(sent)
    assert {r.partition for r in records} <= {0, 1, 2}


def test_produce_of_a_two_megabyte_limit_record(
    kafka_bootstrap: str, topic_factory: TopicFactory, kafka_producer: Any
) -> None:
    topic = topic_factory(1)
    value = b"x" * 1_500_000  # above kafka-python's 1 MB default max_request_size
    kafka_producer.send(topic, key=b"big", value=value).get(timeout=10)

    (record,) = consume_all(kafka_bootstrap, topic, expected=1, timeout=20)

    assert record.value == value


def test_local_broker_listens_only_on_loopback_and_stop_leaves_nothing(tmp_path: Path) -> None:
    log_path = tmp_path / "tansu.log"
    with LocalBroker(log_path=log_path) as broker:
        pid = broker.pid
        assert pid is not None
        assert broker.running
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        listening = [
            c.laddr
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", broker.port)]
        ensure_topics(broker.bootstrap, ["alive"], partitions=1)
        assert topic_partitions(broker.bootstrap, "alive") == 1

    assert _gone(pid)
    assert broker.pid is None
    assert not broker.running
    broker.stop()  # idempotent
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", broker.port))
    assert "listening on: tcp://127.0.0.1" in log_path.read_text()


def test_local_broker_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = LocalBroker(port, log_path=tmp_path / "tansu.log", startup_timeout=15)

        began = time.monotonic()
        with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{port}: the port is already in use"):
            broker.start()

    assert time.monotonic() - began < 10
    assert broker.pid is None
    left = [p for p in psutil.Process().children() if f"127.0.0.1:{port}" in " ".join(p.cmdline())]
    assert left == []


def test_local_broker_is_not_fooled_by_another_broker_on_its_port() -> None:
    with LocalBroker() as first:
        second = LocalBroker(first.port, startup_timeout=15)

        with pytest.raises(BrokerError, match="the port is already in use"):
            second.start()

        assert first.running  # and it still answers
        assert ensure_topics(first.bootstrap, ["still-here"], partitions=2) == ["still-here"]
    assert second.pid is None


def test_local_broker_kills_a_broker_that_never_answers(tmp_path: Path) -> None:
    stubborn = tmp_path / "tansu"  # ignores SIGTERM and never listens
    stubborn.write_text("#!/bin/sh\necho 'warming up' >&2\ntrap '' TERM\nexec sleep 60\n")
    stubborn.chmod(0o755)
    broker = LocalBroker(binary=stubborn, startup_timeout=1, stop_timeout=0.5)

    with pytest.raises(
        BrokerError, match=r"did not listen on 127\.0\.0\.1:\d+ within 1s"
    ) as caught:
        broker.start()

    assert "warming up" in str(caught.value)
    left = [p for p in psutil.Process().children() if str(stubborn) in " ".join(p.cmdline())]
    assert left == []


def test_local_broker_quotes_the_output_of_a_binary_that_dies(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot open storage engine' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(BrokerError, match="exited with status 3") as caught:
        LocalBroker(binary=fake, startup_timeout=10).start()

    assert "cannot open storage engine" in str(caught.value)


def test_wait_for_kafka_times_out_with_the_last_error() -> None:
    port = free_port()

    with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{port} did not answer within 0\.5s"):
        wait_for_kafka(f"127.0.0.1:{port}", timeout=0.5)
