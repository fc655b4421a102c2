"""Registration entries (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import (
    EntryBatch,
    EntryCreate,
    EntryDetail,
    EntryPage,
    EntryPublic,
    EntryUpdate,
    ReportedAddressPublic,
)
from trustd.api.wire import LimitQuery, OffsetQuery
from trustd.domain.entries import Entry
from trustd.services.entries import EntryFilter, EntryPatch, EntrySpec

router = APIRouter(prefix="/v1/entries", tags=["entries"])


def public_entry(row: Entry) -> EntryPublic:
    """The public schema of an entry."""
    return EntryPublic.model_validate(row, from_attributes=True)


def _spec(body: EntryCreate) -> EntrySpec:
    return EntrySpec(**body.model_dump())


@router.post(
    "", response_model=EntryPublic, status_code=201, dependencies=[require("admin:entry:write")]
)
def create_entry(body: EntryCreate, principal: AdminDep, services: ServicesDep) -> EntryPublic:
    """Create a registration entry."""
    return public_entry(services.entries.create(principal, [_spec(body)])[0])


@router.post(
    "/batch",
    response_model=list[EntryPublic],
    status_code=201,
    dependencies=[require("admin:entry:write")],
)
def create_entries(
    body: EntryBatch, principal: AdminDep, services: ServicesDep
) -> list[EntryPublic]:
    """Create many entries at once: all or none."""
    rows = services.entries.create(principal, [_spec(e) for e in body.entries])
    return [public_entry(r) for r in rows]


@router.get("", response_model=EntryPage, dependencies=[require("admin:entry:read")])
def list_entries(
    principal: AdminDep,
    services: ServicesDep,
    spiffe_id: str | None = None,
    parent_id: str | None = None,
    selector: str | None = None,
    limit: LimitQuery = 100,
    offset: OffsetQuery = 0,
) -> EntryPage:
    """Entries, filtered by SPIFFE ID, parent ID or one selector; paged."""
    rows, total = services.entries.search(
        EntryFilter(spiffe_id, parent_id, selector, limit, offset)
    )
    return EntryPage(
        entries=[public_entry(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{entry_id}", response_model=EntryDetail, dependencies=[require("admin:entry:read")])
def show_entry(entry_id: str, principal: AdminDep, services: ServicesDep) -> EntryDetail:
    """One entry, with the workload addresses agents reported for its SPIFFE ID."""
    row = services.entries.get(entry_id)
    return EntryDetail(
        **public_entry(row).model_dump(),
        reported_addresses=[
            ReportedAddressPublic.model_validate(r, from_attributes=True)
            for r in services.entries.reported_addresses(row.spiffe_id)
        ],
    )


@router.patch(
    "/{entry_id}", response_model=EntryPublic, dependencies=[require("admin:entry:write")]
)
def update_entry(
    entry_id: str, body: EntryUpdate, principal: AdminDep, services: ServicesDep
) -> EntryPublic:
    """Change fields of an entry; agents pick the change up on their next sync."""
    patch = EntryPatch(**body.model_dump(exclude_unset=True))
    return public_entry(services.entries.update(principal, entry_id, patch))


@router.delete(
    "/{entry_id}",
    status_code=204,
    response_class=Response,
    dependencies=[require("admin:entry:delete")],
)
def delete_entry(entry_id: str, principal: AdminDep, services: ServicesDep) -> Response:
    """Delete an entry; agents stop serving its SVIDs on their next sync."""
    services.entries.delete(principal, entry_id)
    return Response(status_code=204)
