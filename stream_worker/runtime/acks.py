"""Pending batches: acked in offset order once their output is delivered, drained on demand.

What a Faust ``Stream`` does per event (mark the message pending, ack it when done, let a
rebalance or a stop wait for pending messages), :class:`UnackedBatches` does per batch:

- A batch is *pending* from the moment the loop admits it (before scoring) until its input is
  acked. ``drain`` (revocation, stop) waits for every pending batch, within a bound, then
  abandons what is left: abandoned batches are never acked, so their records are redone by
  the partition's next owner (at-least-once), never skipped.
- A batch is acked only once every delivery future of its output resolved **and** every
  earlier batch was acked, so offsets become committable in offset order per partition: no
  commit can pass a record whose output is not acknowledged, whatever order the broker
  acknowledges in.
- A failed delivery is never acked, nor is any batch after it; the loop raises
  :class:`DeliveryError` and the worker stops (the final commit stops before the failure).

Acks run in the delivery futures' done callbacks: no task per batch, nothing left running
outside the loop's own task once it has drained or abandoned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from faust.types import Message

from stream_worker.exceptions import ScorerError, one_line

log = logging.getLogger(__name__)


class DeliveryError(ScorerError):
    """The broker refused or lost output of a batch; nothing from that batch on is acked."""


class Acker(Protocol):
    def ack(self, messages: Sequence[Message]) -> None: ...


class Ticket:
    """An admitted batch the loop is still scoring and sending (not yet in the ack chain)."""

    __slots__ = ("valid",)

    def __init__(self) -> None:
        self.valid = True


class _Batch:
    """A sent batch: its input messages and the delivery futures still outstanding."""

    __slots__ = ("error", "futures", "messages", "on_done", "remaining")

    def __init__(self, messages: Sequence[Message], futures: list[asyncio.Future[Any]]) -> None:
        self.messages = messages
        self.futures = futures
        self.remaining = len(futures)
        self.error: BaseException | None = None
        self.on_done: Callable[[asyncio.Future[Any]], None] | None = None


class UnackedBatches:
    """Batches admitted by the loop and not yet acked, in the order they were admitted.

    ``add`` returns once at most ``max_unacked`` sent batches are still waiting for the
    broker, so scoring the next batch overlaps the round trip of this one.
    """

    def __init__(self, consumer: Acker, max_unacked: int) -> None:
        self.consumer = consumer
        self.max_unacked = max_unacked
        self._chain: deque[_Batch] = deque()
        self._ticket: Ticket | None = None
        self._closed = False  # admitting nothing: a drain ran, no assignment since
        self._failure: BaseException | None = None
        self._changed: asyncio.Event | None = None
        self._loop_task: asyncio.Task[Any] | None = None  # interrupted on a failed delivery
        self._interrupted = False

    # -- state seen by the loop and the hooks ----------------------------------------------

    @property
    def pending(self) -> int:
        """Batches admitted and not yet acked (sent or still being scored)."""
        return len(self._chain) + (self._ticket is not None)

    def interrupt_on_failure(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` (the loop) as soon as a delivery fails, wherever it waits; the loop
        turns that cancellation into :class:`DeliveryError` (see :meth:`interrupted`). No task
        of our own waits alongside the loop's: an idle loop costs nothing extra."""
        self._loop_task = task
        if self._failure is not None:
            self._interrupt()

    def interrupted(self, task: asyncio.Task[Any]) -> bool:
        """True if ``task``'s cancellation is only the failure's interrupt (it is then undone);
        False for a cancellation from outside (a stop), which must go on."""
        if not self._interrupted:
            return False
        self._interrupted = False
        return task.uncancel() == 0

    def raise_if_failed(self) -> None:
        if self._failure is not None:
            raise DeliveryError(
                f"output delivery failed: {one_line(self._failure)}"
            ) from self._failure

    # -- the loop ---------------------------------------------------------------------------

    def admit(self) -> Ticket | None:
        """Mark the next batch pending, or None if it must not be processed (draining, failed).

        The loop admits a batch before scoring it, so a drain that starts meanwhile waits for
        it; one loop, so at most one batch is between admission and ``add``.
        """
        if self._failure is not None or self._closed:
            return None
        assert self._ticket is None, "one loop admits one batch at a time"
        self._ticket = Ticket()
        return self._ticket

    def release(self, ticket: Ticket) -> None:
        """Forget an admitted batch the loop gave up on (scoring or sending raised): its
        messages are not acked, so a restart or the partition's next owner redoes them."""
        if self._ticket is ticket:
            self._ticket = None
            self._notify()

    async def add(
        self, ticket: Ticket, futures: list[asyncio.Future[Any]], messages: Sequence[Message]
    ) -> None:
        """Queue the admitted batch's messages for acking once ``futures`` all resolve."""
        if self._ticket is ticket:
            self._ticket = None
        if not ticket.valid:  # abandoned by a drain that timed out meanwhile: never acked
            self._notify()
            return
        batch = _Batch(messages, futures)
        self._chain.append(batch)
        if futures:
            batch.on_done = functools.partial(self._on_delivery, batch)
            for future in futures:
                future.add_done_callback(batch.on_done)
        self._ack_ready()
        while len(self._chain) > self.max_unacked and self._failure is None:
            await self._wait_change()
        self.raise_if_failed()

    # -- revocation and stop ----------------------------------------------------------------

    def close(self) -> None:
        """Admit nothing more until ``reopen`` (the next assignment)."""
        self._closed = True

    def reopen(self) -> None:
        """Admit batches again: partitions were assigned after a drain (a rebalance done)."""
        if self._failure is None:
            self._closed = False

    async def drain(self, timeout: float) -> bool:
        """Stop admitting, wait up to ``timeout`` s for every pending batch to be acked.

        True when all were acked. Otherwise (timeout, or a failed delivery blocks the chain)
        what is left is abandoned, never acked; False.
        """
        self.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and not self._blocked():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wait_change(), remaining)
            except TimeoutError:
                break
        if not self.pending:
            return True
        log.warning(
            "abandoning %d pending batch(es) (%s): not acked, so their records are redone",
            self.pending,
            "a delivery failed" if self._blocked() else f"not delivered within {timeout:.1f}s",
        )
        self.abandon()
        return False

    def abandon(self) -> None:
        """Drop every pending batch without acking it; detach from its delivery futures."""
        if self._ticket is not None:
            self._ticket.valid = False
            self._ticket = None
        while self._chain:
            batch = self._chain.popleft()
            batch.remaining = -1  # a callback already scheduled finds nothing to ack
            if batch.on_done is not None:
                for future in batch.futures:
                    future.remove_done_callback(batch.on_done)
        self._notify()

    # -- internals ----------------------------------------------------------------------------

    def _on_delivery(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        if batch.remaining < 0:
            return  # abandoned
        error: BaseException | None = (
            asyncio.CancelledError() if future.cancelled() else future.exception()
        )
        if error is not None:
            if batch.error is None:
                batch.error = error
            if self._failure is None:
                self._failure = error
                log.error("output delivery failed; acking nothing from this batch on: %r", error)
                self._interrupt()
        else:
            batch.remaining -= 1
        self._ack_ready()
        self._notify()

    def _ack_ready(self) -> None:
        """Ack the delivered batches at the head of the chain, in order; stop at the first
        batch still waiting or failed."""
        chain = self._chain
        while chain and chain[0].remaining == 0 and chain[0].error is None:
            self.consumer.ack(chain.popleft().messages)

    def _blocked(self) -> bool:
        """True when nothing pending can be acked any more (a failed batch heads the chain)."""
        return bool(self._chain) and self._chain[0].error is not None

    def _interrupt(self) -> None:
        task = self._loop_task
        if task is not None and not task.done() and not self._interrupted:
            self._interrupted = True
            task.cancel()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        await self._changed.wait()
