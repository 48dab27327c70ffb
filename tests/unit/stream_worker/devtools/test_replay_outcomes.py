"""The replay's outcomes: which records get a label, when, and in the contract's format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stream_worker.capture.outcome import OutcomeDecoder
from stream_worker.devtools import replay

RECORDS = [
    {"applicant_id": f"test-{i}", "_label": ">50K" if i % 3 else "<=50K"} for i in range(1000)
]


def _queue(**plan: Any) -> replay.OutcomeQueue:
    return replay.OutcomeQueue(replay.OutcomePlan("outcomes", **plan))


def _scheduled(queue: replay.OutcomeQueue, records: list[dict[str, Any]]) -> list[str]:
    for i, rec in enumerate(records):
        queue.schedule(rec, sent_at=float(i))
    return [applicant_id for applicant_id, _ in queue.pop_due(float("inf"))]


def test_each_label_is_due_delay_seconds_after_its_record_in_order() -> None:
    queue = _queue(delay=5.0)
    queue.schedule(RECORDS[0], sent_at=100.0)
    queue.schedule(RECORDS[1], sent_at=100.5)
    assert queue.next_due() == 105.0
    assert queue.pop_due(104.99) == []
    assert queue.pop_due(105.0) == [("test-0", "<=50K")]
    assert queue.pop_due(106.0) == [("test-1", ">50K")]
    assert queue.next_due() is None
    assert len(queue) == 0


def test_a_seeded_fraction_of_the_records_ever_gets_a_label() -> None:
    chosen = _scheduled(_queue(fraction=0.3, seed=7), RECORDS)
    assert 250 <= len(chosen) <= 350
    assert chosen == _scheduled(_queue(fraction=0.3, seed=7), RECORDS)  # seeded: repeatable
    assert chosen != _scheduled(_queue(fraction=0.3, seed=8), RECORDS)
    assert len(_scheduled(_queue(fraction=1.0), RECORDS)) == len(RECORDS)
    assert _scheduled(_queue(fraction=0.0), RECORDS) == []


def test_a_record_without_a_true_label_is_refused() -> None:
    with pytest.raises(ValueError, match="'syn-0-1' has no true label"):
        _queue().schedule({"applicant_id": "syn-0-1"}, sent_at=0.0)


def test_the_outcome_value_is_a_valid_outcome_record_in_utc() -> None:
    decoder = OutcomeDecoder(65536)
    local = datetime(2026, 12, 1, 9, 30, 0, 123000, tzinfo=timezone(timedelta(hours=-2)))
    value = replay.outcome_value("test-4", ">50K", local)
    assert value == (
        b'{"applicant_id":"test-4","label":">50K","observed_at":"2026-12-01T11:30:00.123+00:00"}'
    )
    before = datetime.now(UTC)
    now = decoder.decode(replay.outcome_value("test-5", "<=50K")).observed_at
    assert before - timedelta(milliseconds=1) <= now <= datetime.now(UTC)


def test_drifted_records_keep_their_true_labels() -> None:
    features = {"age": 30, "hours_per_week": 40, "marital_status": "x", "capital_gain": 0}
    records = [{**r, **features} for r in RECORDS[:50]]
    drifted = replay.apply_drift(records, seed=0)
    assert [r["_label"] for r in drifted] == [r["_label"] for r in records]
    assert all(r["age"] == 45 for r in drifted)  # the features did drift


def test_a_replay_that_starts_past_the_split_brings_ids_not_seen_before() -> None:
    records = [{"applicant_id": "a"}, {"applicant_id": "b"}]
    assert [r["applicant_id"] for r in replay.cycled(records, 3, start=1)] == ["b", "a-r1", "b-r1"]
    assert [r["applicant_id"] for r in replay.cycled(records, 2)] == ["a", "b"]
