"""The scoring loop: micro-batches from the consumer's queue, predictions and dead letters out.

A Faust agent pays for every event (an ``Event``, a queue hand-off, the stream's processor
chain, one awaited ack); this loop takes the consumer's messages off the topic's queue in
bulk instead, scores them with one call and sends the output as record batches. It keeps
what a ``Stream`` guarantees, per batch instead of per event:

- messages fetched under an earlier rebalance generation, or taken while a rebalance or a
  stop suspends the flow, are dropped unscored and unacked (the partitions' next reader starts
  from the committed offset and reads them again);
- a batch is pending from admission to ack (:class:`~stream_worker.runtime.acks.UnackedBatches`),
  so a revocation or a stop drains it before the commit that gives the partitions up;
- input is acked through the consumer only after the broker acknowledged the batch's output,
  in offset order per partition; a failed delivery stops the loop.

:func:`scoring_loop` is a plain async function over :mod:`~stream_worker.runtime.ports`: the
worker runs it on Faust (:func:`run_scoring_loop`), the unit tests on in-memory fakes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import Message

from stream_worker.runtime.acks import UnackedBatches
from stream_worker.runtime.context import WorkerContext
from stream_worker.runtime.faust_compat import raw_producer
from stream_worker.runtime.ports import RecordProducer, StreamConsumer
from stream_worker.runtime.sender import PartitionedSender
from stream_worker.runtime.tuning import BATCH_POLL_SECONDS
from stream_worker.scoring.scorer import BatchResult, InputRecord
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: Score one micro-batch of input records (which model serves is the caller's business).
Score = Callable[[Sequence[InputRecord]], BatchResult]


@dataclass(frozen=True)
class LoopConfig:
    output_topic: str
    dlq_topic: str
    batch_max: int
    window_seconds: float

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> LoopConfig:
        return cls(
            settings.output_topic,
            settings.dlq_topic,
            settings.batch_max,
            settings.batch_window_seconds,
        )


async def micro_batches(
    queue: asyncio.Queue[Message], max_records: int, window_seconds: float
) -> AsyncIterator[list[Message]]:
    """Yield up to ``max_records`` messages, waiting at most ``window_seconds`` to fill a batch.

    The first message is awaited; then whatever is queued is taken without awaiting, and the
    window only delays a batch while fewer than ``max_records`` are available. Each batch
    becomes one produce request per output partition, so the window also sets how many
    requests the broker answers per second at low load: on Tansu fewer, larger requests cut
    the worker's p99 (docs/benchmark.md, "What each change bought").
    """
    loop = asyncio.get_running_loop()
    while True:
        batch = [await queue.get()]
        deadline = loop.time() + window_seconds
        while True:
            while len(batch) < max_records and not queue.empty():
                batch.append(queue.get_nowait())
            if len(batch) >= max_records or loop.time() >= deadline:
                break
            await asyncio.sleep(BATCH_POLL_SECONDS)
        yield batch


def _generation_of(message: Message) -> int:
    return -1 if message.generation_id is None else message.generation_id


def fetched_in(messages: list[Message], generation: int) -> list[Message]:
    """The messages fetched under ``generation``; older ones are dropped (never scored).

    The consumer stamps each message with the generation it was fetched in and queues them in
    fetch order, and generations only grow, so a batch's stale messages are a prefix: one
    bisection finds them, no per-message work.
    """
    if messages[0].generation_id == generation:
        return messages
    start = bisect.bisect_left(messages, generation, key=_generation_of)
    log.info("dropped %d message(s) fetched before the last rebalance", start)
    return messages[start:]


def input_record(message: Message) -> InputRecord:
    return InputRecord(
        message.key,
        message.value,
        message.timestamp,
        message.topic,
        message.partition,
        message.offset,
    )


async def scoring_loop(
    consumer: StreamConsumer,
    producer: RecordProducer,
    score: Score,
    unacked: UnackedBatches,
    config: LoopConfig,
) -> None:
    """Score micro-batches until cancelled; raise if a delivery fails (nothing from the failed
    batch on is acked, so the final commit stops before it)."""
    predictions = PartitionedSender(producer, config.output_topic)
    dead_letters = PartitionedSender(producer, config.dlq_topic)
    task = asyncio.current_task()
    assert task is not None
    unacked.interrupt_on_failure(task)
    try:
        async for taken in micro_batches(consumer.queue, config.batch_max, config.window_seconds):
            if not consumer.flow_active():
                continue  # a rebalance or a stop is under way: read again after it
            messages = fetched_in(taken, consumer.generation())
            ticket = unacked.admit() if messages else None
            if ticket is None:
                continue  # stale, or a drain is under way
            try:
                pending = await score_and_send(messages, score, predictions, dead_letters)
            except BaseException:
                unacked.release(ticket)  # not acked: redone after the restart
                raise
            # At-least-once: the batch's offsets become committable only once the broker has
            # acknowledged every record it produced; meanwhile the next batch is scored.
            await unacked.add(ticket, pending, messages)
    except asyncio.CancelledError:
        if unacked.interrupted(task):
            unacked.raise_if_failed()  # a delivery failed: stop the worker, ack nothing more
        unacked.abandon()  # a stop drained first; whatever is left is not acked
        raise
    finally:
        unacked.close()


async def score_and_send(
    messages: list[Message],
    score: Score,
    predictions: PartitionedSender,
    dead_letters: PartitionedSender,
) -> list[asyncio.Future[Any]]:
    """Score one batch; return the output's delivery futures."""
    records = [input_record(m) for m in messages]
    result = score(records)
    pending = await predictions.send(
        [(records[r.index].partition, r.key, r.value, []) for r in result.predictions]
    )
    pending += await dead_letters.send(
        [(records[r.index].partition, r.key, r.value, r.headers) for r in result.dead_letters]
    )
    return pending


def score_with_current_model(ctx: WorkerContext) -> Score:
    """The worker's ``Score``: the model in service at the time of each batch."""

    def score(records: Sequence[InputRecord]) -> BatchResult:
        model = ctx.watcher.current
        assert model is not None  # run_scoring_loop waits for one; a swap never unsets it
        result = ctx.batch_scorer.process(model, records)
        ctx.metrics.batch_size.observe(len(records))
        return result

    return score


async def run_scoring_loop(
    ctx: WorkerContext, consumer: StreamConsumer, unacked: UnackedBatches
) -> None:
    """The worker's loop. Nothing is scored before a model serves, though the consumer may
    already have fetched and buffered records by then."""
    await ctx.model_ready().wait()
    await scoring_loop(
        consumer,
        raw_producer(ctx.app),
        score_with_current_model(ctx),
        unacked,
        LoopConfig.from_settings(ctx.settings),
    )
