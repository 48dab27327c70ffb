"""REST views on the Faust web server: health, model info, example, predict, metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_worker.scoring.schema import example_request
from stream_worker.scoring.scorer import InputRecord

if TYPE_CHECKING:
    from stream_worker.runtime.app import Scorer


def register(scorer: Scorer) -> None:
    app = scorer.app

    @app.page("/health")
    class Health(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            broker = _broker_connected(scorer)
            loaded = scorer.watcher.ready
            body = {
                "status": "ok" if (broker and loaded) else "not ready",
                "broker_connected": broker,
                "model_loaded": loaded,
                "model_version": scorer.watcher.current.version if scorer.watcher.current else None,
                "last_error": scorer.watcher.last_error,
            }
            return self.json(body, status=200 if (broker and loaded) else 503)

    @app.page("/model_info")
    class ModelInfo(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            info = scorer.watcher.info()
            return self.json(info, status=200 if info["loaded"] else 503)

    @app.page("/example_request")
    class ExampleRequest(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            return self.json(example_request())

    @app.page("/predict")
    class Predict(View):  # type: ignore[misc]
        async def post(self, request: Request) -> Response:
            model = scorer.watcher.current
            if model is None:
                return self.json({"error": "no model loaded yet"}, status=503)
            body = await request.read()
            record = InputRecord(key=None, value=body, timestamp=time.time(), topic="http")
            result = scorer.batch_scorer.process(model, [record])
            if result.rejections:
                rej = result.rejections[0]
                return self.json(
                    {"error": rej.message, "reason": rej.reason, "error_class": rej.error_class},
                    status=400,
                )
            if not result.predictions:
                return self.json({"error": "scoring failed"}, status=500)
            payload: Any = orjson.loads(result.predictions[0].value)
            return self.json(payload)

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            from aiohttp import web as aioweb

            # aiohttp refuses a charset inside content_type=, so set the header as is.
            response = aioweb.Response(
                body=generate_latest(scorer.metrics.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )
            return cast(Response, response)


def _broker_connected(scorer: Scorer) -> bool:
    """True while the consumer's Kafka client holds an open connection to a broker.

    A worker with no partitions assigned (more workers than partitions) is still healthy,
    so assignment alone cannot answer this; Faust exposes no public connection state, hence
    the look at its aiokafka client.
    """
    try:
        client = scorer.app.consumer._thread._consumer._client  # type: ignore[attr-defined]
        return any(conn.connected() for conn in client._conns.values())
    except AttributeError:
        return bool(scorer.app.consumer.assignment())
