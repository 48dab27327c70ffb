"""Make a batch's input offsets committable once the broker has acknowledged its output."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import Message


def ack_all(consumer: Any, messages: list[Message]) -> None:
    """Release the messages to Faust's commit machinery (their offsets become committable)."""
    for message in messages:
        message.ack(consumer)


class UnackedBatches:
    """Batches whose output is sent but not yet acknowledged by the broker.

    A task per batch awaits that batch's delivery futures and then acks its input messages, so
    scoring the next batch overlaps the broker round trip of this one. ``add`` returns once at
    most ``max_unacked`` batches are still waiting, and re-raises a failed delivery so the
    worker stops instead of committing past a lost prediction.
    """

    def __init__(self, consumer: Any, max_unacked: int) -> None:
        self.consumer = consumer
        self.max_unacked = max_unacked
        self._tasks: set[asyncio.Task[None]] = set()

    async def _settle(self, futures: list[asyncio.Future[Any]], messages: list[Message]) -> None:
        if futures:
            await asyncio.gather(*futures)
        ack_all(self.consumer, messages)

    async def add(self, futures: list[asyncio.Future[Any]], messages: list[Message]) -> None:
        self._tasks.add(asyncio.ensure_future(self._settle(futures, messages)))
        while len(self._tasks) > self.max_unacked:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            self._reap(done)
        self._reap({t for t in self._tasks if t.done()})

    def _reap(self, done: set[asyncio.Task[None]]) -> None:
        for task in done:
            self._tasks.discard(task)
            task.result()  # a failed delivery propagates
