"""Federation relationships (admin): federate with another trust domain, list, show,
refresh its bundle now, end the relationship."""

from __future__ import annotations

from fastapi import APIRouter, Path

from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import FederationPublic, FederationRequest, FederationStatusPublic
from trustd.domain.federation import Federation

router = APIRouter(prefix="/v1/admin/federations", tags=["admin"])
TrustDomainPath = Path(max_length=255, description="The federated trust domain")


def federation_public(federation: Federation, *, with_bundle: bool = False) -> FederationPublic:
    bundle = federation.bundle
    return FederationPublic(
        trust_domain=federation.trust_domain,
        bundle_endpoint_url=federation.bundle_endpoint_url,
        profile=federation.profile,
        endpoint_spiffe_id=federation.endpoint_spiffe_id,
        bundle_sequence=bundle.sequence if bundle else None,
        bundle_refresh_hint=bundle.refresh_hint if bundle else None,
        x509_authorities=len(bundle.x509_authorities) if bundle else 0,
        jwt_authorities=len(bundle.jwt_authorities) if bundle else 0,
        revision=federation.revision,
        created_by=federation.created_by,
        created_at=federation.created_at,
        status=FederationStatusPublic.model_validate(federation.status, from_attributes=True),
        bundle=bundle.to_jwks() if bundle and with_bundle else None,
    )


@router.post(
    "",
    response_model=FederationPublic,
    status_code=201,
    dependencies=[require("admin:federation:write")],
)
def create(body: FederationRequest, principal: AdminDep, services: ServicesDep) -> FederationPublic:
    """Federate with a trust domain: its bundle is fetched from its bundle endpoint (SPIFFE
    Federation §5) from the next leader tick on, and at its refresh hint after that."""
    made = services.federation.create(
        principal,
        body.trust_domain,
        body.bundle_endpoint_url,
        body.profile,
        body.endpoint_spiffe_id,
        body.bundle,
    )
    return federation_public(made)


@router.get(
    "", response_model=list[FederationPublic], dependencies=[require("admin:federation:read")]
)
def list_(principal: AdminDep, services: ServicesDep) -> list[FederationPublic]:
    """Every relationship with its status (last success, last error, next fetch)."""
    return [federation_public(f) for f in services.federation.list()]


@router.get(
    "/{trust_domain}",
    response_model=FederationPublic,
    dependencies=[require("admin:federation:read")],
)
def show(
    principal: AdminDep, services: ServicesDep, trust_domain: str = TrustDomainPath
) -> FederationPublic:
    """One relationship, with the bundle held for it."""
    return federation_public(services.federation.show(trust_domain), with_bundle=True)


@router.post(
    "/{trust_domain}/refresh",
    response_model=FederationPublic,
    dependencies=[require("admin:federation:write")],
)
def refresh(
    principal: AdminDep, services: ServicesDep, trust_domain: str = TrustDomainPath
) -> FederationPublic:
    """Fetch the bundle now; a failure answers 502 with the reason (also kept on the
    status) and leaves the held bundle as it was."""
    return federation_public(services.federation.refresh(principal, trust_domain))


@router.delete(
    "/{trust_domain}",
    response_model=FederationPublic,
    dependencies=[require("admin:federation:delete")],
)
def delete(
    principal: AdminDep, services: ServicesDep, trust_domain: str = TrustDomainPath
) -> FederationPublic:
    """End the relationship: agents stop serving the trust domain's bundle."""
    return federation_public(services.federation.delete(principal, trust_domain))
