"""Attested nodes: the list, eviction and banning."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from trustd.api.deps import ServicesDep
from trustd.domain.nodes import NodeStatus
from trustd.errors import InvalidRequest
from trustd.web.confirm import confirm
from trustd.web.rendering import render
from trustd.web.routing import ui_router
from trustd.web.session import Viewer, require

router = ui_router()


@router.get("/nodes", response_class=HTMLResponse)
def nodes(
    request: Request, services: ServicesDep, viewer: Annotated[Viewer, require("admin:node:read")]
) -> HTMLResponse:
    """Attested nodes."""
    return render(request, "nodes.html", nodes=services.nodes.list())


_NODE_ACTIONS = {
    "evict": (
        NodeStatus.EVICTED,
        "Evict",
        "Its credentials stop working at once; the agent must attest again before it gets SVIDs.",
    ),
    "ban": (
        NodeStatus.BANNED,
        "Ban",
        "Its credentials stop working at once and it can never attest again under this SPIFFE ID.",
    ),
}


def _node_action(action: str) -> tuple[NodeStatus, str, str]:
    if action not in _NODE_ACTIONS:
        raise InvalidRequest("the node action is evict or ban")
    return _NODE_ACTIONS[action]


@router.get("/nodes/{action}", response_class=HTMLResponse)
def node_confirm(
    viewer: Annotated[Viewer, require("admin:node:write")],
    request: Request,
    action: str,
    services: ServicesDep,
    spiffe_id: Annotated[str, Query(max_length=2048)],
) -> HTMLResponse:
    """Say what evicting or banning the node does; the POST does it."""
    _, verb, effect = _node_action(action)
    node = services.nodes.get(spiffe_id)
    return confirm(
        request,
        title=f"{verb} node",
        subject=node.spiffe_id,
        effect=effect,
        action=f"/ui/nodes/{action}",
        fields={"spiffe_id": node.spiffe_id},
        button=verb,
        back="/ui/nodes",
    )


@router.post("/nodes/{action}")
def node_act(
    viewer: Annotated[Viewer, require("admin:node:write")],
    action: str,
    services: ServicesDep,
    spiffe_id: Annotated[str, Form(max_length=2048)],
) -> RedirectResponse:
    """Evict or ban a node."""
    status, _, _ = _node_action(action)
    services.nodes.set_status(viewer.who.principal, spiffe_id, status)
    return RedirectResponse("/ui/nodes", status_code=303)
