"""Why the worker stalls on the durable broker (found by the chaos suite's broker_restart).

Tansu's S3 engine answers a fetch whose wait runs out before it has read the records from
storage with no records. The worker fetches with ``tuning.FETCH_MAX_WAIT_MS`` (10 ms, for
latency on the memory engine), so on ``stream-worker broker --durable`` it reads almost
nothing: a worker scored 1 of 1,200 records in 30 s there (its /health still 200), the same
worker with the wait patched to 500 ms all 1,200 within 10 s, and Faust's pass-through agent
(Faust's own 1.5 s fetch wait) forwarded all 1,200. So the wait is a setting
(SCORER_FETCH_MAX_WAIT_MS), and workers on the durable broker use 500 ms. The pins below show
the limit in isolation: a plain aiokafka consumer on records trickled in as a stream arrives
(with one burst of large batches, 10 ms reads them all, slowly).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_worker.devtools.broker import DurableStorage, LocalBroker
from stream_worker.devtools.chaos.load import chaos_producer
from stream_worker.runtime.admin import ensure_topics
from stream_worker.runtime.tuning import FETCH_MAX_WAIT_MS

pytestmark = pytest.mark.chaos

RECORDS = 600
PARTITIONS = 6
#: Here a 500 ms wait reads them all in about 2 s; the worker's 10 ms wait got 21 in 8 s.
SECONDS = 10.0


@pytest.fixture(scope="module")
def durable_topic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("durable-fetch")
    broker = LocalBroker(log_path=folder / "broker.log", storage=DurableStorage())
    broker.start()
    try:
        ensure_topics(broker.bootstrap, ["fetch-wait"], PARTITIONS)
        producer = chaos_producer(broker.bootstrap)
        for i in range(RECORDS):  # trickled, as a stream arrives: many small record batches
            producer.send("fetch-wait", key=b"k%d" % i, value=b"v")
            time.sleep(0.002)
        producer.flush(timeout=30)
        producer.close()
        yield broker.bootstrap, "fetch-wait"
    finally:
        broker.stop()


def _read_all(bootstrap: str, topic: str, fetch_max_wait_ms: int, seconds: float) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got, deadline = 0, time.monotonic() + seconds
            while got < RECORDS and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=300)
                got += sum(len(b) for b in batches.values())
            return got
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_a_half_second_fetch_wait_reads_the_durable_broker(durable_topic: tuple[str, str]) -> None:
    assert _read_all(*durable_topic, fetch_max_wait_ms=500, seconds=SECONDS) == RECORDS


def test_the_default_fetch_wait_starves_on_the_durable_broker(
    durable_topic: tuple[str, str],
) -> None:
    """Tansu's limit, pinned: why workers on ``--durable`` need SCORER_FETCH_MAX_WAIT_MS=500."""
    got = _read_all(*durable_topic, fetch_max_wait_ms=FETCH_MAX_WAIT_MS, seconds=SECONDS / 2)
    assert got < RECORDS
