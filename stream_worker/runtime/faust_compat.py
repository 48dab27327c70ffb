"""Every use of a Faust or aiokafka private API, and the versions they were tested with.

The hot path skips Faust's ``Stream`` for speed (docs/decisions.md), which means reaching
past Faust's public surface in a few places. They are all here, so upgrading faust-streaming
or aiokafka means reading this file: each function says which private name it uses and why.
``check_versions`` refuses to start on versions these were not tested with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import faust
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from stream_worker.exceptions import ConfigError
from stream_worker.runtime.tuning import FETCH_MAX_WAIT_MS

#: Distribution -> versions the private uses below were tested with.
TESTED_VERSIONS: Mapping[str, tuple[str, ...]] = {
    "faust-streaming": ("0.15.3",),
    "aiokafka": ("0.14.0",),
}


def check_versions(tested: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Raise ConfigError (one line) if an installed version is not one this file was tested with."""
    for dist, versions in (TESTED_VERSIONS if tested is None else tested).items():
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"{dist} is not installed; the worker needs {versions[-1]}") from None
        if installed not in versions:
            raise ConfigError(
                f"{dist} {installed} is installed, but stream_worker/runtime/faust_compat.py was "
                f"tested with {', '.join(versions)} only: install {dist}=={versions[-1]}"
            )


class RawTopic(faust.Topic):  # type: ignore[misc]
    """A topic whose queue carries the consumer's messages, not decoded events.

    Private: ``Topic._compile_decode`` (called from ``Topic.__init__``) and ``Topic.decode``.
    """

    def _compile_decode(self) -> None:
        async def decode(message: Message, *, propagate: bool = False) -> Any:
            return message

        self.decode = decode  # type: ignore[method-assign]


def subscribe(topic: RawTopic) -> Any:
    """Register the topic with the conductor and return the channel whose queue it feeds.

    Must run before the app starts: the consumer subscribes to what ``app.topics`` holds then.
    """
    return topic.__aiter__()


def raw_producer(app: faust.App) -> Any:
    """The app's started ``aiokafka.AIOKafkaProducer`` (private: ``Producer._ensure_producer``).

    The sender builds record batches itself (``create_batch``/``send_batch``, public aiokafka
    API) instead of one ``producer.send`` per record.
    """
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


class FaustStreamConsumer:
    """The scoring loop's consumer (``ports.StreamConsumer``) on a Faust app.

    Public attributes only (``app.consumer_generation_id``, ``app.flow_control``,
    ``Message.ack``), but it relies on two Faust internals an upgrade must re-check: the
    consumer stamps each message with the generation current when it was fetched
    (``Consumer._to_message``), and its drain loop queues messages in fetch order, so the
    generations in the queue never decrease (``loop.fetched_in`` depends on it).
    """

    def __init__(self, app: faust.App, queue: asyncio.Queue[Message]) -> None:
        self.app = app
        self._queue = queue

    @property
    def queue(self) -> asyncio.Queue[Message]:
        return self._queue

    def generation(self) -> int:
        return int(self.app.consumer_generation_id)

    def flow_active(self) -> bool:
        return bool(self.app.flow_control.is_active())

    def ack(self, messages: Sequence[Message]) -> None:
        consumer = self.app.consumer
        for message in messages:
            message.ack(consumer)


# --- consumer lag (export_lag): how far processing has got, read without changing anything ---


def next_unprocessed_offset(consumer: Any, tp: TP) -> int:
    """The first offset of ``tp`` not processed yet: what the partition's next commit would be.

    The committed offset, advanced over the offsets acked since (and the log gaps Faust counts
    as done) while they are contiguous, so records read but still buffered or in flight are
    not processed. Before a first commit Faust keeps no start (a committed 0 is None as well):
    the lowest acked offset, else 0. Private: ``_committed_offset``, ``_acked`` and ``_gap``,
    read only (Faust's ``_new_offset`` consumes ``_acked``; ``.get`` creates no entries).
    """
    committed: int | None = consumer._committed_offset.get(tp)
    acked = set(consumer._acked.get(tp) or ())
    gaps = consumer._gap.get(tp)
    if committed is not None:
        offset = committed
    elif acked:
        offset = min(acked)
    else:
        return 0
    while True:
        if offset in acked:
            offset += 1
            continue
        covering = gaps.at(offset) if gaps else ()
        if not covering:
            return offset
        offset = max(interval.end for interval in covering)  # ends are exclusive


def broker_connected(app: faust.App) -> bool:
    """True while the consumer's Kafka client holds an open connection to a broker.

    A worker with no partitions (more workers than partitions) is still healthy, so assignment
    cannot answer this, and Faust exposes no connection state. Private: the consumer thread's
    aiokafka consumer and its client's ``_conns``.
    """
    try:
        client = app.consumer._thread._consumer._client  # type: ignore[attr-defined]
        return any(conn.connected() for conn in client._conns.values())
    except AttributeError:
        return bool(app.consumer.assignment())


class _LowLatencyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes fetch_max_wait_ms=1500; aiokafka reads this attribute at start.
        consumer._fetch_max_wait_ms = getattr(self.consumer, "fetch_max_wait_ms", FETCH_MAX_WAIT_MS)
        return consumer


class LowLatencyConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka consumer with a short fetch wait, a lean per-message hand-off, and the
    scoring loop's pending batches drained where a Stream's pending events are waited for.

    Faust's ``_drain_messages`` hands every message to the conductor through
    ``wait_first(callback(message), suspend_flow.wait())``, two tasks and a wait per message,
    so that a rebalance can interrupt a callback blocked on a full queue. The copy below is
    Faust 0.15.3's loop with one change: when the hand-off cannot block (flow not suspended,
    flow control active, the channel's queue not full) the callback is awaited directly;
    otherwise it takes Faust's path. Private: ``_drain_messages`` and the attributes it reads.

    ``on_partitions_revoked`` and ``wait_empty`` drain first. aiokafka's rebalances are eager
    (every assigned partition is revoked, then each is read again from its committed offset),
    which is what makes dropping the messages taken during a drain safe.
    """

    #: Set by ``install_low_latency_consumer``: True while the hand-off cannot block.
    handoff_cannot_block: Callable[[], bool] | None = None
    #: How long a fetch may wait for records (``SCORER_FETCH_MAX_WAIT_MS``).
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS

    def _new_consumer_thread(self) -> Any:
        return _LowLatencyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def drain_pending(self) -> bool:
        """Wait for the scoring loop's pending batches to be acked, within a bound, and abandon
        the rest unacked; True if none was left (overridden by ``install_low_latency_consumer``).
        """
        return True

    def resume_pending(self) -> None:
        """Let the scoring loop admit batches again after a drain (overridden likewise)."""

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Drain the loop's pending batches and commit them *before* Faust's revocation.

        Faust's ``Consumer.on_partitions_revoked`` first forgets the acked offsets of the
        revoked partitions (``_acked``, ``_committed_offset``, ...) and only then waits for its
        streams and commits, so that commit cannot include them: every rebalance would hand
        the new owner work that was done but not committed. The group still counts this
        member as the partitions' owner here (aiokafka calls the listener before rejoining),
        so a commit now is accepted. Private: the method this overrides.
        """
        await self.drain_pending()
        await self._commit_acked()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Reopen the loop after the drain of the revocation before (aiokafka revokes, with an
        empty set on a first join, before every assignment). Messages of the generation before
        are still dropped by the loop, and nothing flows until Faust resumes the flow after
        seeking to the committed offsets. Private: the method this overrides."""
        self.resume_pending()
        await super().on_partitions_assigned(assigned, generation_id)

    async def wait_empty(self) -> None:
        """Drain the loop's pending batches, then Faust's own wait and commit.

        Faust calls this on stop (``App._stop_consumer``, ``Consumer.on_stop``) and during a
        revocation; its final commit then includes every batch the drain acked. The loop's
        messages are not in Faust's per-message ``unacked`` set (that costs per record), so
        Faust's wait alone would not wait for them. Private: the method this overrides.
        """
        await self.drain_pending()
        await super().wait_empty()

    async def _commit_acked(self) -> None:
        # ``commit`` returns False without committing when another commit is running (which
        # may have started before the drain acked); the one started after it includes all.
        if not await self.commit():
            await self.commit()

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


def install_low_latency_consumer(
    app: faust.App,
    queue: asyncio.Queue[Any],
    drain_pending: Callable[[], Awaitable[bool]] | None = None,
    resume_pending: Callable[[], None] | None = None,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> None:
    """Make ``app`` create its consumer as a :class:`LowLatencyConsumer` (before it starts).

    ``queue`` is the only subscribed channel's queue; the lean hand-off applies while it has
    room and flow control is not suspended (a rebalance suspends it). ``drain_pending`` runs
    before a revocation gives partitions up and before the final commit on stop;
    ``resume_pending`` when partitions are assigned again. Private: the transport's
    ``Consumer`` class attribute.
    """
    flow_control = app.flow_control

    wait_ms = fetch_max_wait_ms

    class _Consumer(LowLatencyConsumer):
        fetch_max_wait_ms = wait_ms

        @staticmethod
        def handoff_cannot_block() -> bool:
            return bool(flow_control.is_active()) and not queue.full()

        async def drain_pending(self) -> bool:
            return True if drain_pending is None else await drain_pending()

        def resume_pending(self) -> None:
            if resume_pending is not None:
                resume_pending()

    app.transport.Consumer = _Consumer  # type: ignore[misc]
