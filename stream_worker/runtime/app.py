"""The Faust app: wiring only. Scoring, drift and model loading live in plain classes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ModelUnavailableError
from stream_worker.model_watcher import MlflowModelSource, ModelWatcher
from stream_worker.runtime.loop import (
    InFlight,
    PartitionedSender,
    RawTopic,
    micro_batches,
    subscribe,
    use_low_latency_consumer,
)
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer, InputRecord
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
MAX_INFLIGHT_BATCHES = 2
LAG_INTERVAL_SECONDS = 5.0


@dataclass
class Scorer:
    """Everything the agent, the timers and the views share."""

    settings: WorkerSettings
    app: faust.App
    metrics: ScorerMetrics
    watcher: ModelWatcher
    batch_scorer: BatchScorer
    model_ready: asyncio.Event | None = None

    def ready_event(self) -> asyncio.Event:
        if self.model_ready is None:
            self.model_ready = asyncio.Event()
            if self.watcher.ready:
                self.model_ready.set()
        return self.model_ready


def faust_app(settings: WorkerSettings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_interval_seconds,
        broker_commit_every=settings.batch_max,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        producer_linger_ms=1,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=2_000_000,
        producer_acks=-1,
    )


def create_scorer(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> Scorer:
    """Build the app and its parts; nothing connects until the worker starts."""
    from stream_worker.runtime import views

    app = faust_app(settings)
    metrics = ScorerMetrics(registry or CollectorRegistry())
    source = MlflowModelSource(
        settings.mlflow_tracking_uri, settings.model_name, settings.model_alias
    )
    scorer = Scorer(
        settings=settings,
        app=app,
        metrics=metrics,
        watcher=ModelWatcher(source, metrics, nthread=1),
        batch_scorer=BatchScorer(metrics, settings.max_record_bytes, settings.drift_window),
    )
    input_topic = RawTopic(app, topics=[settings.input_topic], partitions=settings.topic_partitions)
    channel = subscribe(input_topic)  # before start: the consumer subscribes to app.topics
    use_low_latency_consumer(app, channel)

    @app.task
    async def score() -> None:
        """The scoring loop: micro-batches from the consumer, predictions and dead letters out."""
        await scorer.ready_event().wait()  # nothing is consumed before a model is loaded
        aioproducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
        predictions = PartitionedSender(aioproducer, settings.output_topic)
        dead_letters = PartitionedSender(aioproducer, settings.dlq_topic)
        inflight = InFlight(app.consumer, MAX_INFLIGHT_BATCHES)
        async for messages in micro_batches(
            channel, settings.batch_max, settings.batch_window_seconds
        ):
            model = scorer.watcher.current
            assert model is not None
            records = [_input_record(m) for m in messages]
            result = scorer.batch_scorer.process(model, records)
            scorer.metrics.batch_size.observe(len(records))
            pending = await predictions.send(
                [(records[r.index].partition, r.key, r.value, []) for r in result.predictions]
            )
            pending += await dead_letters.send(
                [
                    (records[r.index].partition, r.key, r.value, r.headers)
                    for r in result.dead_letters
                ]
            )
            # At-least-once: the batch's offsets become committable only once the broker has
            # acknowledged every record it produced; meanwhile the next batch is scored.
            await inflight.add(pending, messages)

    @app.task
    async def load_first_model() -> None:
        await _load_until_ready(scorer)

    @app.timer(interval=settings.reload_interval_seconds)
    async def follow_alias() -> None:
        if not scorer.watcher.ready:
            return
        try:
            await asyncio.to_thread(scorer.watcher.poll)
        except ModelUnavailableError as exc:
            log.warning(
                "registry check failed, still serving %s: %s",
                scorer.watcher.current.version if scorer.watcher.current else "-",
                exc,
            )

    @app.timer(interval=LAG_INTERVAL_SECONDS)
    async def export_lag() -> None:
        _export_lag(scorer)

    views.register(scorer)
    return scorer


async def _load_until_ready(scorer: Scorer) -> None:
    """Retry with exponential backoff while the registry is unreachable or has no champion."""
    delay = 1.0
    while not scorer.watcher.ready:
        try:
            await asyncio.to_thread(scorer.watcher.poll)
        except ModelUnavailableError as exc:
            log.warning("no model yet (%s); retrying in %.0fs", exc, delay)
        if scorer.watcher.ready:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF_SECONDS)
    scorer.ready_event().set()


def _input_record(msg: Any) -> InputRecord:
    return InputRecord(msg.key, msg.value, msg.timestamp, msg.topic, msg.partition, msg.offset)


def _export_lag(scorer: Scorer) -> None:
    """Lag from the fetch high watermark; Tansu's ListOffsets(LATEST) cannot be trusted."""
    consumer = scorer.app.consumer
    read_offsets = getattr(consumer, "_read_offset", {})
    gauge = scorer.metrics.consumer_lag
    gauge.clear()
    for tp in consumer.assignment():
        if tp.topic != scorer.settings.input_topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        if highwater is None:
            continue
        last = read_offsets.get(tp)
        next_offset = (last + 1) if last is not None else 0
        gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(
            max(0, highwater - next_offset)
        )
