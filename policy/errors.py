"""Policy errors: parse/compile problems and evaluation failures."""

from __future__ import annotations

from pki.errors import TrustdError


class PolicyError(TrustdError):
    title = "Policy error"


class PolicyCompileError(PolicyError):
    """A module does not parse or compile; `detail` carries file:line."""

    title = "Policy does not compile"


class PolicyEvaluationError(PolicyError):
    """Evaluation failed (including a panic inside the engine)."""

    title = "Policy evaluation failed"
