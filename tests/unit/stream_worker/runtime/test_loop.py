"""The scoring loop's delivery guarantees on an in-memory stream (tests/stream_harness.py):
acks in offset order, a failed delivery stops it, revocation and stop drain what is pending,
stale generations are dropped, micro-batches split and wait as configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from stream_harness import DLQ, OUTPUT, POISON, FakeProducer, Stream, until

from stream_worker.runtime.acks import DeliveryError
from stream_worker.runtime.loop import micro_batches


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


def values(n: int, start: int = 0) -> list[bytes]:
    return [b"r%d" % i for i in range(start, start + n)]


def test_a_batch_is_acked_only_after_every_earlier_batch_even_if_delivered_first() -> None:
    """Batch 1 has a dead letter on a slow partition; batch 2 is acknowledged first. Faust's
    gap guard is skipped before a partition's first commit, so acking batch 2 then would let
    the commit pass batch 1's records (lost if batch 1's delivery then fails)."""

    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer.produce(0, b"a", POISON, b"c", b"d", *values(4))
        s.consumer.fetch()
        first_out, first_dlq, second_out = await s.sends(3)
        assert (first_out.topic, first_dlq.topic, second_out.topic) == (OUTPUT, DLQ, OUTPUT)
        assert second_out.values == values(4)

        first_out.deliver()
        second_out.deliver()  # before batch 1's dead letter
        await asyncio.sleep(0.01)
        assert s.consumer.ack_log == []
        assert s.consumer.commit() == {0: None}  # nothing may be committed yet

        first_dlq.deliver()
        await until(lambda: len(s.consumer.ack_log) == 8)
        assert s.consumer.ack_log == [(0, o) for o in range(8)]  # offset order
        assert s.consumer.commit() == {0: 8}
        await s.stop()

    run(test)


def test_acks_follow_offset_order_per_partition_whatever_the_delivery_order() -> None:
    async def test() -> None:
        s = Stream.start(partitions=3, batch_max=6, producer=FakeProducer({OUTPUT: 3, DLQ: 1}))
        for p in range(3):
            s.consumer.produce(p, *values(4, 10 * p))
        s.consumer.fetch()  # 12 messages: batches of 6 split across partitions
        sent = await s.sends(4)
        for batch in reversed(sent):  # the broker acknowledges newest first
            batch.deliver()
        await until(lambda: len(s.consumer.ack_log) == 12)
        for p in range(3):
            assert [o for q, o in s.consumer.ack_log if q == p] == [0, 1, 2, 3]
        assert s.consumer.commit() == {0: 4, 1: 4, 2: 4}
        await s.stop()

    run(test)


def test_a_failed_delivery_stops_the_loop_without_committing_past_it() -> None:
    async def test() -> None:
        s = Stream.start(batch_max=2, max_unacked=2)
        s.consumer.produce(0, *values(6))
        s.consumer.fetch()
        first, second, third = await s.sends(3)
        first.deliver()
        await until(lambda: len(s.consumer.ack_log) == 2)
        third.deliver()  # a later batch is acknowledged
        second.fail()
        await asyncio.sleep(0.01)
        assert s.consumer.ack_log == [(0, 0), (0, 1)]  # nothing at or after the failure
        assert s.consumer.commit() == {0: 2}
        assert s.consumer.commit() == {0: 2}
        with pytest.raises(DeliveryError, match="broker said no"):
            await asyncio.wait_for(s.task, 1)  # the worker stops
        assert not await s.drain(0.05)  # the stop that follows: nothing more to ack
        assert s.consumer.commit() == {0: 2}

    run(test)


def test_a_failed_first_batch_lets_nothing_be_committed() -> None:
    """Before a partition's first commit Faust's gap guard does not apply: only the acks can
    keep the commit from passing the failed batch."""

    async def test() -> None:
        s = Stream.start(batch_max=2, max_unacked=2)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        first, second = await s.sends(2)
        second.deliver()
        first.fail()
        await asyncio.sleep(0.01)
        assert s.consumer.ack_log == []
        assert s.consumer.commit() == {0: None}
        with pytest.raises(DeliveryError):
            await asyncio.wait_for(s.task, 1)

    run(test)


def test_a_failure_stops_an_idle_loop_at_once() -> None:
    async def test() -> None:
        s = Stream.start(batch_max=2)
        s.consumer.produce(0, *values(2))
        s.consumer.fetch()
        (only,) = await s.sends(1)
        await asyncio.sleep(0.01)  # the loop waits for the next message
        only.fail()
        with pytest.raises(DeliveryError):
            await asyncio.wait_for(s.task, 1)

    run(test)


def test_revocation_drains_the_batch_in_flight_and_commits_it() -> None:
    """The new owner of the partition starts after the drained batch: nothing redone."""

    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        (in_flight,) = await s.sends(1)
        revocation = asyncio.create_task(s.consumer.revoke(before=s.drain))
        await asyncio.sleep(0.01)
        assert not revocation.done()  # waiting for the batch's output
        s.consumer.produce(0, *values(4, 4))
        s.consumer.fetch()  # fetched while the revocation waits: not scored
        await asyncio.sleep(0.01)
        assert len(s.producer.sent) == 1
        in_flight.deliver()
        await asyncio.wait_for(revocation, 1)
        assert s.consumer.committed == {0: 4}  # committed before the partitions went

        s.consumer.assign()
        s.consumer.fetch()
        after = (await s.sends(2))[1]
        assert after.values == values(4, 4)
        assert s.producer.values() == values(8)  # each record scored once
        after.deliver()
        await s.stop()
        assert s.consumer.committed == {0: 8}

    run(test)


def test_revocation_abandons_what_is_not_delivered_in_time() -> None:
    """Abandoned batches are never acked (a late delivery changes nothing): redone, not lost."""

    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        (stuck,) = await s.sends(1)
        await s.consumer.revoke(before=lambda: s.drain(0.05))
        stuck.deliver()  # too late
        await asyncio.sleep(0.01)
        assert s.consumer.ack_log == []
        assert s.consumer.committed == {0: None}

        s.consumer.assign()
        s.consumer.fetch()
        (_, redone) = await s.sends(2)
        assert redone.values == values(4)  # the abandoned batch, scored again
        redone.deliver()
        await until(lambda: s.consumer.commit() == {0: 4})
        await s.stop()

    run(test)


def test_a_batch_scored_while_the_drain_starts_is_waited_for() -> None:
    """Admitted before scoring: a drain that starts while the batch is being sent waits for it."""

    async def test() -> None:
        gate = asyncio.Event()

        class SlowProducer(FakeProducer):
            async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
                await gate.wait()  # the producer's buffer is full
                return await super().send_batch(batch, topic, partition=partition)

        s = Stream.start(batch_max=4, producer=SlowProducer())
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        await until(lambda: s.batches == [4])
        drain = asyncio.create_task(s.drain())
        await asyncio.sleep(0.01)
        assert not drain.done()
        gate.set()
        (sent,) = await s.sends(1)
        sent.deliver()
        assert await asyncio.wait_for(drain, 1)
        assert s.consumer.commit() == {0: 4}
        await s.stop()

    run(test)


def test_a_first_join_revocation_does_not_stop_a_generation_that_reuses_its_number() -> None:
    """aiokafka revokes (nothing) before the first assignment too, and Tansu numbers that first
    generation 0, Faust's initial value: the drain's gate must reopen on assignment, not on
    a change of number."""

    async def test() -> None:
        s = Stream.start(batch_max=4, generation=0)
        await s.consumer.revoke(before=s.drain)
        s.consumer.assign(generation=0)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        (sent,) = await s.sends(1)
        sent.deliver()
        await until(lambda: s.consumer.commit() == {0: 4})
        await s.stop()

    run(test)


def test_messages_fetched_before_a_rebalance_are_never_scored() -> None:
    """Messages still queued from an earlier generation (they reached the queue after Faust
    cleared it) are dropped; the partition is read again from its committed offset."""

    async def test() -> None:
        s = Stream.start(batch_max=8, window_seconds=0.02)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()  # generation 1
        s.consumer.assign()  # generation 2, without the queue being cleared
        s.consumer.fetch()  # the same records again, under generation 2
        (sent,) = await s.sends(1)
        assert s.batches == [4]
        assert sent.values == values(4)  # once
        sent.deliver()
        await until(lambda: s.consumer.commit() == {0: 4})
        await s.stop()

    run(test)


def test_messages_taken_while_the_flow_is_suspended_are_not_scored() -> None:
    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer._flow = False  # a rebalance is under way
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        await asyncio.sleep(0.02)
        assert s.producer.sent == []
        assert s.consumer.ack_log == []
        await s.stop()

    run(test)


def test_stop_drains_pending_batches_before_the_final_commit() -> None:
    async def test() -> None:
        s = Stream.start(batch_max=4, max_unacked=2)
        s.consumer.produce(0, *values(8))
        s.consumer.fetch()
        first, second = await s.sends(2)
        stop = asyncio.create_task(s.stop())
        await asyncio.sleep(0.01)
        assert not stop.done()
        second.deliver()
        first.deliver()
        await asyncio.wait_for(stop, 1)
        assert s.consumer.committed == {0: 8}  # the final commit has both batches
        assert s.task.cancelled()

    run(test)


def test_a_cancelled_loop_leaves_nothing_behind_to_ack_later() -> None:
    """Cancelled without a drain (no stop hook ran): the batch in flight is abandoned; its
    delivery arriving afterwards acks nothing."""

    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer.produce(0, *values(4))
        s.consumer.fetch()
        (sent,) = await s.sends(1)
        s.task.cancel()
        await asyncio.gather(s.task, return_exceptions=True)
        assert s.unacked.pending == 0
        sent.deliver()
        await asyncio.sleep(0.01)
        assert s.consumer.ack_log == []

    run(test)


def test_low_traffic_batches_are_acked_without_waiting_for_the_next_one() -> None:
    async def test() -> None:
        s = Stream.start(batch_max=4)
        s.consumer.produce(0, b"only")
        s.consumer.fetch()
        (sent,) = await s.sends(1)
        sent.deliver()
        await until(lambda: s.consumer.ack_log == [(0, 0)])
        await s.stop()

    run(test)


# -- micro_batches: the split and the window ----------------------------------------------


def test_micro_batches_split_at_max_records() -> None:
    async def test() -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for i in range(10):
            queue.put_nowait(i)
        batches = micro_batches(queue, 4, 0.001)
        assert [await anext(batches) for _ in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]

    run(test)


def test_the_window_waits_for_more_records_but_no_longer_than_it_lasts() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        batches = micro_batches(queue, 100, 0.2)
        queue.put_nowait("a")
        loop.call_later(0.05, queue.put_nowait, "b")  # inside the window: same batch
        loop.call_later(0.5, queue.put_nowait, "c")  # after it: next batch
        start = loop.time()
        assert await anext(batches) == ["a", "b"]
        assert 0.18 <= loop.time() - start < 0.45
        assert await anext(batches) == ["c"]

    run(test)


def test_a_full_batch_does_not_wait_for_the_window() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for i in range(4):
            queue.put_nowait(i)
        start = loop.time()
        assert await anext(micro_batches(queue, 4, 5.0)) == [0, 1, 2, 3]
        assert loop.time() - start < 0.5

    run(test)


def test_a_batch_that_emptied_the_queue_still_waits_for_its_window() -> None:
    # No shortcut at low load: each batch is a produce request per partition, and on Tansu
    # fewer, larger requests beat an immediate send on p99 (docs/benchmark.md).
    async def test() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        batches = micro_batches(queue, 100, 0.2)
        queue.put_nowait("a")
        assert await anext(batches) == ["a"]
        queue.put_nowait("b")
        loop.call_later(0.05, queue.put_nowait, "c")  # inside the window: same batch
        start = loop.time()
        assert await anext(batches) == ["b", "c"]
        assert loop.time() - start >= 0.18

    run(test)
