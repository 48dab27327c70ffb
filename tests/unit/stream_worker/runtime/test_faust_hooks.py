"""The worker's hooks in Faust's own consumer (faust-streaming's, never started: no broker):
a revocation and a stop drain the loop's pending batches, and the commit made then includes
them, before Faust forgets the revoked partitions' acks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from stream_worker.runtime import faust_compat
from stream_worker.runtime.acks import UnackedBatches
from stream_worker.runtime.app import faust_app
from stream_worker.settings import WorkerSettings

TOPIC = "applicants"
P0 = TP(TOPIC, 0)


class Recorder:
    """What happened, in order: drains, broker commits, Faust's own revocation callback."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []


async def worker_consumer(
    tmp_path: Path,
    drain: Callable[[], Coroutine[Any, Any, bool]],
    rec: Recorder,
    reopen: Callable[[], None] | None = None,
) -> tuple[faust.App, Any]:
    """The app as ``build_worker`` wires it, its consumer's broker side stubbed."""
    app = faust_app(WorkerSettings(data_dir=str(tmp_path / "faust"), input_topic=TOPIC))
    queue = faust_compat.subscribe(faust_compat.RawTopic(app, topics=[TOPIC], partitions=1)).queue
    faust_compat.install_low_latency_consumer(app, queue, drain, reopen)
    await app.topics._update_indices()  # what the conductor does when the app starts
    consumer = app.consumer
    assert isinstance(consumer, faust_compat.LowLatencyConsumer)
    consumer.assignment = lambda: {P0}

    async def broker_commit(offsets: Mapping[TP, int]) -> bool:
        rec.events.append(("commit", dict(offsets)))
        return True

    async def app_on_revoked(revoked: set[TP]) -> None:
        rec.events.append(("faust revocation", dict(consumer._acked)))

    async def app_on_assigned(assigned: set[TP], generation_id: int = 0) -> None:
        rec.events.append(("faust assignment", generation_id))

    consumer._commit = broker_commit
    consumer._on_partitions_revoked = app_on_revoked
    consumer._on_partitions_assigned = app_on_assigned
    return app, consumer


def in_flight(offsets: range) -> list[Any]:
    return [
        ConsumerMessage(TOPIC, 0, o, 0.0, 0, [], b"k", b"v", None, tp=P0, generation_id=1)
        for o in offsets
    ]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def test_revocation_drains_and_commits_before_faust_forgets_the_acks(tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        app: faust.App | None = None

        async def drain() -> bool:
            # the batch in flight is delivered while the revocation waits: acked now
            await asyncio.sleep(0.01)
            assert app is not None
            for message in in_flight(range(4)):
                message.ack(app.consumer)
            rec.events.append(("drained", None))
            return True

        app, consumer = await worker_consumer(tmp_path, drain, rec)
        await consumer.on_partitions_revoked({P0})

    run(main())
    assert rec.events == [
        ("drained", None),
        ("commit", {P0: 4}),
        ("faust revocation", {}),  # Faust dropped the acks; they were committed first
    ]


def test_stop_drains_before_the_final_commit(tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> None:
        app: faust.App | None = None

        async def drain() -> bool:
            assert app is not None
            for message in in_flight(range(6)):
                message.ack(app.consumer)
            rec.events.append(("drained", None))
            return True

        app, consumer = await worker_consumer(tmp_path, drain, rec)
        await consumer.wait_empty()  # App._stop_consumer and Consumer.on_stop call this

    run(main())
    assert rec.events == [("drained", None), ("commit", {P0: 6})]


def test_the_worker_wiring_drains_the_loop_unacked_batches(tmp_path: Path) -> None:
    """``build_worker``'s hook is ``UnackedBatches.drain`` over the real Faust consumer."""
    rec = Recorder()

    async def main() -> None:
        holder: dict[str, UnackedBatches] = {}

        async def drain() -> bool:
            return await holder["unacked"].drain(1.0)

        def reopen() -> None:
            holder["unacked"].reopen()

        app, consumer = await worker_consumer(tmp_path, drain, rec, reopen)
        stream = faust_compat.FaustStreamConsumer(app, asyncio.Queue())
        unacked = holder["unacked"] = UnackedBatches(stream, 1)
        ticket = unacked.admit()
        assert ticket is not None
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await unacked.add(ticket, [delivery], in_flight(range(3)))
        asyncio.get_running_loop().call_later(0.02, delivery.set_result, None)
        await consumer.on_partitions_revoked({P0})
        assert unacked.admit() is None  # nothing new until the next assignment
        await consumer.on_partitions_assigned({P0}, 0)  # the same number: Tansu starts at 0
        assert unacked.admit() is not None

    run(main())
    assert rec.events == [
        ("commit", {P0: 3}),
        ("faust revocation", {}),
        ("faust assignment", 0),
    ]


def test_faust_stream_consumer_reads_generation_and_flow_from_the_app(tmp_path: Path) -> None:
    async def main() -> None:
        app = faust_app(WorkerSettings(data_dir=str(tmp_path / "faust"), input_topic=TOPIC))
        stream = faust_compat.FaustStreamConsumer(app, asyncio.Queue())
        app.consumer_generation_id = 7
        assert stream.generation() == 7
        assert not stream.flow_active()  # Faust starts suspended until the first assignment
        app.flow_control.resume()
        assert stream.flow_active()
        app.flow_control.suspend()
        assert not stream.flow_active()

    run(main())


def test_the_fetch_wait_setting_reaches_the_aiokafka_consumer(tmp_path: Path) -> None:
    """SCORER_FETCH_MAX_WAIT_MS: Faust hard-codes 1.5 s, we default to 10 ms for latency, and
    Tansu's S3 engine (``broker --durable``) needs ~500 ms or its fetches come back empty."""
    settings = WorkerSettings(data_dir=str(tmp_path / "faust"), fetch_max_wait_ms=500)
    app = faust_app(settings)
    queue = faust_compat.subscribe(faust_compat.RawTopic(app, topics=[TOPIC], partitions=1)).queue
    faust_compat.install_low_latency_consumer(
        app, queue, fetch_max_wait_ms=settings.fetch_max_wait_ms
    )

    async def created() -> Any:  # aiokafka builds its consumer inside a running loop
        return app.consumer._thread._create_worker_consumer(app.transport)

    assert asyncio.run(created())._fetch_max_wait_ms == 500
    assert WorkerSettings().fetch_max_wait_ms == 10
