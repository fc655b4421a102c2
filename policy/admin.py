"""The admin RBAC decision: what `rego/admin.rego` (`data.trustd.admin.decision`) answers
for a role holding an `admin:<resource>:<action>` permission."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from policy.engine import EmbeddedEngine

DECISION_PATH = "trustd/admin/decision"
PACKAGE = ("trustd", "admin")
# The same shape `rego/admin.rego` accepts: anything else is refused there, so it is refused
# when a route declares it, not at the first request.
PERMISSION = re.compile(r"admin:[a-z0-9_-]+:[a-z0-9_-]+")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def is_permission(name: str) -> bool:
    """Whether `name` has the `admin:<resource>:<action>` form."""
    return PERMISSION.fullmatch(name) is not None


def checked_permission(name: str) -> str:
    """`name`, once it has the `admin:<resource>:<action>` form (for declarations, so a
    malformed one fails when the route is defined rather than refusing every caller).

    Raises:
        ValueError: `name` is not of that form.
    """
    if not is_permission(name):
        raise ValueError(f"{name!r} is not an admin:<resource>:<action> permission")
    return name


def evaluate(engine: EmbeddedEngine, role: str, permission: str) -> Verdict:
    """What the admin policy in `engine` says about `role` holding `permission`.

    Default deny: an undefined or malformed answer refuses.

    Raises:
        UnknownPath: `engine` holds no `trustd.admin` package.
        PolicyEvaluationError: the evaluation failed.
    """
    document = json.dumps({"role": role, "permission": permission}, sort_keys=True)
    result = engine.query(DECISION_PATH, document)
    value = result.value if result.defined and isinstance(result.value, dict) else {}
    allowed = value.get("allowed") is True
    return Verdict(allowed, str(value.get("reason") or "the admin policy gives no answer"))
