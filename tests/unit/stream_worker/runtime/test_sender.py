"""PartitionedSender: where each output record goes, and how record batches are cut."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from stream_harness import OUTPUT, FakeProducer

from stream_worker.runtime.sender import Outgoing, PartitionedSender


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


def test_records_go_to_the_output_partition_numbered_like_their_input() -> None:
    """Input partition modulo the output's partition count; order within a partition kept."""

    async def test() -> None:
        producer = FakeProducer({OUTPUT: 3})
        sender = PartitionedSender(producer, OUTPUT)
        records: list[Outgoing] = [
            (p, b"k", b"%d-%d" % (p, i), []) for i in range(3) for p in range(6)
        ]
        futures = await sender.send(records)
        by_partition = {s.partition: s.values for s in producer.sent}
        assert by_partition == {
            q: [b"%d-%d" % (p, i) for i in range(3) for p in (q, q + 3)] for q in range(3)
        }
        assert futures == [s.future for s in producer.sent]  # one future per record batch

    run(test)


def test_a_full_record_batch_is_sent_and_another_started() -> None:
    async def test() -> None:
        producer = FakeProducer({OUTPUT: 1}, batch_capacity=4)
        sender = PartitionedSender(producer, OUTPUT)
        await sender.send([(0, None, b"%d" % i, [("h", b"v")]) for i in range(10)])
        assert [s.batch.record_count() for s in producer.sent] == [4, 4, 2]
        assert [v for s in producer.sent for v in s.values] == [b"%d" % i for i in range(10)]
        assert all(s.batch.closed and s.partition == 0 for s in producer.sent)
        assert producer.sent[0].batch.records[0] == (None, b"0", [("h", b"v")])

    run(test)


def test_nothing_to_send_sends_nothing() -> None:
    async def test() -> None:
        producer = FakeProducer()
        assert await PartitionedSender(producer, OUTPUT).send([]) == []
        assert producer.sent == []

    run(test)


def test_a_null_value_stays_null() -> None:
    async def test() -> None:
        producer = FakeProducer()
        await PartitionedSender(producer, OUTPUT).send([(0, b"k", None, [])])
        assert producer.sent[0].values == [None]

    run(test)
