"""Verdict propagation: which revision each agent applied, and how far behind it is."""

from __future__ import annotations

from fastapi import APIRouter

from trustd.api.deps import AdminDep, ServicesDep, require
from trustd.api.schemas import AgentVerdictLag

router = APIRouter(prefix="/v1/verdicts", tags=["verdicts"])


@router.get(
    "/agents", response_model=list[AgentVerdictLag], dependencies=[require("admin:verdict:read")]
)
def agent_lag(principal: AdminDep, services: ServicesDep) -> list[AgentVerdictLag]:
    """Per node: the newest verdict revision, the one its agent applied, and the lag."""
    return [
        AgentVerdictLag(
            node_id=row.node_id,
            revision=row.revision,
            applied_revision=row.applied_revision,
            lag=row.lag,
            applied_at=row.applied_at,
        )
        for row in services.verdicts.lag()
    ]
