"""RecordDecoder: what is scored, what goes to the DLQ, and with which reason label."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stream_worker.scoring.schema import ALIASES, RecordDecoder, RecordError, example_request
from trainer.model.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS
from trainer.model.features import FeatureEncoder

MAX_BYTES = 65536  # the WorkerSettings default


@pytest.fixture
def decoder() -> RecordDecoder:
    return RecordDecoder(MAX_BYTES)


def _record(**changes: Any) -> dict[str, Any]:
    rec = example_request()
    rec.update(changes)
    return rec


def _encode(rec: Any) -> bytes:
    return json.dumps(rec).encode()


def _reason(decoder: RecordDecoder, value: bytes | None) -> str:
    with pytest.raises(RecordError) as info:
        decoder.decode_one(value)
    return info.value.reason


def _with_bad_utf8(rec: dict[str, Any], field: str) -> bytes:
    """The record with the string value of ``field`` replaced by bytes that are not UTF-8."""
    raw = _encode({**rec, field: "PLACEHOLDER"})
    return raw.replace(b"PLACEHOLDER", b"\xff\xfe\xc3")


def test_valid_record_decodes_every_field(decoder: RecordDecoder) -> None:
    rec = example_request()
    app = decoder.decode_one(_encode(rec))
    assert app.applicant_id == "example-1"
    for col in NUMERIC_COLUMNS:
        assert getattr(app, col) == pytest.approx(float(rec[col]))
    for col in CATEGORICAL_COLUMNS:
        assert getattr(app, col) == rec[col]


def test_uci_hyphenated_aliases_are_accepted(decoder: RecordDecoder) -> None:
    hyphenated = {
        "education-num",
        "marital-status",
        "capital-gain",
        "capital-loss",
        "hours-per-week",
        "native-country",
    }
    assert hyphenated <= set(ALIASES)
    rec = example_request()
    uci = {(k.replace("_", "-") if k != "applicant_id" else k): v for k, v in rec.items()}
    assert hyphenated <= set(uci)
    app = decoder.decode_one(_encode(uci))
    assert app == decoder.decode_one(_encode(rec))
    assert app.education_num == 13.0
    assert app.marital_status == "Never-married"
    assert app.capital_gain == 2174.0
    assert app.capital_loss == 0.0
    assert app.hours_per_week == 40.0
    assert app.native_country == "United-States"


def test_alias_with_a_wrong_type_is_still_a_schema_error(decoder: RecordDecoder) -> None:
    rec = {**example_request(), "education-num": "13"}
    del rec["education_num"]
    assert _reason(decoder, _encode(rec)) == "schema"


@pytest.mark.parametrize("value", [None, "?", "Never-heard-of-it", ""])
def test_null_unseen_and_question_mark_categoricals_are_accepted(
    decoder: RecordDecoder, value: str | None
) -> None:
    app = decoder.decode_one(_encode(_record(workclass=value, native_country=value)))
    assert app.workclass == value
    assert app.native_country == value


def test_missing_categoricals_default_to_none(decoder: RecordDecoder) -> None:
    rec = {k: v for k, v in example_request().items() if k not in CATEGORICAL_COLUMNS}
    app = decoder.decode_one(_encode(rec))
    assert all(getattr(app, c) is None for c in CATEGORICAL_COLUMNS)


def test_question_mark_and_unseen_encode_as_missing(decoder: RecordDecoder) -> None:
    encoder = FeatureEncoder.fit({c: ["Private", "Bachelors"] for c in CATEGORICAL_COLUMNS})
    batch = decoder.decode_batch([_encode(_record(workclass=v)) for v in ("?", "Mars", None)])
    codes = encoder.codes(batch.columns()).codes
    assert codes[:, CATEGORICAL_COLUMNS.index("workclass")].tolist() == [-1, -1, -1]


def _without(field: str) -> bytes:
    return _encode({k: v for k, v in example_request().items() if k != field})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"{not json", "not_json", id="not-json"),
        pytest.param(b'{"applicant_id": "a", ', "not_json", id="truncated-json"),
        pytest.param(b"[1, 2, 3]", "not_object", id="array"),
        pytest.param(b'"applicant"', "not_object", id="string"),
        pytest.param(b"42", "not_object", id="number"),
        pytest.param(b"null", "not_object", id="null"),
        pytest.param(_without("applicant_id"), "schema", id="missing-id"),
        pytest.param(_encode(_record(applicant_id="")), "schema", id="empty-id"),
        pytest.param(_encode(_record(applicant_id=7)), "schema", id="numeric-id"),
        pytest.param(_without("hours_per_week"), "schema", id="missing-hours"),
        pytest.param(_without("age"), "schema", id="missing-age"),
        pytest.param(_encode(_record(age="35")), "schema", id="string-age"),
        pytest.param(_encode(_record(age=True)), "schema", id="bool-age"),
        pytest.param(_encode(_record(age=None)), "schema", id="null-age"),
        pytest.param(_encode(_record(hours_per_week=-1)), "schema", id="negative-hours"),
        pytest.param(_encode(_record(age=500)), "schema", id="age-500"),
        pytest.param(_encode(_record(workclass=5)), "schema", id="numeric-categorical"),
        pytest.param(b"", "not_json", id="empty"),
        pytest.param(None, "not_json", id="none"),
    ],
)
def test_rejections_carry_the_reason_label(
    decoder: RecordDecoder, value: bytes | None, reason: str
) -> None:
    assert _reason(decoder, value) == reason


def test_not_object_message_names_the_json_type(decoder: RecordDecoder) -> None:
    with pytest.raises(RecordError) as info:
        decoder.decode_one(b"[1]")
    assert info.value.error_class == "NotAnObject"
    assert "list" in info.value.message


def test_schema_message_names_the_field(decoder: RecordDecoder) -> None:
    with pytest.raises(RecordError) as info:
        decoder.decode_one(_encode(_record(age="35")))
    assert info.value.error_class == "ValidationError"
    assert "age" in info.value.message


def test_900_kb_value_is_too_large(decoder: RecordDecoder) -> None:
    value = _encode(_record(occupation="x" * 900_000))
    assert len(value) > 900_000
    with pytest.raises(RecordError) as info:
        decoder.decode_one(value)
    assert info.value.reason == "too_large"
    assert info.value.error_class == "RecordTooLarge"
    assert str(len(value)) in info.value.message


def test_size_limit_is_inclusive(decoder: RecordDecoder) -> None:
    value = _encode(example_request())
    assert RecordDecoder(len(value)).decode_one(value).applicant_id == "example-1"
    assert _reason(RecordDecoder(len(value) - 1), value) == "too_large"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xff\xfe\xfa", id="whole-value"),
        pytest.param(_with_bad_utf8(example_request(), "workclass"), id="in-a-categorical"),
        pytest.param(_with_bad_utf8(example_request(), "applicant_id"), id="in-the-id"),
        pytest.param(_with_bad_utf8(_record(age=500), "workclass"), id="with-a-schema-error"),
        pytest.param(
            _with_bad_utf8(
                {
                    k.replace("_", "-") if k != "applicant_id" else k: v
                    for k, v in _record().items()
                },
                "native-country",
            ),
            id="in-an-aliased-record",
        ),
    ],
)
def test_invalid_utf8_is_rejected_as_invalid_utf8(decoder: RecordDecoder, value: bytes) -> None:
    """Invalid bytes inside a string value must be a RecordError, never a raw exception:
    decode_batch only catches RecordError, so anything else escapes the agent."""
    with pytest.raises(RecordError) as info:
        decoder.decode_one(value)
    assert info.value.reason == "invalid_utf8"


def test_decode_batch_keeps_positions_of_good_records(decoder: RecordDecoder) -> None:
    values: list[bytes | None] = [
        b"nope",
        _encode(_record(applicant_id="a")),
        None,
        _encode(_record(age=500)),
        _encode(_record(applicant_id="b", age=50)),
        b"[]",
        _encode(_record(applicant_id="c")),
        b"x" * (MAX_BYTES + 1),
    ]
    batch = decoder.decode_batch(values)
    assert batch.indices == [1, 4, 6]
    assert [a.applicant_id for a in batch.applicants] == ["a", "b", "c"]
    assert [(r.index, r.reason) for r in batch.rejections] == [
        (0, "not_json"),
        (2, "not_json"),
        (3, "schema"),
        (5, "not_object"),
        (7, "too_large"),
    ]
    columns = batch.columns()
    assert set(columns) == {*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS}
    assert columns["age"] == [39.0, 50.0, 39.0]


def test_decode_batch_with_only_bad_records(decoder: RecordDecoder) -> None:
    batch = decoder.decode_batch([b"", b"1"])
    assert batch.indices == []
    assert batch.applicants == []
    assert [r.index for r in batch.rejections] == [0, 1]


def test_decode_batch_survives_invalid_utf8_inside_a_string(decoder: RecordDecoder) -> None:
    """The issue's poison-record case: the valid records around it must still decode."""
    values = [
        _encode(_record(applicant_id="a")),
        _with_bad_utf8(_record(applicant_id="bad"), "occupation"),
        _encode(_record(applicant_id="b")),
    ]
    batch = decoder.decode_batch(values)
    assert batch.indices == [0, 2]
    assert [(r.index, r.reason) for r in batch.rejections] == [(1, "invalid_utf8")]
