"""Steady load with poison mixed in, and a tail of what comes out (kafka-python, threads).

The producer is *not* idempotent: against Tansu a kill can make the broker acknowledge an
idempotent batch without storing it (README, ``--durable``); without idempotence nothing
acknowledged is lost, and a batch in flight at a kill may be written twice.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_worker.devtools import replay
from stream_worker.devtools.chaos.tally import Observed, Produced
from stream_worker.runtime.tuning import PRODUCER_MAX_REQUEST_BYTES

#: Kinds of poison: each one a record fault the worker must dead-letter (README, contracts).
POISON_KINDS = ("not_json", "not_object", "no_id_field", "missing_numeric", "out_of_range", "type")


def poison_value(kind: str, base: dict[str, Any], key: str) -> bytes:
    """A record the worker must dead-letter, built from a valid one."""
    rec = {k: v for k, v in base.items() if not k.startswith("_")}
    rec["applicant_id"] = key
    if kind == "not_json":
        return f"{key}: this is not JSON {{".encode()
    if kind == "not_object":
        return orjson.dumps([key, 1, 2])
    if kind == "no_id_field":
        rec.pop("applicant_id")
    elif kind == "missing_numeric":
        rec.pop("age")
    elif kind == "out_of_range":
        rec["age"] = -5
    else:
        rec["hours_per_week"] = "forty"
    return orjson.dumps(rec)


def oversize_value(key: str, size: int) -> bytes:
    """A valid-looking applicant padded to ``size`` bytes: over the worker's record limit, so a
    record fault, and over the dead-letter value limit, so its dead letter is cut."""
    head = orjson.dumps({"applicant_id": key, "pad": ""})[:-2]
    return head + b"x" * max(size - len(head) - 2, 0) + b'"}'


@dataclass(frozen=True)
class LoadPlan:
    """What the load generator sends: ``rate`` records/s for ``seconds``."""

    rate: float
    seconds: float
    poison_fraction: float = 0.03
    #: oversize records per second, each between ``oversize_bytes`` (low, high)
    oversize_rate: float = 0.0
    oversize_bytes: tuple[int, int] = (1_100_000, PRODUCER_MAX_REQUEST_BYTES - 100_000)
    seed: int = 0
    prefix: str = "c"


def planned(plan: LoadPlan, records: list[dict[str, Any]]) -> Iterator[tuple[str, bytes, bool]]:
    """(key, value, is_valid) in send order, seeded: the same plan sends the same records."""
    rng = np.random.default_rng(plan.seed)
    total = int(plan.rate * plan.seconds)
    every = int(plan.rate / plan.oversize_rate) if plan.oversize_rate > 0 else 0
    for i in range(total):
        base = records[i % len(records)]
        if every and i % every == every - 1:
            key = f"{plan.prefix}-big-{i}"
            size = int(rng.integers(plan.oversize_bytes[0], plan.oversize_bytes[1]))
            yield key, oversize_value(key, size), False
        elif rng.random() < plan.poison_fraction:
            key = f"{plan.prefix}-bad-{i}"
            kind = POISON_KINDS[int(rng.integers(len(POISON_KINDS)))]
            yield key, poison_value(kind, base, key), False
        else:
            key = f"{plan.prefix}-{i}"
            yield key, replay.wire_value({**base, "applicant_id": key}), True


def chaos_producer(bootstrap: str, **overrides: Any) -> Any:
    """acks=all, retries for ever (within the delivery timeout), idempotence off (Tansu)."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "chaos-load",
        "acks": "all",
        "enable_idempotence": False,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "linger_ms": 5,
        "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
        "allow_auto_create_topics": False,
        "max_block_ms": 60_000,
        **overrides,
    }
    return KafkaProducer(**options)


class LoadGenerator(threading.Thread):
    """Sends the plan to ``topic`` at its rate; ``produced`` holds what the broker acknowledged."""

    def __init__(
        self, bootstrap: str, topic: str, plan: LoadPlan, records: list[dict[str, Any]]
    ) -> None:
        super().__init__(name="chaos-load", daemon=True)
        self.bootstrap, self.topic, self.plan, self.records = bootstrap, topic, plan, records
        self.produced = Produced()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self.started_at = 0.0

    def halt(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            self._send_all()
        except BaseException as exc:  # reported by the scenario, not lost in a thread
            self.error = exc

    def _send_all(self) -> None:
        producer = chaos_producer(self.bootstrap)
        self.started_at = time.monotonic()
        try:
            for i, (key, value, valid) in enumerate(planned(self.plan, self.records)):
                if self._stop_event.is_set():
                    break
                delay = self.started_at + i / self.plan.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent_at = time.monotonic()
                future = producer.send(self.topic, key=key.encode(), value=value)
                future.add_callback(self._acked, key, sent_at, valid)
                future.add_errback(self._failed)
            producer.flush(timeout=120)
        finally:
            producer.close(timeout=10)

    def _acked(self, key: str, sent_at: float, valid: bool, _metadata: Any) -> None:
        with self._lock:
            (self.produced.valid if valid else self.produced.poison)[key] = sent_at

    def _failed(self, _exc: BaseException) -> None:
        with self._lock:
            self.produced.unacknowledged += 1


class OutputTail(threading.Thread):
    """Reads the predictions and dead-letter topics from the beginning (no group) as they
    arrive; ``observed`` holds every key, its first arrival and each prediction's version."""

    def __init__(self, bootstrap: str, predictions: str, dead_letters: str) -> None:
        super().__init__(name="chaos-tail", daemon=True)
        self.bootstrap = bootstrap
        self.topics = {predictions: "prediction", dead_letters: "dead_letter"}
        self.observed = Observed()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def halt(self) -> None:
        self._stop_event.set()

    def snapshot(self) -> set[str]:
        with self._lock:
            return set(self.observed.first_output)

    def run(self) -> None:
        try:
            self._tail()
        except BaseException as exc:
            self.error = exc

    def _tail(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="chaos-tail",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        try:
            assigned = []
            for topic in self.topics:
                deadline = time.monotonic() + 30
                while not (parts := consumer.partitions_for_topic(topic)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"topic {topic} not found")
                    time.sleep(0.2)
                assigned += [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            while not self._stop_event.is_set():
                batches = consumer.poll(timeout_ms=200)
                now = time.monotonic()
                with self._lock:
                    for tp, records in batches.items():
                        kind = self.topics[tp.topic]
                        for rec in records:
                            self._add(kind, rec, now)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _add(self, kind: str, rec: Any, now: float) -> None:
        key = rec.key.decode(errors="replace") if rec.key is not None else ""
        version = None
        if kind == "prediction":
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                version = str(orjson.loads(rec.value).get("model_version"))
        self.observed.add(kind, key, now, version, len(rec.value or b""))


def input_keys(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[str]:
    """Every key in ``topic`` (to find records a produce retry wrote twice)."""
    consumer, assigned = replay.assigned_consumer(
        bootstrap,
        topic,
        client_id="chaos-input-keys",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    keys: list[str] = []
    deadline = time.monotonic() + timeout
    idle = 0
    try:
        while assigned and time.monotonic() < deadline and idle < 6:
            batches = consumer.poll(timeout_ms=500)
            got = [r.key.decode(errors="replace") for rs in batches.values() for r in rs if r.key]
            keys += got
            idle = 0 if got else idle + 1
            if len(keys) >= expected and not got:
                break
    finally:
        consumer.close()
    return keys
