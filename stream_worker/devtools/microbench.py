"""In-process micro-benchmarks of the decode step: msgspec typed decode vs orjson + checks."""

from __future__ import annotations

import time
from typing import Any

import orjson

from stream_worker.devtools.replay import test_records, wire_value
from stream_worker.scoring.schema import RecordDecoder
from trainer.model.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS

RANGES = {
    "age": (0, 130),
    "fnlwgt": (0, 1e8),
    "education_num": (0, 30),
    "capital_gain": (0, 1e8),
    "capital_loss": (0, 1e8),
    "hours_per_week": (0, 168),
}


def orjson_validate(value: bytes) -> dict[str, Any]:
    """The same checks as the msgspec schema, written by hand over orjson.loads."""
    obj = orjson.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    app_id = obj.get("applicant_id")
    if not isinstance(app_id, str) or not app_id:
        raise ValueError("applicant_id")
    for col in NUMERIC_COLUMNS:
        v = obj.get(col)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(col)
        lo, hi = RANGES[col]
        if not lo <= v <= hi:
            raise ValueError(col)
    for col in CATEGORICAL_COLUMNS:
        v = obj.get(col)
        if v is not None and not isinstance(v, str):
            raise ValueError(col)
    return obj


def compare_decoders(n: int = 20000, repeat: int = 3) -> dict[str, float]:
    """Records/s of validating ``n`` replayed records with each decoder (best of ``repeat``)."""
    rows = test_records()
    values = [wire_value(rows[i % len(rows)]) for i in range(n)]
    decoder = RecordDecoder(max_bytes=65536)

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return n / min(times)

    msgspec_rps = best(lambda: decoder.decode_batch(values))
    orjson_rps = best(lambda: [orjson_validate(v) for v in values])
    return {"msgspec_rps": round(msgspec_rps), "orjson_rps": round(orjson_rps)}
