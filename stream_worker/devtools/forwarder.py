"""A raw aiokafka forwarder: the benchmark's ceiling for any Python client on this machine.

Consume → produce unchanged, no Faust, no scoring: one ``AIOKafkaConsumer`` assigned every
partition of the input topic (no group join to wait for), one ``AIOKafkaProducer``, each
fetched chunk sent as one record batch per partition to the *same* partition of the output
topic. It is tuned like the worker where the two can be compared: the same fetch wait
(``tuning.FETCH_MAX_WAIT_MS``), producer linger, batch and request sizes, ``acks=all``, at
most ``batch_max`` records per fetch, one chunk's deliveries outstanding while the next is
fetched (``tuning.MAX_UNACKED_BATCHES``), offsets committed every
``tuning.COMMIT_INTERVAL_SECONDS`` for what was delivered. So whatever the worker costs
beyond this is Faust and scoring, not the broker or the client.

It serves ``GET /health`` (200 once partitions are assigned and positioned) and
``GET /stats`` (records forwarded so far) on ``127.0.0.1:<web port>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from typing import Any

from stream_worker.runtime import tuning
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def client_options(settings: WorkerSettings) -> dict[str, Any]:
    """What every aiokafka client of the forwarder is built with (address, security)."""
    from stream_worker.kafka_security import aiokafka_kwargs

    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        **aiokafka_kwargs(settings.kafka_security),
    }


class Forwarder:
    """The forwarding loop and its counters (no web server: see :func:`serve`)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.forwarded = 0
        self.ready = False

    async def run(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        s = self.settings
        consumer = AIOKafkaConsumer(
            **client_options(s),
            client_id="income-scorer-forwarder",
            group_id=f"{s.app_id}-forwarder",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=tuning.FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        producer = AIOKafkaProducer(
            **client_options(s),
            client_id="income-scorer-forwarder",
            acks="all",
            linger_ms=tuning.PRODUCER_LINGER_MS,
            max_batch_size=tuning.PRODUCER_MAX_BATCH_BYTES,
            max_request_size=tuning.PRODUCER_MAX_REQUEST_BYTES,
        )
        await producer.start()
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(s.input_topic) or ())
            out_partitions = len(await producer.partitions_for(s.output_topic)) or 1
            tps = [TopicPartition(s.input_topic, p) for p in partitions]
            consumer.assign(tps)
            for tp in tps:  # resolve start offsets now, not when the first record is due
                await consumer.position(tp)
            self.ready = True
            await self._forward(consumer, producer, out_partitions, stop)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _forward(
        self, consumer: Any, producer: Any, out_partitions: int, stop: asyncio.Event
    ) -> None:
        output = self.settings.output_topic
        in_flight: deque[tuple[list[asyncio.Future[Any]], dict[Any, int]]] = deque()
        delivered: dict[Any, int] = {}
        last_commit = time.monotonic()
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200, max_records=self.settings.batch_max)
            futures: list[asyncio.Future[Any]] = []
            offsets: dict[Any, int] = {}
            for tp, records in fetched.items():
                batch = producer.create_batch()
                for rec in records:
                    if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                        batch.close()
                        futures.append(await _send(producer, batch, output, tp, out_partitions))
                        batch = producer.create_batch()
                        batch.append(key=rec.key, value=rec.value, timestamp=None)
                batch.close()
                futures.append(await _send(producer, batch, output, tp, out_partitions))
                offsets[tp] = records[-1].offset + 1
                self.forwarded += len(records)
            if futures:
                in_flight.append((futures, offsets))
            while len(in_flight) > tuning.MAX_UNACKED_BATCHES or (in_flight and not futures):
                done, done_offsets = in_flight.popleft()
                await asyncio.gather(*done)
                delivered.update(done_offsets)
            if delivered and time.monotonic() - last_commit >= tuning.COMMIT_INTERVAL_SECONDS:
                await consumer.commit(dict(delivered))
                delivered.clear()
                last_commit = time.monotonic()


async def _send(producer: Any, batch: Any, topic: str, tp: Any, partitions: int) -> Any:
    return await producer.send_batch(batch, topic, partition=tp.partition % partitions)


async def serve(settings: WorkerSettings, web_port: int) -> None:
    """Forward until SIGINT/SIGTERM, with ``/health`` and ``/stats`` on loopback."""
    from aiohttp import web

    forwarder = Forwarder(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok" if forwarder.ready else "not ready"},
            status=200 if forwarder.ready else 503,
        )

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"forwarded": forwarder.forwarded})

    web_app = web.Application()
    web_app.add_routes([web.get("/health", health), web.get("/stats", stats)])
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, web_port).start()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        stop.set()
        await task  # raises what the forwarder raised
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()


def run_forwarder(settings: WorkerSettings, web_port: int) -> None:
    """Blocks until stopped. The topics must exist already."""
    from stream_worker.runtime.admin import wait_for_kafka

    wait_for_kafka(settings.kafka_bootstrap_servers, timeout=30)
    asyncio.run(serve(settings, web_port))
