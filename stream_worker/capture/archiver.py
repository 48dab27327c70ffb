"""``stream-worker capture``: archive applicants, predictions and outcomes as Parquet files.

The Kafka Connect sink pattern: a process of its own in a consumer group of its own
(``capture_group``), so the scoring hot path neither waits for nor depends on the store. At
least once: a partition's offsets are committed only after every record before them is in a
file (or, for an invalid outcome, acknowledged on the outcomes DLQ); a crash re-reads from the
last commit, and readers drop the duplicates (``store.py``).

The bookkeeping is :class:`.buffers.CaptureBuffers` (no Kafka); this module connects it to an
aiokafka consumer, a producer for dead letters, the store and the HTTP endpoints.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import posixpath
import signal
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from stream_worker.capture.buffers import CaptureBuffers, FlushReport, Source, write_batches
from stream_worker.capture.layout import APPLICANTS, OUTCOMES, PREDICTIONS, CaptureLocation
from stream_worker.capture.metrics import CaptureMetrics
from stream_worker.capture.outcome import OutcomeDecoder, RecordError
from stream_worker.capture.rows import (
    PredictionDecodeError,
    PredictionRows,
    applicant_row,
    outcome_row,
)
from stream_worker.exceptions import BrokerError, ConfigError, ScorerError, one_line
from stream_worker.runtime.admin import prepare_topics
from stream_worker.scoring.scorer import InputRecord, dead_letter
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: getmany: wait at most this long for records, take at most this many at once.
POLL_TIMEOUT_MS = 200
MAX_POLL_RECORDS = 20_000
#: aiokafka fetch wait: Tansu holds a fetch this long at low rates (the default is 500 ms).
FETCH_MAX_WAIT_MS = 100
LAG_INTERVAL_SECONDS = 5.0
#: Retry of failed writes: doubling from the first to the last.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
#: At SIGTERM: attempts to write what is buffered before giving up (it is read again later).
SHUTDOWN_ATTEMPTS = 3
#: Dead letters still in flight at a rebalance or at shutdown get this long.
PRODUCER_FLUSH_SECONDS = 10.0


def probe_location(location: CaptureLocation, uri: str) -> None:
    """Write and delete a hidden file at the root, or raise ConfigError in one line."""
    probe = posixpath.join(location.root, f".probe-{uuid.uuid4().hex}")
    try:
        location.fs.makedirs(location.root, exist_ok=True)
        with location.fs.open(probe, "wb") as out:
            out.write(b"probe")
        location.fs.rm(probe)
    except Exception as exc:  # any store error: the location is not usable
        raise ConfigError(f"capture location {uri} is not writable: {one_line(exc)}") from None


class Archiver:
    """Consumes the three topics into :class:`CaptureBuffers`, flushes, commits, dead-letters.

    ``consumer`` is an ``AIOKafkaConsumer`` (subscribed with :class:`RebalanceListener`),
    ``producer`` an ``AIOKafkaProducer``; any objects with the same methods do for tests.
    Everything that touches the buffers runs on the event loop under ``lock``; only the file
    writes go to a thread.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        location: CaptureLocation,
        metrics: CaptureMetrics,
        consumer: Any,
        producer: Any,
        clock: Any = time.monotonic,
    ) -> None:
        self.settings = settings
        self.location = location
        self.metrics = metrics
        self.consumer = consumer
        self.producer = producer
        self.clock = clock
        self.kinds = {
            settings.input_topic: APPLICANTS,
            settings.output_topic: PREDICTIONS,
            settings.outcomes_topic: OUTCOMES,
        }
        self.buffers = CaptureBuffers(
            settings.capture_flush_records, settings.capture_flush_seconds, clock
        )
        self.outcomes = OutcomeDecoder(settings.max_record_bytes)
        self.predictions = PredictionRows()
        self.lock = asyncio.Lock()
        self.assigned: set[Source] = set()
        self.joined = False
        self.write_error: str | None = None
        self.failing_since: str | None = None
        self.files_written = 0
        self.last_flush_at: str | None = None
        self._backoff = FIRST_BACKOFF_SECONDS
        self._retry_at = 0.0
        self._resend: list[tuple[Source, Any, RecordError]] = []

    @property
    def topics(self) -> list[str]:
        return list(self.kinds)

    # --- consuming -------------------------------------------------------------------------

    async def take(self, records: Mapping[Any, Sequence[Any]]) -> None:
        """Sort one ``getmany`` result into the buffers (caller holds ``lock``)."""
        for tp, batch in records.items():
            source = (tp.topic, tp.partition)
            kind = self.kinds.get(tp.topic)
            if source not in self.assigned or kind is None:
                continue  # fetched before a revocation: its new owner reads it again
            if kind == APPLICANTS:
                self._take_applicants(source, batch)
            elif kind == PREDICTIONS:
                self._take_predictions(source, batch)
            else:
                await self._take_outcomes(source, batch)
        self.metrics.buffered.set(self.buffers.rows)

    def _take_applicants(self, source: Source, batch: Sequence[Any]) -> None:
        add = self.buffers.add
        for rec in batch:
            add(source, APPLICANTS, applicant_row(rec), rec.offset, rec.timestamp)

    def _take_predictions(self, source: Source, batch: Sequence[Any]) -> None:
        add, row = self.buffers.add, self.predictions.row
        for rec in batch:
            try:
                values = row(rec)
            except PredictionDecodeError as exc:
                log.warning(
                    "skipping a prediction record that does not decode (%s[%d]@%d): %s",
                    *source, rec.offset, one_line(exc),
                )  # fmt: skip
                self.metrics.skipped_predictions.inc()
                self.buffers.skip(source, PREDICTIONS, rec.offset)
                continue
            add(source, PREDICTIONS, values, rec.offset, rec.timestamp)

    async def _take_outcomes(self, source: Source, batch: Sequence[Any]) -> None:
        valid = 0
        for rec in batch:
            try:
                outcome = self.outcomes.decode(rec.value)
            except RecordError as err:
                self.metrics.outcomes.labels(result="invalid").inc()
                self.metrics.outcome_rejections.labels(reason=err.reason).inc()
                self.buffers.hold(source, OUTCOMES, rec.offset)
                await self._send_dead_letter(source, rec, err)
                continue
            valid += 1
            self.buffers.add(source, OUTCOMES, outcome_row(outcome), rec.offset, rec.timestamp)
        self.metrics.outcomes.labels(result="valid").inc(valid)

    # --- dead letters ----------------------------------------------------------------------

    async def _send_dead_letter(self, source: Source, rec: Any, err: RecordError) -> None:
        """Send; the record stays held until the broker acknowledges (retried on failure)."""
        original = InputRecord(
            rec.key, rec.value, rec.timestamp / 1000.0, rec.topic, rec.partition, rec.offset
        )
        limit = self.settings.dlq_max_value_bytes
        letter = dead_letter(original, err.error_class, err.message, max_value_bytes=limit)
        value, headers = letter.value, list(letter.headers)
        if value is None and letter.key is None:
            # Kafka refuses a record with neither key nor value: an empty value, and a header
            # saying the original was null.
            value, headers = b"", [*headers, ("original_value", b"null")]
        try:
            future = await self.producer.send(
                self.settings.outcomes_dlq_topic, value=value, key=letter.key, headers=headers
            )
        except Exception as exc:  # the producer refused at once: retry with the next poll
            log.warning("cannot send an outcome dead letter, will retry: %s", one_line(exc))
            self._resend.append((source, rec, err))
            return
        future.add_done_callback(functools.partial(self._acked, source, rec, err))

    def _acked(self, source: Source, rec: Any, err: RecordError, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            problem = "cancelled" if future.cancelled() else one_line(future.exception())
            log.warning("outcome dead letter not acknowledged, will retry: %s", problem)
            self._resend.append((source, rec, err))
            return
        self.buffers.release(source, rec.offset)
        self.metrics.outcomes.labels(result="dead_lettered").inc()

    async def _resend_dead_letters(self) -> None:
        pending, self._resend = self._resend, []
        for source, rec, err in pending:
            if source in self.assigned:  # else revoked: its new owner dead-letters it again
                await self._send_dead_letter(source, rec, err)

    async def _settle_dead_letters(self) -> None:
        """Wait (bounded) for dead letters in flight, so that their offsets can be committed."""
        if self.buffers.held():
            try:
                await asyncio.wait_for(self.producer.flush(), PRODUCER_FLUSH_SECONDS)
            except TimeoutError:
                log.warning("dead letters still unacknowledged after %.0fs", PRODUCER_FLUSH_SECONDS)

    # --- flushing and committing -----------------------------------------------------------

    async def flush(self, sources: Iterable[Source] | None = None) -> FlushReport:
        """Write the buffered rows (in a thread), then commit what they cover (holds ``lock``)."""
        wanted = set(sources) if sources is not None else None
        batches = self.buffers.batches(wanted)
        started = time.perf_counter()
        results = (
            await asyncio.to_thread(write_batches, batches, self.location.write) if batches else []
        )
        report = self.buffers.apply(results, wanted)
        if batches:
            self.metrics.flush_seconds.observe(time.perf_counter() - started)
        for kind, rows in report.rows.items():
            self.metrics.rows.labels(kind=kind).inc(rows)
        for kind, files in report.files_by_kind.items():
            self.metrics.files.labels(kind=kind).inc(files)
        self.files_written += len(report.files)
        self.metrics.buffered.set(self.buffers.rows)
        if report.errors:
            self._write_failed(report)
            return report  # nothing is committed while writes fail
        self._write_succeeded()
        await self.commit(report.offsets)
        return report

    async def commit(self, offsets: Mapping[Source, int]) -> None:
        offsets = {s: o for s, o in offsets.items() if s in self.assigned}
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(*s): o for s, o in offsets.items()})
        except Exception as exc:  # a rebalance under way: the next owner re-reads (duplicates)
            self.metrics.commits.labels(result="failure").inc()
            log.warning("offset commit failed (records will be read again): %s", one_line(exc))
            return
        self.metrics.commits.labels(result="success").inc()
        self.buffers.committed(dict(offsets))

    def _write_failed(self, report: FlushReport) -> None:
        self.metrics.write_failures.inc(len(report.errors))
        self.metrics.healthy.set(0)
        if self.write_error is None:
            self.failing_since = _now_iso()
        self.write_error = one_line(report.errors[0], 400)
        self._retry_at = self.clock() + self._backoff
        log.error(
            "capture write failed for %d file(s), nothing committed; retrying in %.1fs: %s",
            len(report.errors), self._backoff, self.write_error,
        )  # fmt: skip
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        self.consumer.pause(*self._tps(self.assigned))  # keep polling (group), fetch nothing

    def _write_succeeded(self) -> None:
        self.last_flush_at = _now_iso()
        if self.write_error is not None:
            log.info("capture writes succeed again (failing since %s)", self.failing_since)
            self.consumer.resume(*self._tps(self.assigned))
        self.write_error = self.failing_since = None
        self._backoff = FIRST_BACKOFF_SECONDS
        self._retry_at = 0.0
        self.metrics.healthy.set(1)

    # --- the group -------------------------------------------------------------------------

    async def revoked(self, tps: Iterable[Any]) -> None:
        """Flush and commit the revoked partitions first, then forget them."""
        sources = {(tp.topic, tp.partition) for tp in tps}
        if not sources:
            return
        async with self.lock:
            await self._settle_dead_letters()
            report = await self.flush(sources)
            dropped = self.buffers.forget(sources)
            self.assigned -= sources
            self.metrics.lag.clear()
        if dropped:
            log.warning("revoked with %d rows unwritten (%s); their next owner reads them again",
                        dropped, "; ".join(report.errors))  # fmt: skip

    def assigned_to(self, tps: Iterable[Any]) -> None:
        self.assigned = {(tp.topic, tp.partition) for tp in tps}
        self.joined = True
        log.info("capture assigned %d partitions", len(self.assigned))
        if self.write_error is not None:
            self.consumer.pause(*self._tps(self.assigned))

    @staticmethod
    def _tps(sources: Iterable[Source]) -> list[TopicPartition]:
        return [TopicPartition(*s) for s in sources]

    # --- the loop --------------------------------------------------------------------------

    async def step(self) -> None:
        """One poll: take what came, retry dead letters, flush when due (and not backing off)."""
        records = await self.consumer.getmany(
            timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_POLL_RECORDS
        )
        async with self.lock:
            await self.take(records)
            await self._resend_dead_letters()
            if self.buffers.due() and self.clock() >= self._retry_at:
                await self.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then write what is buffered and commit it."""
        next_lag, files = 0.0, 0
        while not stop.is_set():
            await self.step()
            if self.clock() >= next_lag or self.files_written != files:  # fresh after a flush
                await self.export_lag()
                next_lag, files = self.clock() + LAG_INTERVAL_SECONDS, self.files_written
        await self.close()

    async def close(self) -> None:
        """Final flush and commit; raises ScorerError if the rows cannot be written."""
        async with self.lock:
            await self._settle_dead_letters()
            report = await self.flush()
            for attempt in range(1, SHUTDOWN_ATTEMPTS):
                if report.ok:
                    break
                await asyncio.sleep(FIRST_BACKOFF_SECONDS * 2**attempt)
                report = await self.flush()
        if not report.ok:
            raise ScorerError(
                f"stopped with {self.buffers.rows} rows not archived (they will be read again "
                f"from the last commit): {report.errors[0]}"
            )
        log.info("capture stopped: buffers written and committed")

    async def export_lag(self) -> None:
        """Per partition: fetch high watermark − first offset not yet archived."""
        for source in sorted(self.assigned):
            tp = TopicPartition(*source)
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            archived = self.buffers.archived_position(source)
            if archived is None:
                try:
                    archived = await self.consumer.position(tp)
                except Exception:  # not positioned yet (mid-rebalance): next time
                    continue
            self.metrics.lag.labels(topic=source[0], partition=str(source[1])).set(
                max(0, highwater - archived)
            )

    def health(self) -> tuple[dict[str, Any], int]:
        """200 while the group is joined and writes succeed; 503 with the reason otherwise."""
        body: dict[str, Any] = {
            "assigned_partitions": len(self.assigned),
            "buffered_rows": self.buffers.rows,
            "files_written": self.files_written,
            "last_flush_at": self.last_flush_at,
            "location": self.settings.capture_uri,
        }
        if self.write_error is not None:
            reason = f"capture writes failing since {self.failing_since}: {self.write_error}"
            return {"status": "failing", "reason": reason, **body}, 503
        if not self.joined:
            return {"status": "starting", "reason": "joining the consumer group", **body}, 503
        return {"status": "ok", **body}, 200


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- the process ---------------------------------------------------------------------------


def run_capture(settings: WorkerSettings) -> None:
    """Blocks until SIGTERM/SIGINT; raises ScorerError (one line) when it cannot run."""
    location = CaptureLocation.from_uri(settings.capture_uri)
    probe_location(location, settings.capture_uri)
    if settings.capture_nice:
        # A background archiver: under CPU contention the workers on this host go first, the
        # capture catches up when they idle (capture_lag shows by how much).
        os.nice(settings.capture_nice)
    created = prepare_topics(settings)
    if created:
        log.info("created topics %s with %d partitions", created, settings.topic_partitions)
    try:
        asyncio.run(_serve(settings, location))
    except KafkaError as exc:  # what is not committed is read again by the next run
        raise BrokerError(
            f"capture stopped: Kafka at {settings.kafka_bootstrap_servers}: {one_line(exc)}"
        ) from exc


async def _serve(settings: WorkerSettings, location: CaptureLocation) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from prometheus_client import CollectorRegistry

    from stream_worker.capture.web import build_app, serve
    from stream_worker.kafka_security import aiokafka_kwargs
    from stream_worker.runtime import tuning

    registry = CollectorRegistry()
    bootstrap = settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=settings.capture_group,
        client_id="income-scorer-capture",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval_seconds * 1000),
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **aiokafka_kwargs(settings.kafka_security),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="income-scorer-capture-dlq",
        acks="all",
        enable_idempotence=False,  # Tansu answers InitProducerId with -1
        max_request_size=tuning.PRODUCER_MAX_REQUEST_BYTES,
        **aiokafka_kwargs(settings.kafka_security),
    )
    archiver = Archiver(settings, location, CaptureMetrics(registry), consumer, producer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = await serve(
            build_app(archiver.health, registry), settings.capture_host, settings.capture_port
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.capture_host}:{settings.capture_port}: {one_line(exc)}"
        ) from None
    try:
        await producer.start()
        consumer.subscribe(archiver.topics, listener=RebalanceListener(archiver))
        await consumer.start()
        log.info(
            "capture of %s into %s (group %s)", archiver.topics, location.root,
            settings.capture_group,
        )  # fmt: skip
        await archiver.run(stop)
    finally:
        await consumer.stop()
        await producer.stop()
        await runner.cleanup()


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Revoked partitions are flushed and committed before the group moves on."""

    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.archiver.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.archiver.assigned_to(assigned)
