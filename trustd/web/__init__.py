"""The admin web UI under /ui/: server-rendered pages over the same services as the admin
JSON API, and the JSON API for UI accounts (`trustd admin user ...`).

Every view names the one permission it needs (`admin:<resource>:<action>`), decided by the
active `admin` Rego policy for the user's role (`session`); every POST carries the
session's CSRF token (`csrf`); destructive actions (revoke, ban, evict, delete, roll back,
activate a CA key) first show the confirmation page of `confirm`. Refusals and failures
are audited. The views live in `views/`, one module per domain; every page draws its
times, identifiers, verdicts, tables and confirmation links with the one set of components
in `templates/components.html`, and the graph is laid out by Graphviz (`graphviz`).
"""

from __future__ import annotations

from fastapi import APIRouter

from trustd.web.rendering import STATIC
from trustd.web.views import (
    audit,
    auth,
    ca,
    certificates,
    dashboard,
    decisions,
    docs,
    entries,
    federation,
    flows,
    graph,
    identities,
    nodes,
    policies,
    users,
)

router = APIRouter()
for _module in (
    auth,
    dashboard,
    nodes,
    entries,
    certificates,
    identities,
    ca,
    federation,
    policies,
    decisions,
    graph,
    flows,
    audit,
    users,
    docs,
):
    router.include_router(_module.router)

__all__ = ["STATIC", "router"]
