"""The capture's layout: one Parquet dataset per topic, partitioned by date, at any fsspec URI.

``<uri>/<kind>/date=YYYY-MM-DD/part-<partition>-<first offset>-<last offset>.parquet``

A file holds consecutive records of one Kafka partition and is written under a hidden name,
then renamed, so a reader never sees half a file. Files are never rewritten: a record archived
twice (after a crash, before its offset was committed) lands in two files, and readers drop
the duplicate (``store.py``). This module is the contract between the archiver that writes and
the monitor and trainer that read; it needs only pyarrow and fsspec.
"""

from __future__ import annotations

import posixpath
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

APPLICANTS = "applicants"
PREDICTIONS = "predictions"
OUTCOMES = "outcomes"
KINDS = (APPLICANTS, PREDICTIONS, OUTCOMES)

_TS = pa.timestamp("ms", tz="UTC")
#: Where each row came from: its Kafka partition, offset and record timestamp.
_SOURCE = [
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("timestamp", _TS, nullable=False),
]

SCHEMAS: dict[str, pa.Schema] = {
    # The applicant record exactly as received (the features the model saw).
    APPLICANTS: pa.schema(
        [pa.field("applicant_id", pa.string()), pa.field("value", pa.binary()), *_SOURCE]
    ),
    # What the model said: the prediction record's fields.
    PREDICTIONS: pa.schema(
        [
            pa.field("applicant_id", pa.string(), nullable=False),
            pa.field("probability", pa.float64(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("threshold", pa.float64(), nullable=False),
            pa.field("model_name", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("scored_at", _TS, nullable=False),
            pa.field("latency_ms", pa.float64()),
            *_SOURCE,
        ]
    ),
    # What really happened, once known.
    OUTCOMES: pa.schema(
        [
            pa.field("applicant_id", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("observed_at", _TS, nullable=False),
            *_SOURCE,
        ]
    ),
}


@dataclass(frozen=True)
class CaptureLocation:
    """A capture root: the filesystem and the path on it."""

    fs: Any  # fsspec.AbstractFileSystem
    root: str

    @classmethod
    def from_uri(cls, uri: str, **storage_options: Any) -> CaptureLocation:
        fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        return cls(fs, root.rstrip("/") or "/")

    def kind_dir(self, kind: str) -> str:
        return posixpath.join(self.root, kind)

    def files(self, kind: str, since: date | None = None) -> list[str]:
        """The complete files of ``kind`` (optionally only from date folders ≥ ``since``)."""
        base = self.kind_dir(kind)
        if not self.fs.exists(base):
            return []
        found = []
        for folder in sorted(self.fs.ls(base, detail=False)):
            name = posixpath.basename(folder.rstrip("/"))
            if not name.startswith("date="):
                continue
            if since is not None and name.removeprefix("date=") < since.isoformat():
                continue
            for path in sorted(self.fs.ls(folder, detail=False)):
                leaf = posixpath.basename(path)
                if leaf.endswith(".parquet") and not leaf.startswith((".", "_")):
                    found.append(path)
        return found

    def write(self, kind: str, table: pa.Table, day: date, partition: int) -> str:
        """Write one file of consecutive records of ``partition``; return its path."""
        offsets = table.column("offset")
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        folder = posixpath.join(self.kind_dir(kind), f"date={day.isoformat()}")
        self.fs.makedirs(folder, exist_ok=True)
        final = posixpath.join(folder, f"part-{partition}-{first:012d}-{last:012d}.parquet")
        hidden = posixpath.join(folder, f".{uuid.uuid4().hex}.tmp")
        with self.fs.open(hidden, "wb") as out:
            pq.write_table(table.cast(SCHEMAS[kind], safe=False), out, compression="zstd")
        if self.fs.exists(final):
            # The same records archived again (a crash before the commit): keep both, the
            # reader deduplicates; never overwrite what a reader may be reading.
            final = final.removesuffix(".parquet") + f"-{uuid.uuid4().hex[:8]}.parquet"
        self.fs.mv(hidden, final)
        return str(final)


def utc_day(timestamp_ms: int) -> date:
    return datetime.fromtimestamp(timestamp_ms / 1000.0, UTC).date()
