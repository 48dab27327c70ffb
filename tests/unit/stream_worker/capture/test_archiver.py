"""The Archiver with a fake consumer and producer and a real capture folder: what it writes,
commits, dead-letters and reports, without a broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from stream_worker.capture.archiver import Archiver, probe_location
from stream_worker.capture.layout import CaptureLocation
from stream_worker.capture.metrics import CaptureMetrics
from stream_worker.capture.store import CaptureReader
from stream_worker.exceptions import ConfigError, ScorerError
from stream_worker.settings import WorkerSettings

T = TypeVar("T")
TS = 1_764_590_400_000  # 2026-12-01T12:00:00Z
APPS_0 = TopicPartition("applicants", 0)
APPS_1 = TopicPartition("applicants", 1)
PREDS_0 = TopicPartition("predictions", 0)
OUTS_0 = TopicPartition("outcomes", 0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = TS


@dataclass
class FakeConsumer:
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    paused: set[TopicPartition] = field(default_factory=set)
    polls: list[dict[TopicPartition, list[Record]]] = field(default_factory=list)
    highwaters: dict[TopicPartition, int] = field(default_factory=dict)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        return self.polls.pop(0) if self.polls else {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp)

    async def position(self, tp: TopicPartition) -> int:
        return 0


@dataclass
class FakeProducer:
    sent: list[dict[str, Any]] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)

    async def send(self, topic: str, **kw: Any) -> asyncio.Future[None]:
        self.sent.append({"topic": topic, **kw})
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def flush(self) -> None:
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _archiver(folder: str, clock: Clock, **settings: Any) -> Archiver:
    config = WorkerSettings(
        input_topic="applicants",
        output_topic="predictions",
        outcomes_topic="outcomes",
        outcomes_dlq_topic="outcomes.dlq",
        capture_uri=folder,
        capture_flush_records=settings.pop("flush_records", 1000),
        capture_flush_seconds=5.0,
        **settings,
    )
    archiver = Archiver(
        config,
        CaptureLocation.from_uri(folder),
        CaptureMetrics(CollectorRegistry()),
        FakeConsumer(),
        FakeProducer(),
        clock,
    )
    archiver.assigned_to([APPS_0, APPS_1, PREDS_0, OUTS_0])
    return archiver


def _applicants(tp: TopicPartition, offsets: range) -> list[Record]:
    return [Record(tp.topic, tp.partition, o, f"app-{o}".encode(), b'{"age": 1}') for o in offsets]


def _prediction(offset: int, applicant_id: str, scored_at: str = "2026-12-01T12:00:01.5+00:00"):
    value = json.dumps(
        {
            "applicant_id": applicant_id, "probability": 0.8, "label": ">50K",
            "threshold": 0.4, "model_name": "adult-income", "model_version": "3",
            "scored_at": scored_at, "latency_ms": 2.0,
        }
    ).encode()  # fmt: skip
    return Record("predictions", 0, offset, applicant_id.encode(), value)


def _outcome(offset: int, value: bytes) -> Record:
    return Record("outcomes", 0, offset, b"k", value)


def _sample(archiver: Archiver, name: str, **labels: str) -> float:
    value = archiver.metrics.registry.get_sample_value(name, labels)
    return value if value is not None else 0.0


def test_revocation_flushes_and_commits_the_revoked_partitions_first(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)

    async def scenario() -> None:
        await archiver.take({APPS_0: _applicants(APPS_0, range(0, 5))})
        await archiver.take({APPS_1: _applicants(APPS_1, range(0, 3))})
        await archiver.revoked([APPS_0])

    run(scenario())

    files = CaptureLocation.from_uri(str(tmp_path)).files("applicants")
    assert [Path(f).name for f in files] == ["part-0-000000000000-000000000004.parquet"]
    assert archiver.consumer.commits == [{APPS_0: 5}]
    assert archiver.buffers.rows == 3  # partition 1 is still ours and still buffered
    assert (APPS_0.topic, 0) not in archiver.assigned
    # A record of the revoked partition fetched before the revocation is not taken.
    run(archiver.take({APPS_0: _applicants(APPS_0, range(5, 6))}))
    assert archiver.buffers.rows == 3


def test_a_failing_store_commits_nothing_answers_503_and_recovers(
    tmp_path: Path, clock: Clock
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the capture folder should be")
    archiver = _archiver(str(blocker / "capture"), clock, flush_records=3)
    archiver.consumer.polls = [{APPS_0: _applicants(APPS_0, range(0, 3))}]

    run(archiver.step())

    body, status = archiver.health()
    assert status == 503
    assert body["status"] == "failing"
    assert "NotADirectoryError" in body["reason"]
    assert archiver.consumer.commits == []
    assert archiver.consumer.paused == {APPS_0, APPS_1, PREDS_0, OUTS_0}
    assert _sample(archiver, "capture_write_failures_total") == 1
    assert _sample(archiver, "capture_healthy") == 0

    run(archiver.step())  # still inside the backoff: no new attempt
    assert _sample(archiver, "capture_write_failures_total") == 1

    archiver.location = CaptureLocation.from_uri(str(tmp_path / "capture"))  # store is back
    clock.now += 10
    run(archiver.step())
    assert archiver.consumer.commits == [{APPS_0: 3}]
    assert archiver.consumer.paused == set()
    assert archiver.health()[1] == 200
    assert _sample(archiver, "capture_rows_total", kind="applicants") == 3


def test_invalid_outcomes_are_dead_lettered_and_committed_once_acknowledged(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)
    good = b'{"applicant_id": "a-1", "label": ">50K", "observed_at": "2026-12-01T13:00:00+01:00"}'
    bad = b'{"applicant_id": "a-2", "label": ">50K", "observed_at": "2026-12-01T12:00:00"}'

    async def scenario() -> None:
        await archiver.take({OUTS_0: [_outcome(0, good), _outcome(1, bad), _outcome(2, good)]})
        await archiver.flush()
        assert archiver.consumer.commits == [{OUTS_0: 1}]  # not past the unacknowledged one
        archiver.producer.futures[0].set_result(None)
        await asyncio.sleep(0)  # the done callback runs
        await archiver.flush()

    run(scenario())

    assert archiver.consumer.commits == [{OUTS_0: 1}, {OUTS_0: 3}]
    [letter] = archiver.producer.sent
    assert letter["topic"] == "outcomes.dlq"
    assert letter["value"] == bad
    assert letter["key"] == b"k"
    headers = dict(letter["headers"])
    assert headers["error_class"] == b"ValidationError"
    assert b"timezone" in headers["error_reason"]
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == (
        b"outcomes",
        b"0",
        b"1",
    )
    assert _sample(archiver, "capture_outcomes_total", result="valid") == 2
    assert _sample(archiver, "capture_outcomes_total", result="invalid") == 1
    assert _sample(archiver, "capture_outcomes_total", result="dead_lettered") == 1
    assert _sample(archiver, "capture_outcome_rejections_total", reason="schema") == 1
    con, _ = CaptureReader.from_uri(str(tmp_path)).connect()
    rows = con.sql('SELECT applicant_id, observed_at FROM outcomes ORDER BY "offset"').fetchall()
    assert [r[0] for r in rows] == ["a-1", "a-1"]
    assert rows[0][1].isoformat() == "2026-12-01T12:00:00+00:00"  # normalised to UTC


def test_a_failed_dead_letter_is_sent_again_and_holds_the_commit(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)

    async def scenario() -> None:
        await archiver.take({OUTS_0: [_outcome(0, b"[1, 2]")]})
        archiver.producer.futures[0].set_exception(OSError("broker gone"))
        await asyncio.sleep(0)
        await archiver.flush()
        assert archiver.consumer.commits == []
        await archiver._resend_dead_letters()
        archiver.producer.futures[1].set_result(None)
        await asyncio.sleep(0)
        await archiver.flush()

    run(scenario())
    assert len(archiver.producer.sent) == 2
    assert archiver.consumer.commits == [{OUTS_0: 1}]


def test_a_prediction_that_does_not_decode_is_counted_skipped_and_committed_past(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)
    broken = Record("predictions", 0, 1, b"x", b'{"applicant_id": "x", "probability": "high"}')
    bad_time = _prediction(2, "y", scored_at="soon")

    async def scenario() -> None:
        await archiver.take({PREDS_0: [_prediction(0, "a"), broken, bad_time, _prediction(3, "b")]})
        await archiver.flush()

    run(scenario())
    assert archiver.consumer.commits == [{PREDS_0: 4}]
    assert _sample(archiver, "capture_skipped_predictions_total") == 2
    con, _ = CaptureReader.from_uri(str(tmp_path)).connect()
    assert con.sql("SELECT applicant_id FROM predictions ORDER BY 1").fetchall() == [("a",), ("b",)]
    [(scored_at,)] = con.sql("SELECT scored_at FROM predictions WHERE applicant_id='a'").fetchall()
    assert scored_at.isoformat() == "2026-12-01T12:00:01.500000+00:00"


def test_close_writes_and_commits_what_is_buffered(tmp_path: Path, clock: Clock) -> None:
    archiver = _archiver(str(tmp_path), clock)
    run(archiver.take({APPS_0: _applicants(APPS_0, range(0, 2))}))
    run(archiver.close())
    assert archiver.consumer.commits == [{APPS_0: 2}]
    assert archiver.buffers.rows == 0


def test_close_says_what_is_lost_when_the_store_stays_down(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stream_worker.capture.archiver.FIRST_BACKOFF_SECONDS", 0.001)
    blocker = tmp_path / "file"
    blocker.write_text("")
    archiver = _archiver(str(blocker / "capture"), clock)
    run(archiver.take({APPS_0: _applicants(APPS_0, range(0, 2))}))
    with pytest.raises(ScorerError, match="stopped with 2 rows not archived"):
        run(archiver.close())
    assert archiver.consumer.commits == []


def test_health_waits_for_the_group_and_lag_counts_what_is_not_archived(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)
    archiver.joined = False
    assert archiver.health() == (
        {
            "status": "starting", "reason": "joining the consumer group",
            "assigned_partitions": 4, "buffered_rows": 0, "files_written": 0,
            "last_flush_at": None, "location": str(tmp_path),
        },
        503,
    )  # fmt: skip
    archiver.joined = True
    archiver.consumer.highwaters = {APPS_0: 10, APPS_1: 4}

    async def scenario() -> None:
        await archiver.take({APPS_0: _applicants(APPS_0, range(0, 6))})
        await archiver.export_lag()

    run(scenario())
    lag = archiver.metrics.registry.get_sample_value
    assert lag("capture_lag", {"topic": "applicants", "partition": "0"}) == 10  # none written
    assert lag("capture_lag", {"topic": "applicants", "partition": "1"}) == 4
    run(archiver.flush())
    run(archiver.export_lag())
    assert lag("capture_lag", {"topic": "applicants", "partition": "0"}) == 4


def test_an_unwritable_location_is_refused_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    uri = str(blocker / "capture")
    with pytest.raises(ConfigError) as info:
        probe_location(CaptureLocation.from_uri(uri), uri)
    message = str(info.value)
    assert message.startswith(f"capture location {uri} is not writable: NotADirectoryError")
    assert "\n" not in message


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    probe_location(CaptureLocation.from_uri(str(tmp_path / "new")), "x")
    assert list((tmp_path / "new").iterdir()) == []


def test_a_null_outcome_without_a_key_is_dead_lettered_as_an_empty_value_saying_so(
    tmp_path: Path, clock: Clock
) -> None:
    archiver = _archiver(str(tmp_path), clock)
    tombstone = replace(_outcome(0, b""), key=None, value=None)

    run(archiver.take({OUTS_0: [tombstone]}))

    [letter] = archiver.producer.sent
    assert letter["key"] is None
    assert letter["value"] == b""  # Kafka refuses a record with neither key nor value
    assert dict(letter["headers"])["original_value"] == b"null"
