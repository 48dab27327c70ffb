"""The two small interfaces the scoring loop runs over: a consumer and a producer.

The worker plugs Faust and aiokafka in (``faust_compat.FaustStreamConsumer``, aiokafka's
``AIOKafkaProducer`` as it is); the unit tests plug in-memory fakes, so the loop's delivery
guarantees are tested without a broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from faust.types import Message


class StreamConsumer(Protocol):
    """Where the loop's messages come from and where their acknowledgements go.

    The same bookkeeping a Faust ``Stream`` does per event, offered per batch: the rebalance
    generation a message must belong to, whether the flow is open, and the ack that makes
    offsets committable.
    """

    @property
    def queue(self) -> asyncio.Queue[Message]:
        """Fetched messages, in the order the consumer fetched them."""
        ...

    def generation(self) -> int:
        """The current rebalance generation; a message carries the one it was fetched in."""
        ...

    def flow_active(self) -> bool:
        """False while a rebalance or a stop suspends the flow: take nothing new then."""
        ...

    def ack(self, messages: Sequence[Message]) -> None:
        """Make these messages' offsets committable (called in offset order per partition)."""
        ...


class RecordBatch(Protocol):
    """aiokafka's ``BatchBuilder``: records of one partition sent as one unit."""

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
    ) -> Any:
        """Add a record; None when the batch is full (it then takes no more)."""
        ...

    def close(self) -> None: ...

    def record_count(self) -> int: ...


class RecordProducer(Protocol):
    """The part of aiokafka's ``AIOKafkaProducer`` the sender uses (all public API)."""

    def create_batch(self) -> RecordBatch: ...

    async def send_batch(
        self, batch: RecordBatch, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        """Queue ``batch``; the future resolves when the broker acknowledged it, or fails."""
        ...

    async def partitions_for(self, topic: str) -> set[int]: ...
