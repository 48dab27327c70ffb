"""Synchronous Kafka helpers for tests (kafka-python); plain functions, importable anywhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

__all__ = ["TopicFactory", "consume_all"]

#: The ``topic_factory`` fixture: ``make(partitions=1, *, prefix="test") -> topic name``.
TopicFactory = Callable[..., str]


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning of every partition until ``expected`` records or timeout.

    No consumer group: partitions are assigned by hand, so there is no join delay and no
    committed offset left behind. Returns what it got, possibly fewer than ``expected`` (the
    caller asserts) or more (if the topic holds more). Records are in arrival order, which is
    offset order within a partition only.
    """
    deadline = time.monotonic() + timeout
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="tests-consume-all",
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,  # a typo must not create a 4-partition topic
        auto_offset_reset="earliest",
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord] = []
        while len(records) < expected:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            for batch in consumer.poll(timeout_ms=min(remaining_ms, 500)).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
