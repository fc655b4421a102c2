"""Quarantined identities (admin): quarantine, release, list, and one identity's overview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import (
    CertificatePublic,
    IdentityPublic,
    QuarantinePublic,
    QuarantineRequest,
    ReleasePublic,
    ReleaseRequest,
)
from trustd.domain.quarantines import IdentityOverview, Quarantine

router = APIRouter(prefix="/v1/admin/identities", tags=["admin"])


def quarantine_public(quarantine: Quarantine) -> QuarantinePublic:
    return QuarantinePublic.model_validate(quarantine, from_attributes=True)


def identity_public(overview: IdentityOverview) -> IdentityPublic:
    def certificates(rows: tuple[object, ...]) -> list[CertificatePublic]:
        return [CertificatePublic.model_validate(r, from_attributes=True) for r in rows]

    return IdentityPublic(
        spiffe_id=overview.spiffe_id,
        entries=overview.entries,
        svids=certificates(overview.svids),
        revoked=certificates(overview.revoked),
        quarantine=quarantine_public(overview.quarantine) if overview.quarantine else None,
        applied_by=list(overview.applied_by),
    )


@router.post(
    "/quarantine",
    response_model=QuarantinePublic,
    status_code=201,
    dependencies=[require("admin:identity:quarantine")],
)
def quarantine(
    body: QuarantineRequest, principal: AdminDep, services: ServicesDep
) -> QuarantinePublic:
    """Quarantine an identity on every node: the kernel drops its traffic (new and
    established), agents stop serving and minting its SVIDs, until released or `until`."""
    made = services.quarantines.quarantine(principal, body.spiffe_id, body.reason, body.until)
    return quarantine_public(made)


@router.post(
    "/release",
    response_model=ReleasePublic,
    dependencies=[require("admin:identity:quarantine")],
)
def release(body: ReleaseRequest, principal: AdminDep, services: ServicesDep) -> ReleasePublic:
    """Release a quarantined identity: every node lets it back in and mints its SVIDs."""
    released = services.quarantines.release(principal, body.spiffe_id)
    return ReleasePublic(
        quarantine=quarantine_public(released.quarantine),
        released_by=released.released_by,
        released_at=released.released_at,
    )


@router.get(
    "/quarantined",
    response_model=list[QuarantinePublic],
    dependencies=[require("admin:identity:read")],
)
def quarantined(principal: AdminDep, services: ServicesDep) -> list[QuarantinePublic]:
    """The quarantines in force: who, why, until when."""
    return [quarantine_public(q) for q in services.quarantines.list()]


@router.get("", response_model=IdentityPublic, dependencies=[require("admin:identity:read")])
def show(
    principal: AdminDep,
    services: ServicesDep,
    spiffe_id: Annotated[str, Query(max_length=2048)],
) -> IdentityPublic:
    """One identity: its SVIDs, revoked serials, quarantine and the nodes that applied it."""
    return identity_public(services.quarantines.overview(spiffe_id))
