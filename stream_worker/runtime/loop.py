"""The scoring loop: micro-batches from the consumer's queue, predictions and dead letters out.

A Faust agent pays for every event (an ``Event``, a queue hand-off, the stream's processor
chain, one awaited ack); this loop takes the consumer's messages off the topic's queue in
bulk instead, scores them with one call, sends the output as record batches, and acks the
input through ``Message.ack`` (the call a stream makes) once the output is acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from faust.types import Message

from stream_worker.runtime.acks import UnackedBatches
from stream_worker.runtime.context import WorkerContext
from stream_worker.runtime.faust_compat import raw_producer
from stream_worker.runtime.sender import PartitionedSender
from stream_worker.runtime.tuning import BATCH_POLL_SECONDS, MAX_UNACKED_BATCHES
from stream_worker.scoring.scorer import InputRecord


async def micro_batches(
    queue: asyncio.Queue[Message], max_records: int, window_seconds: float
) -> AsyncIterator[list[Message]]:
    """Yield up to ``max_records`` messages, waiting at most ``window_seconds`` to fill a batch.

    The first message is awaited; then whatever is queued is taken without awaiting, and the
    window only delays a batch while fewer than ``max_records`` are available.
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


def input_record(message: Message) -> InputRecord:
    return InputRecord(
        message.key,
        message.value,
        message.timestamp,
        message.topic,
        message.partition,
        message.offset,
    )


async def run_scoring_loop(ctx: WorkerContext, queue: asyncio.Queue[Message]) -> None:
    """Score until cancelled. Nothing is scored before a model serves, though the consumer
    may already have fetched and buffered records by then."""
    await ctx.model_ready().wait()
    settings = ctx.settings
    producer = raw_producer(ctx.app)
    predictions = PartitionedSender(producer, settings.output_topic)
    dead_letters = PartitionedSender(producer, settings.dlq_topic)
    unacked = UnackedBatches(ctx.app.consumer, MAX_UNACKED_BATCHES)
    async for messages in micro_batches(queue, settings.batch_max, settings.batch_window_seconds):
        pending = await score_and_send(ctx, messages, predictions, dead_letters)
        # At-least-once: the batch's offsets become committable only once the broker has
        # acknowledged every record it produced; meanwhile the next batch is scored.
        await unacked.add(pending, messages)


async def score_and_send(
    ctx: WorkerContext,
    messages: list[Message],
    predictions: PartitionedSender,
    dead_letters: PartitionedSender,
) -> list[asyncio.Future[Any]]:
    """Score one batch with the model in service; return the output's delivery futures."""
    model = ctx.watcher.current
    assert model is not None  # run_scoring_loop waits for one; a swap never unsets it
    records = [input_record(m) for m in messages]
    result = ctx.batch_scorer.process(model, records)
    ctx.metrics.batch_size.observe(len(records))
    pending = await predictions.send(
        [(records[r.index].partition, r.key, r.value, []) for r in result.predictions]
    )
    pending += await dead_letters.send(
        [(records[r.index].partition, r.key, r.value, r.headers) for r in result.dead_letters]
    )
    return pending
