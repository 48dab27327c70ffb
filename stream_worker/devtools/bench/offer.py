"""The latency phases' producer: ``python -m stream_worker.devtools.bench.offer``.

Offers the bundled test records to a topic at a fixed rate with aiokafka, the client the
worker itself uses (``acks=all``, 5 ms linger: :data:`LINGER_MS`). It is an instrument:
whatever it adds to a record's latency is charged to every process measured. The
kafka-python producer and consumer used before doubled the floor on this machine (a direct
producer → Tansu → consumer hop at 2,000/s: p50 20–24 / p99 74–113 ms with kafka-python,
8–9 / 26–40 ms with aiokafka; docs/benchmark.md).

The records and keys are ``stream-worker produce --start S --limit N``'s (the records cycled
from ``S``, ids suffixed ``-rN`` from the second pass on), so :func:`.latency.step_keys`
names them. Each record's CreateTime is set when it is handed to the client, on schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from stream_worker.devtools import replay

#: Linger of the offering producer. Tansu answers many small produce requests slowly: a
#: direct producer → Tansu → consumer hop at 2,000/s gave p50 9.5 / p99 36–38 ms with 5 ms
#: and p50 23–28 / p99 230–257 ms with 1 ms (docs/benchmark.md).
LINGER_MS = 5


async def offer(
    bootstrap: str,
    topic: str,
    rate: float,
    total: int,
    start: int = 0,
    records: list[dict[str, Any]] | None = None,
) -> float:
    """Send ``total`` of ``records`` (the test split) at ``rate``/s (0: flat out); return the
    rate achieved."""
    from aiokafka import AIOKafkaProducer

    records = replay.test_records() if records is None else records
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=LINGER_MS,
        max_batch_size=256 * 1024,
        client_id="income-scorer-bench-offer",
    )
    await producer.start()
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future[Any]] = []
    try:
        began = loop.time()
        for i, rec in enumerate(replay.cycled(records, total, start)):
            if rate > 0 and (delay := began + i / rate - loop.time()) > 0:
                await asyncio.sleep(delay)
            key = str(rec["applicant_id"]).encode()
            pending.append(await producer.send(topic, replay.wire_value(rec), key=key))
            if len(pending) >= 4096:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        elapsed = loop.time() - began
    finally:
        await producer.stop()
    return total / max(elapsed, 1e-9)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_worker.devtools.bench.offer")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.limit < 1:
        parser.error("--rate and --limit must be positive")
    started = time.perf_counter()
    rate = asyncio.run(offer(args.bootstrap, args.topic, args.rate, args.limit, args.start))
    print(
        f"sent {args.limit} records to {args.topic} in {time.perf_counter() - started:.1f}s "
        f"({rate:,.0f}/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
