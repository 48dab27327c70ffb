"""CaptureBuffers: what a flush writes, what it may commit, and what a failure holds back."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_worker.capture.buffers import CaptureBuffers
from stream_worker.capture.layout import APPLICANTS, OUTCOMES, PREDICTIONS, CaptureLocation

DAY_1 = int(datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
DAY_2 = int(datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC).timestamp() * 1000)
APPS = ("applicants", 0)
APPS_1 = ("applicants", 1)
OUTS = ("outcomes", 2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Writer:
    """Stands in for CaptureLocation.write: notes each file, fails for chosen partitions."""

    def __init__(self, failing: set[tuple[str, int]] | None = None) -> None:
        self.failing = failing or set()
        self.files: list[tuple[str, int, date, list[int]]] = []

    def __call__(self, kind: str, table: pa.Table, day: date, partition: int) -> str:
        if (kind, partition) in self.failing:
            raise PermissionError(f"read-only store for {kind} {partition}")
        offsets = table.column("offset").to_pylist()
        self.files.append((kind, partition, day, offsets))
        return f"{kind}/date={day}/part-{partition}-{offsets[0]}-{offsets[-1]}.parquet"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _buffers(clock: Clock, flush_records: int = 100, flush_seconds: float = 5.0) -> CaptureBuffers:
    return CaptureBuffers(flush_records, flush_seconds, clock)


def _applicants(buf: CaptureBuffers, source: tuple[str, int], offsets: range, ts: int = DAY_1):
    for o in offsets:
        buf.add(source, APPLICANTS, (f"id-{o}", b"{}"), o, ts)


def test_a_flush_writes_one_file_per_partition_and_commits_the_next_offset(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(10, 15))
    _applicants(buf, APPS_1, range(0, 3))
    writer = Writer()

    report = buf.flush(writer)

    assert sorted(writer.files) == [
        (APPLICANTS, 0, date(2026, 12, 1), [10, 11, 12, 13, 14]),
        (APPLICANTS, 1, date(2026, 12, 1), [0, 1, 2]),
    ]
    assert report.ok
    assert report.rows == {APPLICANTS: 8}
    assert report.offsets == {APPS: 15, APPS_1: 3}
    assert buf.rows == 0
    buf.committed(report.offsets)
    assert buf.committable() == {}  # nothing new since the commit


def test_a_failed_write_commits_nothing_and_keeps_its_rows_for_the_retry(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(0, 4))
    buf.committed(buf.flush(Writer()).offsets)  # committed up to 4
    _applicants(buf, APPS, range(4, 9))

    failed = buf.flush(Writer(failing={(APPLICANTS, 0)}))

    assert not failed.ok
    assert "read-only store for applicants 0" in failed.errors[0]
    assert failed.files == []
    assert failed.offsets == {}  # still at 4: nothing past the unwritten rows
    assert buf.rows == 5
    assert buf.archived_position(APPS) == 4

    writer = Writer()
    retried = buf.flush(writer)
    assert writer.files == [(APPLICANTS, 0, date(2026, 12, 1), [4, 5, 6, 7, 8])]
    assert retried.offsets == {APPS: 9}


def test_one_failing_partition_holds_back_only_itself(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(0, 3))
    _applicants(buf, APPS_1, range(0, 6))
    report = buf.flush(Writer(failing={(APPLICANTS, 1)}))
    assert report.offsets == {APPS: 3}
    assert buf.rows == 6


def test_a_dead_letter_in_flight_holds_the_commit_until_acknowledged(clock: Clock) -> None:
    buf = _buffers(clock)
    buf.add(OUTS, OUTCOMES, ("a", ">50K", DAY_1), 0, DAY_1)
    buf.hold(OUTS, OUTCOMES, 1)  # invalid outcome at offset 1, its dead letter is in flight
    buf.add(OUTS, OUTCOMES, ("b", "<=50K", DAY_1), 2, DAY_1)

    first = buf.flush(Writer())
    assert first.rows == {OUTCOMES: 2}
    assert first.offsets == {OUTS: 1}  # up to, not past, the unacknowledged dead letter
    buf.committed(first.offsets)

    buf.release(OUTS, 1)
    assert buf.committable() == {OUTS: 3}


def test_a_skipped_record_is_done_at_once(clock: Clock) -> None:
    buf = _buffers(clock)
    buf.skip(("predictions", 0), PREDICTIONS, 0)
    buf.skip(("predictions", 0), PREDICTIONS, 1)
    assert buf.rows == 0
    assert buf.flush(Writer()).offsets == {("predictions", 0): 2}


def test_rows_across_midnight_become_one_file_per_utc_day(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(0, 2), ts=DAY_1)
    _applicants(buf, APPS, range(2, 5), ts=DAY_2)
    writer = Writer()
    report = buf.flush(writer)
    assert writer.files == [
        (APPLICANTS, 0, date(2026, 12, 1), [0, 1]),
        (APPLICANTS, 0, date(2026, 12, 2), [2, 3, 4]),
    ]
    assert report.offsets == {APPS: 5}


def test_due_by_rows_or_by_the_age_of_the_oldest_change(clock: Clock) -> None:
    buf = _buffers(clock, flush_records=3, flush_seconds=5.0)
    assert not buf.due()
    _applicants(buf, APPS, range(0, 2))
    assert not buf.due()
    _applicants(buf, APPS, range(2, 3))
    assert buf.due()  # 3 rows

    buf.committed(buf.flush(Writer()).offsets)
    assert not buf.due()
    clock.now += 60
    assert not buf.due()  # idle: nothing to do however long it waits

    buf.skip(APPS, APPLICANTS, 3)
    clock.now += 4.9
    assert not buf.due()
    clock.now += 0.1
    assert buf.due()  # 5 s after the first unflushed change, even with no rows to write


def test_forget_drops_a_revoked_partition_written_or_not(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(0, 4))
    _applicants(buf, APPS_1, range(0, 2))
    assert buf.forget([APPS, ("applicants", 9)]) == 4
    assert buf.rows == 2
    assert buf.sources() == [APPS_1]
    assert buf.archived_position(APPS) is None


def test_a_flush_of_chosen_partitions_leaves_the_others_buffered(clock: Clock) -> None:
    buf = _buffers(clock)
    _applicants(buf, APPS, range(0, 4))
    _applicants(buf, APPS_1, range(0, 2))
    writer = Writer()
    report = buf.flush(writer, sources={APPS_1})
    assert writer.files == [(APPLICANTS, 1, date(2026, 12, 1), [0, 1])]
    assert report.offsets == {APPS_1: 2}
    assert buf.rows == 4


def test_files_written_to_a_real_location_hold_the_rows_in_the_schema(
    clock: Clock, tmp_path: Path
) -> None:
    buf = _buffers(clock)
    scored = int(datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp() * 1000)
    preds = ("predictions", 3)
    for o in (7, 8):
        values = (f"id-{o}", 0.25, "<=50K", 0.4, "adult-income", "2", scored, 1.5)
        buf.add(preds, PREDICTIONS, values, o, DAY_1)
    location = CaptureLocation.from_uri(str(tmp_path))

    report = buf.flush(location.write)

    assert [Path(p).name for p in report.files] == ["part-3-000000000007-000000000008.parquet"]
    table = pq.read_table(report.files[0])
    assert table.column("applicant_id").to_pylist() == ["id-7", "id-8"]
    assert table.column("partition").to_pylist() == [3, 3]
    assert table.column("scored_at")[0].as_py() == datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
