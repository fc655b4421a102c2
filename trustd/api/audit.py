"""Admin JSON API: the audit chain, exported for a SIEM and verified by the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import Field

from trustd.api.deps import ServicesDep, require
from trustd.api.wire import INT64_MAX, WireModel
from trustd.domain.audit import HEAD_HASH_HEADER, HEAD_SEQ_HEADER, AuditChainBroken

router = APIRouter(prefix="/v1/admin/audit", tags=["audit"])

# JSON Lines, one event per line (the media type NDJSON registered in practice).
JSON_LINES = "application/x-ndjson"


class BrokenEvent(WireModel):
    seq: int = Field(description="The first event at which the chain does not hold")
    id: int | None = Field(description="Its row id, when the event exists")
    reason: str


class AuditVerification(WireModel):
    intact: bool
    events: int = Field(description="Events checked (up to the first broken one)")
    head_seq: int
    head_hash: str
    broken: BrokenEvent | None = None


@router.get(
    "/export",
    response_class=StreamingResponse,
    dependencies=[require("admin:audit:read")],
    responses={200: {"content": {JSON_LINES: {}}}},
)
def export_audit(
    services: ServicesDep,
    after: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="Export the events after this seq")
    ] = 0,
) -> StreamingResponse:
    """The audit events with seq > `after`, in chain order, one JSON document per line with
    `seq`, `prev_hash` and `hash` (`trustd.domain.audit` says how each hash is made), up to
    the chain head given in the response headers."""
    trail = services.audit_trail
    head = trail.head()

    def lines() -> Iterator[bytes]:
        for event in trail.events(after=after, until=head.seq):
            yield json.dumps(event.document(), sort_keys=True, ensure_ascii=False).encode()
            yield b"\n"

    return StreamingResponse(
        lines(),
        media_type=JSON_LINES,
        headers={HEAD_SEQ_HEADER: str(head.seq), HEAD_HASH_HEADER: head.hash},
    )


@router.get("/verify", response_model=AuditVerification, dependencies=[require("admin:audit:read")])
def verify_audit(services: ServicesDep) -> AuditVerification:
    """Check the whole chain in the database: each event's hash, and that each follows the
    one before up to the head. A broken chain is a finding, not a failed request: 200 with
    `intact: false` and the first broken event."""
    trail = services.audit_trail
    try:
        report = trail.verify()
    except AuditChainBroken as broken:
        head = trail.head()
        return AuditVerification(
            intact=False,
            events=max(broken.seq - 1, 0),
            head_seq=head.seq,
            head_hash=head.hash,
            broken=BrokenEvent(seq=broken.seq, id=broken.event_id, reason=broken.reason),
        )
    return AuditVerification(
        intact=True, events=report.events, head_seq=report.head.seq, head_hash=report.head.hash
    )
