"""The Faust app: wiring only. Scoring, drift and model loading live in plain classes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ModelUnavailableError
from stream_worker.metrics import ScorerMetrics
from stream_worker.model_watcher import MlflowModelSource, ModelWatcher
from stream_worker.scoring import BatchScorer, InputRecord, OutputRecord
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
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
        producer_linger_ms=5,
        producer_max_request_size=2_000_000,
        producer_acks=-1,
    )


def create_scorer(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> Scorer:
    """Build the app and its parts; nothing connects until the worker starts."""
    from stream_worker import views

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
    input_topic = app.topic(settings.input_topic, partitions=settings.topic_partitions)
    output_topic = app.topic(settings.output_topic, partitions=settings.topic_partitions)
    dlq_topic = app.topic(settings.dlq_topic, partitions=settings.topic_partitions)

    @app.agent(input_topic, name="score")
    async def score(stream: Any) -> None:
        await scorer.ready_event().wait()  # nothing is consumed before a model is loaded
        async for events in stream.take_events(settings.batch_max, settings.batch_window_seconds):
            model = scorer.watcher.current
            assert model is not None
            records = [_input_record(e) for e in events]
            result = scorer.batch_scorer.process(model, records)
            scorer.metrics.batch_size.observe(len(records))
            pending = [_send(app, output_topic.get_topic_name(), r) for r in result.predictions]
            pending += [_send(app, dlq_topic.get_topic_name(), r) for r in result.dead_letters]
            # At-least-once: the batch's offsets are acked (and later committed) only after the
            # broker has acknowledged every record it produced.
            for fut in await asyncio.gather(*pending):
                await fut

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


def _input_record(event: Any) -> InputRecord:
    msg = event.message
    return InputRecord(msg.key, msg.value, msg.timestamp, msg.topic, msg.partition, msg.offset)


async def _send(app: faust.App, topic: str, record: OutputRecord) -> Any:
    return await app.producer.send(
        topic, record.key, record.value, None, None, record.headers or None
    )


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
