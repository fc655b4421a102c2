"""The UI's route class: errors become HTML pages, a missing session a sign-in redirect."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from pki.errors import TrustdError
from trustd.domain.audit import AuditOutcome
from trustd.web.cookies import delete_cookie, services_of, session_cookie
from trustd.web.rendering import error_page, render
from trustd.web.session import SignInRequired, Viewer


class UiRoute(APIRoute):
    """Errors become HTML pages with the status the JSON API would give; a missing or
    ended session goes to the sign-in page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                target = request.url.path if request.method == "GET" else "/ui/"
                response = RedirectResponse(
                    f"/ui/login?next={target}&message={exc.message}", status_code=303
                )
                delete_cookie(response, session_cookie(services_of(request)))
                return response
            except RequestValidationError as exc:
                # The same summary the JSON API gives, as a page: where and why, never the
                # submitted value.
                where = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                return render(request, "error.html", 422, title="Invalid input", message=where)
            except TrustdError as exc:
                viewer: Viewer | None = getattr(request.state, "viewer", None)
                if viewer is not None and request.method == "POST":
                    await run_in_threadpool(
                        services_of(request).ui.record,
                        viewer.who.principal.name,
                        "ui:action:failed",
                        target=request.url.path,
                        outcome=AuditOutcome.FAILURE,
                        details={"error": type(exc).__name__, "detail": exc.detail[:512]},
                    )
                return error_page(request, exc)

        return run


def ui_router() -> APIRouter:
    """A router for pages under /ui (HTML errors, not in the OpenAPI schema)."""
    return APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
