"""Consumer lag counts from the last processed (acked) offset, on Faust's real bookkeeping.

The consumer is faust-streaming's own (never started: no broker); its assignment and high
watermark are stubbed, and its offsets move the way the worker moves them: ``perform_seek`` on
assignment, the fetcher's read offset, ``Message.ack`` once a batch's output is acknowledged,
and a commit taking what ``_new_offset`` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import faust
import pytest
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage
from prometheus_client import CollectorRegistry

from stream_worker.runtime import faust_compat
from stream_worker.runtime.app import export_lag, faust_app
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.settings import WorkerSettings

T = TypeVar("T")
TOPIC = "applicants"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)
OTHER = TP("outcomes", 0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Worker:
    """A Faust app subscribed to the input topic as the worker is, and the metrics it exports."""

    app: faust.App
    consumer: Any
    metrics: ScorerMetrics
    settings: WorkerSettings
    highwater: dict[TP, int | None]

    @property
    def ctx(self) -> Any:
        return SimpleNamespace(app=self.app, metrics=self.metrics, settings=self.settings)

    async def assign(self, committed: Mapping[TP, int]) -> None:
        """What Faust does on assignment: seek to the committed offsets (its perform_seek)."""

        async def seek_to_committed() -> Mapping[TP, int]:
            return committed

        self.consumer.seek_to_committed = seek_to_committed
        await self.consumer.perform_seek()

    def read(self, tp: TP, offsets: Iterable[int]) -> list[Message]:
        """Messages the fetcher handed to the topic's queue (it records each as read); of the
        class the aiokafka driver makes, whose final ack reaches the consumer."""
        messages: list[Message] = [
            ConsumerMessage(tp.topic, tp.partition, o, 0.0, 0, [], b"k", b"v", None, tp=tp)
            for o in offsets
        ]
        if messages:
            self.consumer._read_offset[tp] = messages[-1].offset
        return messages

    def ack(self, messages: Iterable[Message]) -> None:
        """The loop's ack once a batch's output is acknowledged: ``Message.ack``."""
        for message in messages:
            message.ack(self.consumer)

    def commit(self, tp: TP) -> None:
        """What a commit does to the bookkeeping: take ``_new_offset`` and record it."""
        offset = self.consumer._new_offset(tp)
        if offset is not None:
            self.consumer._committed_offset[tp] = offset

    async def lag(self) -> dict[int, float]:
        await export_lag(self.ctx)
        found: dict[int, float] = {}
        for family in self.metrics.registry.collect():
            if family.name == "scorer_consumer_lag":
                for s in family.samples:
                    assert s.labels["topic"] == TOPIC
                    found[int(s.labels["partition"])] = s.value
        return found


def scenario(tmp_path: Path, body: Callable[[Worker], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        settings = WorkerSettings(data_dir=str(tmp_path / "faust"), input_topic=TOPIC)
        app = faust_app(settings)
        faust_compat.subscribe(faust_compat.RawTopic(app, topics=[TOPIC], partitions=2))
        await app.topics._update_indices()  # type: ignore[attr-defined]  # as on app start
        assert app.topics.acks_enabled_for(TOPIC)
        worker = Worker(
            app, app.consumer, ScorerMetrics(CollectorRegistry()), settings, {P0: 5000, P1: 300}
        )
        worker.consumer.assignment = lambda: {P0, P1, OTHER}
        worker.consumer.highwater = lambda tp: worker.highwater[tp]
        await body(worker)

    run(main())


def test_buffered_and_in_flight_records_count_as_lag(tmp_path: Path) -> None:
    """4,096 records read into the queue, 1,000 of them processed: 3,900 still to do."""

    async def body(w: Worker) -> None:
        await w.assign({P0: 100, P1: 300})
        messages = w.read(P0, range(100, 4196))
        assert await w.lag() == {0: 5000 - 100, 1: 0}
        w.ack(messages[:1000])  # offsets 100..1099; the rest is buffered or in flight
        assert await w.lag() == {0: 5000 - 1100, 1: 0}
        w.commit(P0)  # a commit moves the bookkeeping, not the lag
        assert w.consumer._committed_offset[P0] == 1100
        assert await w.lag() == {0: 5000 - 1100, 1: 0}
        w.ack(messages[1000:])
        assert await w.lag() == {0: 5000 - 4196, 1: 0}

    scenario(tmp_path, body)


def test_right_after_a_seek_lag_counts_from_the_committed_offset(tmp_path: Path) -> None:
    """perform_seek sets the read offset to the next offset to read, not the last one read."""

    async def body(w: Worker) -> None:
        await w.assign({P0: 4000, P1: 250})
        assert await w.lag() == {0: 1000, 1: 50}

    scenario(tmp_path, body)


def test_out_of_order_acks_count_from_the_first_unacked_offset(tmp_path: Path) -> None:
    async def body(w: Worker) -> None:
        await w.assign({P0: 100, P1: 300})
        first, second = w.read(P0, range(100, 200)), w.read(P0, range(200, 300))
        w.ack(second)  # the later batch is acknowledged first
        assert await w.lag() == {0: 5000 - 100, 1: 0}
        w.ack(first)
        assert await w.lag() == {0: 5000 - 300, 1: 0}

    scenario(tmp_path, body)


def test_a_fresh_group_counts_from_its_first_processed_offset(tmp_path: Path) -> None:
    """No committed offset yet (Faust also keeps a committed 0 as None)."""

    async def body(w: Worker) -> None:
        await w.assign({P0: 0})
        assert w.consumer._committed_offset.get(P0) is None
        assert await w.lag() == {0: 5000, 1: 300}
        w.ack(w.read(P0, range(0, 10)))
        assert await w.lag() == {0: 4990, 1: 300}

    scenario(tmp_path, body)


def test_offsets_missing_from_the_log_count_as_processed(tmp_path: Path) -> None:
    """A gap the fetcher records (compacted or control records) is done, as for a commit."""

    async def body(w: Worker) -> None:
        await w.assign({P0: 100, P1: 300})
        w.ack(w.read(P0, range(100, 150)))
        await w.consumer._add_gap(P0, 150, 159)  # what the fetcher does on a jump to 160
        assert await w.lag() == {0: 5000 - 160, 1: 0}
        w.ack(w.read(P0, range(160, 170)))
        assert await w.lag() == {0: 5000 - 170, 1: 0}

    scenario(tmp_path, body)


def test_lag_only_for_input_partitions_with_a_high_watermark(tmp_path: Path) -> None:
    async def body(w: Worker) -> None:
        await w.assign({P0: 100, P1: 300})
        w.highwater[P1] = None  # not fetched yet
        assert await w.lag() == {0: 4900}
        # reading the bookkeeping creates no entries in Faust's defaultdicts
        assert P1 not in w.consumer._acked
        assert P1 not in w.consumer._gap

    scenario(tmp_path, body)


@pytest.mark.parametrize(
    ("committed", "acked", "expected"),
    [(None, [], 0), (None, [7, 8, 10], 9), (5, [], 5), (5, [6, 7], 5), (5, [5, 6, 8], 7)],
)
def test_next_unprocessed_offset(committed: int | None, acked: list[int], expected: int) -> None:
    consumer = SimpleNamespace(
        _committed_offset={P0: committed} if committed is not None else {},
        _acked={P0: acked},
        _gap={},
    )
    assert faust_compat.next_unprocessed_offset(consumer, P0) == expected
