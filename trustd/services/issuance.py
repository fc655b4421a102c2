"""Issuance of X509-SVIDs, JWT-SVIDs and the server's own serving certificate.

Every certificate is committed to the database before it is handed out; if the commit fails
the caller gets `StoreUnavailable` and the certificate is never seen.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cached_property, lru_cache

from cryptography import x509
from sqlalchemy import Engine, insert
from sqlmodel import Session

from pki.ca import (
    X509SvidParams,
    certificate_pem,
    csr_public_key,
    issue_x509_svid,
    parse_csr,
    serial_hex,
)
from pki.clock import Clock
from pki.jwt_svid import JwtSvid, mint_jwt_svid
from pki.keys import PrivateKey, generate_private_key
from pki.spiffe_id import SpiffeId
from trustd import metrics
from trustd.domain.certificates import CertificateKind, CertificateStatus
from trustd.errors import InvalidRequest
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import SYSTEM_ACTOR, CertificateAuthority, crl_url
from trustd.settings import Settings
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction
from trustd.store.group_commit import GroupCommit, Insertion

SERVER_PATH = "/trustd/server"
# A prepared Core insert: issuance is the hot path and the ORM's unit of work costs more than
# the insert itself.
_INSERT_CERTIFICATE = insert(IssuedCertificate.metadata.tables["issued_certificates"])


_AUDIT_OBJECT = {
    CertificateKind.X509_SVID: "x509",
    CertificateKind.NODE_SVID: "node",
    CertificateKind.SERVING: "serving",
}


@dataclass(frozen=True)
class IssuedX509:
    certificate: x509.Certificate
    # Intermediates from the issuing CA up to, excluding, the root (X509-SVID §5.3).
    intermediates: tuple[x509.Certificate, ...]
    spiffe_id: SpiffeId
    issuer_kid: str

    @cached_property
    def pem(self) -> str:
        """The certificate as PEM: stored with the record and handed out."""
        return certificate_pem(self.certificate)


@lru_cache(maxsize=16)
def ca_pems(certificates: tuple[x509.Certificate, ...]) -> tuple[str, ...]:
    """PEM of CA certificates (chains, bundles): they change only when the CA rotates, so
    they are not encoded again for every SVID handed out.
    """
    return tuple(certificate_pem(c) for c in certificates)


class Issuer:
    """Signs credentials with the loaded CA and records them."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ca: CertificateAuthority,
        clock: Clock,
        audit: AuditLog,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._ca = ca
        self._clock = clock
        self._audit = audit
        self._group = GroupCommit(engine)

    def _ttl(
        self, requested: timedelta | None, default: timedelta, ceiling: timedelta
    ) -> timedelta:
        ttl = requested or default
        if ttl <= timedelta(0):
            raise InvalidRequest("ttl must be positive")
        if ttl > ceiling:
            raise InvalidRequest(
                f"ttl {int(ttl.total_seconds())}s exceeds the maximum of "
                f"{int(ceiling.total_seconds())}s"
            )
        return ttl

    def _spiffe_id(self, value: str) -> SpiffeId:
        spiffe_id = SpiffeId.parse(value)
        spiffe_id.require_member_of(self._settings.trust_domain_obj)
        return spiffe_id

    async def issue_x509_svid(
        self,
        principal: Principal,
        spiffe_id: str,
        csr: bytes,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
    ) -> IssuedX509:
        """Sign the CSR's key as `spiffe_id`; identity, lifetime and DNS names come from the
        authorised request, never from the CSR (X509-SVID §4). Returns once the certificate
        is committed, in a transaction it may share with concurrent issuances (group commit).

        Raises:
            InvalidCsr, WeakKey, InvalidSpiffeId, InvalidRequest: bad input, nothing issued.
            StoreUnavailable: the certificate could not be recorded, nothing issued.
        """
        started = time.perf_counter()
        kind = CertificateKind.X509_SVID
        try:
            sid = self._spiffe_id(spiffe_id)
            lifetime = self._ttl(
                ttl, self._settings.x509_svid_ttl, self._settings.x509_svid_max_ttl
            )
            request = parse_csr(csr)
            params = X509SvidParams(
                spiffe_id=sid,
                public_key=csr_public_key(request),
                ttl=lifetime,
                dns_names=tuple(dns_names),
            )
            issued = self.sign(params)
            await self._group.insert(self.rows(principal.name, issued, kind))
        except Exception:
            metrics.ISSUANCE_FAILURES.labels(kind).inc()
            raise
        metrics.SVIDS_ISSUED.labels(kind).inc()
        metrics.ISSUANCE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        return issued

    def sign(self, params: X509SvidParams) -> IssuedX509:
        """Sign an X509-SVID with the active authority. Nothing is recorded yet: the caller
        must `record` it in the transaction that commits before the SVID is handed out.
        """
        state = self._ca.state
        if self._settings.svid_crl_distribution_point:
            # RFC 5280 §4.2.1.13: point relying parties at the CRL of the issuing key.
            params = replace(params, crl_url=crl_url(self._settings, state.authority_kid))
        certificate = issue_x509_svid(state.authority, params, self._clock)
        return IssuedX509(
            certificate=certificate,
            intermediates=state.intermediates,
            issuer_kid=state.authority_kid,
            spiffe_id=params.spiffe_id,
        )

    def record(
        self, session: Session, actor: str, issued: IssuedX509, kind: CertificateKind
    ) -> None:
        """Add the certificate row and its audit event to `session`."""
        connection = session.connection()
        for statement, values in self.rows(actor, issued, kind):
            connection.execute(statement, values)
        metrics.SVIDS_ISSUED.labels(kind).inc()

    def rows(self, actor: str, issued: IssuedX509, kind: CertificateKind) -> list[Insertion]:
        """The certificate row and its audit event, to insert in one transaction."""
        certificate = issued.certificate
        serial = serial_hex(certificate)
        return [
            (
                _INSERT_CERTIFICATE,
                {
                    "serial": serial,
                    "kind": kind,
                    "spiffe_id": str(issued.spiffe_id),
                    "issuer_kid": issued.issuer_kid,
                    "status": CertificateStatus.VALID,
                    "not_before": certificate.not_valid_before_utc,
                    "not_after": certificate.not_valid_after_utc,
                    "certificate_pem": issued.pem,
                    "requested_by": actor,
                    "created_at": self._clock.now(),
                },
            ),
            self._audit.row(
                actor,
                f"svid:{_AUDIT_OBJECT[kind]}:issued",
                target=str(issued.spiffe_id),
                details={
                    "serial": serial,
                    "not_after": certificate.not_valid_after_utc.isoformat(),
                },
            ),
        ]

    def _sign_and_record(
        self, actor: str, params: X509SvidParams, kind: CertificateKind
    ) -> IssuedX509:
        issued = self.sign(params)
        with transaction(self._engine) as session:
            self.record(session, actor, issued, kind)
        return issued

    def mint_jwt_svid(
        self,
        principal: Principal,
        spiffe_id: str,
        audience: Sequence[str],
        ttl: timedelta | None = None,
    ) -> JwtSvid:
        """Mint a JWT-SVID. The token is not stored; its issuance is audited (without the token)
        and committed before it is returned.

        Raises:
            InvalidJwt: empty audience. InvalidSpiffeId, InvalidRequest: bad input.
            StoreUnavailable: the audit row could not be recorded, nothing returned.
        """
        started = time.perf_counter()
        kind = "jwt-svid"
        try:
            sid = self._spiffe_id(spiffe_id)
            lifetime = self._ttl(ttl, self._settings.jwt_svid_ttl, self._settings.jwt_svid_max_ttl)
            signer = self._ca.state.jwt_signer
            svid = mint_jwt_svid(signer.key, signer.kid, sid, audience, lifetime, self._clock)
            with transaction(self._engine) as session:
                self._audit.record(
                    session,
                    principal.name,
                    "svid:jwt:issued",
                    target=str(sid),
                    details={
                        "audience": list(svid.audience),
                        "kid": svid.kid,
                        "expires_at": svid.expiry.isoformat(),
                    },
                )
        except Exception:
            metrics.ISSUANCE_FAILURES.labels(kind).inc()
            raise
        metrics.SVIDS_ISSUED.labels(kind).inc()
        metrics.ISSUANCE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        return svid

    def issue_serving_certificate(
        self, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> tuple[IssuedX509, PrivateKey]:
        """The TLS certificate trustd serves with: an X509-SVID for `spiffe://<td>/trustd/server`
        that also names the host, so both SPIFFE-aware and plain HTTPS clients can verify it.
        """
        key = generate_private_key(self._settings.key_type)
        params = X509SvidParams(
            spiffe_id=SpiffeId.from_parts(self._settings.trust_domain_obj, SERVER_PATH),
            public_key=key.public_key(),
            ttl=self._settings.serving_cert_ttl,
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ipaddress.ip_address(ip) for ip in ip_addresses),
        )
        issued = self._sign_and_record(SYSTEM_ACTOR, params, CertificateKind.SERVING)
        return issued, key
