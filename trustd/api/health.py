"""Liveness, readiness and metrics."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request, Response

from trustd import metrics as trustd_metrics
from trustd.api.deps import LOCAL_ADMIN_SCOPE_KEY, BearerDep, Exemption, ServicesDep, exempt
from trustd.api.schemas import Health
from trustd.errors import NotFound, PermissionDenied, Unauthenticated

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, dependencies=[exempt(Exemption.PUBLIC)])
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"description": "Not ready"}},
    dependencies=[exempt(Exemption.PUBLIC)],
)
def readyz(services: ServicesDep) -> Health:
    """The database answers and the CA is loaded."""
    services.ca.check_ready()
    return Health(status="ok")


def _metrics_caller(request: Request, services: ServicesDep, credentials: BearerDep) -> None:
    """Who may read /metrics on the main listener: the admin socket, a scraper presenting
    `metrics_token`, or anyone when that listener is loopback only and neither a token nor
    a metrics listener is configured. Metrics name every CA key and route: not for anyone
    who can reach the API.

    Raises:
        Unauthenticated: a token is configured and was not presented.
        NotFound: metrics are served on the metrics listener instead.
        PermissionDenied: the listener is not loopback and nothing is configured.
    """
    if request.scope.get(LOCAL_ADMIN_SCOPE_KEY):
        return
    settings = services.settings
    if settings.metrics_token is not None:
        expected = settings.metrics_token.get_secret_value()
        given = credentials.credentials if credentials is not None else ""
        if credentials is None or not secrets.compare_digest(given.encode(), expected.encode()):
            raise Unauthenticated("metrics need the metrics token: Authorization: Bearer <token>")
        return
    if settings.metrics_listen is not None:
        raise NotFound(f"metrics are served on the metrics listener ({settings.metrics_listen})")
    if not settings.listens_on_loopback:
        raise PermissionDenied(
            "metrics are not exposed beyond loopback: set metrics_listen or metrics_token"
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        401: {"description": "The metrics token is configured and was not presented"},
        403: {"description": "Not loopback and neither metrics_listen nor metrics_token set"},
        404: {"description": "Metrics are served on the metrics listener"},
    },
    dependencies=[exempt(Exemption.METRICS), Depends(_metrics_caller)],
)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics, aggregated over workers when there are several."""
    services.verdicts.record_lag_metrics()
    return Response(trustd_metrics.render(), media_type=trustd_metrics.CONTENT_TYPE)
