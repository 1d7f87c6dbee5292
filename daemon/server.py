"""`/metrics`, `/livez` and `/readyz` on one port, served by Starlette under uvicorn.

Live means the process and its event loop answer. Ready means the daemon can do its job:
connected to Kafka and Postgres, partitions assigned or waiting for them, not paused by an auth
failure. When not ready, the body lists every reason, so `kubectl describe` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.metrics import Metrics

# A readiness check returns the reasons the daemon is not ready (empty: ready).
ReadinessCheck = Callable[[], list[str]]


def create_app(metrics: Metrics, readiness: ReadinessCheck) -> Starlette:
    async def metrics_endpoint(request: Request) -> Response:
        # Readiness as of this scrape, not of the last probe: without a kubelet probing
        # /readyz (compose, a plain VM) the gauge would otherwise stay 0 forever.
        metrics.ready.set(0 if readiness() else 1)
        # `?name[]=...` (as prometheus_client's own exporter): only the samples of those names,
        # sample names as exposed (`..._total`, `..._bucket`); a name that matches none gives
        # an empty answer. A tool polling two counters several times a second then costs the
        # daemon a fraction of a full exposition (~3 ms with every histogram).
        names = request.query_params.getlist("name[]")
        registry = metrics.registry.restricted_registry(names) if names else metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def livez(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        reasons = readiness()
        metrics.ready.set(0 if reasons else 1)
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/livez", livez),
            Route("/readyz", readyz),
        ]
    )


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our own event loop: the daemon owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(app: Starlette, port: int, stop: asyncio.Event, host: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's probes and Prometheus reach it from outside
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(), name="http")
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task
