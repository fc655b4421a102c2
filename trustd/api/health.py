"""Liveness, readiness and metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector

from trustd.api.deps import Exemption, ServicesDep, exempt
from trustd.api.schemas import Health

router = APIRouter(tags=["health"], dependencies=[exempt(Exemption.PUBLIC)])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "Not ready"}})
def readyz(services: ServicesDep) -> Health:
    """The database answers and the CA is loaded."""
    services.ca.check_ready()
    return Health(status="ok")


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus metrics, aggregated over workers when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = DEFAULT_REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
