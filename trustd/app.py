"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from trustd import __version__
from trustd.api import acme, admin, bundle, health, problems, svid
from trustd.api.middleware import RequestContext
from trustd.services.container import Services, build_services
from trustd.settings import Settings


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """Build the app. The CA is loaded from the database when the app starts; the database
    must be migrated and the CA initialised before (`trustd.bootstrap.initialise`).
    """
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.ca.load()
        await services.bus.start()
        yield
        await services.bus.stop()
        services.engine.dispose()

    app = FastAPI(
        title="trustd",
        version=__version__,
        summary="Workload identities, the CA behind them, and who may talk to whom.",
        lifespan=lifespan,
    )
    app.state.services = services
    problems.install(app)
    app.add_middleware(RequestContext, max_body=settings.max_request_bytes)
    for module in (health, bundle, svid, admin, acme):
        app.include_router(module.router)
    return app
