"""REST views on the Faust web server: health, model info, example, predict, metrics."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stream_worker.runtime.context import WorkerContext
from stream_worker.runtime.faust_compat import broker_connected
from stream_worker.scoring.schema import example_request
from stream_worker.scoring.scorer import InputRecord


def health(ctx: WorkerContext) -> tuple[dict[str, Any], int]:
    """200 while the broker is connected and a model serves, else 503; the body says which."""
    broker = broker_connected(ctx.app)
    current = ctx.watcher.current
    ok = broker and current is not None
    body = {
        "status": "ok" if ok else "not ready",
        "broker_connected": broker,
        "model_loaded": current is not None,
        "model_version": current.version if current else None,
        "last_error": ctx.watcher.last_error,
    }
    return body, 200 if ok else 503


def predict(ctx: WorkerContext, body: bytes) -> tuple[dict[str, Any], int]:
    """Score one applicant through the stream's code path."""
    model = ctx.watcher.current
    if model is None:
        return {"error": "no model loaded yet"}, 503
    record = InputRecord(key=None, value=body, timestamp=time.time(), topic="http")
    result = ctx.batch_scorer.process(model, [record])
    if result.rejections:
        rej = result.rejections[0]
        return {"error": rej.message, "reason": rej.reason, "error_class": rej.error_class}, 400
    if not result.predictions:
        return {"error": "scoring failed"}, 500
    return cast(dict[str, Any], orjson.loads(result.predictions[0].value)), 200


def register(ctx: WorkerContext) -> None:
    app = ctx.app

    @app.page("/health")
    class Health(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            body, status = health(ctx)
            return self.json(body, status=status)

    @app.page("/model_info")
    class ModelInfo(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            info = ctx.watcher.info()
            return self.json(info, status=200 if info["loaded"] else 503)

    @app.page("/example_request")
    class ExampleRequest(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            return self.json(example_request())

    @app.page("/predict")
    class Predict(View):  # type: ignore[misc]
        async def post(self, request: Request) -> Response:
            body, status = predict(ctx, await request.read())
            return self.json(body, status=status)

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            from aiohttp import web as aioweb

            # aiohttp refuses a charset inside content_type=, so set the header as is.
            response = aioweb.Response(
                body=generate_latest(ctx.metrics.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )
            return cast(Response, response)
