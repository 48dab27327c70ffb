"""Synchronous Kafka helpers for tests (kafka-python); plain functions, importable anywhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka.consumer.fetcher import ConsumerRecord

from stream_worker.devtools.replay import assigned_consumer
from stream_worker.kafka_security import KafkaSecurity

__all__ = ["TopicFactory", "consume_all"]

#: The ``topic_factory`` fixture: ``make(partitions=1, *, prefix="test") -> topic name``.
TopicFactory = Callable[..., str]


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    *,
    security: KafkaSecurity | None = None,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the beginning of every partition until ``expected`` records or timeout.

    No consumer group (:func:`assigned_consumer`): no join delay and no committed offset left
    behind. Returns what it got, possibly fewer than ``expected`` (the caller asserts) or more
    (if the topic holds more). Records are in arrival order, which is offset order within a
    partition only.
    """
    deadline = time.monotonic() + timeout
    consumer, assigned = assigned_consumer(
        bootstrap, topic, wait_seconds=timeout, client_id="tests-consume-all", security=security
    )
    try:
        records: list[ConsumerRecord] = []
        while assigned and len(records) < expected:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            for batch in consumer.poll(timeout_ms=min(remaining_ms, 500)).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
