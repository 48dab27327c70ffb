"""Score a micro-batch: decode + validate, encode once, one ``inplace_predict``, emit records.

No broker here: the scoring loop hands in raw records and sends what comes back, so this is
tested without Kafka and shared by the stream, ``POST /predict`` and the benchmark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import numpy as np
import numpy.typing as npt

from stream_worker.scoring.drift import DriftMonitor
from stream_worker.scoring.metrics import ScorerMetrics, observe_many
from stream_worker.scoring.schema import DecodedBatch, RecordDecoder, Rejection
from trainer.model.bundle import ModelBundle
from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A bundle in service and where it came from."""

    bundle: ModelBundle
    name: str
    version: str
    run_id: str
    loaded_at: str


@dataclass(frozen=True)
class InputRecord:
    key: bytes | None
    value: bytes | None
    timestamp: float  # seconds since the epoch (Kafka record timestamp)
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class OutputRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    index: int = -1  # position of the input record in its batch


@dataclass
class BatchResult:
    predictions: list[OutputRecord] = field(default_factory=list)
    dead_letters: list[OutputRecord] = field(default_factory=list)
    probabilities: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    rejections: list[Rejection] = field(default_factory=list)


class Prediction(msgspec.Struct):
    applicant_id: str
    probability: float
    label: str
    threshold: float
    model_name: str
    model_version: str
    scored_at: str
    latency_ms: float


def dead_letter(
    record: InputRecord, error_class: str, reason: str, index: int = -1
) -> OutputRecord:
    """The original bytes unchanged, the original key, and headers saying why and where from."""
    headers = [
        ("error_class", error_class.encode()),
        ("error_reason", reason.encode("utf-8", "replace")[:1000]),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    return OutputRecord(record.key, record.value or b"", headers, index)


class BatchScorer:
    """Turns raw input records into prediction and dead-letter records, updating metrics."""

    def __init__(self, metrics: ScorerMetrics, max_record_bytes: int, drift_window: int) -> None:
        self.metrics = metrics
        self.decoder = RecordDecoder(max_record_bytes)
        self.drift_window = drift_window
        self._drift: DriftMonitor | None = None
        self._drift_version: str | None = None
        self._encode = msgspec.json.Encoder().encode

    def drift_for(self, model: LoadedModel) -> DriftMonitor:
        """One window per model version: a new reference starts a fresh window."""
        if self._drift is None or self._drift_version != model.version:
            self._drift = DriftMonitor(model.bundle.profile, self.drift_window)
            self._drift_version = model.version
        return self._drift

    def process(self, model: LoadedModel, records: Sequence[InputRecord]) -> BatchResult:
        """Never raises: whatever cannot be scored comes back as a dead letter."""
        try:
            return self._process(model, records)
        except Exception as exc:  # last line of defence: the stream must not stall
            log.exception("unexpected failure on a batch of %d; dead-lettering it", len(records))
            self.metrics.records.labels(outcome="error").inc(len(records))
            self.metrics.dead_letters.labels(reason="scoring_error").inc(len(records))
            return BatchResult(
                dead_letters=[
                    dead_letter(r, type(exc).__name__, str(exc), i) for i, r in enumerate(records)
                ]
            )

    def _process(self, model: LoadedModel, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        decoded = self.decoder.decode_batch([r.value for r in records])
        self._reject(records, decoded.rejections, result)
        if not decoded.applicants:
            return result
        bundle = model.bundle
        started = time.perf_counter()
        try:
            batch = bundle.encoder.codes(decoded.columns())
            probabilities = bundle.predict_encoded(batch)
        except Exception as exc:  # a broken model must not stop the stream
            log.exception("scoring failed for a batch of %d", len(decoded.applicants))
            self._fail(records, decoded.indices, exc, result)
            return result
        self.metrics.inference.observe(time.perf_counter() - started)
        now = time.time()
        latencies = now - np.fromiter(
            (records[i].timestamp for i in decoded.indices),
            dtype=np.float64,
            count=len(decoded.indices),
        )
        positive = probabilities >= bundle.threshold
        self._emit(model, decoded, probabilities, positive, latencies, now, result)
        self._observe(probabilities, positive, latencies)
        self._count_unknown(batch.codes, bundle.encoder.categorical)
        drift = self.drift_for(model)
        drift.update(bundle.profile.feature_bins(bundle.encoder, batch), probabilities)
        self.metrics.set_drift(drift.feature_psi(), drift.prediction_psi())
        return result

    def _reject(
        self, records: Sequence[InputRecord], rejections: list[Rejection], result: BatchResult
    ) -> None:
        """Dead-letter the records that failed validation, with their reasons."""
        result.rejections = rejections
        for rej in rejections:
            result.dead_letters.append(
                dead_letter(records[rej.index], rej.error_class, rej.message, rej.index)
            )
        if rejections:
            self.metrics.records.labels(outcome="invalid").inc(len(rejections))
            self.metrics.count_dead_letters(r.reason for r in rejections)

    def _fail(
        self,
        records: Sequence[InputRecord],
        indices: Sequence[int],
        exc: Exception,
        result: BatchResult,
    ) -> None:
        """Dead-letter valid records the model could not score."""
        for i in indices:
            result.dead_letters.append(dead_letter(records[i], type(exc).__name__, str(exc), i))
        self.metrics.records.labels(outcome="error").inc(len(indices))
        self.metrics.dead_letters.labels(reason="scoring_error").inc(len(indices))

    def _emit(
        self,
        model: LoadedModel,
        decoded: DecodedBatch,
        probabilities: npt.NDArray[np.float64],
        positive: npt.NDArray[np.bool_],
        latencies: npt.NDArray[np.float64],
        now: float,
        result: BatchResult,
    ) -> None:
        """One prediction record per scored applicant, in batch order."""
        scored_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        threshold = model.bundle.threshold
        encode = self._encode
        name, version = model.name, model.version
        out = result.predictions
        for index, applicant, p, pos, lat in zip(
            decoded.indices,
            decoded.applicants,
            probabilities.tolist(),
            positive.tolist(),
            latencies.tolist(),
            strict=True,
        ):
            pred = Prediction(
                applicant.applicant_id,
                p,
                POSITIVE_LABEL if pos else NEGATIVE_LABEL,
                threshold,
                name,
                version,
                scored_at,
                round(lat * 1000.0, 3),
            )
            out.append(OutputRecord(applicant.applicant_id.encode(), encode(pred), [], index))
        result.probabilities = probabilities

    def _observe(
        self,
        probabilities: npt.NDArray[np.float64],
        positive: npt.NDArray[np.bool_],
        latencies: npt.NDArray[np.float64],
    ) -> None:
        metrics = self.metrics
        n_pos = int(positive.sum())
        n = len(probabilities)
        metrics.records.labels(outcome="scored").inc(n)
        metrics.predictions.labels(label=POSITIVE_LABEL).inc(n_pos)
        metrics.predictions.labels(label=NEGATIVE_LABEL).inc(n - n_pos)
        observe_many(metrics.event_latency, latencies)
        observe_many(metrics.score, probabilities)

    def _count_unknown(self, codes: npt.NDArray[np.int32], names: Sequence[str]) -> None:
        missing = (codes < 0).sum(axis=0)
        for j in np.flatnonzero(missing):
            self.metrics.unknown_categories.labels(feature=names[int(j)]).inc(int(missing[j]))
