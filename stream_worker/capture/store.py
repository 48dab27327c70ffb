"""Read the capture: every file checked on its own, duplicates dropped, joins in DuckDB.

Rules, applied at read time because the capture is at-least-once:

- a prediction: the first one per applicant id (earliest ``scored_at``) is what was served;
  later ones are redeliveries and are counted as duplicates;
- an outcome: the latest per applicant id (by ``observed_at``, then arrival) wins; the others
  are counted as duplicates; an outcome without a prediction is kept and counted unmatched,
  and joins when its prediction arrives;
- an applicant record: the latest per applicant id.

A file that cannot be read (corrupt, truncated) is skipped with a logged reason and counted in
``skipped``; it never stops a reader. Files are immutable once written, so a reader caches
what it has read by path and size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from stream_worker.capture.layout import (
    APPLICANTS,
    KINDS,
    OUTCOMES,
    PREDICTIONS,
    SCHEMAS,
    CaptureLocation,
)

log = logging.getLogger(__name__)

_FIRST_PREDICTION = """
    SELECT * FROM predictions
    QUALIFY row_number() OVER (
        PARTITION BY applicant_id ORDER BY scored_at, "partition", "offset") = 1
"""
_LATEST_OUTCOME = """
    SELECT * FROM outcomes
    QUALIFY row_number() OVER (
        PARTITION BY applicant_id ORDER BY observed_at DESC, "timestamp" DESC, "offset" DESC) = 1
"""
_LATEST_APPLICANT = """
    SELECT * FROM applicants
    QUALIFY row_number() OVER (
        PARTITION BY applicant_id ORDER BY "timestamp" DESC, "offset" DESC) = 1
"""


@dataclass
class CaptureCounts:
    """What one read found, for metrics and logs."""

    predictions: int = 0
    unique_predictions: int = 0
    outcomes: int = 0
    unique_outcomes: int = 0
    unmatched_outcomes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def duplicate_outcomes(self) -> int:
        return self.outcomes - self.unique_outcomes

    @property
    def duplicate_predictions(self) -> int:
        return self.predictions - self.unique_predictions


class CaptureReader:
    """Reads a capture location; ``on_skip(path, reason)`` hears about unreadable files."""

    def __init__(
        self, location: CaptureLocation, on_skip: Callable[[str, str], None] | None = None
    ) -> None:
        self.location = location
        self.on_skip = on_skip
        self._cache: dict[str, tuple[int, pa.Table]] = {}
        self._bad: dict[str, tuple[int, str]] = {}

    @classmethod
    def from_uri(cls, uri: str, on_skip: Callable[[str, str], None] | None = None) -> CaptureReader:
        return cls(CaptureLocation.from_uri(uri), on_skip)

    def table(self, kind: str, since: date | None = None) -> tuple[pa.Table, dict[str, str]]:
        """All readable rows of ``kind`` (date folders ≥ ``since``) and the files skipped."""
        schema = SCHEMAS[kind]
        parts: list[pa.Table] = []
        skipped: dict[str, str] = {}
        paths = self.location.files(kind, since)
        for path in paths:
            table, reason = self._read(path, schema)
            if table is not None:
                parts.append(table)
            else:
                skipped[path] = reason
        wanted = set(paths)
        for stale in [p for p in self._cache if p not in wanted and _kind_of(p) == kind]:
            del self._cache[stale]
        if not parts:
            return schema.empty_table(), skipped
        return pa.concat_tables(parts), skipped

    def _read(self, path: str, schema: pa.Schema) -> tuple[pa.Table | None, str]:
        try:
            size = int(self.location.fs.size(path))
        except (OSError, FileNotFoundError) as exc:
            return None, f"cannot stat: {exc}"
        cached = self._cache.get(path)
        if cached is not None and cached[0] == size:
            return cached[1], ""
        bad = self._bad.get(path)
        if bad is not None and bad[0] == size:
            return None, bad[1]
        try:
            with self.location.fs.open(path, "rb") as handle:
                table = pq.read_table(handle).select(schema.names).cast(schema)
        except Exception as exc:  # any unreadable file: skip it, never stop the reader
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._bad[path] = (size, reason)
            log.warning("skipping unreadable capture file %s: %s", path, reason)
            if self.on_skip is not None:
                self.on_skip(path, reason)
            return None, reason
        self._cache[path] = (size, table)
        return table, ""

    def connect(self, since: date | None = None) -> tuple[duckdb.DuckDBPyConnection, CaptureCounts]:
        """A DuckDB connection with the raw tables and the deduplicated views registered.

        Views: ``predictions``, ``outcomes``, ``applicants`` (raw, duplicates included);
        ``served`` (first prediction per id), ``truth`` (latest outcome per id),
        ``latest_applicants`` and ``scored`` (served left-joined with truth: ``outcome``,
        ``observed_at`` and ``outcome_timestamp`` are null until the label arrives).
        """
        con = duckdb.connect()
        counts = CaptureCounts()
        for kind in KINDS:
            table, skipped = self.table(kind, since)
            counts.skipped.update(skipped)
            con.register(kind, table)
        con.execute(f"CREATE VIEW served AS {_FIRST_PREDICTION}")
        con.execute(f"CREATE VIEW truth AS {_LATEST_OUTCOME}")
        con.execute(f"CREATE VIEW latest_applicants AS {_LATEST_APPLICANT}")
        con.execute(
            """CREATE VIEW scored AS
               SELECT s.*, t.label AS outcome, t.observed_at,
                      t."timestamp" AS outcome_timestamp
               FROM served s LEFT JOIN truth t USING (applicant_id)"""
        )
        row = con.sql(
            """SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM served),
                      (SELECT count(*) FROM outcomes), (SELECT count(*) FROM truth),
                      (SELECT count(*) FROM truth t
                       WHERE NOT EXISTS (SELECT 1 FROM served s
                                         WHERE s.applicant_id = t.applicant_id))"""
        ).fetchall()[0]
        (
            counts.predictions,
            counts.unique_predictions,
            counts.outcomes,
            counts.unique_outcomes,
            counts.unmatched_outcomes,
        ) = (int(v) for v in row)
        return con, counts


def labelled_applicants(
    reader: CaptureReader, until: datetime | None = None
) -> tuple[pa.Table, CaptureCounts]:
    """Captured applicant records with their true label: one row per applicant id.

    Columns ``applicant_id``, ``value`` (the record as received), ``label`` and
    ``observed_at``; only outcomes observed at or before ``until`` (all when None).
    """
    con, counts = reader.connect()
    try:
        # The cutoff applies before "latest wins": an outcome corrected after the cutoff
        # leaves the applicant with the one known at the cutoff.
        known = "SELECT * FROM outcomes" + (" WHERE observed_at <= $until" if until else "")
        query = f"""
            WITH t AS ({known} QUALIFY row_number() OVER (PARTITION BY applicant_id
                        ORDER BY observed_at DESC, "timestamp" DESC, "offset" DESC) = 1)
            SELECT a.applicant_id, a.value, t.label, t.observed_at
            FROM latest_applicants a JOIN t USING (applicant_id)
            ORDER BY t.observed_at, a.applicant_id"""
        params = {"until": until} if until else None
        return con.sql(query, params=params).to_arrow_table(), counts
    finally:
        con.close()


def _kind_of(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for i, part in enumerate(parts):
        if part.startswith("date=") and i > 0:
            return parts[i - 1]
    return ""


__all__ = [
    "APPLICANTS",
    "OUTCOMES",
    "PREDICTIONS",
    "CaptureCounts",
    "CaptureReader",
    "labelled_applicants",
]
