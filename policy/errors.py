"""Policy errors: parse/compile problems, evaluation failures, unknown paths and bundles."""

from __future__ import annotations

from pki.errors import TrustdError


class PolicyError(TrustdError):
    """Carries OPA's error `code` and `message` as fields too, so OPA clients that read
    them from an error body (opa-python-client does) understand trustd's problems."""

    title = "Policy error"
    code = "internal_error"

    def __init__(self, detail: str, **fields: object) -> None:
        super().__init__(detail, **fields)
        self.fields.setdefault("code", self.code)
        self.fields.setdefault("message", detail)


class PolicyCompileError(PolicyError):
    """A module does not parse or compile; `detail` carries file:line."""

    title = "Policy does not compile"
    code = "invalid_parameter"


class PolicyEvaluationError(PolicyError):
    """Evaluation failed (including a panic inside the engine); `code` is OPA's
    (`eval_conflict_error`, `eval_type_error`, `eval_builtin_error`, ...)."""

    title = "Policy evaluation failed"

    @property
    def opa_code(self) -> str:
        return str(self.fields.get("code", self.code))


class UnknownPath(PolicyError):
    """No package, rule or data document at the requested path."""

    title = "Unknown policy path"
    code = "resource_not_found"


class InvalidInput(PolicyError):
    """The decision input is not a JSON document."""

    title = "Invalid policy input"
    code = "invalid_parameter"


class InvalidModuleId(PolicyError):
    """A policy (module) id is not a safe relative path inside a bundle."""

    title = "Invalid policy id"
    code = "invalid_parameter"


class InvalidPolicyBundle(PolicyError):
    """A bundle archive is malformed (layout, manifest, data files)."""

    title = "Invalid policy bundle"
    code = "invalid_parameter"


class BundleSignatureError(PolicyError):
    """A bundle's `.signatures.json` is missing, malformed or does not verify."""

    title = "Bundle signature rejected"
    code = "invalid_parameter"


# OPA's error codes (OPA REST API "Errors"; topdown and ast error types).
EVAL_CONFLICT = "eval_conflict_error"
EVAL_TYPE = "eval_type_error"
EVAL_BUILTIN = "eval_builtin_error"
EVAL_INTERNAL = "internal_error"
REGO_PARSE = "rego_parse_error"
REGO_COMPILE = "rego_compile_error"
REGO_TYPE = "rego_type_error"
REGO_UNSAFE_VAR = "rego_unsafe_var_error"


class DataNotFound(PolicyError):
    """A data write names a document that does not exist (OPA: 404 resource_not_found)."""

    title = "Data document not found"
    code = "resource_not_found"


class DataConflict(PolicyError):
    """A data write meets a non-object where it would create one (OPA:
    `storage_write_conflict_error`, answered 404 resource_conflict)."""

    title = "Data write conflict"
    code = "resource_conflict"


class InvalidDataWrite(PolicyError):
    """A data write that is malformed or would leave the store invalid: a bad path or
    patch, a root that is not an object, or data where a rule lives (OPA: 400
    invalid_parameter)."""

    title = "Invalid data write"
    code = "invalid_parameter"
