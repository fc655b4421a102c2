"""Wire models of the UI accounts API (`/v1/admin/users`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, SecretStr

from trustd.api.wire import Flag, WireModel
from trustd.roles import Role
from trustd.services.ui import MIN_PASSWORD_LENGTH, USERNAME_PATTERN


class UserCreate(WireModel):
    username: str = Field(pattern=USERNAME_PATTERN, max_length=64)
    password: SecretStr = Field(min_length=MIN_PASSWORD_LENGTH, max_length=1024)
    role: Role = Role.VIEWER
    totp: Flag = False


class UserPublic(WireModel):
    username: str
    role: Role
    totp: bool
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


class UserCreated(UserPublic):
    # otpauth:// enrolment URI for an authenticator app; returned once.
    totp_uri: str | None = None
