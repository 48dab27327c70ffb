"""REST views on the Faust web server: health, model info, example, predict, metrics.

``POST /predict`` scores through the stream's code path (decode, encode, predict, drift,
output) but with a :class:`BatchScorer` of its own, whose metrics and drift window nothing
exports: a request never moves the stream's counters, its latency histogram or its drift
window, so a bad request cannot raise ``scorer_dead_letters_total`` (``HighDeadLetterRate``)
and good ones add no near-zero latencies. Requests have their own figures,
``scorer_http_predict_requests_total{result}`` and ``scorer_http_predict_seconds``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream_worker.runtime.context import WorkerContext
from stream_worker.runtime.faust_compat import broker_connected
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.schema import example_request
from stream_worker.scoring.scorer import BatchScorer, InputRecord
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: ``scorer_http_predict_requests_total{result}`` by response status.
HTTP_PREDICT_RESULT = {200: "ok", 400: "invalid", 503: "unavailable", 500: "error"}


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
        # Set while the registry cannot be asked (down, credentials refused): the model in
        # service keeps serving, so this alone does not make the worker unready.
        "registry_error": ctx.watcher.registry_error,
    }
    return body, 200 if ok else 503


def request_scorer(settings: WorkerSettings) -> BatchScorer:
    """A scorer for ``POST /predict``: the stream's, on metrics and a drift window of its own
    that nothing exports (the stream's figures describe the stream only)."""
    return BatchScorer(
        ScorerMetrics(CollectorRegistry()), settings.max_record_bytes, settings.drift_window
    )


def predict(ctx: WorkerContext, scorer: BatchScorer, body: bytes) -> tuple[dict[str, Any], int]:
    """Score one applicant through the stream's code path with ``scorer`` (request_scorer);
    count the request and its duration in the worker's own ``scorer_http_predict_*``."""
    started = time.perf_counter()
    try:
        answer, status = _predict(ctx, scorer, body)
    except Exception as exc:  # the model cannot score: the client gets a 500, not a hang-up
        log.warning("POST /predict failed: %s", type(exc).__name__)
        answer, status = {"error": "scoring failed", "error_class": type(exc).__name__}, 500
    ctx.metrics.http_predict_requests.labels(result=HTTP_PREDICT_RESULT[status]).inc()
    ctx.metrics.http_predict_seconds.observe(time.perf_counter() - started)
    return answer, status


def _predict(ctx: WorkerContext, scorer: BatchScorer, body: bytes) -> tuple[dict[str, Any], int]:
    model = ctx.watcher.current
    if model is None:
        return {"error": "no model loaded yet"}, 503
    record = InputRecord(key=None, value=body, timestamp=time.time(), topic="http")
    result = scorer.process(model, [record])
    if result.rejections:
        rej = result.rejections[0]
        return {"error": rej.message, "reason": rej.reason, "error_class": rej.error_class}, 400
    if not result.predictions:
        return {"error": "scoring failed"}, 500
    return cast(dict[str, Any], orjson.loads(result.predictions[0].value)), 200


def register(ctx: WorkerContext) -> None:
    app = ctx.app
    scorer = request_scorer(ctx.settings)

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
            body, status = predict(ctx, scorer, await request.read())
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
