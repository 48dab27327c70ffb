"""The capture's HTTP endpoints (aiohttp): ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: ``() -> (body, status)``: what /health answers.
HealthCheck = Callable[[], tuple[dict[str, Any], int]]


def build_app(health: HealthCheck, registry: CollectorRegistry) -> web.Application:
    async def get_health(request: web.Request) -> web.Response:
        body, status = health()
        return web.json_response(body, status=status)

    async def get_metrics(request: web.Request) -> web.Response:
        # aiohttp refuses a charset inside content_type=, so set the header as is.
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving on ``host:port``; the caller awaits ``runner.cleanup()`` to stop."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
