"""Kafka records as rows of the capture's schemas (``layout.SCHEMAS``), one kind each.

Each function returns the kind's own fields in schema order; the buffer adds where the record
came from (partition, offset, Kafka timestamp). Pure: any object with ``key``/``value`` works.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec

from stream_worker.capture.layout import KINDS, SCHEMAS
from stream_worker.capture.outcome import Outcome
from stream_worker.scoring.scorer import Prediction

#: The columns every kind gets from the Kafka record itself.
SOURCE_FIELDS = ("partition", "offset", "timestamp")
#: Each kind's own columns, in schema order.
FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(n for n in SCHEMAS[kind].names if n not in SOURCE_FIELDS) for kind in KINDS
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class KafkaRecord(Protocol):
    """What the rows need of a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class PredictionDecodeError(ValueError):
    """A record on the predictions topic that is not a prediction record."""


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding); naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def applicant_row(record: KafkaRecord) -> tuple[Any, ...]:
    """The applicant record exactly as received, keyed by its Kafka key (the applicant id)."""
    key = record.key
    return (key.decode("utf-8", "replace") if key is not None else None, record.value)


class PredictionRows:
    """Decodes prediction records with the worker's own ``Prediction`` struct."""

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Prediction)

    def row(self, record: KafkaRecord) -> tuple[Any, ...]:
        """The prediction's fields, ``scored_at`` in epoch ms; raises PredictionDecodeError."""
        try:
            p = self._decoder.decode(record.value or b"")
            scored_at = epoch_ms(datetime.fromisoformat(p.scored_at))
        except (msgspec.DecodeError, ValueError) as exc:
            raise PredictionDecodeError(str(exc)) from exc
        return (
            p.applicant_id,
            p.probability,
            p.label,
            p.threshold,
            p.model_name,
            p.model_version,
            scored_at,
            p.latency_ms,
        )


def outcome_row(outcome: Outcome) -> tuple[Any, ...]:
    """A validated outcome; ``observed_at`` in epoch ms."""
    return (outcome.applicant_id, outcome.label, epoch_ms(outcome.observed_at))
