"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from trustd import __version__, tracing, web
from trustd.api import (
    acme,
    admin,
    agents,
    audit,
    bundle,
    entries,
    federation,
    flows,
    health,
    nodes,
    opa,
    problems,
    quarantines,
    revocation,
    svid,
    verdicts,
)
from trustd.api import openapi as openapi_document
from trustd.api.middleware import JsonDepthLimit, RequestContext
from trustd.api.wire import MAX_JSON_DEPTH
from trustd.bootstrap import write_bundle_file
from trustd.services.container import Services, build_services
from trustd.settings import Settings
from trustd.web.views import docs


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app. The CA is loaded from the database when the app starts; the database
    must be migrated and the CA initialised before (`trustd.bootstrap.initialise`).
    """
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.ca.load()
        await services.bus.start()
        # CA rotation: the leader ticks, every replica follows bundle changes.
        stop = asyncio.Event()
        loops = [
            # The leader's other duties (replay claims, quarantines past their `until`) run
            # after each tick.
            asyncio.create_task(services.rotation.run_ticker(stop), name="trustd-rotation"),
            # The bundle file clients on this host read follows root rotations.
            asyncio.create_task(
                services.rotation.follow_bundle(stop, lambda: write_bundle_file(services)),
                name="trustd-bundle",
            ),
        ]
        yield
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        await services.bus.stop()
        # Background work holding connections ends before the pool is disposed.
        await asyncio.to_thread(services.acme.close)
        services.engine.dispose()

    app = FastAPI(
        # /docs is served by trustd.web.views.docs from local assets, not FastAPI's CDN page.
        docs_url=None,
        redoc_url=None,
        title="trustd",
        version=__version__,
        summary="Workload identities, the CA behind them, and who may talk to whom.",
        lifespan=lifespan,
        # FastAPI asks on every request whether an OpenTelemetry tracer, meter or logger
        # provider has been set (about 10 us a request, profiled). trustd sets only the
        # tracer provider, in each worker before the app is built (`trustd.server._worker`,
        # `TRUSTD_OTEL_ENDPOINT`); its metrics are Prometheus (`trustd.metrics`), its logs
        # structlog. Said once here, the question costs nothing while tracing is off.
        telemetry={"tracing": tracing.enabled(), "metrics": False, "logs": False},
    )
    app.state.services = services
    problems.install(app)
    # Added innermost first: the size limit applies before the nesting scan reads a body,
    # and both before the hot Data API routes and X509-SVID issuance are answered on
    # their lean paths (`opa.DecisionPath`, `svid.IssuancePath`).
    app.add_middleware(opa.DecisionPath)
    app.add_middleware(svid.IssuancePath)
    app.add_middleware(JsonDepthLimit, max_depth=MAX_JSON_DEPTH)
    app.add_middleware(
        RequestContext, max_body=settings.max_request_bytes, access_log=settings.access_log
    )
    # Routes are matched in this order, one path pattern after another: the ACME resources
    # come first, since one certificate order makes six of their requests (profiled: matching
    # them behind every other router's patterns cost more than their JSON rendering). No
    # path of another module lies under /acme, so the order changes no match.
    modules = (
        acme,
        health,
        bundle,
        svid,
        admin,
        audit,
        entries,
        nodes,
        agents,
        opa,
        revocation,
        quarantines,
        federation,
        flows,
        verdicts,
        web,
    )
    for module in modules:
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=web.STATIC), name="ui-static")
    app.mount("/docs/assets", StaticFiles(directory=docs.ASSETS), name="docs-assets")
    openapi_document.install(app)
    return app
