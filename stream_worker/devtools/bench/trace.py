"""A traced worker for the latency breakdown: ``python -m stream_worker.devtools.bench.trace``.

The ordinary ``stream-worker run``, with wrappers installed from outside before it starts
(nothing in the worker's own code knows about them, and an untraced worker pays nothing).
On a sample of records (offset divisible by ``SCORER_BENCH_TRACE_EVERY``, default 8) it
notes the wall-clock time at each stage:

- ``created``: the input record's Kafka timestamp (CreateTime, set by the producer);
- ``fetched``: aiokafka's fetcher hands the record to Faust's consumer thread
  (``Fetcher.fetched_records`` returns);
- ``queued``: Faust's conductor hands the message to the scoring loop's queue (the
  ``RawTopic`` decode, called right before the put);
- ``batched``: the loop's micro-batch holding it starts (``loop.micro_batches`` yields);
- ``scored``: ``BatchScorer.process`` returned for its batch;
- ``produced``: its output record batches were submitted to the producer
  (``loop.score_and_send`` returned);
- ``acked``: its input was acked to Faust, i.e. the broker acknowledged the output and every
  earlier batch was acked (``FaustStreamConsumer.ack``).

The bench appends ``seen`` (the output's arrival at its consumer) and reads the samples
from ``GET /bench-trace``.

For A/B runs (:mod:`.ab`), ``SCORER_BENCH_TUNING="NAME=VALUE,..."`` overrides constants of
:mod:`stream_worker.runtime.tuning` before any worker module that reads them is imported
(so ``from tuning import NAME`` sees the new value too), so one tree can be measured with an
old and a new value.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

#: Stage -> column of a sample (0 is the key).
COLUMNS = {"created": 1, "fetched": 2, "queued": 3, "batched": 4, "scored": 5, "produced": 6}
ACKED = 7


class Trace:
    """Samples by (partition, offset): ``[key, created, fetched, …, acked]``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: dict[tuple[int, int], list[Any]] = {}

    def fetched(self, records: Any) -> None:
        now = time.time()
        every, rows = self.every, self.rows
        for batch in records.values():
            for rec in batch:
                if rec.offset % every == 0:
                    key = rec.key.decode() if rec.key is not None else None
                    row: list[Any] = [key, rec.timestamp / 1000.0, now, None, None, None, None]
                    row.append(None)
                    rows[(rec.partition, rec.offset)] = row

    def stamp(self, items: Sequence[Any], column: int) -> None:
        now = time.time()
        rows = self.rows
        for item in items:
            row = rows.get((item.partition, item.offset))
            if row is not None and row[column] is None:
                row[column] = now

    def samples(self) -> list[list[Any]]:
        return list(self.rows.values())


def install(trace: Trace) -> None:
    """Wrap the stages' functions (see the module docstring)."""
    from aiokafka.consumer.fetcher import Fetcher

    from stream_worker.runtime import faust_compat, loop, views

    fetched_records = Fetcher.fetched_records

    @functools.wraps(fetched_records)
    async def traced_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await fetched_records(self, *args, **kwargs)
        trace.fetched(records)
        return records

    Fetcher.fetched_records = traced_fetch  # type: ignore[method-assign]

    def traced_compile_decode(self: Any) -> None:
        async def decode(message: Any, *, propagate: bool = False) -> Any:
            trace.stamp((message,), COLUMNS["queued"])
            return message

        self.decode = decode

    faust_compat.RawTopic._compile_decode = traced_compile_decode  # type: ignore[method-assign]

    micro_batches = loop.micro_batches

    async def traced_batches(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for batch in micro_batches(*args, **kwargs):
            trace.stamp(batch, COLUMNS["batched"])
            yield batch

    loop.micro_batches = traced_batches  # type: ignore[assignment]

    score_with_current_model = loop.score_with_current_model

    def traced_score_factory(ctx: Any) -> Callable[[Sequence[Any]], Any]:
        score = score_with_current_model(ctx)

        def traced_score(records: Sequence[Any]) -> Any:
            result = score(records)
            trace.stamp(records, COLUMNS["scored"])
            return result

        return traced_score

    loop.score_with_current_model = traced_score_factory

    score_and_send = loop.score_and_send

    async def traced_score_and_send(messages: list[Any], *args: Any) -> Any:
        pending = await score_and_send(messages, *args)
        trace.stamp(messages, COLUMNS["produced"])
        return pending

    loop.score_and_send = traced_score_and_send  # type: ignore[assignment]

    ack = faust_compat.FaustStreamConsumer.ack

    def traced_ack(self: Any, messages: Sequence[Any]) -> None:
        ack(self, messages)
        trace.stamp(messages, ACKED)

    faust_compat.FaustStreamConsumer.ack = traced_ack  # type: ignore[method-assign]

    register = views.register

    def traced_register(ctx: Any) -> None:
        register(ctx)
        from faust.web import Request, Response, View

        @ctx.app.page("/bench-trace")
        class BenchTrace(View):  # type: ignore[misc]
            async def get(self, request: Request) -> Response:
                return self.json(trace.samples())

    views.register = traced_register


def log_gc_pauses(threshold_s: float = 0.005) -> None:
    """Print every garbage-collector pause longer than ``threshold_s`` (generation, ms)."""
    import gc

    began: list[float] = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        elif (pause := time.perf_counter() - began[0]) > threshold_s:
            print(f"bench gc pause: generation {info['generation']}, {pause * 1000:.1f} ms")

    gc.callbacks.append(callback)


def override_tuning(spec: str) -> dict[str, Any]:
    """``"NAME=VALUE,..."`` onto :mod:`stream_worker.runtime.tuning`, each value of the type
    the constant has; the values set."""
    from stream_worker.runtime import tuning

    done: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        old = getattr(tuning, name, None)
        if old is None or not name.isupper():
            raise SystemExit(f"SCORER_BENCH_TUNING: {name!r} is not a tuning constant")
        if isinstance(old, bool):
            if value.lower() not in ("0", "1", "true", "false"):
                raise SystemExit(f"SCORER_BENCH_TUNING: {name} takes true or false")
            done[name] = value.lower() in ("1", "true")
        else:
            done[name] = type(old)(value)
        setattr(tuning, name, done[name])
    return done


def main() -> None:
    """``stream-worker run`` with the trace installed; the arguments are run's."""
    from stream_worker.cli import main as cli_main

    tuned = override_tuning(os.environ.get("SCORER_BENCH_TUNING", ""))
    if tuned:
        print(f"bench tuning overrides: {tuned}", flush=True)
    log_gc_pauses()
    install(Trace(int(os.environ.get("SCORER_BENCH_TRACE_EVERY", "8"))))
    sys.exit(cli_main(["run", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
