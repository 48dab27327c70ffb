"""The Faust app: wiring only. The loop, the model watcher and the views do the work."""

from __future__ import annotations

import asyncio
import functools
import logging

import faust
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ModelUnavailableError
from stream_worker.kafka_security import faust_credentials
from stream_worker.model_watcher import MlflowModelSource, ModelWatcher
from stream_worker.runtime import faust_compat, tuning, views
from stream_worker.runtime.acks import UnackedBatches
from stream_worker.runtime.context import WorkerContext
from stream_worker.runtime.heap import freeze_heap
from stream_worker.runtime.loop import run_scoring_loop
from stream_worker.runtime.ports import StreamConsumer
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def faust_app(settings: WorkerSettings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        broker_credentials=faust_credentials(settings.kafka_security),
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
        broker_commit_interval=tuning.COMMIT_INTERVAL_SECONDS,
        stream_buffer_maxsize=max(tuning.MIN_STREAM_BUFFER, settings.batch_max * 2),
        producer_linger_ms=tuning.PRODUCER_LINGER_MS,
        producer_max_batch_size=tuning.PRODUCER_MAX_BATCH_BYTES,
        producer_max_request_size=tuning.PRODUCER_MAX_REQUEST_BYTES,
        producer_acks=-1,
    )


def build_worker(
    settings: WorkerSettings, registry: CollectorRegistry | None = None
) -> WorkerContext:
    """Build the app and its parts; nothing connects until the worker starts."""
    app = faust_app(settings)
    metrics = ScorerMetrics(registry or CollectorRegistry())
    source = MlflowModelSource(
        settings.mlflow_tracking_uri, settings.model_name, settings.model_alias
    )
    ctx = WorkerContext(
        settings=settings,
        app=app,
        metrics=metrics,
        watcher=ModelWatcher(source, metrics, nthread=1),
        batch_scorer=BatchScorer(
            metrics,
            settings.max_record_bytes,
            settings.drift_window,
            drift_min_records=settings.drift_min_records,
            dlq_max_value_bytes=settings.dlq_max_value_bytes,
        ),
    )
    topic = faust_compat.RawTopic(
        app, topics=[settings.input_topic], partitions=settings.topic_partitions
    )
    queue = faust_compat.subscribe(topic).queue
    consumer = faust_compat.FaustStreamConsumer(app, queue)
    unacked = UnackedBatches(consumer, tuning.MAX_UNACKED_BATCHES)
    # A revocation and a stop wait for the loop's pending batches before Faust commits.
    faust_compat.install_low_latency_consumer(
        app,
        queue,
        drain_pending=functools.partial(unacked.drain, tuning.DRAIN_TIMEOUT_SECONDS),
        resume_pending=unacked.reopen,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )

    _schedule(ctx, consumer, unacked)
    views.register(ctx)
    return ctx


def _schedule(ctx: WorkerContext, consumer: StreamConsumer, unacked: UnackedBatches) -> None:
    """Register the loop and the timers as Faust services (started and stopped with the app)."""
    app = ctx.app

    @app.task
    async def score() -> None:
        await run_scoring_loop(ctx, consumer, unacked)

    @app.task
    async def load_model() -> None:
        await load_first_model(ctx)

    @app.timer(interval=ctx.settings.reload_interval_seconds)
    async def follow() -> None:
        await follow_alias(ctx)

    @app.timer(interval=tuning.LAG_INTERVAL_SECONDS)
    async def lag() -> None:
        await export_lag(ctx)


async def load_first_model(ctx: WorkerContext) -> None:
    """Retry with exponential backoff while the registry is unreachable or has no champion."""
    delay = 1.0
    while not ctx.watcher.ready:
        previous = ctx.watcher.registry_error
        try:
            await asyncio.to_thread(ctx.watcher.poll)
        except ModelUnavailableError as exc:
            # One line per distinct reason, not one per attempt: a refused password or a
            # missing champion repeats the same answer until someone acts.
            if str(exc) != previous:
                log.warning(
                    "no model yet (%s); retrying with backoff up to %.0fs, logged again "
                    "when the reason changes",
                    exc,
                    tuning.MAX_BACKOFF_SECONDS,
                )
        if ctx.watcher.ready:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, tuning.MAX_BACKOFF_SECONDS)
    if tuning.GC_FREEZE_WHEN_READY:
        freeze_heap()  # before the first record: start-up's objects leave the collector's walk
    ctx.model_ready().set()


async def follow_alias(ctx: WorkerContext) -> None:
    """Swap in a newly aliased version; once serving, a registry outage only logs."""
    if not ctx.watcher.ready:
        return
    previous = ctx.watcher.registry_error
    try:
        await asyncio.to_thread(ctx.watcher.poll)
    except ModelUnavailableError as exc:
        if str(exc) == previous:
            return  # logged when it began; /health carries it meanwhile
        current = ctx.watcher.current
        log.warning(
            "registry check failed, still serving %s: %s", current.version if current else "-", exc
        )
        return
    if previous is not None:
        log.info("registry answers again")


async def export_lag(ctx: WorkerContext) -> None:
    """Per input partition: the fetch high watermark minus the first offset not processed yet.

    Processed means acked (the batch's output acknowledged, its offsets committable), so the
    records buffered in the topic's queue and the batches in flight count as lag. The high
    watermark because Tansu's ListOffsets(LATEST) cannot be trusted.
    """
    consumer = ctx.app.consumer
    gauge = ctx.metrics.consumer_lag
    gauge.clear()
    for tp in consumer.assignment():
        if tp.topic != ctx.settings.input_topic:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        if highwater is None:
            continue
        next_offset = faust_compat.next_unprocessed_offset(consumer, tp)
        gauge.labels(topic=tp.topic, partition=str(tp.partition)).set(
            max(0, highwater - next_offset)
        )
