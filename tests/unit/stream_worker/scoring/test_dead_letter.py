"""Dead letters are size-safe by construction: whatever the record, the send cannot fail on size.

A record that is "too large" for the scorer can still be anything the consumer fetched: up to
the consumer's fetch limit (aiokafka's 50 MiB ``fetch_max_bytes``), far above the producer's
request limit. Each dead letter is measured here as aiokafka encodes it, in the record batch
the sender builds for it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import annotated_types
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from stream_worker.runtime.tuning import PRODUCER_MAX_BATCH_BYTES, PRODUCER_MAX_REQUEST_BYTES
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import (
    DEFAULT_DLQ_MAX_VALUE_BYTES,
    DLQ_MAX_HEADER_BYTES,
    DLQ_MAX_KEY_BYTES,
    BatchScorer,
    DeadLetter,
    InputRecord,
    LoadedModel,
    dead_letter,
)
from stream_worker.settings import WorkerSettings
from trainer.model.bundle import ModelBundle

#: aiokafka's consumer default ``fetch_max_bytes``: a record up to this size can be consumed.
CONSUMER_FETCH_MAX_BYTES = 52_428_800
#: What a produce request adds around its record batch (header, client id, topic, partition).
REQUEST_FRAMING_BYTES = 1024
#: The room ``dlq_max_value_bytes`` must leave below the producer's request limit.
ENVELOPE_BYTES = 8 * 1024
#: A stock Kafka broker's ``message.max.bytes``: the largest record batch it accepts.
KAFKA_DEFAULT_MESSAGE_MAX_BYTES = 1_048_588


def _ceiling() -> int:
    """The largest ``dlq_max_value_bytes`` the settings accept."""
    field = WorkerSettings.model_fields["dlq_max_value_bytes"]
    return next(m.le for m in field.metadata if isinstance(m, annotated_types.Le))


def _encoded_size(letter: DeadLetter) -> int:
    """Bytes of the record batch aiokafka builds for this dead letter alone (no compression)."""
    batch = BatchBuilder(PRODUCER_MAX_BATCH_BYTES, 0)
    assert batch.append(timestamp=None, key=letter.key, value=letter.value, headers=letter.headers)
    return len(batch._build())


def _headers(letter: DeadLetter) -> dict[str, bytes]:
    return dict(letter.headers)


def _scorer(**kwargs: Any) -> BatchScorer:
    return BatchScorer(ScorerMetrics(CollectorRegistry()), 1024, 100, **kwargs)


@pytest.fixture
def model(tiny_bundle: ModelBundle) -> LoadedModel:
    return LoadedModel(tiny_bundle, "adult-income", "1", "run-1", "2024-01-01T00:00:00+00:00")


def _record(
    value: bytes | None, key: bytes | None = b"k-1", topic: str = "applicants"
) -> InputRecord:
    return InputRecord(key, value, time.time(), topic, 2, 41)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(PRODUCER_MAX_REQUEST_BYTES - 64, id="just-under-the-request-limit"),
        pytest.param(PRODUCER_MAX_REQUEST_BYTES + 1, id="just-over-the-request-limit"),
        pytest.param(3_000_000, id="3MB"),
        pytest.param(CONSUMER_FETCH_MAX_BYTES - 1, id="the-consumer-fetch-limit"),
    ],
)
def test_a_too_large_record_becomes_a_dead_letter_the_producer_accepts(
    model: LoadedModel, size: int
) -> None:
    original = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    result = _scorer().process(model, [_record(original)])
    [letter] = result.dead_letters
    assert result.rejections[0].reason == "too_large"
    assert _encoded_size(letter) + REQUEST_FRAMING_BYTES <= PRODUCER_MAX_REQUEST_BYTES
    assert letter.value == original[:DEFAULT_DLQ_MAX_VALUE_BYTES]
    headers = _headers(letter)
    assert headers["truncated"] == b"true"
    assert headers["original_size"] == str(size).encode()
    assert headers["original_sha256"] == hashlib.sha256(original).hexdigest().encode()
    assert headers["error_class"] == b"RecordTooLarge"
    assert letter.key == b"k-1"


def test_the_value_limit_is_the_scorers_setting(model: LoadedModel) -> None:
    original = b"y" * 5000
    [letter] = _scorer(dlq_max_value_bytes=2048).process(model, [_record(original)]).dead_letters
    assert letter.value == original[:2048]
    assert _headers(letter)["original_size"] == b"5000"


def test_a_value_within_the_limit_is_sent_unchanged_with_the_five_headers() -> None:
    original = b"z" * DEFAULT_DLQ_MAX_VALUE_BYTES
    letter = dead_letter(_record(original), "RecordTooLarge", "too large")
    assert letter.value == original
    assert [name for name, _ in letter.headers] == [
        "error_class",
        "error_reason",
        "source_topic",
        "source_partition",
        "source_offset",
    ]


def test_a_null_value_stays_null(model: LoadedModel) -> None:
    result = _scorer().process(model, [_record(None)])
    [letter] = result.dead_letters
    assert letter.value is None
    assert letter.key == b"k-1"
    assert "truncated" not in _headers(letter)
    assert dead_letter(_record(None, key=None), "EmptyValue", "empty").key is None


def test_a_large_key_is_cut_and_described() -> None:
    key = b"K" * 3_000_000
    letter = dead_letter(_record(b"{}", key=key), "ValidationError", "no applicant_id")
    assert letter.key == key[:DLQ_MAX_KEY_BYTES]
    assert letter.value == b"{}"
    headers = _headers(letter)
    assert headers["key_truncated"] == b"true"
    assert headers["original_key_size"] == b"3000000"
    assert headers["original_key_sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert "truncated" not in headers  # the value was not cut
    assert _encoded_size(letter) <= DLQ_MAX_KEY_BYTES + 2048


def test_every_header_is_capped_and_stays_valid_utf8() -> None:
    reason = "€" * 1_000_000  # 3 bytes a character: a byte cut would split one
    error_class = "E" * 1_000_000
    letter = dead_letter(_record(b"x", topic="t" * 100_000), error_class, reason)
    for name, value in letter.headers:
        assert len(value) <= DLQ_MAX_HEADER_BYTES, name
        value.decode("utf-8")  # raises if a character was split
    headers = _headers(letter)
    assert headers["error_reason"].decode() == "€" * (DLQ_MAX_HEADER_BYTES // 3)


def test_the_worst_case_dead_letter_fits_the_request_at_the_largest_setting() -> None:
    """Every part at its worst at once (all eleven headers, each at its cap; key and value
    cut) and the value limit at the largest the settings accept."""
    ceiling = _ceiling()
    record = InputRecord(
        b"K" * 3_000_000,
        b"V" * (CONSUMER_FETCH_MAX_BYTES - 1),
        time.time(),
        "t" * 100_000,
        2**31 - 1,
        2**63 - 1,
    )
    letter = dead_letter(record, "E" * 100_000, "€" * 100_000, max_value_bytes=ceiling)
    assert len(letter.headers) == 11
    assert len(letter.value or b"") == ceiling
    size = _encoded_size(letter)
    assert size - ceiling <= ENVELOPE_BYTES - REQUEST_FRAMING_BYTES
    assert size + REQUEST_FRAMING_BYTES <= PRODUCER_MAX_REQUEST_BYTES


def test_the_worst_case_dead_letter_at_the_default_fits_a_stock_kafka_broker() -> None:
    record = InputRecord(
        b"K" * 3_000_000, b"V" * 3_000_000, time.time(), "t" * 100_000, 2**31 - 1, 2**63 - 1
    )
    letter = dead_letter(record, "E" * 100_000, "€" * 100_000)
    assert _encoded_size(letter) <= KAFKA_DEFAULT_MESSAGE_MAX_BYTES


def test_the_setting_is_validated_against_the_producer_request_limit() -> None:
    assert WorkerSettings().dlq_max_value_bytes == DEFAULT_DLQ_MAX_VALUE_BYTES
    assert DEFAULT_DLQ_MAX_VALUE_BYTES <= PRODUCER_MAX_REQUEST_BYTES // 2  # well under it
    ceiling = _ceiling()
    assert ceiling == PRODUCER_MAX_REQUEST_BYTES - ENVELOPE_BYTES
    assert WorkerSettings(dlq_max_value_bytes=ceiling).dlq_max_value_bytes == ceiling
    with pytest.raises(ValidationError, match="dlq_max_value_bytes"):
        WorkerSettings(dlq_max_value_bytes=ceiling + 1)
    with pytest.raises(ValidationError, match="dlq_max_value_bytes"):
        WorkerSettings(dlq_max_value_bytes=PRODUCER_MAX_REQUEST_BYTES)
    with pytest.raises(ValidationError, match="dlq_max_value_bytes"):
        WorkerSettings(dlq_max_value_bytes=100)


def test_the_setting_comes_from_its_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORER_DLQ_MAX_VALUE_BYTES", "65536")
    assert WorkerSettings().dlq_max_value_bytes == 65536
