"""The UI's cookies: the session cookie and the sign-in form's CSRF cookie."""

from __future__ import annotations

from fastapi import Request, Response

from trustd.services.container import Services


def services_of(request: Request) -> Services:
    """The app's services (for code that runs outside a view's dependencies)."""
    services: Services = request.app.state.services
    return services


def session_cookie(services: Services) -> str:
    # The __Host- prefix pins the cookie to this origin, path / and Secure (RFC 6265bis
    # §4.1.3.2); it is only allowed on a Secure cookie.
    return "__Host-trustd-session" if services.settings.ui_cookie_secure else "trustd-session"


def login_cookie(services: Services) -> str:
    return "__Host-trustd-login" if services.settings.ui_cookie_secure else "trustd-login"


def set_cookie(response: Response, services: Services, name: str, value: str) -> None:
    """Set an HttpOnly, SameSite=Strict cookie for the UI session's lifetime."""
    response.set_cookie(
        name,
        value,
        max_age=int(services.settings.ui_session_ttl.total_seconds()),
        path="/",
        secure=services.settings.ui_cookie_secure,
        httponly=True,
        samesite="strict",
    )


def delete_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/")
