"""The agent channel: long-poll sync, acknowledgements, SVIDs for the node's entries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from trustd.api.deps import Exemption, NodeDep, ServicesDep, exempt
from trustd.api.entries import public_entry
from trustd.api.nodes import svid_chain
from trustd.api.schemas import (
    Ack,
    AddressReport,
    AgentJwtRequest,
    AgentWitRequest,
    JwtSvidResponse,
    NodeScopePublic,
    QuarantineNotice,
    RefusedForEntry,
    RenewRequest,
    RevokedSvid,
    SignedForEntry,
    SvidBatchRequest,
    SvidBatchResponse,
    SvidChain,
    SyncResponse,
    WitSvidResponse,
)
from trustd.api.svid import jwt_svid_response, wit_svid_response
from trustd.api.wire import CountQuery, SinceQuery
from trustd.domain.flows import FlowBatch, FlowBatchResult

router = APIRouter(prefix="/v1/agents", tags=["agents"], dependencies=[exempt(Exemption.AGENT)])

# Every route but the long-poll is a plain function, which FastAPI runs on a worker thread:
# each reads or writes the database, and while it fails over a connect waits up to
# `connect_timeout`; on the event loop that wait would stall every other request.


@router.get("/sync", response_model=SyncResponse)
async def sync(
    node: NodeDep,
    services: ServicesDep,
    since: SinceQuery = 0,
    revoked_since: Annotated[CountQuery | None, Query()] = None,
    wait: Annotated[float, Query(ge=0, le=60)] = 30.0,
    verdict_since: Annotated[CountQuery | None, Query()] = None,
) -> Response:
    """Answers at once when the node's state changed after revision `since`, a
    certificate was revoked after revocation revision `revoked_since`, or the node's
    verdicts moved past `verdict_since` (enforcing agents only; 0 asks for the full state);
    otherwise holds up to `wait` seconds and answers `changed: false`. `since` and
    `verdict_since` are what the agent applied: they are recorded as its acknowledgement."""
    wait = min(wait, services.settings.sync_wait.total_seconds())
    snapshot = await services.agents.sync(node, since, revoked_since, wait, verdict_since)
    if snapshot is None:
        idle = SyncResponse(changed=False, revision=since, revocation_revision=revoked_since or 0)
        return _json(idle)
    answer = SyncResponse(
        changed=True,
        revision=snapshot.revision,
        entries=[public_entry(e) for e in snapshot.entries],
        bundle=snapshot.bundle,
        revocations=[
            RevokedSvid(
                serial=r.serial,
                spiffe_id=r.spiffe_id,
                reason=r.reason,
                revision=r.revision,
                not_after=r.not_after,
            )
            for r in snapshot.revocations
        ],
        revocation_revision=snapshot.revocation_revision,
        verdicts=snapshot.verdicts,
        quarantines=[
            QuarantineNotice(spiffe_id=q.spiffe_id, reason=q.reason, until=q.until)
            for q in snapshot.quarantines
        ],
        scope=NodeScopePublic(unmanaged=snapshot.scope[0], always_allowed=list(snapshot.scope[1]))
        if snapshot.scope is not None
        else None,
        federated_bundles=snapshot.federated_bundles,
        default_key_type=services.settings.key_type,
    )
    return _json(answer)


def _json(body: SyncResponse) -> Response:
    # Serialised once, by pydantic, from the model built above: a change wakes every
    # agent's long-poll at once, and FastAPI's response_model path would validate the
    # model again and serialise it through Python dicts for each of them.
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/ack", status_code=204, response_class=Response)
def ack(body: Ack, node: NodeDep, services: ServicesDep) -> Response:
    """The agent applied `revision` (and `verdict_revision` of its verdicts). Agents now
    acknowledge with their next long-poll's cursors; kept for agents that still call it."""
    services.nodes.touch(node, body.revision)
    if body.verdict_revision is not None:
        services.verdicts.acknowledge(node.spiffe_id, body.verdict_revision)
    return Response(status_code=204)


@router.put("/addresses", status_code=204, response_class=Response)
def report_addresses(body: AddressReport, node: NodeDep, services: ServicesDep) -> Response:
    """The addresses the node's workloads hold, by SPIFFE ID (found when they called the
    Workload API), replacing the node's previous report; every agent's IP cache follows."""
    services.agents.report_addresses(node, [(i.spiffe_id, i.addresses) for i in body.identities])
    return Response(status_code=204)


def _flow_budget(node: NodeDep, services: ServicesDep) -> None:
    # A dependency: FastAPI solves it before it validates the body, so a node past its
    # rate is refused before a thousand flows are parsed into models.
    services.flows.admit(node)


@router.post("/flows", response_model=FlowBatchResult, dependencies=[Depends(_flow_budget)])
def report_flows(body: FlowBatch, node: NodeDep, services: ServicesDep) -> FlowBatchResult:
    """What the node's datapath and ext_authz decided over one interval, aggregated. Only
    flows about the node's own workloads are stored; the others are refused and counted
    (`refused`), never stored. At most `MAX_FLOWS_PER_BATCH` flows a batch (422 past it)
    within the request size limit (413), and `flow_batches_per_minute` batches a minute
    (429 with Retry-After)."""
    return services.flows.report(node, body)


@router.post("/svids", response_model=SvidBatchResponse)
def sign_svids(body: SvidBatchRequest, node: NodeDep, services: ServicesDep) -> SvidBatchResponse:
    """Sign workload keys (CSRs made on the node) for the node's entries."""
    signed, refused = services.agents.sign_svids(node, [(c.entry_id, c.csr) for c in body.csrs])
    return SvidBatchResponse(
        svids=[
            SignedForEntry(entry_id=s.entry_id, **svid_chain(s.issued).model_dump()) for s in signed
        ],
        refused=[RefusedForEntry(entry_id=r.entry_id, detail=r.detail) for r in refused],
    )


@router.post("/jwt", response_model=JwtSvidResponse)
def mint_jwt(body: AgentJwtRequest, node: NodeDep, services: ServicesDep) -> JwtSvidResponse:
    """A JWT-SVID for one of the node's entries."""
    return jwt_svid_response(services.agents.mint_jwt(node, body.entry_id, body.audience))


@router.post("/wit", response_model=WitSvidResponse)
async def mint_wit(body: AgentWitRequest, node: NodeDep, services: ServicesDep) -> WitSvidResponse:
    """A WIT-SVID for one of the node's entries, bound to the workload key `jwk` the agent
    made (experimental, `TRUSTD_WIT_SVID`; 404 problem when off)."""
    return wit_svid_response(services.agents.mint_wit(node, body.entry_id, body.jwk))


@router.post("/renew", response_model=SvidChain)
def renew(body: RenewRequest, node: NodeDep, services: ServicesDep) -> SvidChain:
    """A new node SVID for a new node key."""
    return svid_chain(services.nodes.renew(node, body.csr.encode()))
