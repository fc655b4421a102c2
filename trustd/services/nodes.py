"""Nodes: attestation, node SVIDs, the node credential agents authenticate with, eviction."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine
from sqlmodel import Session

from pki.ca import load_pem_certificates, serial_hex
from pki.clock import Clock
from pki.csr import csr_public_key, parse_csr
from pki.errors import TrustdError, WeakKey
from pki.keys import PublicKey, allowed_public_key, jose_public_key, public_key_pem
from pki.selectors import parse_selectors
from pki.spiffe_id import SpiffeId
from trustd import tracing
from trustd.attestation.base import (
    AttestationContext,
    AttestationFailed,
    Challenge,
    ChallengeAttestor,
    EvidenceReplayed,
    NodeAttestor,
)
from trustd.attestation.join_token import JoinTokenAttestor, hash_secret
from trustd.attestation.k8s_psat import K8sPsatAttestor, load_cluster
from trustd.attestation.tpm import TpmAttestor
from trustd.attestation.x509pop import X509PopAttestor
from trustd.bus import Bus
from trustd.domain.audit import AuditOutcome
from trustd.domain.certificates import CertificateKind, IssuedX509
from trustd.domain.nodes import MAX_ALWAYS_ALLOWED, JoinToken, Node, NodeStatus, Unmanaged
from trustd.errors import (
    InvalidRequest,
    NodeInactive,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from trustd.leader import FenceCheck
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.issuance import AGENT_PATH, IssuanceRequest, Issuer
from trustd.services.sync import announce, bump_revision
from trustd.services.verdicts import delete_reported_addresses
from trustd.settings import Settings
from trustd.store.attestation import create_replay_claim, prune_replay_claims
from trustd.store.db import transaction
from trustd.store.nodes import (
    create_join_token,
    create_node,
    fetch_join_token,
    fetch_node,
    fetch_node_by_serial,
    list_nodes,
    update_join_token_used,
    update_node,
)

NODE_CREDENTIAL_TYPE = "trustd-node+jwt"
# Our own protocol, so our own allow-list: asymmetric algorithms only.
NODE_CREDENTIAL_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
NODE_CREDENTIAL_MAX_LIFETIME = timedelta(minutes=5)
_CLOCK_SKEW = timedelta(seconds=30)


def canonical_scope(prefixes: Sequence[str]) -> tuple[str, ...]:
    """Always-allowed prefixes in canonical form (a bare address is its /32), sorted.

    IPv4 and IPv6 prefixes, IPv4 first: the datapath keys them apart (enforce.c
    `trustd_allowed`), so neither family's prefixes cover the other's.

    Raises:
        InvalidRequest: not an IPv4 or IPv6 prefix (host bits set included), or too many.
    """
    if len(prefixes) > MAX_ALWAYS_ALLOWED:
        raise InvalidRequest(f"at most {MAX_ALWAYS_ALLOWED} always-allowed prefixes")
    found = set()
    for prefix in prefixes:
        try:
            found.add(ipaddress.ip_network(prefix))
        except ValueError:
            raise InvalidRequest(f"{prefix!r} is not an IPv4 or IPv6 prefix") from None
    return tuple(str(n) for n in sorted(found, key=lambda n: (n.version, n)))


@dataclass(frozen=True)
class NodePrincipal:
    """An agent authenticated by its node credential."""

    spiffe_id: str
    selectors: frozenset[str]

    @property
    def name(self) -> str:
        return self.spiffe_id


@dataclass(frozen=True)
class AttestedNode:
    node: Node
    svid: IssuedX509


@dataclass(frozen=True)
class CreatedJoinToken:
    token: JoinToken
    secret: str

    @property
    def value(self) -> str:
        return f"{self.token.id}.{self.secret}"


log = structlog.get_logger("trustd.nodes")


class SessionReplayGuard:
    """The replay guard of one attestation: claims are rows in its transaction, so a
    refused attestation claims nothing."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def claim(self, digest: str, attestor: str, expires_at: datetime) -> None:
        """Raises:
        EvidenceReplayed: the evidence with `digest` was claimed before.
        """
        if not create_replay_claim(self._session, digest, attestor, expires_at):
            raise EvidenceReplayed("the evidence was already used to attest")


class SessionJoinTokens:
    """The join tokens one attestation may consume, in its transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def lock(self, token_id: str) -> JoinToken | None:
        return fetch_join_token(self._session, token_id, for_update=True)

    def consume(self, token_id: str, used_at: datetime) -> None:
        update_join_token_used(self._session, token_id, used_at)


def attestation_context(session: Session) -> AttestationContext:
    """What an attestor may consume, bound to the attestation's transaction `session`."""
    return AttestationContext(SessionReplayGuard(session), SessionJoinTokens(session))


def _mac_key(settings: Settings, kek: bytes) -> bytes:
    # Replicas share the key-encryption key, so they agree on challenges without sharing state.
    return hmac.new(
        kek, b"trustd-attestation-challenges:" + settings.trust_domain.encode(), hashlib.sha256
    ).digest()


def build_attestors(settings: Settings, kek: bytes) -> dict[str, NodeAttestor]:
    """The attestors this server accepts, from its settings.

    Raises:
        AttestationFailed: a configured cluster's JWKS cannot be loaded.
    """
    attestors: dict[str, NodeAttestor] = {"join_token": JoinTokenAttestor()}
    if settings.k8s_clusters:
        clusters = {
            name: load_cluster(name, c.issuer, c.audience, c.jwks_file)
            for name, c in settings.k8s_clusters.items()
        }
        attestors["k8s_psat"] = K8sPsatAttestor(clusters)
    if settings.x509pop_ca_bundle is not None:
        roots = load_pem_certificates(settings.x509pop_ca_bundle.read_bytes())
        attestors["x509pop"] = X509PopAttestor(roots, _mac_key(settings, kek))
    if settings.tpm_ek_ca_bundle is not None:
        cas = load_pem_certificates(settings.tpm_ek_ca_bundle.read_bytes())
        attestors["tpm"] = TpmAttestor(cas, _mac_key(settings, kek))
    return attestors


class Nodes:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        issuer: Issuer,
        attestors: dict[str, NodeAttestor],
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self._issuer = issuer
        self._attestors = attestors
        self._td = settings.trust_domain_obj
        self.server_id = str(SpiffeId.from_parts(self._td, "/trustd/server"))

    # -- housekeeping --------------------------------------------------------------------

    def prune_replay_claims(self, fenced: FenceCheck | None = None) -> int:
        """Drop the replay claims of evidence past its own expiry (it would be refused as
        expired anyway); run by the leader's periodic duties, *fenced* by its epoch. Returns
        how many went."""
        with transaction(self._engine) as session:
            if fenced is not None:
                fenced(session)
            pruned = prune_replay_claims(session, self._clock.now())
        if pruned:
            log.info("replay_claims_pruned", count=pruned)
        return pruned

    # -- join tokens ---------------------------------------------------------------------

    def create_join_token(
        self, actor: Principal, ttl: timedelta | None, selectors: Sequence[str]
    ) -> CreatedJoinToken:
        """A single-use join token; only its hash is stored.

        Raises:
            InvalidSelector: a selector is malformed. InvalidRequest: bad ttl.
        """
        lifetime = ttl or self._settings.join_token_ttl
        if lifetime <= timedelta(0) or lifetime > timedelta(days=7):
            raise InvalidRequest("join token ttl must be between 1 second and 7 days")
        parsed = sorted(str(s) for s in parse_selectors(selectors))
        secret = secrets.token_urlsafe(32)
        now = self._clock.now()
        row = JoinToken(
            id=secrets.token_hex(8),
            token_hash=hash_secret(secret),
            selectors=tuple(parsed),
            created_by=actor.name,
            created_at=now,
            expires_at=now + lifetime,
        )
        with transaction(self._engine) as session:
            create_join_token(session, row)
            self._audit.record(
                session,
                actor.name,
                "node:join_token:created",
                target=row.id,
                details={"selectors": parsed, "expires_at": row.expires_at.isoformat()},
            )
        return CreatedJoinToken(row, secret)

    # -- attestation ---------------------------------------------------------------------

    def _attestor(self, name: str) -> NodeAttestor:
        attestor = self._attestors.get(name)
        if attestor is None:
            enabled = ", ".join(sorted(self._attestors))
            raise AttestationFailed(f"attestor {name!r} is not enabled here; enabled: {enabled}")
        return attestor

    def challenge(self, attestor_name: str, evidence: dict[str, Any]) -> Challenge:
        """The first step of a challenge-response attestor (x509pop, tpm). It changes
        nothing; a refusal is audited like a refused attestation.

        Raises:
            AttestationFailed: the attestor takes no challenge, or the evidence is refused.
        """
        try:
            attestor = self._attestor(attestor_name)
            if not isinstance(attestor, ChallengeAttestor):
                raise AttestationFailed(f"attestor {attestor_name!r} takes no challenge")
            return attestor.challenge(evidence, self._clock.now())
        except TrustdError as exc:
            self._refused(attestor_name, exc)
            raise

    @tracing.traced("trustd.attestation")
    def attest(self, attestor_name: str, evidence: dict[str, Any], csr: bytes) -> AttestedNode:
        """Verify the evidence and issue the node its SVID for the key in `csr`.

        Everything (consuming the evidence, the node row, the SVID record) commits together;
        a refusal changes nothing but is audited.

        Raises:
            AttestationFailed: the evidence is refused or the node is banned.
            InvalidCsr, WeakKey: the CSR is unusable.
        """
        now = self._clock.now()
        try:
            # The CSR is checked before the evidence is consumed: a bad CSR costs no token.
            public_key = csr_public_key(parse_csr(csr))
            attestor = self._attestor(attestor_name)
            with transaction(self._engine) as session:
                result = attestor.attest(evidence, now, attestation_context(session))
                spiffe_id = SpiffeId.from_parts(
                    self._td, f"{AGENT_PATH}/{attestor.name}/{result.agent_id}"
                )
                known = fetch_node(session, str(spiffe_id), for_update=True)
                if known is not None and known.status == NodeStatus.BANNED:
                    raise AttestationFailed(f"node {spiffe_id} is banned")
                issued = self._issuer.issue_in(
                    session,
                    IssuanceRequest(
                        kind=CertificateKind.NODE_SVID,
                        spiffe_id=spiffe_id,
                        actor=str(spiffe_id),
                        public_key=public_key,
                    ),
                )
                selectors = tuple(sorted(str(s) for s in result.selectors))
                # Re-attestation (after eviction, or a new agent on the same machine)
                # replaces the credentials: the old node key stops working.
                node = Node(
                    spiffe_id=str(spiffe_id),
                    attestor=attestor.name,
                    agent_id=result.agent_id,
                    selectors=selectors,
                    status=NodeStatus.ACTIVE,
                    svid_serial=serial_hex(issued.certificate),
                    svid_public_key_pem=public_key_pem(public_key),
                    svid_not_after=issued.certificate.not_valid_after_utc,
                    attested_at=now,
                    last_seen=known.last_seen if known is not None else None,
                    applied_revision=known.applied_revision if known is not None else 0,
                )
                if known is None:
                    create_node(session, node)
                else:
                    update_node(session, node)
                    # A new agent starts from nothing: it reports its workloads anew.
                    delete_reported_addresses(session, node.spiffe_id)
                self._audit.record(
                    session,
                    str(spiffe_id),
                    "node:agent:attested",
                    target=str(spiffe_id),
                    details={"attestor": attestor.name, "selectors": list(selectors)},
                )
                revision = bump_revision(session)
        except TrustdError as exc:
            self._refused(attestor_name, exc)
            raise
        announce(self._bus, revision)
        return AttestedNode(node, issued)

    def _refused(self, attestor_name: str, exc: TrustdError) -> None:
        # The attempt itself is worth keeping even though nothing else is.
        with transaction(self._engine) as session:
            self._audit.record(
                session,
                f"attestor:{attestor_name[:32]}",
                "node:agent:attestation_refused",
                outcome=AuditOutcome.DENIED,
                details={"reason": exc.detail},
            )

    # -- node credentials ----------------------------------------------------------------

    def authenticate(self, credential: str) -> NodePrincipal:
        """Check a node credential: a short-lived JWT signed with the node SVID's key.

        Raises:
            Unauthenticated: malformed, wrong algorithm, unknown key, bad signature, expired,
                too long-lived, or the node is evicted or banned.
        """
        try:
            header = jwt.get_unverified_header(credential)
        except jwt.PyJWTError:
            raise Unauthenticated("node credential is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if header.get("typ") != NODE_CREDENTIAL_TYPE or alg not in NODE_CREDENTIAL_ALGORITHMS:
            raise Unauthenticated("node credential has the wrong type or algorithm")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("node credential names no key")
        with transaction(self._engine) as session:
            node = fetch_node_by_serial(session, kid)
        if node is None:
            raise Unauthenticated("node credential key is unknown")
        pem = node.public_key_pem_for(kid)
        assert pem is not None
        key: PublicKey = allowed_public_key(serialization.load_pem_public_key(pem.encode()))
        try:
            verifier = jose_public_key(key)
        except WeakKey:
            raise Unauthenticated("node credential key cannot sign JWTs") from None
        try:
            claims = jwt.decode(
                credential,
                verifier,
                algorithms=[alg],
                audience=self.server_id,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["exp", "iat", "sub"],
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"node credential rejected: {exc}") from None
        now = self._clock.now().timestamp()
        exp, iat = int(claims["exp"]), int(claims["iat"])
        if claims["sub"] != node.spiffe_id:
            raise Unauthenticated("node credential subject is not the key's node")
        if exp - iat > NODE_CREDENTIAL_MAX_LIFETIME.total_seconds():
            raise Unauthenticated("node credential lives too long")
        if exp + _CLOCK_SKEW.total_seconds() <= now or iat - _CLOCK_SKEW.total_seconds() > now:
            raise Unauthenticated("node credential is expired or not yet valid")
        # Said only to the node itself, once its signature is verified: its agent then
        # stops instead of retrying (the status of other nodes is nobody else's business).
        if node.status != NodeStatus.ACTIVE:
            raise NodeInactive(f"node is {node.status}; it must attest again")
        return NodePrincipal(node.spiffe_id, frozenset(node.selectors))

    def renew(self, principal: NodePrincipal, csr: bytes) -> IssuedX509:
        """A new node SVID for a new key; the previous key keeps working until it expires.

        Raises:
            InvalidCsr, WeakKey: unusable CSR. Unauthenticated: the node was evicted meanwhile.
        """
        public_key = csr_public_key(parse_csr(csr))
        with transaction(self._engine) as session:
            node = fetch_node(session, principal.spiffe_id, for_update=True)
            if node is None or node.status != NodeStatus.ACTIVE:
                raise NodeInactive("node is no longer active; it must attest again")
            issued = self._issuer.issue_in(
                session,
                IssuanceRequest(
                    kind=CertificateKind.NODE_SVID,
                    spiffe_id=principal.spiffe_id,
                    actor=principal.spiffe_id,
                    public_key=public_key,
                ),
            )
            update_node(
                session,
                replace(
                    node,
                    previous_svid_serial=node.svid_serial,
                    previous_public_key_pem=node.svid_public_key_pem,
                    svid_serial=serial_hex(issued.certificate),
                    svid_public_key_pem=public_key_pem(public_key),
                    svid_not_after=issued.certificate.not_valid_after_utc,
                ),
            )
        return issued

    # -- administration ------------------------------------------------------------------

    def list(self) -> list[Node]:
        """Every node, by SPIFFE ID."""
        with transaction(self._engine) as session:
            return list_nodes(session)

    def get(self, spiffe_id: str) -> Node:
        """The node `spiffe_id`.

        Raises:
            NotFound: no such node.
        """
        with transaction(self._engine) as session:
            node = fetch_node(session, spiffe_id)
        if node is None:
            raise NotFound(f"no node {spiffe_id!r}")
        return node

    def set_status(self, actor: Principal, spiffe_id: str, status: NodeStatus) -> Node:
        """Evict (must attest again) or ban (may not attest again) a node; its credentials
        stop working at once.

        Raises:
            NotFound: no such node. PermissionDenied: un-banning is not a status change.
        """
        with transaction(self._engine) as session:
            node = fetch_node(session, spiffe_id, for_update=True)
            if node is None:
                raise NotFound(f"no node {spiffe_id!r}")
            if node.status == NodeStatus.BANNED and status == NodeStatus.EVICTED:
                raise PermissionDenied("a banned node stays banned; delete the ban to lift it")
            node = replace(node, status=status)
            update_node(session, node)
            # Its agent's word on workload addresses counts no more.
            delete_reported_addresses(session, spiffe_id)
            self._audit.record(
                session,
                actor.name,
                f"node:agent:{'banned' if status == NodeStatus.BANNED else 'evicted'}",
                target=spiffe_id,
            )
            revision = bump_revision(session)
        announce(self._bus, revision)
        return node

    def set_scope(
        self,
        actor: Principal,
        spiffe_id: str,
        unmanaged: Unmanaged,
        always_allowed: Sequence[str],
    ) -> Node:
        """Set the node's enforcement scope: what its workloads' packets to unmanaged
        destinations get, and the IPv4 and IPv6 prefixes they always reach (DNS, the node, trustd;
        all a quarantined identity reaches). Its agent applies it on its next sync.

        Raises:
            NotFound: no such node. InvalidRequest: a prefix is not IP, or too many.
        """
        prefixes = canonical_scope(always_allowed)
        with transaction(self._engine) as session:
            node = fetch_node(session, spiffe_id, for_update=True)
            if node is None:
                raise NotFound(f"no node {spiffe_id!r}")
            node = replace(node, unmanaged=unmanaged, always_allowed=prefixes)
            update_node(session, node)
            revision = bump_revision(session)
            self._audit.record(
                session,
                actor.name,
                "node:scope:updated",
                target=spiffe_id,
                details={
                    "unmanaged": str(unmanaged),
                    "always_allowed": list(prefixes),
                    "revision": revision,
                },
            )
        announce(self._bus, revision)
        return node

    def touch(self, principal: NodePrincipal, applied_revision: int | None) -> None:
        """Record that the agent was seen (and which revision it applied)."""
        with transaction(self._engine) as session:
            node = fetch_node(session, principal.spiffe_id)
            if node is None:
                return
            applied = node.applied_revision
            if applied_revision is not None:
                applied = max(applied, applied_revision)
            update_node(
                session, replace(node, last_seen=self._clock.now(), applied_revision=applied)
            )
