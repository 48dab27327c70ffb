"""Decoding and validating outcome records: what really happened to an applicant.

An outcome is a JSON object ``{"applicant_id": str, "label": ">50K" | "<=50K",
"observed_at": ISO-8601 with "Z" or an offset}``, keyed by the applicant id. A timestamp
without a zone is refused (its instant is unknown); one with an offset is normalised to UTC.
Rejections use the applicant rules and reason labels (``not_json``, ``not_object``,
``invalid_utf8``, ``too_large``, ``schema``), so one dashboard reads both dead-letter topics.
Pure: no Kafka here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
import orjson
from msgspec import Meta

from stream_worker.scoring.schema import Id, RecordError, check_size
from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL

#: The model's two labels (``trainer.model.columns``); a unit test keeps them equal.
Label = Literal[">50K", "<=50K"]
LABELS = (POSITIVE_LABEL, NEGATIVE_LABEL)

__all__ = ["LABELS", "Outcome", "OutcomeDecoder", "RecordError"]


class Outcome(msgspec.Struct, forbid_unknown_fields=False, frozen=True):
    """One true label; ``observed_at`` is timezone-aware, in UTC once decoded."""

    applicant_id: Id
    label: Label
    observed_at: Annotated[datetime, Meta(tz=True)]


class OutcomeDecoder:
    """Validate raw outcome values; ``max_bytes`` guards memory as it does for applicants."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(Outcome)

    def decode(self, value: bytes | None) -> Outcome:
        """One outcome with ``observed_at`` in UTC, or raise :class:`RecordError`."""
        value = check_size(value, self.max_bytes)
        try:
            outcome = self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            raise _invalid(value, exc) from exc
        except msgspec.DecodeError as exc:
            raise _undecodable(value, exc) from exc
        if outcome.observed_at.tzinfo is not UTC:
            return msgspec.structs.replace(outcome, observed_at=outcome.observed_at.astimezone(UTC))
        return outcome


def _invalid(value: bytes, exc: msgspec.ValidationError) -> RecordError:
    """A schema error, unless the value is not a JSON object at all."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _undecodable(value, exc)
    if not isinstance(obj, dict):
        return RecordError(
            "not_object", "NotAnObject", f"record is a JSON {type(obj).__name__}, not an object"
        )
    return RecordError("schema", "ValidationError", str(exc))


def _undecodable(value: bytes, exc: Exception) -> RecordError:
    """Invalid UTF-8 or otherwise not JSON: which one, for the DLQ reason."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return RecordError("invalid_utf8", "InvalidUtf8", f"not UTF-8: {uexc.reason}")
    return RecordError("not_json", "JSONDecodeError", f"not JSON: {exc}")
