"""OutcomeDecoder: what is an outcome, what is dead-lettered, with which reason; UTC always."""

from __future__ import annotations

import json
import typing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from stream_worker.capture.outcome import LABELS, Label, Outcome, OutcomeDecoder, RecordError
from stream_worker.scoring.schema import RecordDecoder

MAX_BYTES = 65536  # the WorkerSettings default


@pytest.fixture
def decoder() -> OutcomeDecoder:
    return OutcomeDecoder(MAX_BYTES)


def _value(**changes: Any) -> bytes:
    rec: dict[str, Any] = {
        "applicant_id": "a-1",
        "label": ">50K",
        "observed_at": "2026-12-01T10:00:00.250Z",
    }
    rec.update(changes)
    return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()


def _rejection(decoder: OutcomeDecoder, value: bytes | None) -> RecordError:
    with pytest.raises(RecordError) as info:
        decoder.decode(value)
    return info.value


def test_a_valid_outcome_decodes_with_its_instant_in_utc(decoder: OutcomeDecoder) -> None:
    outcome = decoder.decode(_value())
    assert outcome == Outcome("a-1", ">50K", datetime(2026, 12, 1, 10, 0, 0, 250000, UTC))
    assert outcome.observed_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-12-01T12:30:00+02:30", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        ("2026-12-01T05:00:00-05:00", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        ("2026-12-01T10:00:00+00:00", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        # across midnight: the UTC day is the day before the local one
        ("2026-12-02T01:00:00+09:00", datetime(2026, 12, 1, 16, 0, tzinfo=UTC)),
    ],
)
def test_an_offset_is_normalised_to_utc(
    decoder: OutcomeDecoder, stamp: str, expected: datetime
) -> None:
    observed = decoder.decode(_value(observed_at=stamp)).observed_at
    assert observed == expected
    assert observed.utcoffset() == timedelta(0)
    assert observed.tzinfo is UTC


def test_unknown_fields_are_ignored(decoder: OutcomeDecoder) -> None:
    assert decoder.decode(_value(source="crm", score=3)).applicant_id == "a-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "not_json"),
        (b"", "not_json"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"a-1"', "not_object"),
        (b'{"applicant_id": "\xff\xfe", "label": ">50K"}', "invalid_utf8"),
        (b"\xff\xfe", "invalid_utf8"),
        (_value(applicant_id=...), "schema"),  # missing
        (_value(applicant_id=""), "schema"),  # empty
        (_value(applicant_id="x" * 257), "schema"),  # too long
        (_value(applicant_id=17), "schema"),
        (_value(label=...), "schema"),
        (_value(label="yes"), "schema"),
        (_value(label=">50K."), "schema"),  # the raw UCI spelling is not a label
        (_value(label=1), "schema"),
        (_value(observed_at=...), "schema"),
        (_value(observed_at="2026-12-01T10:00:00"), "schema"),  # naive: instant unknown
        (_value(observed_at="yesterday"), "schema"),
        (_value(observed_at=1764583200), "schema"),  # epoch numbers are not ISO-8601
    ],
)
def test_bad_outcomes_are_refused_with_the_applicant_reason_labels(
    decoder: OutcomeDecoder, value: bytes | None, reason: str
) -> None:
    rejection = _rejection(decoder, value)
    assert rejection.reason == reason
    assert rejection.message  # readable, for the dead letter's error_reason header


def test_a_naive_timestamp_is_refused_saying_why(decoder: OutcomeDecoder) -> None:
    rejection = _rejection(decoder, _value(observed_at="2026-12-01T10:00:00"))
    assert rejection.error_class == "ValidationError"
    assert "timezone" in rejection.message
    assert "observed_at" in rejection.message


def test_too_large_is_refused_before_parsing(decoder: OutcomeDecoder) -> None:
    value = _value(note="x" * MAX_BYTES)
    rejection = _rejection(decoder, value)
    assert (rejection.reason, rejection.error_class) == ("too_large", "RecordTooLarge")
    assert f"{len(value)} bytes; limit {MAX_BYTES}" in rejection.message
    assert OutcomeDecoder(len(value)).decode(value).applicant_id == "a-1"


@pytest.mark.parametrize(
    "value", [b"{not json", b"[1]", b"\xff", _value(label="maybe"), b'{"applicant_id": 3}']
)
def test_reasons_match_the_applicant_decoder(decoder: OutcomeDecoder, value: bytes) -> None:
    """The same rules as applicants: a dashboard reads both dead-letter topics alike."""
    with pytest.raises(RecordError) as applicant:
        RecordDecoder(MAX_BYTES).decode_one(value)
    assert _rejection(decoder, value).reason == applicant.value.reason


def test_labels_are_the_models_labels() -> None:
    assert set(typing.get_args(Label)) == set(LABELS) == {">50K", "<=50K"}


def test_an_aware_non_utc_zone_object_becomes_utc() -> None:
    tz = timezone(timedelta(hours=-3))
    value = _value(observed_at=datetime(2026, 12, 1, 7, 0, tzinfo=tz).isoformat())
    assert OutcomeDecoder(MAX_BYTES).decode(value).observed_at == datetime(
        2026, 12, 1, 10, 0, tzinfo=UTC
    )
