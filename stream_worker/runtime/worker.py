"""Start a worker process: check the broker, create the topics, run the Faust worker."""

from __future__ import annotations

import logging
from pathlib import Path

import faust

from stream_worker.exceptions import KafkaSecurityError
from stream_worker.runtime.admin import prepare_topics
from stream_worker.runtime.app import build_worker
from stream_worker.runtime.faust_compat import check_versions
from stream_worker.runtime.refused import serve_refusal
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def run_worker(settings: WorkerSettings) -> None:
    """Blocks until the worker is stopped (SIGINT/SIGTERM)."""
    from trainer.registry import configure_http_client

    check_versions()
    # The watcher's client names its store itself; only the HTTP behaviour is process-wide.
    configure_http_client(timeout_seconds=5, retries=0)
    try:
        created = prepare_topics(settings)
    except KafkaSecurityError as exc:
        serve_refusal(settings.web_host, settings.web_port, exc)
        raise
    if created:
        log.info("created topics %s with %d partitions", created, settings.topic_partitions)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    ctx = build_worker(settings)
    worker = faust.Worker(ctx.app, loglevel=settings.log_level)
    try:
        worker.execute_from_commandline()
    finally:
        ctx.watcher.close()
