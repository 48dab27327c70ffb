"""Micro-batches straight from Faust's consumer, without a Stream per event.

A Faust agent pays for every event: an ``Event`` object, a context switch per queue get, the
stream's processor chain and one awaited ack each. Measured here that caps a plain agent at
about 8.8k events/s, whatever the agent does. ``RawTopic`` keeps everything Faust does for a
topic (subscription, consumer group, flow control and buffer limits, offset tracking and
commits) but hands the consumer's ``Message`` to the channel queue as it is, and
``micro_batches`` drains that queue in bulk. Acks go back through ``Message.ack``, the same
call a stream makes, so Faust's commit bookkeeping is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import Message

POLL_SECONDS = 0.002


class RawTopic(faust.Topic):  # type: ignore[misc]
    """A topic whose queue carries the consumer's messages, not decoded events."""

    def _compile_decode(self) -> None:
        # Topic compiles ``decode`` from its schema in __init__; replace it with the identity.
        async def decode(message: Message, *, propagate: bool = False) -> Any:
            return message

        self.decode = decode  # type: ignore[method-assign]


def subscribe(topic: RawTopic) -> Any:
    """Register the topic with the conductor and return the channel whose queue is fed."""
    return topic.__aiter__()


async def micro_batches(
    channel: Any, max_records: int, window_seconds: float
) -> AsyncIterator[list[Message]]:
    """Yield up to ``max_records`` messages, waiting at most ``window_seconds`` to fill a batch.

    The first message is awaited; then whatever is queued is taken without awaiting, and the
    window only delays a batch while fewer than ``max_records`` are available.
    """
    queue = channel.queue
    loop = asyncio.get_running_loop()
    while True:
        batch = [await queue.get()]
        deadline = loop.time() + window_seconds
        while True:
            while len(batch) < max_records and not queue.empty():
                batch.append(queue.get_nowait())
            if len(batch) >= max_records or loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        yield batch


def ack_all(consumer: Any, messages: list[Message]) -> None:
    """Release the messages to Faust's commit machinery (offsets become committable)."""
    for message in messages:
        message.ack(consumer)


class PartitionedSender:
    """Send a batch's records as one aiokafka record batch per output partition.

    A record goes to the output partition numbered like its input partition (modulo the
    output's partition count): order within an input partition is kept, and for input keyed
    by applicant id with equal partition counts it is the partition the key hashes to anyway.
    This skips the per-record partitioner, future and sensor calls of ``producer.send``.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer  # aiokafka.AIOKafkaProducer
        self.topic = topic
        self._partitions = 0

    async def _partition_count(self) -> int:
        if not self._partitions:
            await self.producer.client._wait_on_metadata(self.topic)
            found = self.producer.client.cluster.partitions_for_topic(self.topic)
            self._partitions = len(found or ()) or 1
        return self._partitions

    async def send(
        self, records: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]
    ) -> list[asyncio.Future[Any]]:
        """``records`` are (input partition, key, value, headers); returns delivery futures."""
        if not records:
            return []
        n = await self._partition_count()
        groups: dict[int, list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]] = {}
        for partition, key, value, headers in records:
            groups.setdefault(partition % n, []).append((key, value, headers))
        futures: list[asyncio.Future[Any]] = []
        for partition, items in groups.items():
            batch = self.producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await self._submit(batch, partition))
                    batch = self.producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"record of {len(value)} bytes exceeds the batch size")
            if batch.record_count():
                futures.append(await self._submit(batch, partition))
        return futures

    async def _submit(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        batch.close()
        future: asyncio.Future[Any] = await self.producer.send_batch(
            batch, self.topic, partition=partition
        )
        return future


class InFlight:
    """Batches whose records are sent but not yet acknowledged by the broker.

    Each batch's input messages are acked (made committable) by a task that first awaits all
    of that batch's delivery futures, so scoring the next batch overlaps the broker round trip
    of this one. ``add`` waits while ``limit`` batches are outstanding, and re-raises a failed
    delivery so the worker stops instead of committing past a lost prediction.
    """

    def __init__(self, consumer: Any, limit: int) -> None:
        self.consumer = consumer
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    async def _settle(self, futures: list[asyncio.Future[Any]], messages: list[Message]) -> None:
        if futures:
            await asyncio.gather(*futures)
        ack_all(self.consumer, messages)

    async def add(self, futures: list[asyncio.Future[Any]], messages: list[Message]) -> None:
        task = asyncio.ensure_future(self._settle(futures, messages))
        self._tasks.add(task)
        while len(self._tasks) >= self.limit:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            self._reap(done)
        self._reap({t for t in self._tasks if t.done()})

    def _reap(self, done: set[asyncio.Task[None]]) -> None:
        for task in done:
            self._tasks.discard(task)
            task.result()  # a failed delivery propagates


FETCH_MAX_WAIT_MS = 10


class _LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes fetch_max_wait_ms=1500. A broker that does not answer a fetch as
        # soon as data arrives (Tansu here) then holds records for up to 1.5 s at low rates;
        # 10 ms bounds that wait. aiokafka reads the attribute when the consumer starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer with a short fetch wait and a lean per-message hand-off.

    Faust's ``_drain_messages`` hands every message to the conductor through
    ``wait_first(callback(message), suspend_flow.wait())``, two tasks and a wait per message,
    so a rebalance can interrupt a callback blocked on a full queue. Profiling put that at a
    quarter of the worker's time. ``_drain_messages`` below is Faust's loop with one change:
    when the hand-off cannot block (flow not suspended, flow control active, the channel
    queues not full) the callback is awaited directly; otherwise it takes Faust's path.
    """

    #: Set by the app: True while handing a message to the conductor cannot block.
    handoff_cannot_block: Any = None

    def _new_consumer_thread(self) -> Any:
        return _LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.is_set
        cannot_block = self.handoff_cannot_block or (lambda: False)
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(faust_consumer.CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > 100:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if not suspended() and cannot_block():
                                await callback(message)
                            else:
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            unset_flag(faust_consumer.CONSUMER_FETCHING)


def use_low_latency_consumer(app: faust.App, channel: Any) -> None:
    """Make ``app`` create its consumer as a :class:`LowLatencyConsumer` (before it starts).

    ``channel`` is the only subscribed channel; the lean hand-off applies while its queue has
    room and flow control is not suspended (a rebalance suspends it).
    """
    queue = channel.queue
    flow_control = app.flow_control

    class _Consumer(LowLatencyConsumer):
        @staticmethod
        def handoff_cannot_block() -> bool:
            return flow_control.is_active() and not queue.full()

    app.transport.Consumer = _Consumer  # type: ignore[misc]
