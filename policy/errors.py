"""Policy errors: parse/compile problems, evaluation failures, unknown paths and bundles."""

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


class UnknownPath(PolicyError):
    """No package, rule or data document at the requested path."""

    title = "Unknown policy path"


class InvalidInput(PolicyError):
    """The decision input is not a JSON document."""

    title = "Invalid policy input"


class InvalidPolicyBundle(PolicyError):
    """A bundle archive is malformed (layout, manifest, data files)."""

    title = "Invalid policy bundle"


class BundleSignatureError(PolicyError):
    """A bundle's `.signatures.json` is missing, malformed or does not verify."""

    title = "Bundle signature rejected"
