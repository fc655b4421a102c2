"""UI accounts over JSON (`/v1/admin/users`, driven by `trustd admin user ...`)."""

from __future__ import annotations

from fastapi import APIRouter

from trustd.api import deps
from trustd.api.deps import AdminDep, ServicesDep
from trustd.domain.ui import UiUser
from trustd.web.schemas import UserCreate, UserCreated, UserPublic

router = APIRouter(prefix="/v1/admin/users", tags=["admin"])


def _user(row: UiUser) -> UserPublic:
    """The public form of an account."""
    return UserPublic(
        username=row.username,
        role=row.role,
        totp=row.totp,
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


@router.post(
    "", response_model=UserCreated, status_code=201, dependencies=[deps.require("admin:user:write")]
)
def create_user(body: UserCreate, principal: AdminDep, services: ServicesDep) -> UserCreated:
    """Create a UI account; the TOTP enrolment URI is in this response only."""
    created = services.ui.create_user(
        principal, body.username, body.password.get_secret_value(), body.role, totp=body.totp
    )
    return UserCreated(**_user(created.user).model_dump(), totp_uri=created.totp_uri)


@router.get("", response_model=list[UserPublic], dependencies=[deps.require("admin:user:read")])
def list_users(principal: AdminDep, services: ServicesDep) -> list[UserPublic]:
    """Every UI account."""
    return [_user(u) for u in services.ui.list_users()]


@router.post(
    "/{username}/disable",
    response_model=UserPublic,
    dependencies=[deps.require("admin:user:write")],
)
def disable_user(username: str, principal: AdminDep, services: ServicesDep) -> UserPublic:
    """Disable an account; its sessions end at once."""
    return _user(services.ui.disable_user(principal, username))
