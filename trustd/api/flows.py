"""Observed flows (admin): what the nodes' datapaths and ext_authz decided, filtered and
paged by id (`after`), newest first without a cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, Field

from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.wire import INT64_MAX, LimitQuery, WireModel
from trustd.domain.flows import (
    Direction,
    Flow,
    FlowFilter,
    L7Attributes,
    Observer,
    Reason,
    Verdict,
)

router = APIRouter(prefix="/v1/flows", tags=["flows"])

IdentityQuery = Annotated[
    str | None,
    Query(
        max_length=2048,
        description="A SPIFFE ID, or a path prefix ending in `/` for every ID under it",
    ),
]


class FlowPublic(WireModel):
    id: int
    node: str = Field(description="The node whose agent reported the flow")
    interval_start: datetime
    interval_end: datetime
    source: str | None = Field(description="null: an address in no entry")
    destination: str | None
    source_address: str
    destination_address: str
    destination_port: int
    protocol: str
    verdict: Verdict
    reason: Reason
    direction: Direction
    observer: Observer
    count: int = Field(description="Events folded into this flow")
    first_seen: datetime
    last_seen: datetime
    l7: L7Attributes | None = None


class FlowPage(WireModel):
    flows: list[FlowPublic]
    cursor: int = Field(
        description="The largest id seen (or the `after` given): pass it as `after` for "
        "the flows stored since"
    )


def flow_public(flow: Flow) -> FlowPublic:
    l7 = (
        L7Attributes(
            method=flow.l7_method,
            path=flow.l7_path or "",
            host=flow.l7_host or "",
            status=flow.l7_status or 0,
        )
        if flow.l7_method is not None and flow.l7_status is not None
        else None
    )
    return FlowPublic(
        id=flow.id,
        node=flow.node,
        interval_start=flow.interval_start,
        interval_end=flow.interval_end,
        source=flow.source,
        destination=flow.destination,
        source_address=flow.source_address,
        destination_address=flow.destination_address,
        destination_port=flow.destination_port,
        protocol=flow.protocol,
        verdict=flow.verdict,
        reason=flow.reason,
        direction=flow.direction,
        observer=flow.observer,
        count=flow.count,
        first_seen=flow.first_seen,
        last_seen=flow.last_seen,
        l7=l7,
    )


@router.get("", response_model=FlowPage, dependencies=[require("admin:flow:read")])
def list_flows(
    principal: AdminDep,
    services: ServicesDep,
    source: Annotated[IdentityQuery, Query(alias="from")] = None,
    destination: Annotated[IdentityQuery, Query(alias="to")] = None,
    verdict: Verdict | None = None,
    reason: Reason | None = None,
    node: Annotated[str | None, Query(max_length=2048)] = None,
    # With a time zone: the store holds UTC and a naive time has no one meaning (422).
    since: Annotated[AwareDatetime | None, Query(description="Last seen at or after")] = None,
    until: Annotated[AwareDatetime | None, Query(description="Last seen before")] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=INT64_MAX, description="The flows stored after this id, oldest first"),
    ] = None,
    limit: LimitQuery = 100,
) -> FlowPage:
    """Observed flows, filtered by source (`from`), destination (`to`), verdict, reason,
    node and time; the newest first, or with `after` the next ones in the order they were
    stored (keyset paging, and what `trustd flows --follow` polls with)."""
    flows = services.flows.query(
        FlowFilter(
            source=source,
            destination=destination,
            verdict=verdict,
            reason=reason,
            node=node,
            since=since,
            until=until,
            after=after,
            limit=limit,
        )
    )
    cursor = max((f.id for f in flows), default=after or 0)
    return FlowPage(flows=[flow_public(f) for f in flows], cursor=cursor)
