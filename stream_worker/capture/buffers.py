"""The archiver's bookkeeping: rows buffered per source partition, what a flush may commit.

No Kafka and no threads here, so every rule is tested directly:

- a consumed record is either a buffered row (done once its file is written), skipped (done
  at once: an undecodable prediction), or held (done once its dead letter is acknowledged);
- the offset a source partition may commit is the first record not yet done; a failed write
  leaves its rows buffered, so nothing past them is committed;
- a flush turns each source partition's rows into one file per UTC day of their Kafka
  timestamps (one file, except across midnight).

The archiver writes the files in a worker thread (:func:`write_batches` touches no state) and
applies the results on the event loop (:meth:`CaptureBuffers.apply`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa

from stream_worker.capture.layout import SCHEMAS, utc_day
from stream_worker.capture.rows import FIELDS, SOURCE_FIELDS
from stream_worker.exceptions import one_line

#: (topic, partition); aiokafka's TopicPartition is a NamedTuple equal to it.
Source = tuple[str, int]
#: ``CaptureLocation.write``: (kind, table, day, partition) -> path of the file written.
Writer = Callable[[str, pa.Table, date, int], str]

_DAY_MS = 86_400_000


@dataclass
class _Partition:
    """One source partition: its buffered columns and where its consumption stands."""

    kind: str
    columns: dict[str, list[Any]]
    start: int  # the first offset consumed since the assignment (where reading began)
    position: int | None = None  # offset after the last record consumed
    committed: int | None = None  # last offset committed (the next one to read)
    held: set[int] = field(default_factory=set)  # offsets whose dead letter is in flight

    @property
    def rows(self) -> int:
        return len(self.columns["offset"])

    def done_before(self) -> int | None:
        """The first offset not yet done (buffered rows and held records are not done)."""
        if self.position is None:
            return None
        candidates = [self.position]
        if self.rows:
            candidates.append(self.columns["offset"][0])  # rows are kept in offset order
        if self.held:
            candidates.append(min(self.held))
        return min(candidates)


@dataclass(frozen=True)
class FileBatch:
    """Rows of one source partition and one day, ready to become one file."""

    source: Source
    kind: str
    day: date
    table: pa.Table
    offsets: frozenset[int]

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


@dataclass(frozen=True)
class Written:
    """The result of writing one batch: its path, or the error."""

    batch: FileBatch
    path: str | None = None
    error: BaseException | None = None


@dataclass
class FlushReport:
    files: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # kind -> rows written
    files_by_kind: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    offsets: dict[Source, int] = field(default_factory=dict)  # what may be committed now

    @property
    def ok(self) -> bool:
        return not self.errors


def write_batches(batches: Sequence[FileBatch], write: Writer) -> list[Written]:
    """Write each batch; never raises (a failure is a ``Written`` with its error)."""
    results = []
    for batch in batches:
        try:
            path = write(batch.kind, batch.table, batch.day, batch.source[1])
            results.append(Written(batch, path=path))
        except Exception as exc:  # any failure of the store: reported, retried by the caller
            results.append(Written(batch, error=exc))
    return results


class CaptureBuffers:
    """Rows buffered per source partition until ``flush_records`` or ``flush_seconds``."""

    def __init__(
        self,
        flush_records: int,
        flush_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self.clock = clock
        self._parts: dict[Source, _Partition] = {}
        self._rows = 0
        self._dirty_since: float | None = None  # first change not yet flushed and committed

    # --- consuming -------------------------------------------------------------------------

    def _part(self, source: Source, kind: str, offset: int) -> _Partition:
        part = self._parts.get(source)
        if part is None:
            names = (*FIELDS[kind], *SOURCE_FIELDS)
            part = self._parts[source] = _Partition(kind, {n: [] for n in names}, offset)
        part.position = offset + 1
        if self._dirty_since is None:
            self._dirty_since = self.clock()
        return part

    def add(
        self, source: Source, kind: str, values: Sequence[Any], offset: int, timestamp_ms: int
    ) -> None:
        """Buffer one row (``values``: the kind's own fields, in schema order)."""
        part = self._part(source, kind, offset)
        columns = part.columns
        for name, value in zip(FIELDS[kind], values, strict=True):
            columns[name].append(value)
        columns["partition"].append(source[1])
        columns["offset"].append(offset)
        columns["timestamp"].append(timestamp_ms)
        self._rows += 1

    def skip(self, source: Source, kind: str, offset: int) -> None:
        """A record consumed with nothing to write: done at once."""
        self._part(source, kind, offset)

    def hold(self, source: Source, kind: str, offset: int) -> None:
        """A record that is done only once :meth:`release` is called (its dead letter acked)."""
        self._part(source, kind, offset).held.add(offset)

    def release(self, source: Source, offset: int) -> None:
        part = self._parts.get(source)
        if part is not None:
            part.held.discard(offset)

    # --- state -----------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows buffered and not yet written."""
        return self._rows

    def held(self) -> int:
        return sum(len(p.held) for p in self._parts.values())

    def due(self) -> bool:
        """Enough rows, or the oldest unflushed change is ``flush_seconds`` old."""
        if self._rows >= self.flush_records:
            return True
        return (
            self._dirty_since is not None and self.clock() - self._dirty_since >= self.flush_seconds
        )

    def sources(self) -> list[Source]:
        return list(self._parts)

    def archived_position(self, source: Source) -> int | None:
        """The first offset of ``source`` not yet archived (None before any record)."""
        part = self._parts.get(source)
        return part.done_before() if part is not None else None

    # --- flushing --------------------------------------------------------------------------

    def batches(self, sources: Collection[Source] | None = None) -> list[FileBatch]:
        """One batch per source partition and UTC day, of every buffered row."""
        out = []
        for source, part in self._parts.items():
            if (sources is not None and source not in sources) or not part.rows:
                continue
            table = pa.table(part.columns, schema=SCHEMAS[part.kind])
            stamps = np.asarray(part.columns["timestamp"], dtype=np.int64)
            days = stamps // _DAY_MS
            if days.min() == days.max():
                groups: Iterable[tuple[pa.Table, np.ndarray]] = [(table, stamps)]
            else:  # across midnight: one file per day
                groups = [(table.filter(pa.array(days == d)), stamps[days == d])
                          for d in np.unique(days)]  # fmt: skip
            for group, group_stamps in groups:
                out.append(
                    FileBatch(
                        source,
                        part.kind,
                        utc_day(int(group_stamps[0])),
                        group,
                        frozenset(group.column("offset").to_pylist()),
                    )
                )
        return out

    def apply(
        self, results: Sequence[Written], sources: Collection[Source] | None = None
    ) -> FlushReport:
        """Drop the rows that were written; report files, errors and committable offsets."""
        report = FlushReport()
        for result in results:
            batch = result.batch
            if result.error is not None or result.path is None:
                problem = one_line(result.error or "no path returned")
                report.errors.append(f"{batch.kind} partition {batch.source[1]}: {problem}")
                continue
            self._drop_rows(batch.source, batch.offsets)
            report.files.append(result.path)
            report.rows[batch.kind] = report.rows.get(batch.kind, 0) + batch.rows
            report.files_by_kind[batch.kind] = report.files_by_kind.get(batch.kind, 0) + 1
        report.offsets = self.committable(sources)
        remaining = self._rows or self.held() or self.committable()
        self._dirty_since = self.clock() if remaining else None
        return report

    def flush(self, write: Writer, sources: Collection[Source] | None = None) -> FlushReport:
        """Write and apply in one call (the archiver splits the two across a thread)."""
        return self.apply(write_batches(self.batches(sources), write), sources)

    def _drop_rows(self, source: Source, offsets: frozenset[int]) -> None:
        part = self._parts[source]
        columns, before = part.columns, part.rows
        keep = [i for i, o in enumerate(columns["offset"]) if o not in offsets]
        for name, values in columns.items():
            columns[name] = [values[i] for i in keep]
        self._rows -= before - part.rows

    # --- committing ------------------------------------------------------------------------

    def committable(self, sources: Collection[Source] | None = None) -> dict[Source, int]:
        """Source partition -> offset to commit, where it moved past the last commit."""
        out = {}
        for source, part in self._parts.items():
            if sources is not None and source not in sources:
                continue
            done = part.done_before()
            if done is not None and done > (
                part.start if part.committed is None else part.committed
            ):
                out[source] = done
        return out

    def committed(self, offsets: dict[Source, int]) -> None:
        for source, offset in offsets.items():
            part = self._parts.get(source)
            if part is not None:
                part.committed = offset
        if not self._rows and not self.held() and not self.committable():
            self._dirty_since = None

    def forget(self, sources: Iterable[Source]) -> int:
        """Drop revoked partitions, written or not (their new owner reads from the commit);
        returns the rows dropped unwritten."""
        dropped = 0
        for source in sources:
            part = self._parts.pop(source, None)
            if part is not None:
                dropped += part.rows
                self._rows -= part.rows
        return dropped
