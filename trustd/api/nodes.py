"""Node attestation (public: the evidence is the credential), nodes and join tokens (admin)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from pki.ca import certificate_pem, fingerprint_sha256
from pki.spiffe_id import SpiffeId
from trustd.api.deps import AdminDep, Exemption, ServicesDep, exempt, require
from trustd.api.schemas import (
    AttestRequest,
    AttestResponse,
    ChallengeResponse,
    JoinTokenCreate,
    JoinTokenCreated,
    NodeAction,
    NodePublic,
    NodeScopeRequest,
    SvidChain,
)
from trustd.domain.certificates import IssuedX509
from trustd.domain.nodes import Node, NodeStatus
from trustd.errors import InvalidRequest
from trustd.services.issuance import AGENT_PATH

router = APIRouter(tags=["nodes"])


def svid_chain(issued: IssuedX509) -> SvidChain:
    return SvidChain(
        spiffe_id=str(issued.spiffe_id),
        certificate=certificate_pem(issued.certificate),
        intermediates=[certificate_pem(c) for c in issued.intermediates],
        not_after=issued.certificate.not_valid_after_utc,
    )


def _public(node: Node) -> NodePublic:
    return NodePublic.model_validate(node, from_attributes=True)


@router.post(
    "/v1/attest/challenge",
    response_model=ChallengeResponse,
    dependencies=[exempt(Exemption.ATTESTATION)],
)
def attestation_challenge(body: AttestRequest, services: ServicesDep) -> ChallengeResponse:
    """First step of a challenge-response attestor (x509pop, tpm)."""
    issued = services.nodes.challenge(body.attestor, body.evidence)
    return ChallengeResponse(
        challenge=issued.challenge,
        credential_blob=issued.credential_blob,
        encrypted_secret=issued.encrypted_secret,
    )


@router.post(
    "/v1/attest",
    response_model=AttestResponse,
    status_code=201,
    dependencies=[exempt(Exemption.ATTESTATION)],
)
def attest(body: AttestRequest, services: ServicesDep) -> AttestResponse:
    """Prove a node's identity with attestor evidence and get its node SVID."""
    if body.csr is None:
        raise InvalidRequest("attestation needs the CSR of the node's key")
    attested = services.nodes.attest(body.attestor, body.evidence, body.csr.encode())
    return AttestResponse(
        spiffe_id=attested.node.spiffe_id,
        svid=svid_chain(attested.svid),
        bundle=services.ca.state.bundle.to_jwks(),
    )


@router.post(
    "/v1/join-tokens",
    response_model=JoinTokenCreated,
    status_code=201,
    dependencies=[require("admin:node:write")],
)
def create_join_token(
    body: JoinTokenCreate, principal: AdminDep, services: ServicesDep
) -> JoinTokenCreated:
    """A single-use join token for one node."""
    created = services.nodes.create_join_token(
        principal, timedelta(seconds=body.ttl) if body.ttl else None, body.selectors
    )
    node_id = SpiffeId.from_parts(
        services.settings.trust_domain_obj, f"{AGENT_PATH}/join_token/{created.token.id}"
    )
    return JoinTokenCreated(
        id=created.token.id,
        token=created.value,
        expires_at=created.token.expires_at,
        selectors=created.token.selectors,
        spiffe_id=str(node_id),
        server_url=services.settings.base_url,
        ca_sha256=[fingerprint_sha256(root) for root in services.ca.state.bundle.x509_authorities],
    )


@router.get("/v1/nodes", response_model=list[NodePublic], dependencies=[require("admin:node:read")])
def list_nodes(
    principal: AdminDep, services: ServicesDep, spiffe_id: str | None = None
) -> list[NodePublic]:
    """Attested nodes (or the one named by `spiffe_id`)."""
    if spiffe_id:
        return [_public(services.nodes.get(spiffe_id))]
    return [_public(n) for n in services.nodes.list()]


@router.post(
    "/v1/nodes/evict", response_model=NodePublic, dependencies=[require("admin:node:write")]
)
def evict_node(body: NodeAction, principal: AdminDep, services: ServicesDep) -> NodePublic:
    """The node's credentials stop working; it may attest again."""
    return _public(services.nodes.set_status(principal, body.spiffe_id, NodeStatus.EVICTED))


@router.post("/v1/nodes/ban", response_model=NodePublic, dependencies=[require("admin:node:write")])
def ban_node(body: NodeAction, principal: AdminDep, services: ServicesDep) -> NodePublic:
    """The node's credentials stop working and it may not attest again."""
    return _public(services.nodes.set_status(principal, body.spiffe_id, NodeStatus.BANNED))


@router.post(
    "/v1/nodes/scope", response_model=NodePublic, dependencies=[require("admin:node:write")]
)
def set_node_scope(
    body: NodeScopeRequest, principal: AdminDep, services: ServicesDep
) -> NodePublic:
    """Set the node's enforcement scope: `unmanaged` allow (the default) or deny for its
    workloads' packets to destinations in no entry, and the prefixes they always reach
    (DNS, the node, trustd), all a quarantined identity reaches."""
    node = services.nodes.set_scope(principal, body.spiffe_id, body.unmanaged, body.always_allowed)
    return _public(node)
