"""Retraining on the capture: labelled captured applicants as training and evaluation rows.

The worker's input records and the outcomes that arrive later are captured as Parquet
(``stream_worker/capture``). Once an applicant's true label is known, the record is a labelled
example like any row of the UCI files. With a capture:

- **training rows** = adult.data + the older labelled captured rows;
- **evaluation rows** (what ``test_*`` metrics and the gate score) = the newest
  ``capture_eval_fraction`` of the labelled capture by ``observed_at`` + the adult.test rows
  that training never saw.

``dataset.split`` still carves the seeded, stratified validation split (early stopping,
tuning, threshold) out of the training rows, so validation never touches evaluation rows.
Without a capture, or with one that holds no labelled rows, the result is the plain
:class:`~trainer.dataset.AdultData`: adult.data trains, exactly adult.test evaluates.

What "the same row" means (see :func:`split_capture`): a replay of adult.test (ids
``test-<row>``, stream_worker/devtools/replay.py) produces captured rows that *are* adult.test
rows. Identity is therefore decided by content, and by the replay's id convention on top:

- the **content digest** of a row (its 14 features as the model sees them, and its label) is
  what can leak: the same features with the same answer teach the model the answer, whatever
  the row is called. Ids are only a producer's convention: a cycled replay sends the same row
  again as ``test-<row>-r<k>``, any other tool may send an adult.test row under any id;
- the **``test-<row>`` id** catches what the digest cannot: a replayed row that was changed on
  the way (the demo's drift injection shifts features but keeps the id and the label).

Removing a row from the evaluation never leaks anything, so the rules take the union: an
adult.test row is left out of the evaluation when any labelled captured row has its digest or
its ``test-<row>`` id (captured training rows: they would leak; captured evaluation rows: the
row is already evaluated, as captured, and is not counted twice). A captured evaluation row is
dropped when its digest is that of a training row (a captured training row, or adult.data).
The one overlap left is the official split's own: the handful of adult.test rows identical to
adult.data rows stay, as they always have, so "no capture" is exactly today's evaluation.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from stream_worker.capture.store import CaptureReader, labelled_applicants
from stream_worker.scoring.schema import RecordDecoder, RecordError
from trainer.dataset import RAW_COLUMNS, AdultData
from trainer.model.columns import (
    CATEGORICAL_COLUMNS,
    NEGATIVE_LABEL,
    NUMERIC_COLUMNS,
    POSITIVE_LABEL,
    TARGET,
)

#: The replay's applicant ids for adult.test rows (``TEST_ID_PREFIX`` in
#: stream_worker/devtools/replay.py, which the trainer may not import): ``test-<row>``, and
#: ``test-<row>-r<k>`` when a replay cycles through the rows again.
REPLAY_TEST_ID = re.compile(r"test-(\d+)(?:-r\d+)?")
#: The worker's default record size limit (WorkerSettings.max_record_bytes): what it accepted.
MAX_RECORD_BYTES = 65536
#: Categorical values that mean "missing" in the cleaned frame; the worker encodes them as it
#: encodes null (an all-zero block: never in a vocabulary), so mapping them changes nothing.
MISSING_VALUES = frozenset({"?", ""})
LABELS = frozenset({POSITIVE_LABEL, NEGATIVE_LABEL})
#: Extra columns of a captured frame, beside the cleaned ones.
ID_COLUMN = "applicant_id"
OBSERVED_COLUMN = "observed_at"
#: Rejection reason of a record whose outcome label is not one of the two labels.
BAD_LABEL = "label"
UCI_PAGE = "https://archive.ics.uci.edu/dataset/2/adult"
DIGEST_LENGTH = 32  # hex characters; MLflow keeps at most 36 for a dataset digest


@dataclass(frozen=True)
class LabelledCapture:
    """Labelled captured rows in the cleaned format, one per applicant id, oldest first.

    ``frame`` has the cleaned columns of ``dataset.clean`` (``RAW_COLUMNS``: the features and
    ``income``, same dtypes and missing values) plus ``applicant_id`` and ``observed_at``.
    ``rejected`` counts, by reason, the labelled records the worker's decoder refuses.
    """

    frame: pd.DataFrame
    uri: str
    cutoff: datetime
    rejected: dict[str, int] = field(default_factory=dict)
    skipped_files: int = 0


@dataclass(frozen=True)
class CaptureSummary:
    """Where the capture's rows went; logged with the run (params, tags, datasets)."""

    uri: str
    cutoff: datetime
    labelled: int  # labelled records read, one per applicant id
    rejected: dict[str, int]  # by reason: records the worker's decoder refuses, bad labels
    skipped_files: int  # unreadable capture files
    adult_rows: int  # adult.data rows (all of them train)
    train_rows: int  # captured rows that train
    eval_rows: int  # captured rows that evaluate
    eval_dropped: int  # newest captured rows not evaluated: the content of a training row
    test_rows: int  # adult.test rows that evaluate
    test_removed: int  # adult.test rows left out: captured (by digest or ``test-<row>`` id)
    train_observed: tuple[datetime, datetime] | None  # observed_at range of captured training
    eval_observed: tuple[datetime, datetime] | None  # and of the captured evaluation rows


@dataclass(frozen=True)
class CapturedData(AdultData):
    """:class:`AdultData` whose ``train`` and ``test`` include captured rows.

    ``train`` is adult.data followed by the captured training rows; ``test`` (the evaluation
    set) is the adult.test rows kept, in their order, followed by the captured evaluation rows.
    """

    summary: CaptureSummary | None = None


@dataclass(frozen=True)
class DataPart:
    """One block of rows a model was trained or evaluated on, for ``mlflow.log_input``."""

    name: str
    context: str  # "training" | "evaluation"
    frame: pd.DataFrame
    source: str  # a URI or path MLflow can name the source by
    digest: str


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def display_uri(uri: str) -> str:
    """The URI without a password, for logs and MLflow (no secret goes into a record)."""
    return re.sub(r"(?<=://)([^/@:]*):[^/@]*@", r"\1:***@", uri)


def row_digests(frame: pd.DataFrame) -> list[str]:
    """One digest per row over the features and the label, as the cleaned frame holds them.

    Numbers by their float value (39 and 39.0 are the same age), categories by their text,
    missing (None/NaN) distinct from any text. Two rows digest alike exactly when the model
    sees the same features with the same label.
    """
    parts: list[list[str]] = []
    for col in RAW_COLUMNS:
        values = frame[col].tolist()
        if col in NUMERIC_COLUMNS:
            parts.append([repr(float(v)) for v in values])
        else:
            parts.append(["\x00" if _missing(v) else f"s{v}" for v in values])
    return [
        hashlib.blake2b("\x1f".join(row).encode(), digest_size=16).hexdigest()
        for row in zip(*parts, strict=True)
    ]


def frame_digest(frame: pd.DataFrame) -> str:
    """A digest of the rows, in order: names the exact rows of a dataset."""
    combined = hashlib.sha256()
    for digest in row_digests(frame):
        combined.update(digest.encode())
    return combined.hexdigest()[:DIGEST_LENGTH]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def from_table(
    table: Any, uri: str, cutoff: datetime, max_bytes: int = MAX_RECORD_BYTES
) -> LabelledCapture:
    """``labelled_applicants`` output → cleaned rows, through the worker's own decoder.

    Each value is decoded by :class:`RecordDecoder`, so the features are the ones the worker
    scored (its UCI aliases, types and ranges); what it would refuse is skipped and counted,
    as is a label other than the two. Categories are kept as received, except that ``?`` and
    the empty string become missing (the cleaned frame's convention; the worker's encoding is
    the same for both). Not stripped: a padded value was an unseen category to the worker.
    One row per applicant id (the latest outcome), ordered by ``observed_at``, then id.
    """
    decoder = RecordDecoder(max_bytes)
    rejected: Counter[str] = Counter()
    cols: dict[str, list[Any]] = {c: [] for c in (*RAW_COLUMNS, ID_COLUMN, OBSERVED_COLUMN)}
    ids = table.column(ID_COLUMN).to_pylist()
    values = table.column("value").to_pylist()
    labels = table.column("label").to_pylist()
    observed = table.column(OBSERVED_COLUMN).to_pylist()
    for applicant_id, value, label, seen in zip(ids, values, labels, observed, strict=True):
        if label not in LABELS:
            rejected[BAD_LABEL] += 1
            continue
        try:
            applicant = decoder.decode_one(value)
        except RecordError as err:
            rejected[err.reason] += 1
            continue
        for col in NUMERIC_COLUMNS:
            cols[col].append(float(getattr(applicant, col)))
        for col in CATEGORICAL_COLUMNS:
            raw = getattr(applicant, col)
            cols[col].append(None if raw is None or raw in MISSING_VALUES else raw)
        cols[TARGET].append(label)
        cols[ID_COLUMN].append(str(applicant_id))
        cols[OBSERVED_COLUMN].append(utc(seen))
    frame = pd.DataFrame(
        {
            **{c: pd.Series(cols[c], dtype="float64") for c in NUMERIC_COLUMNS},
            # object, as dataset.clean makes them: pandas 3 would otherwise infer its str dtype
            **{c: pd.Series(cols[c], dtype=object) for c in (*CATEGORICAL_COLUMNS, TARGET)},
            ID_COLUMN: pd.Series(cols[ID_COLUMN], dtype=object),
            OBSERVED_COLUMN: pd.to_datetime(
                pd.Series(cols[OBSERVED_COLUMN], dtype=object), utc=True
            ),
        }
    )[[*RAW_COLUMNS, ID_COLUMN, OBSERVED_COLUMN]]
    # The reader already keeps one row per id; a frame built from any other table must too.
    frame = frame.sort_values([OBSERVED_COLUMN, ID_COLUMN], kind="stable")
    frame = frame.drop_duplicates(ID_COLUMN, keep="last").reset_index(drop=True)
    return LabelledCapture(frame, uri, utc(cutoff), dict(rejected))


def read(uri: str, cutoff: datetime | None = None) -> LabelledCapture:
    """The labelled capture at ``uri``: outcomes observed at or before ``cutoff`` (default now)."""
    moment = utc(cutoff) if cutoff is not None else datetime.now(UTC)
    reader = CaptureReader.from_uri(uri)
    table, counts = labelled_applicants(reader, until=moment)
    location = reader.location
    named = display_uri(str(location.fs.unstrip_protocol(location.root)))
    capture = from_table(table, named, moment)
    return LabelledCapture(capture.frame, named, moment, capture.rejected, len(counts.skipped))


def eval_count(rows: int, fraction: float) -> int:
    """How many of the newest rows evaluate: ``fraction`` of them, rounded half up."""
    return min(rows, math.floor(rows * fraction + 0.5))


def split_capture(
    adult: AdultData, capture: LabelledCapture, eval_fraction: float
) -> AdultData | CapturedData:
    """Training and evaluation rows from adult.data/adult.test and the labelled capture.

    The rules and why they make training and evaluation disjoint: the module docstring. With
    no labelled captured row, ``adult`` itself is returned: nothing changes.
    """
    frame = capture.frame
    if frame.empty:
        return adult
    n_eval = eval_count(len(frame), eval_fraction)
    cap_train = frame.iloc[: len(frame) - n_eval]
    cap_eval = frame.iloc[len(frame) - n_eval :]
    train_digests = row_digests(cap_train)
    eval_digests = row_digests(cap_eval)
    seen_in_training = set(train_digests) | set(row_digests(adult.train))
    keep_eval = [d not in seen_in_training for d in eval_digests]
    cap_eval = cap_eval[keep_eval]
    captured_digests = set(train_digests) | set(eval_digests)
    captured_rows = {
        int(m.group(1))
        for applicant_id in frame[ID_COLUMN]
        if (m := REPLAY_TEST_ID.fullmatch(str(applicant_id))) is not None
    }
    keep_test = [
        i not in captured_rows and d not in captured_digests
        for i, d in enumerate(row_digests(adult.test))
    ]
    train = pd.concat([adult.train, cap_train[list(RAW_COLUMNS)]], ignore_index=True)
    test = pd.concat([adult.test[keep_test], cap_eval[list(RAW_COLUMNS)]], ignore_index=True)
    summary = CaptureSummary(
        uri=capture.uri,
        cutoff=capture.cutoff,
        labelled=len(frame) + sum(capture.rejected.values()),
        rejected=dict(capture.rejected),
        skipped_files=capture.skipped_files,
        adult_rows=len(adult.train),
        train_rows=len(cap_train),
        eval_rows=len(cap_eval),
        eval_dropped=n_eval - len(cap_eval),
        test_rows=int(sum(keep_test)),
        test_removed=len(keep_test) - int(sum(keep_test)),
        train_observed=_observed_range(cap_train),
        eval_observed=_observed_range(cap_eval),
    )
    checksum = hashlib.sha256(
        f"{adult.checksum}:{frame_digest(train)}:{frame_digest(test)}".encode()
    ).hexdigest()
    return CapturedData(
        train=train,
        test=test,
        checksum=checksum,
        source=f"{adult.source}+capture:{capture.uri}",
        summary=summary,
    )


def _observed_range(frame: pd.DataFrame) -> tuple[datetime, datetime] | None:
    if frame.empty:
        return None
    observed = frame[OBSERVED_COLUMN]
    return observed.min().to_pydatetime(), observed.max().to_pydatetime()


def with_capture(
    adult: AdultData, uri: str, cutoff: datetime | None, eval_fraction: float
) -> AdultData | CapturedData:
    """Read the labelled capture at ``uri`` and split it with ``adult`` (``split_capture``)."""
    return split_capture(adult, read(uri, cutoff), eval_fraction)


def summary_of(data: AdultData) -> CaptureSummary | None:
    return data.summary if isinstance(data, CapturedData) else None


def data_parts(data: AdultData) -> list[DataPart]:
    """The blocks of rows behind ``data.train`` and ``data.test``, each with its source.

    adult.data and adult.test name their files (or the UCI page); captured blocks name the
    capture. Empty blocks are left out.
    """
    summary = summary_of(data)
    adult_rows = summary.adult_rows if summary else len(data.train)
    test_rows = summary.test_rows if summary else len(data.test)
    parts = [
        ("adult.data", "training", data.train.iloc[:adult_rows], _uci_source(data, "adult.data")),
        ("adult.test", "evaluation", data.test.iloc[:test_rows], _uci_source(data, "adult.test")),
    ]
    if summary is not None:
        parts += [
            ("capture.training", "training", data.train.iloc[adult_rows:], summary.uri),
            ("capture.evaluation", "evaluation", data.test.iloc[test_rows:], summary.uri),
        ]
    return [
        DataPart(name, context, frame.reset_index(drop=True), source, frame_digest(frame))
        for name, context, frame, source in parts
        if not frame.empty
    ]


def _uci_source(data: AdultData, file: str) -> str:
    """The file a block of UCI rows came from: the bundled (or mirrored) file, or UCI's page."""
    source = data.source.split("+capture:", 1)[0]
    if source.startswith("bundled:"):
        return f"{source.removeprefix('bundled:').rstrip('/')}/{file}"
    return UCI_PAGE


def run_params(data: AdultData) -> dict[str, Any]:
    """What the run trained and evaluated on, as MLflow params (row counts, capture, cutoff)."""
    summary = summary_of(data)
    params: dict[str, Any] = {
        "train_rows": len(data.train),
        "train_rows_adult_data": summary.adult_rows if summary else len(data.train),
        "train_rows_captured": summary.train_rows if summary else 0,
        "eval_rows": len(data.test),
        "eval_rows_adult_test": summary.test_rows if summary else len(data.test),
        "eval_rows_captured": summary.eval_rows if summary else 0,
    }
    if summary is not None:
        params.update(
            {
                "capture_uri": summary.uri,
                "capture_cutoff": summary.cutoff.isoformat(),
                "capture_labelled": summary.labelled,
                "capture_eval_dropped": summary.eval_dropped,
                "eval_rows_adult_test_removed": summary.test_removed,
            }
        )
    return params


def run_tags(data: AdultData) -> dict[str, str]:
    """The captured time ranges and what was refused, as MLflow tags (searchable)."""
    summary = summary_of(data)
    if summary is None:
        return {}
    tags = {
        "capture_rejected": ",".join(f"{k}={v}" for k, v in sorted(summary.rejected.items()))
        or "none",
        "capture_skipped_files": str(summary.skipped_files),
    }
    ranges = [r for r in (summary.train_observed, summary.eval_observed) if r is not None]
    if ranges:
        tags["capture_observed_min"] = min(r[0] for r in ranges).isoformat()
        tags["capture_observed_max"] = max(r[1] for r in ranges).isoformat()
    for name, span in (("train", summary.train_observed), ("eval", summary.eval_observed)):
        if span is not None:
            tags[f"capture_{name}_observed_min"] = span[0].isoformat()
            tags[f"capture_{name}_observed_max"] = span[1].isoformat()
    return tags
