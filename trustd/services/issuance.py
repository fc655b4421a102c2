"""The one issuance pipeline: X509-SVIDs (workloads, nodes), the server's own serving
certificate, JWT-SVIDs and (experimental) WIT-SVIDs.

Every X.509 credential goes the same way: request -> lifetime (checked here and nowhere
else) -> params -> template, sign, validate (`pki.x509_svid.issue_x509_svid`) -> record (the
certificate row and its audit event, through the group commit or in the caller's
transaction) -> metrics -> returned. Nothing is handed out before its record has
committed; if the commit fails the caller gets `StoreUnavailable` and the certificate is
never seen.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, event
from sqlmodel import Session

from pki.ca import certificate_pem, serial_hex
from pki.clock import Clock
from pki.csr import csr_public_key, parse_csr
from pki.errors import TrustdError, WeakKey
from pki.jwt_svid import JwtSvid, mint_jwt_svid
from pki.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    describe_key,
    generate_private_key,
    key_type_of,
)
from pki.spiffe_id import SpiffeId
from pki.wit_svid import WitSvid, mint_wit_svid
from pki.x509_svid import X509SvidParams, issue_x509_svid
from trustd import metrics, tracing
from trustd.domain.certificates import CertificateKind, IssuedX509
from trustd.errors import FeatureDisabled, InvalidRequest, NotReady, ReservedSpiffeId
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import SYSTEM_ACTOR, CertificateAuthority, crl_url
from trustd.settings import Settings
from trustd.store.certificates import certificate_insertion
from trustd.store.db import transaction
from trustd.store.group_commit import GroupCommit, Insertion, create_rows

__all__ = [
    "AGENT_PATH",
    "JWT_SVID",
    "SERVER_PATH",
    "WIT_SVID",
    "CredentialKind",
    "IssuanceRequest",
    "IssuedX509",
    "Issuer",
    "ServingCredential",
    "ca_pems",
    "lifetime",
    "require_unreserved",
]

SERVER_PATH = "/trustd/server"
AGENT_PATH = "/trustd/agent"


def require_unreserved(spiffe_id: SpiffeId) -> None:
    """Refuse trustd's own identities for anything but what trustd issues itself: its server
    (the serving certificate agents pin) and its agents (node SVIDs after attestation). An
    X509-SVID, JWT-SVID or registration entry naming one would let its holder impersonate
    the server to agents or a node to the server.

    Raises:
        ReservedSpiffeId: `spiffe_id` is the server's or under the agents' path.
    """
    path = spiffe_id.path
    if path in (SERVER_PATH, AGENT_PATH) or path.startswith(AGENT_PATH + "/"):
        raise ReservedSpiffeId(
            f"{spiffe_id} is reserved for trustd's own server and agents", spiffe_id=str(spiffe_id)
        )


# The metric labels and lifetime classes of JWT- and WIT-SVIDs; X.509 credentials use
# `CertificateKind`.
JWT_SVID: Final = "jwt-svid"
WIT_SVID: Final = "wit-svid"
CredentialKind = CertificateKind | Literal["jwt-svid", "wit-svid"]

_AUDIT_OBJECT = {
    CertificateKind.X509_SVID: "x509",
    CertificateKind.NODE_SVID: "node",
    CertificateKind.SERVING: "serving",
}


def _limits(settings: Settings, kind: CredentialKind) -> tuple[timedelta, timedelta]:
    """(default, ceiling) of a credential kind's lifetime."""
    if kind == JWT_SVID:
        return settings.jwt_svid_ttl, settings.jwt_svid_max_ttl
    if kind == WIT_SVID:
        return settings.wit_svid_ttl, settings.wit_svid_max_ttl
    if kind == CertificateKind.X509_SVID:
        return settings.x509_svid_ttl, settings.x509_svid_max_ttl
    if kind == CertificateKind.NODE_SVID:
        return settings.node_svid_ttl, settings.node_svid_ttl
    return settings.serving_cert_ttl, settings.serving_cert_ttl


def lifetime(settings: Settings, kind: CredentialKind, requested: timedelta | None) -> timedelta:
    """The lifetime a credential of `kind` gets: `requested`, or the kind's default when
    None. The one place a lifetime is checked against the configured ceilings (entries are
    checked with it when they are stored, requests when they are issued).

    Raises:
        InvalidRequest: `requested` is not positive or exceeds the kind's maximum.
    """
    default, ceiling = _limits(settings, kind)
    ttl = default if requested is None else requested
    if ttl <= timedelta(0):
        raise InvalidRequest("ttl must be positive")
    if ttl > ceiling:
        raise InvalidRequest(
            f"ttl {int(ttl.total_seconds())}s exceeds the maximum of "
            f"{int(ceiling.total_seconds())}s"
        )
    return ttl


@dataclass(frozen=True)
class IssuanceRequest:
    """What to issue: an X.509 credential of `kind` naming `spiffe_id`, for the key of
    `csr` (which only proves possession: its subject and names are ignored, X509-SVID §4)
    or for `public_key`. `ttl` None means the kind's default; `actor` is who asked (the
    admin principal, the node, `system:trustd`), recorded with the certificate.
    """

    kind: CertificateKind
    spiffe_id: SpiffeId | str
    actor: str
    csr: bytes | None = None
    public_key: PublicKey | None = None
    ttl: timedelta | None = None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    # The key type the entry asks for (`Entry.key_type`): the CSR's key must be of it, and
    # only then may it be ML-DSA. None: any allowed classical key.
    key_type: KeyType | None = None

    def __post_init__(self) -> None:
        if (self.csr is None) == (self.public_key is None):
            raise ValueError("an issuance request names its key by exactly one of csr, public_key")


@lru_cache(maxsize=16)
def ca_pems(certificates: tuple[x509.Certificate, ...]) -> tuple[str, ...]:
    """PEM of CA certificates (chains, bundles): they change only when the CA rotates, so
    they are not encoded again for every SVID handed out.
    """
    return tuple(certificate_pem(c) for c in certificates)


class Issuer:
    """Signs credentials with the loaded CA and records them (the issuance pipeline)."""

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

    # -- the pipeline --------------------------------------------------------------------

    @tracing.traced("trustd.issuance")
    async def issue(self, request: IssuanceRequest) -> IssuedX509:
        """Issue what `request` asks for and return it once its record has committed, in a
        transaction it may share with concurrent issuances (group commit).

        Raises:
            InvalidCsr, WeakKey, InvalidSpiffeId, InvalidSvidParams, InvalidRequest: bad
                input, nothing issued.
            StoreUnavailable: the certificate could not be recorded, nothing issued.
        """
        started = time.perf_counter()
        try:
            issued = self.sign(self.params(request))
            await self._group.insert(self.rows(request.actor, issued, request.kind))
        except Exception:
            metrics.ISSUANCE_FAILURES.labels(request.kind).inc()
            raise
        self._issued(request.kind, started)
        return issued

    @tracing.traced("trustd.issuance")
    def issue_in(self, session: Session, request: IssuanceRequest) -> IssuedX509:
        """Issue what `request` asks for and record it in the caller's `session`, for callers
        whose own rows must commit together with the certificate (node attestation and
        renewal). The caller must not hand the certificate out before `session` commits.

        Raises:
            As `issue`, except that recording failures surface at the caller's commit.
        """
        started = time.perf_counter()
        try:
            issued = self.sign(self.params(request))
            create_rows(session, self.rows(request.actor, issued, request.kind))
        except Exception:
            metrics.ISSUANCE_FAILURES.labels(request.kind).inc()
            raise
        self._issued_on_commit(session, [request.kind], started)
        return issued

    def issue_all_in(
        self, session: Session, requests: Sequence[IssuanceRequest]
    ) -> list[IssuedX509 | TrustdError]:
        """Issue each of `requests` and record all that could be issued in the caller's
        `session`, in one insert per table (an agent renewing its workloads' SVIDs). A
        request with bad input is refused alone: its place in the result holds the error.

        Raises:
            Exception: the records could not be added to `session` (none is).
        """
        started = time.perf_counter()
        outcomes: list[IssuedX509 | TrustdError] = []
        rows: list[Insertion] = []
        for request in requests:
            try:
                issued = self.sign(self.params(request))
            except TrustdError as exc:
                metrics.ISSUANCE_FAILURES.labels(request.kind).inc()
                outcomes.append(exc)
                continue
            outcomes.append(issued)
            rows.extend(self.rows(request.actor, issued, request.kind))
        try:
            create_rows(session, rows)
        except Exception:
            for request, outcome in zip(requests, outcomes, strict=True):
                if isinstance(outcome, IssuedX509):
                    metrics.ISSUANCE_FAILURES.labels(request.kind).inc()
            raise
        self._issued_on_commit(
            session,
            [r.kind for r, o in zip(requests, outcomes, strict=True) if isinstance(o, IssuedX509)],
            started,
        )
        return outcomes

    def params(self, request: IssuanceRequest) -> X509SvidParams:
        """What `pki.x509_svid` signs for `request`: the SPIFFE ID checked to be in this trust
        domain, the key taken from the CSR, the lifetime checked (`lifetime`).

        Raises:
            InvalidCsr, WeakKey, InvalidSpiffeId, InvalidSvidParams, InvalidRequest.
        """
        spiffe_id = request.spiffe_id
        if isinstance(spiffe_id, str):
            spiffe_id = SpiffeId.parse(spiffe_id)
        spiffe_id.require_member_of(self._settings.trust_domain_obj)
        if request.kind == CertificateKind.X509_SVID:
            # Node SVIDs and the serving certificate are the only credentials for these.
            require_unreserved(spiffe_id)
        ttl = lifetime(self._settings, request.kind, request.ttl)
        wanted = request.key_type
        if request.csr is not None:
            allow_ml_dsa = wanted is not None and wanted.post_quantum
            public_key = csr_public_key(parse_csr(request.csr, allow_ml_dsa=allow_ml_dsa))
        else:
            assert request.public_key is not None
            public_key = request.public_key
        if wanted is not None and key_type_of(public_key) is not wanted:
            raise WeakKey(
                f"the entry asks for a {wanted} key, the CSR holds {describe_key(public_key)}: "
                f"make the workload key with --key-type {wanted}",
                key_type=describe_key(public_key),
            )
        return X509SvidParams(
            spiffe_id=spiffe_id,
            public_key=public_key,
            ttl=ttl,
            dns_names=request.dns_names,
            ip_addresses=tuple(ipaddress.ip_address(ip) for ip in request.ip_addresses),
        )

    def _issued(self, kind: CredentialKind, started: float) -> None:
        # One label scheme for every credential: the kind (`CertificateKind` or `jwt-svid`).
        metrics.SVIDS_ISSUED.labels(kind).inc()
        metrics.ISSUANCE_SECONDS.labels(kind).observe(time.perf_counter() - started)

    def _issued_on_commit(
        self, session: Session, kinds: Sequence[CredentialKind], started: float
    ) -> None:
        """Count credentials recorded in the caller's `session` once it commits: one whose
        transaction rolls back (an ACME finalize that lost its compare-and-set, an
        attestation refused after signing) was never issued."""
        if not kinds:
            return

        def committed(_: Session) -> None:
            for kind in kinds:
                self._issued(kind, started)

        event.listen(session, "after_commit", committed, once=True)

    # -- the steps, for callers that batch their own transaction -------------------------

    def sign(self, params: X509SvidParams) -> IssuedX509:
        """Sign an X509-SVID with the active authority. Nothing is recorded yet: the caller
        must `record` it in the transaction that commits before the SVID is handed out.
        """
        # The chain of the leaf key's kind: an ML-DSA key under its own level's ML-DSA
        # chain, any classical key under the classical one (`pki.keys.ca_chain`).
        chain = self._ca.state.chain_for(params.public_key)
        if self._settings.svid_crl_distribution_point:
            # RFC 5280 §4.2.1.13: point relying parties at the CRL of the issuing key.
            params = replace(params, crl_url=crl_url(self._settings, chain.authority_kid))
        certificate = issue_x509_svid(chain.authority, params, self._clock)
        return IssuedX509(
            certificate=certificate,
            intermediates=chain.intermediates,
            issuer_kid=chain.authority_kid,
            spiffe_id=params.spiffe_id,
        )

    def record_certificate(
        self,
        session: Session,
        *,
        certificate: x509.Certificate,
        kind: CertificateKind,
        issuer_kid: str,
        actor: str,
        started: float,
        audit_action: str,
        audit_target: str,
        audit_details: dict[str, Any],
    ) -> None:
        """Record a certificate signed by a profile other than the X509-SVID one (ACME's TLS
        server certificates) in the caller's `session`, with its audit event and, once
        `session` commits, the same metrics as every issuance. The caller must not hand it
        out before `session` commits.
        """
        now = self._clock.now()
        create_rows(
            session,
            [
                certificate_insertion(
                    serial=serial_hex(certificate),
                    kind=kind,
                    spiffe_id=None,
                    issuer_kid=issuer_kid,
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    certificate_pem=certificate_pem(certificate),
                    requested_by=actor,
                    created_at=now,
                ),
                self._audit.row(actor, audit_action, target=audit_target, details=audit_details),
            ],
        )
        self._issued_on_commit(session, [kind], started)

    def record(
        self, session: Session, actor: str, issued: IssuedX509, kind: CertificateKind
    ) -> None:
        """Add the certificate row and its audit event to `session`, counted once it
        commits."""
        create_rows(session, self.rows(actor, issued, kind))
        self._issued_on_commit(session, [kind], time.perf_counter())

    def rows(self, actor: str, issued: IssuedX509, kind: CertificateKind) -> list[Insertion]:
        """The certificate row and its audit event, to insert in one transaction."""
        certificate = issued.certificate
        serial = serial_hex(certificate)
        return [
            certificate_insertion(
                serial=serial,
                kind=kind,
                spiffe_id=str(issued.spiffe_id),
                issuer_kid=issued.issuer_kid,
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                certificate_pem=issued.pem,
                requested_by=actor,
                created_at=self._clock.now(),
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

    # -- entry points --------------------------------------------------------------------

    async def issue_x509_svid(
        self,
        principal: Principal,
        spiffe_id: str,
        csr: bytes,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        *,
        key_type: KeyType | None = None,
    ) -> IssuedX509:
        """Sign the CSR's key as `spiffe_id` for an administrator (`issue` with an
        `x509-svid` request): identity, lifetime and DNS names come from the authorised
        request, never from the CSR (X509-SVID §4); with `key_type`, the CSR must hold
        such a key (the only way an ML-DSA one is signed).

        Raises:
            As `issue`.
        """
        return await self.issue(
            IssuanceRequest(
                kind=CertificateKind.X509_SVID,
                spiffe_id=spiffe_id,
                actor=principal.name,
                csr=csr,
                ttl=ttl,
                dns_names=tuple(dns_names),
                key_type=key_type,
            )
        )

    def issue_serving_certificate(
        self, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> tuple[IssuedX509, PrivateKey]:
        """The TLS certificate trustd serves with: an X509-SVID for `spiffe://<td>/trustd/server`
        that also names the host, so both SPIFFE-aware and plain HTTPS clients can verify it.
        Recorded in a transaction of its own (it is issued at start-up and renewal, off the
        request path).

        Raises:
            InvalidSvidParams: a name or address is unusable. StoreUnavailable: not recorded.
        """
        # On the chain agents' Python ssl verifies (`Settings.tls_key_type`).
        key = generate_private_key(self._settings.tls_key_type)
        request = IssuanceRequest(
            kind=CertificateKind.SERVING,
            spiffe_id=SpiffeId.from_parts(self._settings.trust_domain_obj, SERVER_PATH),
            actor=SYSTEM_ACTOR,
            public_key=key.public_key(),
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ip_addresses),
        )
        with transaction(self._engine) as session:
            issued = self.issue_in(session, request)
        return issued, key

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
        try:
            sid = SpiffeId.parse(spiffe_id)
            sid.require_member_of(self._settings.trust_domain_obj)
            require_unreserved(sid)
            ttl = lifetime(self._settings, JWT_SVID, ttl)
            signer = self._ca.state.jwt_signer
            svid = mint_jwt_svid(signer.key, signer.kid, sid, audience, ttl, self._clock)
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
            metrics.ISSUANCE_FAILURES.labels(JWT_SVID).inc()
            raise
        self._issued(JWT_SVID, started)
        return svid

    def mint_wit_svid(
        self,
        actor: str,
        spiffe_id: str,
        workload_key: PublicKey | Mapping[str, Any],
        ttl: timedelta | None = None,
        details: Mapping[str, object] | None = None,
    ) -> WitSvid:
        """Mint a WIT-SVID binding *workload_key* (a public key or its JWK, with ``alg``) to
        *spiffe_id*, signed by the WIT-SVID key. Like JWT-SVIDs the token is not stored: its
        issuance is audited (kid, jti, expiry and the caller's *details*; never the token)
        and committed before it is returned.

        Raises:
            FeatureDisabled: `wit_svid` is off. NotReady: no WIT-SVID key is loaded yet.
            InvalidWit, WeakKey: the workload key is refused. InvalidSpiffeId,
                InvalidRequest: bad input.
            StoreUnavailable: the audit row could not be recorded, nothing returned.
        """
        started = time.perf_counter()
        try:
            if not self._settings.wit_svid:
                raise FeatureDisabled(
                    "WIT-SVIDs are off on this server (experimental: TRUSTD_WIT_SVID=true)"
                )
            sid = SpiffeId.parse(spiffe_id)
            sid.require_member_of(self._settings.trust_domain_obj)
            require_unreserved(sid)
            ttl = lifetime(self._settings, WIT_SVID, ttl)
            signer = self._ca.state.wit_signer
            if signer is None:
                raise NotReady("no WIT-SVID signing key is loaded yet")
            svid = mint_wit_svid(signer.key, signer.kid, sid, workload_key, ttl, self._clock)
            with transaction(self._engine) as session:
                self._audit.record(
                    session,
                    actor,
                    "svid:wit:issued",
                    target=str(sid),
                    details={
                        **(details or {}),
                        "kid": svid.kid,
                        # WIT-SVID §3.3: the jti lets a validator's audit event be matched
                        # with this one.
                        "jti": svid.jti,
                        "expires_at": svid.expiry.isoformat(),
                    },
                )
        except Exception:
            metrics.ISSUANCE_FAILURES.labels(WIT_SVID).inc()
            raise
        self._issued(WIT_SVID, started)
        return svid


@dataclass(frozen=True)
class ServingCertificate:
    """One serving certificate and its key, as held in memory (never written to disk)."""

    issued: IssuedX509
    key: PrivateKey
    # Half its life: renewed then, as every SVID (SPIRE's rotation threshold).
    renew_at: datetime


class ServingCredential:
    """The server's own TLS credential, owned by the pipeline like any SVID: issued
    (`Issuer.issue_serving_certificate`, recorded and audited), re-issued at half its life
    and whenever the authority that signed it is no longer the active one, and loaded into
    every TLS context that presents it.

    Following the active authority is what keeps the server reachable through a rotation:
    an intermediate is activated before its predecessor can be tainted and revoked
    (`pki.rotation.check_transition`), so a serving certificate re-issued at activation is
    under the new authority before the old one leaves the bundle (Trust Domain and Bundle
    §4.1: relying parties verify against the bundle only).
    """

    def __init__(self, settings: Settings, issuer: Issuer, ca: CertificateAuthority, clock: Clock):
        self._settings = settings
        self._issuer = issuer
        self._ca = ca
        self._clock = clock
        self._current: ServingCertificate | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> ServingCertificate | None:
        return self._current

    def names(self) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses the certificate names: localhost, the configured
        server names and the listen host."""
        s = self._settings
        names = ["localhost", *s.server_names]
        ips = ["127.0.0.1", "::1"]
        try:
            ipaddress.ip_address(s.host)
            if s.host not in ips and s.host not in ("0.0.0.0", "::"):  # noqa: S104
                ips.append(s.host)
        except ValueError:
            names.append(s.host)
        return sorted(set(names)), ips

    def stale(self) -> bool:
        """Whether the certificate must be re-issued: none yet, half its life gone, or its
        issuer is no longer the active authority (rotated, tainted, revoked or removed)."""
        current = self._current
        if current is None:
            return True
        if self._clock.now() >= current.renew_at:
            return True
        return current.issued.issuer_kid != self._ca.state.authority_kid

    def seconds_to_renewal(self) -> float:
        current = self._current
        if current is None:
            return 0.0
        return max(0.0, (current.renew_at - self._clock.now()).total_seconds())

    def renew(self) -> ServingCertificate:
        """Issue a new serving certificate (recorded before it is used) and hold it.

        Raises:
            InvalidSvidParams: a name or address is unusable. StoreUnavailable: not recorded.
        """
        with self._lock:
            dns_names, ips = self.names()
            issued, key = self._issuer.issue_serving_certificate(dns_names, ips)
            cert = issued.certificate
            half = (cert.not_valid_after_utc - cert.not_valid_before_utc) / 2
            self._current = ServingCertificate(issued, key, cert.not_valid_before_utc + half)
            return self._current

    def renew_if_stale(self) -> bool:
        """`renew` when `stale`; returns whether it did.

        Raises:
            As `renew`.
        """
        if not self.stale():
            return False
        self.renew()
        return True

    def install(self, context: ssl.SSLContext) -> None:
        """Load the current certificate, its chain and its key into `context`. On a live
        context this takes effect for new handshakes; open connections keep theirs.

        `SSLContext.load_cert_chain` reads only from a path, so the key goes through an
        anonymous in-memory file (memfd) closed at once: no key file exists to outlive a
        crash. Where memfd is missing, a 0600 temporary file is removed right after loading.

        Raises:
            NotReady: nothing issued yet. ssl.SSLError: OpenSSL refused the credential.
        """
        current = self._current
        if current is None:
            raise NotReady("the serving certificate is not issued yet")
        data = current.issued.pem.encode()
        data += "".join(ca_pems(current.issued.intermediates)).encode()
        data += current.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _load_cert_chain(context, data)


def _load_cert_chain(context: ssl.SSLContext, pem: bytes) -> None:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("trustd-serving", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="trustd-serving-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        context.load_cert_chain(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
