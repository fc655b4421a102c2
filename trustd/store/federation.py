"""Federation relationships: one row per foreign trust domain, with its last good bundle
(as the JWKS document) and the status of the last fetches."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from pki.bundle import TrustBundle
from pki.federation import BundleEndpointProfile
from pki.spiffe_id import TrustDomain
from trustd.domain.federation import MAX_ERROR, Federation, FederationStatus
from trustd.store.types import UTCDateTime


class FederationRelationship(SQLModel, table=True):
    """A foreign trust domain whose bundle this deployment fetches."""

    __tablename__ = "federations"

    trust_domain: str = Field(primary_key=True, max_length=255)
    bundle_endpoint_url: str = Field(max_length=2048)
    profile: str = Field(max_length=32)
    endpoint_spiffe_id: str | None = Field(default=None, max_length=2048)
    # The last good bundle as its SPIFFE JWKS document (NULL: none yet).
    bundle_jwks: str | None = None
    bundle_sequence: int = 0
    revision: int = Field(default=0, index=True)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, max_length=MAX_ERROR)
    last_error_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    failures: int = 0
    next_refresh_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


def _federation(row: FederationRelationship) -> Federation:
    bundle = None
    if row.bundle_jwks is not None:
        bundle = TrustBundle.from_jwks(
            row.bundle_jwks.encode(), TrustDomain.parse(row.trust_domain)
        )
    return Federation(
        trust_domain=row.trust_domain,
        bundle_endpoint_url=row.bundle_endpoint_url,
        profile=BundleEndpointProfile(row.profile),
        endpoint_spiffe_id=row.endpoint_spiffe_id,
        bundle=bundle,
        revision=row.revision,
        created_by=row.created_by,
        created_at=row.created_at,
        status=FederationStatus(
            last_success_at=row.last_success_at,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
            failures=row.failures,
            next_refresh_at=row.next_refresh_at,
        ),
    )


def create_federation(session: Session, federation: Federation) -> None:
    """Add *federation*.

    Raises:
        IntegrityError: at flush, when the trust domain is federated already.
    """
    status = federation.status
    session.add(
        FederationRelationship(
            trust_domain=federation.trust_domain,
            bundle_endpoint_url=federation.bundle_endpoint_url,
            profile=federation.profile.value,
            endpoint_spiffe_id=federation.endpoint_spiffe_id,
            bundle_jwks=federation.bundle.to_json() if federation.bundle else None,
            bundle_sequence=federation.bundle.sequence if federation.bundle else 0,
            revision=federation.revision,
            created_by=federation.created_by,
            created_at=federation.created_at,
            next_refresh_at=status.next_refresh_at,
        )
    )
    session.flush()


def fetch_federation(
    session: Session, trust_domain: str, *, for_update: bool = False
) -> Federation | None:
    """The relationship with *trust_domain* (None: there is none)."""
    row = session.get(FederationRelationship, trust_domain, with_for_update=for_update)
    return _federation(row) if row is not None else None


def list_federations(session: Session) -> list[Federation]:
    """Every relationship, by trust domain."""
    query = select(FederationRelationship).order_by(col(FederationRelationship.trust_domain))
    return [_federation(row) for row in session.exec(query)]


def list_due_federations(session: Session, now: datetime) -> list[str]:
    """The trust domains whose next fetch is due at *now*."""
    query = (
        select(FederationRelationship.trust_domain)
        .where(col(FederationRelationship.next_refresh_at) <= now)
        .order_by(col(FederationRelationship.next_refresh_at))
    )
    return list(session.exec(query).all())


def list_federated_bundles(session: Session, trust_domains: list[str]) -> list[Federation]:
    """The relationships of *trust_domains* that hold a bundle."""
    if not trust_domains:
        return []
    query = (
        select(FederationRelationship)
        .where(col(FederationRelationship.trust_domain).in_(sorted(set(trust_domains))))
        .where(col(FederationRelationship.bundle_jwks).is_not(None))
        .order_by(col(FederationRelationship.trust_domain))
    )
    return [_federation(row) for row in session.exec(query)]


def update_federation_bundle(
    session: Session, trust_domain: str, bundle: TrustBundle, revision: int
) -> None:
    """Replace the held bundle of *trust_domain*, as of sync *revision*."""
    row = session.get(FederationRelationship, trust_domain)
    if row is None:
        return
    row.bundle_jwks = bundle.to_json()
    row.bundle_sequence = bundle.sequence
    row.revision = revision
    session.add(row)
    session.flush()


def update_federation_status(session: Session, trust_domain: str, status: FederationStatus) -> None:
    """Record how the last fetch of *trust_domain* went."""
    row = session.get(FederationRelationship, trust_domain)
    if row is None:
        return
    row.last_success_at = status.last_success_at
    row.last_error = status.last_error[:MAX_ERROR] if status.last_error else None
    row.last_error_at = status.last_error_at
    row.failures = status.failures
    row.next_refresh_at = status.next_refresh_at
    session.add(row)
    session.flush()


def delete_federation(session: Session, trust_domain: str) -> bool:
    """End the relationship with *trust_domain*; returns whether there was one."""
    row = session.get(FederationRelationship, trust_domain)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
