"""Live performance per model version, recomputed from the capture (no state kept between runs).

Each computation reads the whole capture through ``CaptureReader`` (first prediction per
applicant is what was served, latest outcome per applicant is the truth) and, per
(model_name, model_version), takes two windows:

- **labelled window**: the version's records whose outcome was *observed* in the last
  ``hours``, the newest ``records`` of them (by ``observed_at``). Realised performance
  (ROC-AUC, log loss, Brier, accuracy at the version's threshold, calibration error), the
  estimated accuracy of exactly those records and the label delay (outcome arrival − scored_at)
  come from it.
- **scored window**: the version's predictions *scored* in the last ``hours``, the newest
  ``records`` of them (by ``scored_at``), labelled or not. The estimated accuracy before labels,
  the scored count and the label coverage (labelled / scored) come from it.

Both are bounded by ``records``, so a computation's cost per version does not grow with the
traffic. Because nothing is accumulated, a restart never double counts and any number of
scoring workers (and duplicates in the capture) give the same answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np

from stream_worker.capture.store import CaptureCounts, CaptureReader
from stream_worker.monitor.performance import FloatArray, Performance, estimated_accuracy
from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL

#: Upper bounds (seconds) of the label-delay histogram: seconds for replays and tests, hours
#: and days for production, where an income is verified days after the score.
DELAY_BUCKETS: tuple[float, ...] = (
    1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
)  # fmt: skip

# One pass over the deduplicated join, reused by the three queries below.
_MATERIALISE = f"""
    CREATE TEMP TABLE live AS
    SELECT model_name, model_version, applicant_id, probability, threshold, scored_at,
           observed_at, outcome_timestamp,
           outcome IN ('{POSITIVE_LABEL}', '{NEGATIVE_LABEL}') AS labelled,
           outcome = '{POSITIVE_LABEL}' AS positive
    FROM scored
"""
_VERSIONS = """
    SELECT model_name, model_version, count(*) AS served,
           bool_or(labelled) AS ever_labelled,
           epoch_ms(max(outcome_timestamp) FILTER (WHERE labelled)) AS last_label_ms
    FROM live GROUP BY model_name, model_version
    ORDER BY model_name, model_version
"""
_LABELLED_WINDOW = """
    SELECT model_name, model_version, probability, threshold, positive,
           (epoch_ms(outcome_timestamp) - epoch_ms(scored_at)) / 1000.0 AS delay_seconds
    FROM live
    WHERE labelled AND observed_at >= $start
    QUALIFY row_number() OVER (
        PARTITION BY model_name, model_version
        ORDER BY observed_at DESC, applicant_id) <= $records
    ORDER BY model_name, model_version
"""
_SCORED_WINDOW = """
    SELECT model_name, model_version, probability, threshold, labelled
    FROM live
    WHERE scored_at >= $start
    QUALIFY row_number() OVER (
        PARTITION BY model_name, model_version
        ORDER BY scored_at DESC, applicant_id) <= $records
    ORDER BY model_name, model_version
"""


@dataclass(frozen=True)
class LiveWindow:
    """The newest ``records`` records of the last ``hours`` hours, per version."""

    records: int
    hours: float


@dataclass(frozen=True)
class DelayHistogram:
    """Label delays of a window: cumulative counts per upper bound (+Inf is ``count``)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total_seconds: float

    @classmethod
    def of(cls, delays: FloatArray, bounds: Sequence[float] = DELAY_BUCKETS) -> DelayHistogram:
        # A negative delay is clock skew between the worker and the outcome's producer.
        d = np.maximum(np.asarray(delays, dtype=np.float64), 0.0)
        edges = np.asarray(bounds, dtype=np.float64)
        cumulative = np.searchsorted(np.sort(d), edges, side="right")  # count of d <= bound
        return cls(tuple(float(b) for b in bounds), tuple(int(c) for c in cumulative),
                   int(d.size), float(d.sum()))  # fmt: skip


@dataclass(frozen=True)
class VersionSnapshot:
    """What the capture says about one model version now.

    ``performance`` and ``label_delay`` are None for a version that has never had a label:
    it shows its estimated accuracy and scored count only.
    """

    model_name: str
    model_version: str
    scored: int  # records in the scored window
    scored_labelled: int  # of those, labelled by now
    estimated_accuracy: float  # over the scored window (NaN when it is empty)
    performance: Performance | None  # over the labelled window
    label_delay: DelayHistogram | None
    last_label_at: float | None  # newest outcome arrival (epoch seconds), whole capture

    @property
    def label_coverage(self) -> float:
        return self.scored_labelled / self.scored if self.scored else float("nan")


@dataclass(frozen=True)
class CaptureHealth:
    duplicate_predictions: int
    duplicate_outcomes: int
    unmatched_outcomes: int
    unreadable_files: dict[str, str] = field(default_factory=dict)  # path -> reason

    @classmethod
    def of(cls, counts: CaptureCounts) -> CaptureHealth:
        return cls(
            duplicate_predictions=counts.duplicate_predictions,
            duplicate_outcomes=counts.duplicate_outcomes,
            unmatched_outcomes=counts.unmatched_outcomes,
            unreadable_files=dict(counts.skipped),
        )


@dataclass(frozen=True)
class LiveSnapshot:
    computed_at: datetime
    window: LiveWindow
    versions: tuple[VersionSnapshot, ...]
    health: CaptureHealth
    seconds: float  # how long the computation took
    records: int  # unique predictions in the capture

    def version(self, model_version: str, model_name: str | None = None) -> VersionSnapshot:
        for v in self.versions:
            if v.model_version == model_version and model_name in (None, v.model_name):
                return v
        raise KeyError(model_version)


def _version_key(name: str, version: str) -> tuple[str, int, str]:
    return (name, int(version), "") if version.isdigit() else (name, -1, version)


def _groups(table: dict[str, np.ndarray]) -> dict[tuple[str, str], slice]:
    """Row ranges of each (model_name, model_version) in a result sorted by them."""
    names, versions = table["model_name"], table["model_version"]
    n = len(names)
    if n == 0:
        return {}
    change = np.flatnonzero((names[1:] != names[:-1]) | (versions[1:] != versions[:-1])) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, n]
    return {
        (str(names[s]), str(versions[s])): slice(int(s), int(e))
        for s, e in zip(starts, ends, strict=True)
    }


def _fetch(
    con: duckdb.DuckDBPyConnection, query: str, params: dict[str, object]
) -> dict[str, np.ndarray]:
    result = con.execute(query, params).fetchnumpy()
    return {k: np.asarray(v) for k, v in result.items()}


def compute_snapshot(
    reader: CaptureReader, window: LiveWindow, now: datetime | None = None
) -> LiveSnapshot:
    """One stateless computation over the capture as it is now."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    params = {"start": now - timedelta(hours=window.hours), "records": window.records}
    con, counts = reader.connect()
    try:
        con.execute(_MATERIALISE)
        versions = _fetch(con, _VERSIONS, {})
        labelled = _fetch(con, _LABELLED_WINDOW, params)
        scored = _fetch(con, _SCORED_WINDOW, params)
    finally:
        con.close()

    labelled_rows = _groups(labelled)
    scored_rows = _groups(scored)
    empty = slice(0, 0)
    snapshots = []
    for i in range(len(versions["model_name"])):
        key = (str(versions["model_name"][i]), str(versions["model_version"][i]))
        s = scored_rows.get(key, empty)
        performance = delay = last_label = None
        if bool(versions["ever_labelled"][i]):
            rows = labelled_rows.get(key, empty)
            performance = Performance.of(
                labelled["positive"][rows].astype(np.float64),
                labelled["probability"][rows],
                labelled["threshold"][rows],
            )
            delay = DelayHistogram.of(labelled["delay_seconds"][rows])
            last_label = float(versions["last_label_ms"][i]) / 1000.0
        snapshots.append(
            VersionSnapshot(
                model_name=key[0],
                model_version=key[1],
                scored=int(s.stop - s.start),
                scored_labelled=int(scored["labelled"][s].sum()),
                estimated_accuracy=estimated_accuracy(
                    scored["probability"][s], scored["threshold"][s]
                ),
                performance=performance,
                label_delay=delay,
                last_label_at=last_label,
            )
        )
    snapshots.sort(key=lambda v: _version_key(v.model_name, v.model_version))
    return LiveSnapshot(
        computed_at=now,
        window=window,
        versions=tuple(snapshots),
        health=CaptureHealth.of(counts),
        seconds=time.perf_counter() - started,
        records=counts.unique_predictions,
    )
