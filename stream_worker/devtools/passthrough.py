"""A Faust pass-through agent: the benchmark's baseline for the framework's per-event cost.

A plain Faust agent that forwards each record's raw value to the output topic, unscored:
the same ``faust_app(settings)`` configuration as the worker, ``stream.take_events(batch_max,
window)`` micro-batches, one awaited ``producer.send`` per record, the batch acked once every
send is delivered. It goes through Faust's ordinary path (its consumer as shipped, an event
per record, the stream's processor chain), which the scoring worker bypasses (it takes the
consumer's messages in bulk and sends record batches, see :mod:`stream_worker.runtime.loop`).
So it measures what Faust costs per event, not a ceiling on what a Faust worker can do:
the scorer can be faster than this agent.

It serves ``GET /health`` (200 once the consumer has partitions) and ``GET /stats`` (records
forwarded so far) on the Faust web server, so the benchmark can wait for it and for the end.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.web import Request, Response, View

from stream_worker.runtime.app import faust_app
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class PassThrough:
    app: faust.App
    forwarded: int = 0

    def has_partitions(self) -> bool:
        try:
            return bool(self.app.consumer.assignment())
        except Exception:  # not started yet
            return False


def create_passthrough(settings: WorkerSettings) -> PassThrough:
    """The app and its one agent; nothing connects until the worker starts."""
    app = faust_app(settings)
    state = PassThrough(app)
    input_topic = app.topic(settings.input_topic, partitions=settings.topic_partitions)
    output = settings.output_topic

    @app.agent(input_topic, name="passthrough")
    async def forward(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, settings.batch_window_seconds):
            pending = [_send(app, output, e.message.key, e.message.value) for e in events]
            # Like the scorer: the batch is acked only once the broker has every record.
            for fut in await asyncio.gather(*pending):
                await fut
            state.forwarded += len(events)

    @app.page("/health")
    class Health(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            ready = state.has_partitions()
            return self.json(
                {"status": "ok" if ready else "not ready", "broker_connected": ready},
                status=200 if ready else 503,
            )

    @app.page("/stats")
    class Stats(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            return self.json({"forwarded": state.forwarded})

    return state


async def _send(app: faust.App, topic: str, key: bytes | None, value: bytes | None) -> Any:
    return await app.producer.send(topic, key, value, None, None, None)


def run_passthrough(settings: WorkerSettings) -> None:
    """Blocks until stopped (SIGINT/SIGTERM). The topics must exist already."""
    from stream_worker.runtime.admin import wait_for_kafka

    wait_for_kafka(settings.kafka_bootstrap_servers, timeout=30, security=settings.kafka_security)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    state = create_passthrough(settings)
    faust.Worker(state.app, loglevel=settings.log_level).execute_from_commandline()
