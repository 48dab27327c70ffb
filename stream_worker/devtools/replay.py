"""Client tools (kafka-python, synchronous): replay applicants (and, later, their true
outcomes) and tail predictions."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from stream_worker.kafka_security import KafkaSecurity, check_security, kafka_python_kwargs
from trainer import dataset
from trainer.model import columns

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

log = logging.getLogger(__name__)

TEST_ID_PREFIX = "test-"
DRIFT_FEATURES = ("age", "hours_per_week", "marital_status", "capital_gain")


def test_records() -> list[dict[str, Any]]:
    """The bundled adult.test rows as applicant records, ids ``test-<row>``, label attached."""
    frame = dataset.load_bundled().test
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(frame.itertuples(index=False)):
        rec = {c: getattr(row, c) for c in columns.FEATURE_COLUMNS}
        for c in columns.NUMERIC_COLUMNS:
            rec[c] = int(rec[c])
        for c in columns.CATEGORICAL_COLUMNS:
            if not isinstance(rec[c], str):
                rec[c] = None
        rec["applicant_id"] = f"{TEST_ID_PREFIX}{i}"
        rec["_label"] = row.income
        rows.append(rec)
    return rows


def synthetic_records(n: int, seed: int) -> list[dict[str, Any]]:
    """Applicants drawn column by column from the training data (independent marginals)."""
    frame = dataset.load_bundled().train
    rng = np.random.default_rng(seed)
    idx = {c: rng.integers(0, len(frame), size=n) for c in columns.FEATURE_COLUMNS}
    cols = {c: frame[c].to_numpy() for c in columns.FEATURE_COLUMNS}
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"applicant_id": f"syn-{seed}-{i}"}
        for c in columns.FEATURE_COLUMNS:
            v = cols[c][idx[c][i]]
            if c in columns.NUMERIC_COLUMNS:
                rec[c] = int(v)
            else:
                rec[c] = v if isinstance(v, str) else None
        out.append(rec)
    return out


def apply_drift(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Shift a few distributions hard enough to cross PSI 0.2: older, longer hours, unmarried."""
    rng = np.random.default_rng(seed)
    out = []
    for rec in records:
        r = dict(rec)
        r["age"] = min(90, int(r["age"]) + 15)
        r["hours_per_week"] = min(99, int(r["hours_per_week"]) + 15)
        if rng.random() < 0.6:
            r["marital_status"] = "Never-married"
        if rng.random() < 0.15:
            r["capital_gain"] = int(rng.integers(5000, 30000))
        out.append(r)
    return out


def wire_value(record: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in record.items() if not k.startswith("_")})


@dataclass
class ProduceStats:
    sent: int = 0
    seconds: float = 0.0
    outcomes: int = 0  # true labels sent to the outcomes topic


# --- outcomes: the true label, some time after the applicant -------------------------------


@dataclass(frozen=True)
class OutcomePlan:
    """Send a record's true label (``_label``) to ``topic`` ``delay`` s after the record.

    Only a seeded random ``fraction`` of the records ever gets its label, as in life.
    """

    topic: str
    delay: float = 5.0
    fraction: float = 1.0
    seed: int = 0


def outcome_value(applicant_id: str, label: str, observed_at: datetime | None = None) -> bytes:
    """An outcome record (README, "Outcome record"); ``observed_at`` defaults to now, UTC."""
    moment = observed_at or datetime.now(UTC)
    return orjson.dumps(
        {
            "applicant_id": applicant_id,
            "label": label,
            "observed_at": moment.astimezone(UTC).isoformat(timespec="milliseconds"),
        }
    )


class OutcomeQueue:
    """Labels waiting for their time; first in, first due, since every record waits alike."""

    def __init__(self, plan: OutcomePlan) -> None:
        self.plan = plan
        self._rng = np.random.default_rng(plan.seed)
        self._waiting: deque[tuple[float, str, str]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def schedule(self, record: dict[str, Any], sent_at: float) -> None:
        """Maybe (``fraction``) queue ``record``'s label for ``sent_at + delay``."""
        if "_label" not in record:
            raise ValueError(f"record {record.get('applicant_id')!r} has no true label")
        if self._rng.random() < self.plan.fraction:
            entry = (sent_at + self.plan.delay, str(record["applicant_id"]), record["_label"])
            self._waiting.append(entry)

    def next_due(self) -> float | None:
        return self._waiting[0][0] if self._waiting else None

    def pop_due(self, now: float) -> list[tuple[str, str]]:
        """``(applicant_id, label)`` of every label due at ``now``."""
        due = []
        while self._waiting and self._waiting[0][0] <= now:
            _, applicant_id, label = self._waiting.popleft()
            due.append((applicant_id, label))
        return due


def _send_outcomes(producer: KafkaProducer, topic: str, due: list[tuple[str, str]]) -> int:
    for applicant_id, label in due:
        producer.send(topic, key=applicant_id.encode(), value=outcome_value(applicant_id, label))
    return len(due)


def _drain_outcomes(producer: KafkaProducer, queue: OutcomeQueue) -> int:
    """After the last applicant: wait for each remaining label's time and send it."""
    sent = 0
    while (due_at := queue.next_due()) is not None:
        delay = due_at - time.perf_counter()
        if delay > 0:
            producer.flush()  # what is sent so far reaches the broker while we wait
            time.sleep(delay)
        sent += _send_outcomes(producer, queue.plan.topic, queue.pop_due(time.perf_counter()))
    return sent


# --- producing -----------------------------------------------------------------------------


def produce(
    bootstrap: str,
    topic: str,
    records: list[dict[str, Any]],
    *,
    rate: float = 0.0,
    limit: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    outcomes: OutcomePlan | None = None,
    start: int = 0,
    security: KafkaSecurity | None = None,
) -> ProduceStats:
    """Send records (cycling if ``limit`` exceeds them) at ``rate`` per second (0 = flat out).

    ``start`` skips that many records first; past the end of ``records`` they repeat with
    suffixed ids (``-r1``, ``-r2``, …), so a later replay brings applicants not seen before.

    With ``outcomes``, each record's true label follows on ``outcomes.topic`` after
    ``outcomes.delay`` seconds (for the chosen fraction); this returns once all are sent.
    ``seconds`` is the time the applicants took.
    """
    from kafka import KafkaProducer

    check_security(bootstrap, security)
    queue = OutcomeQueue(outcomes) if outcomes is not None else None
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        max_request_size=2_000_000,
        allow_auto_create_topics=False,
        client_id="income-scorer-produce",
        **kafka_python_kwargs(security),
    )
    total = limit if limit is not None else max(len(records) - start, 0)
    stats = ProduceStats()
    started = time.perf_counter()
    try:
        for i, rec in enumerate(cycled(records, total, start)):
            if rate > 0:
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            producer.send(topic, key=str(rec["applicant_id"]).encode(), value=wire_value(rec))
            stats.sent += 1
            if queue is not None:
                stats.outcomes += _follow(producer, queue, rec)
            if on_progress and stats.sent % 5000 == 0:
                on_progress(stats.sent)
        producer.flush()
        stats.seconds = time.perf_counter() - started  # the applicants' time, not the labels'
        if queue is not None:
            stats.outcomes += _drain_outcomes(producer, queue)
            producer.flush()
    finally:
        producer.close()
    return stats


def _follow(producer: KafkaProducer, queue: OutcomeQueue, sent: dict[str, Any]) -> int:
    """Queue the label of the record just sent; send the labels now due."""
    now = time.perf_counter()
    queue.schedule(sent, now)
    return _send_outcomes(producer, queue.plan.topic, queue.pop_due(now))


def cycled(records: list[dict[str, Any]], total: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """``total`` records from ``start`` on, cycling; ids get ``-rN`` from the second pass."""
    if not records:
        return
    for i in range(start, start + total):
        rec = records[i % len(records)]
        if i >= len(records):
            rec = {**rec, "applicant_id": f"{rec['applicant_id']}-r{i // len(records)}"}
        yield rec


@dataclass
class ConsumeSummary:
    predictions: int = 0
    unique_ids: int = 0
    labelled: int = 0
    correct: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    last_timestamp: float = 0.0  # Kafka timestamp (s) of the newest prediction read

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def consume(
    bootstrap: str,
    topic: str,
    *,
    limit: int | None = None,
    timeout: float = 30.0,
    from_beginning: bool = True,
    labels: dict[str, str] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    security: KafkaSecurity | None = None,
) -> ConsumeSummary:
    """Read predictions (no consumer group) until ``limit`` or ``timeout`` s without news."""
    check_security(bootstrap, security)
    consumer, _ = assigned_consumer(
        bootstrap,
        topic,
        from_beginning=from_beginning,
        security=security,
        client_id="income-scorer-consume",
        consumer_timeout_ms=int(timeout * 1000),
    )
    summary = ConsumeSummary()
    seen: set[str] = set()
    try:
        for msg in consumer:
            pred = orjson.loads(msg.value)
            summary.predictions += 1
            pid = str(pred.get("applicant_id"))
            seen.add(pid)
            version = str(pred.get("model_version"))
            summary.versions[version] = summary.versions.get(version, 0) + 1
            summary.latencies_ms.append(float(pred.get("latency_ms", 0.0)))
            summary.last_timestamp = max(summary.last_timestamp, msg.timestamp / 1000.0)
            if labels is not None and pid in labels:
                summary.labelled += 1
                summary.correct += int(pred.get("label") == labels[pid])
            if on_record:
                on_record(pred)
            if limit is not None and summary.predictions >= limit:
                break
    finally:
        consumer.close()
    summary.unique_ids = len(seen)
    return summary


def assigned_consumer(
    bootstrap: str,
    topic: str,
    *,
    from_beginning: bool = True,
    wait_seconds: float = 0.0,
    security: KafkaSecurity | None = None,
    **overrides: Any,
) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A kafka-python consumer without a group, assigned every partition of ``topic`` by hand.

    No group means no join delay and no committed offset left behind. It reads from the
    beginning of each partition, or only what arrives from now on. It never creates the
    topic: when the topic is not there it waits up to ``wait_seconds`` for it, then comes back
    with no partitions. ``overrides`` are KafkaConsumer options (``client_id``, fetch sizes,
    ...). The caller closes the consumer.
    """
    from kafka import KafkaConsumer, TopicPartition

    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "income-scorer-replay",
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if from_beginning else "latest",
        "allow_auto_create_topics": False,  # a typo must not create a 4-partition topic
        **kafka_python_kwargs(security),
        **overrides,
    }
    consumer = KafkaConsumer(**options)
    try:
        deadline = time.monotonic() + wait_seconds
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if assigned:
            consumer.assign(assigned)
            if from_beginning:
                consumer.seek_to_beginning(*assigned)
    except BaseException:
        consumer.close()
        raise
    return consumer, assigned
