"""The trust bundle, public: verifiers need it before they hold any credential."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from trustd.api.deps import Exemption, ServicesDep, exempt

router = APIRouter(tags=["bundle"], dependencies=[exempt(Exemption.PUBLIC)])


@router.get(
    "/v1/bundle",
    responses={200: {"content": {"application/json": {}, "application/x-pem-file": {}}}},
)
def get_bundle(services: ServicesDep, format: Literal["jwks", "pem"] = "jwks") -> Response:
    """The SPIFFE bundle (JWKS, SPIFFE Trust Domain and Bundle §4) or the X.509 roots as PEM."""
    bundle = services.ca.state.bundle
    if format == "pem":
        return Response(bundle.to_pem(), media_type="application/x-pem-file")
    return JSONResponse(bundle.to_jwks())
