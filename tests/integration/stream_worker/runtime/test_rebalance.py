"""Rebalances under load on a real broker: partitions change hands without work being redone.

A worker joining, or one leaving on SIGTERM, revokes every partition of the group (aiokafka's
eager protocol); the batches in flight are drained and committed before the partitions go, so
the new owners start exactly where the old ones stopped: nothing lost, no duplicate.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from kafka_helpers import consume_all
from stack_helpers import WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.devtools.chaos.tally import DuplicateBound, Observed, Produced, count
from stream_worker.devtools.processes import ManagedProcess

pytestmark = pytest.mark.integration

#: records/s: small batches, always some in flight; the whole split takes 41 s, longer than a
#: worker takes to start and join even on a loaded machine (at 600/s, 27 s, a worker once took
#: longer under CI load), so the rebalance lands mid-stream, which the tests check.
RATE = 400


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return tools.test_records()


def _produce_in_background(stack: WorkerStack, records: list[dict[str, Any]]) -> threading.Thread:
    thread = threading.Thread(
        target=tools.produce,
        args=(stack.bootstrap, stack.input_topic, records),
        kwargs={"rate": RATE},
    )
    thread.start()
    return thread


def _scored(
    stack: WorkerStack, records: list[dict[str, Any]], timeout: float = 120
) -> Counter[str]:
    """Predictions per applicant id, once every record has one (or the timeout passed)."""
    want = {r["applicant_id"] for r in records}
    deadline = time.monotonic() + timeout
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        found = consume_all(stack.bootstrap, stack.output_topic, len(records) * 2, timeout=5)
        counts = Counter(orjson.loads(r.value)["applicant_id"] for r in found)
        if want <= set(counts):
            break
    return counts


def _scored_by(stack: WorkerStack, worker: ManagedProcess) -> float:
    text = stack.metrics(worker)
    match = re.search(r'scorer_records_total\{outcome="scored"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def _check(counts: Counter[str], records: list[dict[str, Any]]) -> None:
    """Counted by applicant id as the chaos suite counts (:mod:`stream_worker.devtools.chaos`)."""
    produced = Produced(valid={r["applicant_id"]: 0.0 for r in records})
    figures = count(
        "rebalance",
        produced,
        Observed(predictions=counts),
        healthy_after=True,
        bound=DuplicateBound(),  # a rebalance or a SIGTERM drains first: no duplicate
    )
    assert figures.lost == 0, f"{figures.lost} records lost"
    assert figures.duplicates == 0, f"{figures.duplicates} duplicates"


def test_a_worker_joining_mid_stream_redoes_nothing(
    worker_stack: WorkerStack, records: list[dict[str, Any]]
) -> None:
    first = worker_stack.start_worker()
    producer = _produce_in_background(worker_stack, records)
    time.sleep(2.0)
    joining = worker_stack.start_worker()  # the group rebalances while records stream in
    assert producer.is_alive()
    producer.join()
    _check(_scored(worker_stack, records), records)
    assert _scored_by(worker_stack, first) > 0
    assert _scored_by(worker_stack, joining) > 0  # it took partitions over mid-stream


def test_sigterm_of_one_of_two_workers_mid_stream_redoes_nothing(
    worker_stack: WorkerStack, records: list[dict[str, Any]]
) -> None:
    staying = worker_stack.start_worker()
    leaving = worker_stack.start_worker()
    time.sleep(6)  # let the group settle with both members
    producer = _produce_in_background(worker_stack, records)
    time.sleep(5.0)
    assert _scored_by(worker_stack, leaving) > 0  # it has partitions and work in flight
    leaving.stop()  # SIGTERM: drain, final commit, leave; the other takes its partitions
    assert producer.is_alive()
    producer.join()
    _check(_scored(worker_stack, records), records)
    assert _scored_by(worker_stack, staying) > 0
