"""The hand-assigned consumer every devtools reader uses, and the benchmark's read-back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kafka_helpers import TopicFactory

from stream_worker.devtools.bench.phases import first_timestamps
from stream_worker.devtools.replay import assigned_consumer
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import topic_partitions

pytestmark = pytest.mark.integration


def test_assigned_consumer_takes_every_partition_and_creates_no_topic(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(3)
    consumer, assigned = assigned_consumer(kafka_bootstrap, topic)
    try:
        assert sorted(tp.partition for tp in assigned) == [0, 1, 2]
        assert consumer.assignment() == set(assigned)
    finally:
        consumer.close()

    missing = f"test-missing-{uuid.uuid4().hex}"
    consumer, assigned = assigned_consumer(kafka_bootstrap, missing)
    consumer.close()
    assert assigned == []
    with pytest.raises(ScorerError):
        topic_partitions(kafka_bootstrap, missing)


def test_first_timestamps_keeps_the_first_record_of_each_key(
    kafka_bootstrap: str, topic_factory: TopicFactory, kafka_producer: Any
) -> None:
    topic = topic_factory(2)
    sends = [(b"a", 1000), (b"b", 2000), (b"a", 3000), (b"c", 4000)]
    for key, stamp in sends:
        kafka_producer.send(topic, key=key, value=b"{}", partition=0, timestamp_ms=stamp)
    kafka_producer.flush()

    stamps, duplicates = first_timestamps(kafka_bootstrap, topic, expected=3, timeout=20)
    assert stamps == {b"a": 1000, b"b": 2000, b"c": 4000}
    assert duplicates == 1

    with pytest.raises(ScorerError, match="only 3 of 4 records arrived"):
        first_timestamps(kafka_bootstrap, topic, expected=4, timeout=2)
