"""Decoding and validating applicant records: one msgspec decode per record, never pandas.

A record that is not JSON, not an object, lacks ``applicant_id`` or a numeric field, or has a
numeric field of the wrong type or out of range is rejected with a reason; a categorical value
may be null or unseen (scored, and counted). The UCI hyphenated spellings are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import Meta

from trainer.model.columns import CATEGORICAL_COLUMNS, FEATURE_COLUMNS, NUMERIC_COLUMNS

ALIASES = {c.replace("_", "-"): c for c in FEATURE_COLUMNS if "_" in c}

Id = Annotated[str, Meta(min_length=1, max_length=256)]
Category = Annotated[str, Meta(max_length=128)] | None


class Applicant(msgspec.Struct, forbid_unknown_fields=False):
    """One applicant as the input topic carries it (snake_case names)."""

    applicant_id: Id
    age: Annotated[float, Meta(ge=0, le=130)]
    fnlwgt: Annotated[float, Meta(ge=0, le=1e8)]
    education_num: Annotated[float, Meta(ge=0, le=30)]
    capital_gain: Annotated[float, Meta(ge=0, le=1e8)]
    capital_loss: Annotated[float, Meta(ge=0, le=1e8)]
    hours_per_week: Annotated[float, Meta(ge=0, le=168)]
    workclass: Category = None
    education: Category = None
    marital_status: Category = None
    occupation: Category = None
    relationship: Category = None
    race: Category = None
    sex: Category = None
    native_country: Category = None


@dataclass(frozen=True)
class Rejection:
    """Why record ``index`` of a batch cannot be scored."""

    index: int
    reason: str  # metric label: not_json | not_object | invalid_utf8 | too_large | schema
    error_class: str
    message: str


@dataclass
class DecodedBatch:
    """The valid records of a batch as columns, with their positions in the batch."""

    indices: list[int] = field(default_factory=list)
    applicants: list[Applicant] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def columns(self) -> dict[str, list[Any]]:
        apps = self.applicants
        return {c: [getattr(a, c) for a in apps] for c in (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS)}


class RecordDecoder:
    """Validate raw values; ``max_bytes`` guards memory against oversized records."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(Applicant)

    def decode_one(self, value: bytes | None) -> Applicant:
        """Decode one record or raise :class:`RecordError`."""
        value = check_size(value, self.max_bytes)
        try:
            return self._decoder.decode(value)
        except msgspec.ValidationError as exc:
            return self._slow_path(value, exc)
        except UnicodeDecodeError as exc:  # msgspec checks UTF-8 inside strings
            raise RecordError("invalid_utf8", "InvalidUtf8", f"not UTF-8: {exc.reason}") from exc
        except msgspec.DecodeError as exc:
            raise _undecodable(value, exc) from exc

    def _slow_path(self, value: bytes, first: msgspec.ValidationError) -> Applicant:
        """Not an object, a schema error, or UCI hyphenated names: tell which."""
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:  # msgspec stopped at a schema error first
            raise _undecodable(value, exc) from exc
        if not isinstance(obj, dict):
            raise RecordError(
                "not_object", "NotAnObject", f"record is a JSON {type(obj).__name__}, not an object"
            )
        if any(k in ALIASES for k in obj):
            obj = {ALIASES.get(k, k): v for k, v in obj.items()}
            try:
                return msgspec.convert(obj, Applicant, strict=True)
            except msgspec.ValidationError as exc:
                raise RecordError("schema", "ValidationError", str(exc)) from exc
        raise RecordError("schema", "ValidationError", str(first)) from first

    def decode_batch(self, values: Sequence[bytes | None]) -> DecodedBatch:
        batch = DecodedBatch()
        add_index = batch.indices.append
        add_applicant = batch.applicants.append
        for i, value in enumerate(values):
            try:
                applicant = self.decode_one(value)
            except RecordError as err:
                batch.rejections.append(Rejection(i, err.reason, err.error_class, err.message))
                continue
            add_index(i)
            add_applicant(applicant)
        return batch


def check_size(value: bytes | None, max_bytes: int) -> bytes:
    """The value, if it is neither empty nor larger than ``max_bytes`` (else RecordError)."""
    if value is None or len(value) == 0:
        raise RecordError("not_json", "EmptyValue", "record value is empty")
    if len(value) > max_bytes:
        raise RecordError(
            "too_large", "RecordTooLarge", f"record is {len(value)} bytes; limit {max_bytes}"
        )
    return value


def _undecodable(value: bytes, exc: Exception) -> RecordError:
    """Invalid UTF-8 or otherwise not JSON: which one, for the DLQ reason."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return RecordError("invalid_utf8", "InvalidUtf8", f"not UTF-8: {uexc.reason}")
    return RecordError("not_json", "JSONDecodeError", f"not JSON: {exc}")


class RecordError(ValueError):
    """A record that cannot be scored; ``reason`` is the DLQ metric label."""

    def __init__(self, reason: str, error_class: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.error_class = error_class
        self.message = message


def example_request() -> dict[str, Any]:
    """A valid applicant, shown by ``GET /example_request``."""
    return {
        "applicant_id": "example-1",
        "age": 39,
        "workclass": "State-gov",
        "fnlwgt": 77516,
        "education": "Bachelors",
        "education_num": 13,
        "marital_status": "Never-married",
        "occupation": "Adm-clerical",
        "relationship": "Not-in-family",
        "race": "White",
        "sex": "Male",
        "capital_gain": 2174,
        "capital_loss": 0,
        "hours_per_week": 40,
        "native_country": "United-States",
    }
