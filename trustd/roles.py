"""Administrative roles. Kept apart from the services so the CLI and the agent can name
them without loading the server's storage stack."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
