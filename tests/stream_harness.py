"""An in-memory stream for the scoring loop: a consumer with partitions, generations, acks and
commits, and a producer whose deliveries the test resolves in any order or fails.

In the spirit of Faust's ``test_context()`` and Bytewax's testing sources and sinks: the loop
(:func:`stream_worker.runtime.loop.scoring_loop`) runs unchanged over these fakes, and the test
plays the broker and the group coordinator.

The consumer keeps Faust's bookkeeping: offsets acked per partition; a commit moves the
committed offset over the acked offsets the way ``faust.transport.consumer.Consumer._new_offset``
does, including its gap guard (skipped before a partition's first commit, blind to a one-offset
gap), so a test sees what Faust would commit. A rebalance is aiokafka's eager protocol, as Faust
runs it: every partition is revoked (the worker's hook drains and commits first), the flow is
suspended and the queue cleared, then a new generation is assigned and every partition is read
again from its committed offset.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import Message

from stream_worker.runtime.acks import UnackedBatches
from stream_worker.runtime.loop import LoopConfig, scoring_loop
from stream_worker.scoring.scorer import BatchResult, DeadLetter, InputRecord, OutputRecord

TOPIC = "applicants"
OUTPUT = "predictions"
DLQ = "applicants.dlq"
#: A record value the fake scorer dead-letters.
POISON = b"poison"


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


class FakeConsumer:
    """A consumer of ``TOPIC``: a log per partition, a fetch position, acks and commits."""

    def __init__(self, partitions: int = 1, generation: int = 1) -> None:
        self.logs: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        self.position: dict[int, int] = dict.fromkeys(self.logs, 0)
        self.committed: dict[int, int | None] = dict.fromkeys(self.logs)
        self.acked: dict[int, list[int]] = {p: [] for p in self.logs}
        self.ack_log: list[tuple[int, int]] = []  # (partition, offset) in the order acked
        self._generation = generation
        self._flow = True
        self.on_assigned: list[Callable[[], object]] = []  # the worker's assignment hook
        self._queue: asyncio.Queue[Message] = asyncio.Queue()

    # -- ports.StreamConsumer --------------------------------------------------------------

    @property
    def queue(self) -> asyncio.Queue[Message]:
        return self._queue

    def generation(self) -> int:
        return self._generation

    def flow_active(self) -> bool:
        return self._flow

    def ack(self, messages: Sequence[Message]) -> None:
        for m in messages:
            self.ack_log.append((m.partition, m.offset))
            self.acked[m.partition].append(m.offset)

    # -- the broker and the group, played by the test ----------------------------------------

    def produce(self, partition: int, *values: bytes) -> None:
        self.logs[partition].extend(values)

    def fetch(self, partition: int | None = None, limit: int | None = None) -> list[Message]:
        """Hand what the log holds past the fetch position to the queue, stamped with the
        current generation (what Faust's fetcher does)."""
        fetched: list[Message] = []
        for p in self.logs if partition is None else [partition]:
            start = self.position[p]
            end = len(self.logs[p]) if limit is None else min(len(self.logs[p]), start + limit)
            for offset in range(start, end):
                message = Message(
                    TOPIC, p, offset, 1.0, 0, [], b"k%d" % offset, self.logs[p][offset], None,
                    generation_id=self._generation,
                )  # fmt: skip
                self._queue.put_nowait(message)
                fetched.append(message)
            self.position[p] = end
        return fetched

    def commit(self) -> dict[int, int | None]:
        """Commit what Faust would: per partition, ``Consumer._new_offset``'s answer."""
        for p, acked in self.acked.items():
            if not acked:
                continue
            acked.sort()
            committed = self.committed[p]
            if committed and min(acked) - committed > 1:
                continue  # Faust's gap guard
            run = 1
            while run < len(acked) and acked[run] == acked[run - 1] + 1:
                run += 1
            self.committed[p] = acked[run - 1] + 1
            del acked[:run]
        return dict(self.committed)

    async def revoke(self, before: Callable[[], Awaitable[object]] | None = None) -> None:
        """Revoke every partition: the worker's hook (``before``, its drain), a commit, then
        Faust's own steps: suspend the flow, clear the queue, forget the uncommitted acks."""
        if before is not None:
            await before()
        self.commit()
        self._flow = False
        while not self._queue.empty():
            self._queue.get_nowait()
        for acked in self.acked.values():
            acked.clear()

    def assign(self, generation: int | None = None) -> None:
        """A new generation (the next one unless given): the worker's hook runs, then every
        partition is read again from its committed offset."""
        self._generation = self._generation + 1 if generation is None else generation
        for hook in self.on_assigned:
            hook()
        for p in self.logs:
            self.position[p] = self.committed[p] or 0
        self._flow = True


class FakeBatch:
    """aiokafka's ``BatchBuilder``: takes up to ``capacity`` records."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.closed = False

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
    ) -> Any:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()

    def close(self) -> None:
        self.closed = True

    def record_count(self) -> int:
        return len(self.records)


@dataclass
class Sent:
    """One record batch the producer was given, and its delivery future."""

    topic: str
    partition: int
    batch: FakeBatch
    future: asyncio.Future[Any]

    @property
    def values(self) -> list[bytes | None]:
        return [value for _, value, _ in self.batch.records]

    def deliver(self) -> None:
        self.future.set_result(None)

    def fail(self, error: BaseException | None = None) -> None:
        self.future.set_exception(error or RuntimeError("broker said no"))


@dataclass
class FakeProducer:
    """Record batches in, delivery futures out; nothing is delivered until the test says so."""

    partitions: dict[str, int] = field(default_factory=lambda: {OUTPUT: 1, DLQ: 1})
    batch_capacity: int = 1000
    sent: list[Sent] = field(default_factory=list)

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_capacity)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        assert batch.closed
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, partition, batch, future))
        return future

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def to(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def values(self, topic: str = OUTPUT) -> list[bytes | None]:
        return [v for s in self.to(topic) for v in s.values]


def fake_score(records: Sequence[InputRecord]) -> BatchResult:
    """Echo each value as its prediction; ``POISON`` becomes a dead letter."""
    result = BatchResult()
    for i, record in enumerate(records):
        if record.value == POISON:
            result.dead_letters.append(DeadLetter(record.key, record.value, [("why", b"")], i))
        else:
            result.predictions.append(OutputRecord(record.key, record.value or b"", [], i))
    return result


@dataclass
class Stream:
    """The loop running over a fake consumer and producer."""

    consumer: FakeConsumer
    producer: FakeProducer
    unacked: UnackedBatches
    task: asyncio.Task[None]
    batches: list[int] = field(default_factory=list)  # size of each batch scored

    @classmethod
    def start(
        cls,
        partitions: int = 1,
        batch_max: int = 4,
        window_seconds: float = 0.001,
        producer: FakeProducer | None = None,
        max_unacked: int = 1,
        generation: int = 1,
    ) -> Stream:
        consumer = FakeConsumer(partitions, generation)
        producer = producer or FakeProducer()
        unacked = UnackedBatches(consumer, max_unacked)
        consumer.on_assigned.append(unacked.reopen)
        batches: list[int] = []

        def score(records: Sequence[InputRecord]) -> BatchResult:
            batches.append(len(records))
            return fake_score(records)

        config = LoopConfig(OUTPUT, DLQ, batch_max, window_seconds)
        task = asyncio.create_task(scoring_loop(consumer, producer, score, unacked, config))
        return cls(consumer, producer, unacked, task, batches)

    async def sends(self, n: int) -> list[Sent]:
        """Wait until the producer holds ``n`` record batches; return them."""
        await until(lambda: len(self.producer.sent) >= n)
        return self.producer.sent[:n]

    async def drain(self, timeout: float = 1.0) -> bool:
        return await self.unacked.drain(timeout)

    async def stop(self) -> None:
        """What a Faust stop does: suspend the flow, wait for pending work (the worker's
        ``wait_empty``), make the final commit, then cancel the app's tasks."""
        self.consumer._flow = False
        await self.drain()
        self.consumer.commit()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
