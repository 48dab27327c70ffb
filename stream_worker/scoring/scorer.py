"""Score a micro-batch: decode + validate, encode once, one ``inplace_predict``, emit records.

No broker here: the scoring loop hands in raw records and sends what comes back, so this is
tested without Kafka and shared by the stream, ``POST /predict`` and the benchmark.

Only a record's own fault sends it to the dead-letter topic. When the model fails on valid
records (a system fault), the batch is scored again by the version it replaced, or
:class:`~stream_worker.exceptions.ScoringSystemError` stops the worker before anything of the
batch is sent or committed. :func:`smoke_test` runs a new version through this same path
before it serves.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ScoringSystemError, SmokeTestError, one_line
from stream_worker.scoring.drift import DriftMonitor
from stream_worker.scoring.metrics import ScorerMetrics, observe_many
from stream_worker.scoring.schema import DecodedBatch, RecordDecoder, Rejection
from trainer.model.bundle import SMOKE_TOLERANCE, ModelBundle
from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL
from trainer.model.features import EncodedBatch

log = logging.getLogger(__name__)

#: A dead letter's value is cut above this many bytes: the worker's ``dlq_max_value_bytes``
#: (SCORER_DLQ_MAX_VALUE_BYTES) sets it; this default is also the setting's. Half the
#: producer's request limit, and with key and headers still under a stock Kafka broker's
#: ``message.max.bytes`` (1,048,588).
DEFAULT_DLQ_MAX_VALUE_BYTES = 1_000_000
#: A dead letter's key is cut above this many bytes (applicant ids have at most 256 characters).
DLQ_MAX_KEY_BYTES = 1024
#: Every header value of a dead letter is cut above this many bytes (at a character boundary).
DLQ_MAX_HEADER_BYTES = 1000
#: The headers that say a dead letter's value (or key) was cut, and what the original was.
VALUE_CUT_HEADERS = ("truncated", "original_size", "original_sha256")
KEY_CUT_HEADERS = ("key_truncated", "original_key_size", "original_key_sha256")

#: A failing drift update is logged at most this often per model version (it is counted always).
DRIFT_FAILURE_LOG_SECONDS = 60.0
#: The smoke test's own decode limit: a reference record is a few hundred bytes.
SMOKE_MAX_RECORD_BYTES = 65536


class ModelFallback(Protocol):
    """Who serves instead of a model that failed in service (the model watcher)."""

    def fall_back(self, failed: LoadedModel, reason: str) -> LoadedModel | None:
        """The model to score with instead of ``failed``, or None if there is none."""
        ...


@dataclass(frozen=True)
class LoadedModel:
    """A bundle in service and where it came from."""

    bundle: ModelBundle
    name: str
    version: str
    run_id: str
    loaded_at: str
    #: Asked for a replacement when this model fails on valid records; None: no replacement.
    fallback: ModelFallback | None = field(default=None, compare=False, repr=False)


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


@dataclass(frozen=True)
class DeadLetter:
    """A record for the dead-letter topic: its value is null when the original's was."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    index: int = -1  # position of the input record in its batch


@dataclass
class BatchResult:
    predictions: list[OutputRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
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
    record: InputRecord,
    error_class: str,
    reason: str,
    index: int = -1,
    max_value_bytes: int = DEFAULT_DLQ_MAX_VALUE_BYTES,
) -> DeadLetter:
    """The original key and bytes, and headers saying why and where from; size-safe.

    A value longer than ``max_value_bytes`` (a key longer than DLQ_MAX_KEY_BYTES) is cut to
    that length, and headers say so: ``truncated: true``, ``original_size`` and the
    ``original_sha256`` of the whole value (``key_truncated``, ``original_key_size``,
    ``original_key_sha256`` for the key). Every header value is at most DLQ_MAX_HEADER_BYTES,
    so a dead letter is never larger than its value limit plus a few kilobytes, whatever the
    record: its send cannot fail on size. A null value or key stays null.
    """
    headers = [
        ("error_class", _header_text(error_class)),
        ("error_reason", _header_text(reason)),
        ("source_topic", _header_text(record.topic)),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    value = _cut(record.value, max_value_bytes, VALUE_CUT_HEADERS, headers)
    key = _cut(record.key, DLQ_MAX_KEY_BYTES, KEY_CUT_HEADERS, headers)
    return DeadLetter(key, value, headers, index)


def _cut(
    data: bytes | None, limit: int, names: tuple[str, str, str], headers: list[tuple[str, bytes]]
) -> bytes | None:
    """``data`` if it fits ``limit``, else its first ``limit`` bytes, described in ``headers``."""
    if data is None or len(data) <= limit:
        return data
    flag, size, digest = names
    headers.append((flag, b"true"))
    headers.append((size, str(len(data)).encode()))
    headers.append((digest, hashlib.sha256(data).hexdigest().encode()))
    return data[:limit]


def _header_text(text: str) -> bytes:
    """UTF-8, at most DLQ_MAX_HEADER_BYTES, never ending inside a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= DLQ_MAX_HEADER_BYTES:
        return data
    return data[:DLQ_MAX_HEADER_BYTES].decode("utf-8", "ignore").encode()


class BatchScorer:
    """Turns raw input records into prediction and dead-letter records, updating metrics."""

    def __init__(
        self,
        metrics: ScorerMetrics,
        max_record_bytes: int,
        drift_window: int,
        dlq_max_value_bytes: int = DEFAULT_DLQ_MAX_VALUE_BYTES,
        *,
        drift_min_records: int | None = None,
    ) -> None:
        self.metrics = metrics
        # PSI is published from at least this many records in the window (None: a full one).
        self.drift_min_records = drift_window if drift_min_records is None else drift_min_records
        if not 1 <= self.drift_min_records <= drift_window:
            raise ValueError(f"drift_min_records must be in 1..{drift_window}")
        self.decoder = RecordDecoder(max_record_bytes)
        self.drift_window = drift_window
        self.dlq_max_value_bytes = dlq_max_value_bytes
        #: Batches whose drift update failed: their predictions went out, drift was skipped.
        self.drift_failures = 0
        self._drift: DriftMonitor | None = None
        self._drift_version: str | None = None
        self._drift_logged: tuple[str, float] | None = None  # (version, monotonic time)
        self._encode = msgspec.json.Encoder().encode

    def drift_for(self, model: LoadedModel) -> DriftMonitor:
        """One window per model version: a new reference starts a fresh window."""
        if self._drift is None or self._drift_version != model.version:
            self._drift = DriftMonitor(model.bundle.profile, self.drift_window)
            self._drift_version = model.version
            self._publish_drift(self._drift)  # nothing known yet: no PSI series
        return self._drift

    def _publish_drift(self, drift: DriftMonitor) -> None:
        """The window's size always; PSI only once the window holds ``drift_min_records``.

        Until then the PSI series are absent, not computed from a handful of records (the
        window is fresh after a start, a model swap or a failed update), so a drift alert
        cannot fire on them.
        """
        self.metrics.set_drift_window(drift.observed)
        if drift.observed >= self.drift_min_records:
            self.metrics.set_drift(drift.feature_psi(), drift.prediction_psi())
        else:
            self.metrics.clear_drift()

    def process(self, model: LoadedModel, records: Sequence[InputRecord]) -> BatchResult:
        """Predictions for the valid records, dead letters for the invalid ones.

        Only a record's own fault (validation) dead-letters it. If the model fails on the
        valid records, ``model.fallback`` names the model that scores the batch again (the
        version this one replaced); if there is none, :class:`ScoringSystemError` is raised:
        nothing of the batch is returned or counted, and the caller must not acknowledge it.
        A failing drift update skips drift for the batch; its predictions still go out.
        """
        try:
            return self._score(model, records, serving=True)
        except ScoringSystemError:
            raise
        except Exception as exc:  # a bug, not the records' fault: stop rather than DLQ them
            log.exception("scoring failed on a batch of %d", len(records))
            raise ScoringSystemError(
                f"scoring failed on a batch of {len(records)}: {one_line(exc)}"
            ) from exc

    def _score(
        self, model: LoadedModel, records: Sequence[InputRecord], *, serving: bool
    ) -> BatchResult:
        """``process``; with ``serving`` false (the smoke test) any failure raises instead."""
        result = BatchResult()
        decoded = self.decoder.decode_batch([r.value for r in records])
        if not decoded.applicants:
            self._reject(records, decoded.rejections, result)
            return result
        # Before anything else: a model that fails leaves no trace (nothing emitted or counted).
        model, batch, probabilities = self._predict(model, decoded, fall_back=serving)
        self._reject(records, decoded.rejections, result)
        bundle = model.bundle
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
        try:
            self._update_drift(model, batch, probabilities)
        except Exception as exc:
            if not serving:
                raise
            self._skip_drift(model, exc)
        return result

    def _predict(
        self, model: LoadedModel, decoded: DecodedBatch, *, fall_back: bool
    ) -> tuple[LoadedModel, EncodedBatch, npt.NDArray[np.float64]]:
        """Encode and predict; on failure, again with the fallback model, if there is one."""
        columns = decoded.columns()
        n = len(decoded.applicants)
        tried: set[int] = set()
        while True:
            started = time.perf_counter()
            try:
                batch = model.bundle.encoder.codes(columns)
                probabilities = model.bundle.predict_encoded(batch)
                _check_probabilities(probabilities, n)
            except Exception as exc:
                reason = one_line(exc)
                log.error(
                    "model %s version %s failed on %d valid records: %s",
                    model.name,
                    model.version,
                    n,
                    reason,
                )
                tried.add(id(model))
                replacement = (
                    model.fallback.fall_back(model, reason)
                    if fall_back and model.fallback is not None
                    else None
                )
                if replacement is None or id(replacement) in tried:
                    raise ScoringSystemError(
                        f"model version {model.version} failed on {n} valid records and no "
                        f"other version can score them: {reason}"
                    ) from exc
                log.warning("scoring the batch again with version %s", replacement.version)
                model = replacement
                continue
            self.metrics.inference.observe(time.perf_counter() - started)
            return model, batch, probabilities

    def _update_drift(
        self, model: LoadedModel, batch: EncodedBatch, probabilities: npt.NDArray[np.float64]
    ) -> None:
        bundle = model.bundle
        drift = self.drift_for(model)
        drift.update(bundle.profile.feature_bins(bundle.encoder, batch), probabilities)
        self._publish_drift(drift)

    def _skip_drift(self, model: LoadedModel, exc: Exception) -> None:
        """Count and log a failed drift update; the window starts again (it may be half done)."""
        self.drift_failures += 1
        self._drift = None
        now = time.monotonic()
        last = self._drift_logged
        if last is None or last[0] != model.version or now - last[1] >= DRIFT_FAILURE_LOG_SECONDS:
            self._drift_logged = (model.version, now)
            log.error(
                "drift update failed for model version %s, drift skipped for the batch "
                "(predictions sent; %d batches skipped so far): %s",
                model.version,
                self.drift_failures,
                one_line(exc),
            )

    def _reject(
        self, records: Sequence[InputRecord], rejections: list[Rejection], result: BatchResult
    ) -> None:
        """Dead-letter the records that failed validation, with their reasons."""
        result.rejections = rejections
        limit = self.dlq_max_value_bytes
        for rej in rejections:
            result.dead_letters.append(
                dead_letter(records[rej.index], rej.error_class, rej.message, rej.index, limit)
            )
        if rejections:
            self.metrics.records.labels(outcome="invalid").inc(len(rejections))
            self.metrics.count_dead_letters(r.reason for r in rejections)

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


def _check_probabilities(probabilities: npt.NDArray[np.float64], n: int) -> None:
    """A model that returns the wrong number of scores, or NaN, has failed like one that raises."""
    if probabilities.shape != (n,) or not np.isfinite(probabilities).all():
        raise ValueError(
            f"the model returned {probabilities.shape} scores for {n} records, "
            "or scores that are not finite"
        )


def smoke_test(model: LoadedModel) -> None:
    """Score a version's reference sample through the stream's own path before it serves.

    The bundle's reference records go in as wire JSON, through decode, encode, predict, the
    drift update and the prediction records, in a scorer of their own (the live metrics and
    drift window are not touched); the probabilities read back from those records must equal
    the ones saved in training, and the drift profile must fit the encoder. No fallback: any
    failure raises :class:`SmokeTestError` and the version must be refused.
    """
    bundle = model.bundle
    if not bundle.reference_records:
        raise SmokeTestError("smoke test: the bundle has no reference sample")
    _check_profile_fits(bundle)
    encode = msgspec.json.Encoder().encode
    now = time.time()
    ids = [f"smoke-{i}" for i in range(len(bundle.reference_records))]
    records = [
        InputRecord(aid.encode(), encode({**ref, "applicant_id": aid}), now, "smoke-test", 0, i)
        for i, (aid, ref) in enumerate(zip(ids, bundle.reference_records, strict=True))
    ]
    # A window larger than the sample (the ring path of a live window) that publishes PSI
    # from the sample, so the PSI computation runs too.
    scorer = BatchScorer(
        ScorerMetrics(CollectorRegistry()),
        SMOKE_MAX_RECORD_BYTES,
        2 * len(records),
        drift_min_records=len(records),
    )
    try:
        result = scorer._score(model, records, serving=False)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, ScoringSystemError) and exc.__cause__ else exc
        raise SmokeTestError(f"smoke test: {one_line(cause)}") from exc
    if result.rejections:
        first = result.rejections[0]
        raise SmokeTestError(
            f"smoke test: {len(result.rejections)} reference records rejected "
            f"(record {first.index}: {first.message})"
        )
    decode = msgspec.json.Decoder(Prediction).decode
    predictions = [decode(p.value) for p in result.predictions]
    if [p.applicant_id for p in predictions] != ids or any(
        p.model_version != model.version for p in predictions
    ):
        raise SmokeTestError("smoke test: the prediction records do not match the inputs")
    got = np.asarray([p.probability for p in predictions], dtype=np.float64)
    want = np.asarray(bundle.reference_probabilities, dtype=np.float64)
    if got.shape != want.shape:
        raise SmokeTestError(
            f"smoke test: {got.size} predictions for {want.size} reference probabilities"
        )
    worst = float(np.max(np.abs(got - want)))
    if not worst <= SMOKE_TOLERANCE:
        raise SmokeTestError(f"smoke test: predictions differ from training by up to {worst:.2e}")
    labels = [POSITIVE_LABEL if p >= bundle.threshold else NEGATIVE_LABEL for p in got.tolist()]
    if [p.label for p in predictions] != labels:
        raise SmokeTestError("smoke test: labels do not follow the threshold")


def _check_profile_fits(bundle: ModelBundle) -> None:
    """The drift profile bins every feature the encoder produces, with matching bin counts.

    The reference sample may not contain the categories that would show a misfit; this checks
    the shapes the drift update relies on for every record.
    """
    encoder, profile = bundle.encoder, bundle.profile
    columns = {*encoder.numeric, *encoder.categorical}
    if set(profile.features) != columns:
        raise SmokeTestError(
            f"smoke test: the drift profile covers {sorted(profile.features)}, "
            f"the encoder {sorted(columns)}"
        )
    for col in encoder.categorical:
        if profile.n_bins(col) != len(encoder.vocabularies[col]) + 1:
            raise SmokeTestError(
                f"smoke test: the drift profile has {profile.n_bins(col)} bins for {col}, "
                f"the encoder {len(encoder.vocabularies[col])} categories + missing"
            )
    for col in profile.features:
        if len(profile.expected(col)) != profile.n_bins(col):
            raise SmokeTestError(f"smoke test: the drift profile's {col} bins are inconsistent")
    if len(profile.score_props) != len(profile.score_edges) + 1:
        raise SmokeTestError("smoke test: the drift profile's score bins are inconsistent")
