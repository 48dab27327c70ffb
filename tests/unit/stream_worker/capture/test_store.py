"""The capture layout and its read rules, on real files: dedup, joins, corrupt and hidden files."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from stream_worker.capture.layout import (
    APPLICANTS,
    OUTCOMES,
    PREDICTIONS,
    SCHEMAS,
    CaptureLocation,
)
from stream_worker.capture.store import CaptureReader, labelled_applicants

DAY = date(2026, 12, 1)
T0 = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _table(kind: str, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[kind])


def _prediction(applicant_id: str, offset: int, scored_at: datetime, version: str = "1") -> dict:
    return {
        "applicant_id": applicant_id, "probability": 0.7, "label": ">50K", "threshold": 0.5,
        "model_name": "adult-income", "model_version": version, "scored_at": scored_at,
        "latency_ms": 1.0, "partition": 0, "offset": offset, "timestamp": scored_at,
    }  # fmt: skip


def _outcome(applicant_id: str, offset: int, label: str, observed_at: datetime) -> dict:
    return {
        "applicant_id": applicant_id, "label": label, "observed_at": observed_at,
        "partition": 0, "offset": offset, "timestamp": observed_at,
    }  # fmt: skip


def _applicant(applicant_id: str, offset: int, value: bytes, at: datetime) -> dict:
    return {"applicant_id": applicant_id, "value": value, "partition": 0, "offset": offset,
            "timestamp": at}  # fmt: skip


@pytest.fixture
def location(tmp_path: Path) -> CaptureLocation:
    return CaptureLocation.from_uri(str(tmp_path / "capture"))


def _counts(location: CaptureLocation) -> Any:
    con, counts = CaptureReader(location).connect()
    con.close()
    return counts


def test_the_first_prediction_is_what_was_served_later_ones_are_duplicates(
    location: CaptureLocation,
) -> None:
    first = _prediction("a", 0, T0, version="1")
    again = _prediction("a", 5, T0 + timedelta(seconds=3), version="2")  # a redelivery
    location.write(PREDICTIONS, _table(PREDICTIONS, [first, _prediction("b", 1, T0)]), DAY, 0)
    location.write(PREDICTIONS, _table(PREDICTIONS, [again]), DAY, 0)

    con, counts = CaptureReader(location).connect()
    served = dict(con.sql("SELECT applicant_id, model_version FROM served").fetchall())
    assert served == {"a": "1", "b": "1"}
    assert (counts.predictions, counts.unique_predictions, counts.duplicate_predictions) == (
        3,
        2,
        1,
    )


def test_the_latest_outcome_wins_and_the_others_count_as_duplicates(
    location: CaptureLocation,
) -> None:
    location.write(PREDICTIONS, _table(PREDICTIONS, [_prediction("a", 0, T0)]), DAY, 0)
    outcomes = [
        _outcome("a", 0, "<=50K", T0 + timedelta(hours=1)),
        _outcome("a", 1, ">50K", T0 + timedelta(hours=2)),  # corrected later: this one wins
        _outcome("a", 2, "<=50K", T0 + timedelta(minutes=30)),  # late delivery, older
    ]
    location.write(OUTCOMES, _table(OUTCOMES, outcomes), DAY, 0)

    con, counts = CaptureReader(location).connect()
    assert con.sql("SELECT applicant_id, outcome FROM scored").fetchall() == [("a", ">50K")]
    assert (counts.outcomes, counts.unique_outcomes, counts.duplicate_outcomes) == (3, 1, 2)


def test_the_same_file_written_twice_is_kept_twice_and_read_once(
    location: CaptureLocation,
) -> None:
    table = _table(OUTCOMES, [_outcome("a", 7, ">50K", T0)])
    first = location.write(OUTCOMES, table, DAY, 0)
    second = location.write(OUTCOMES, table, DAY, 0)  # a crash before the commit: again
    assert first != second
    assert Path(first).name == "part-0-000000000007-000000000007.parquet"
    assert len(location.files(OUTCOMES)) == 2
    counts = _counts(location)
    assert (counts.outcomes, counts.unique_outcomes) == (2, 1)


def test_an_outcome_before_its_prediction_is_kept_and_joins_later(
    location: CaptureLocation,
) -> None:
    location.write(OUTCOMES, _table(OUTCOMES, [_outcome("early", 0, ">50K", T0)]), DAY, 0)
    reader = CaptureReader(location)
    con, counts = reader.connect()
    assert counts.unmatched_outcomes == 1
    assert con.sql("SELECT count(*) FROM scored").fetchall() == [(0,)]

    location.write(PREDICTIONS, _table(PREDICTIONS, [_prediction("early", 0, T0)]), DAY, 0)
    con, counts = reader.connect()
    assert counts.unmatched_outcomes == 0
    assert con.sql("SELECT applicant_id, outcome FROM scored").fetchall() == [("early", ">50K")]


def test_a_corrupt_file_is_skipped_and_reported_once(location: CaptureLocation) -> None:
    good = location.write(PREDICTIONS, _table(PREDICTIONS, [_prediction("a", 0, T0)]), DAY, 0)
    corrupt = Path(good).with_name("part-1-000000000000-000000000003.parquet")
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    heard: list[tuple[str, str]] = []
    reader = CaptureReader(location, on_skip=lambda path, reason: heard.append((path, reason)))

    for _ in range(3):
        con, counts = reader.connect()
        assert con.sql("SELECT applicant_id FROM served").fetchall() == [("a",)]
        assert list(counts.skipped) == [str(corrupt)]

    assert [path for path, _ in heard] == [str(corrupt)]  # told once, not on every read
    assert heard[0][1]  # with a reason


def test_files_ignores_hidden_temp_files_and_other_folders(location: CaptureLocation) -> None:
    path = location.write(APPLICANTS, _table(APPLICANTS, [_applicant("a", 0, b"{}", T0)]), DAY, 0)
    folder = Path(path).parent
    (folder / ".0123abcd.tmp").write_bytes(b"half a file")
    (folder / ".hidden.parquet").write_bytes(b"x")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder.parent / "not-a-date").mkdir()
    (folder.parent / "not-a-date" / "part-0-1-1.parquet").write_bytes(b"x")

    assert location.files(APPLICANTS) == [path]
    assert location.files(APPLICANTS, since=DAY + timedelta(days=1)) == []
    assert location.files(PREDICTIONS) == []  # no folder yet: no files, no error


def test_labelled_applicants_join_the_latest_record_with_its_truth(
    location: CaptureLocation,
) -> None:
    apps = [
        _applicant("a", 0, b'{"v": 1}', T0),
        _applicant("a", 1, b'{"v": 2}', T0 + timedelta(seconds=1)),  # latest record wins
        _applicant("b", 2, b'{"v": 3}', T0),  # no outcome yet: not labelled
    ]
    location.write(APPLICANTS, _table(APPLICANTS, apps), DAY, 0)
    location.write(
        OUTCOMES, _table(OUTCOMES, [_outcome("a", 0, ">50K", T0 + timedelta(hours=1))]), DAY, 0
    )

    table, _ = labelled_applicants(CaptureReader(location))
    assert table.to_pylist() == [
        {"applicant_id": "a", "value": b'{"v": 2}', "label": ">50K",
         "observed_at": T0 + timedelta(hours=1)},
    ]  # fmt: skip
    before, _ = labelled_applicants(CaptureReader(location), until=T0)
    assert before.num_rows == 0
