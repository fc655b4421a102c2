"""The OpenAPI document says which problem documents each operation can answer with.

FastAPI lists only the success status and its own 422. The errors an operation can meet
follow from what it declares (`trustd.api.deps`: a permission or an exemption) and what it
takes (parameters, a body), so they are derived here once for every route instead of being
repeated on each: a client generator or a fuzzer then knows every answer to expect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from trustd.api.deps import Declaration, Exemption
from trustd.api.problems import PROBLEM_JSON

_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; OPA API errors also carry OPA's code and message.",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "errors": {"type": "array", "items": {}},
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
}
_REF = {"$ref": "#/components/schemas/Problem"}

_DESCRIPTIONS = {
    400: "The request is malformed or refused (problem document)",
    401: "No credential, or one that is refused",
    403: "The credential does not allow this",
    404: "Nothing is there (it leaks nothing about what is not)",
    409: "The change conflicts with the current state",
    413: "The request body is larger than the server accepts",
    415: "The request body's media type is not accepted",
    422: "A parameter or body field is missing, mistyped or out of range",
    429: "Too many requests; retry after Retry-After",
    503: "The database or CA is not available; retry after Retry-After",
}
_BODY_METHODS = frozenset({"post", "put", "patch", "delete"})


def _declarations(dependant: Dependant) -> Iterator[str]:
    owner = getattr(dependant.call, "__self__", None)
    if isinstance(owner, Declaration):
        yield owner.declared
    for sub in dependant.dependencies:
        yield from _declarations(sub)


def problem_statuses(declared: str, method: str, takes_input: bool, has_path: bool) -> set[int]:
    """The problem statuses an operation can answer with, from its declaration and shape."""
    statuses = {503}
    if takes_input or method in _BODY_METHODS:
        # 400: refused input (including JSON nested too deep); 422: failed validation.
        statuses |= {400, 422}
    if method in _BODY_METHODS:
        statuses.add(413)
    if declared == Exemption.PUBLIC.value:
        return statuses | ({404} if has_path else set())
    statuses |= {401, 403}
    if has_path or declared == Exemption.POLICY_API.value:
        statuses.add(404)
    if method != "get":
        statuses.add(409)
    if declared == Exemption.ACME.value:
        # RFC 8555 §6.7 errors: badNonce and malformed (400), unauthorized (403),
        # accountDoesNotExist, unsupported media type (415), rateLimited (429).
        statuses |= {400, 404, 409, 415, 429}
    if declared == Exemption.SIGN_IN.value:
        statuses.add(429)
    return statuses


def install(app: FastAPI) -> None:
    """Make `app.openapi()` declare the problem responses of every operation."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _declare(app, document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _declare(app: FastAPI, document: dict[str, Any]) -> None:
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    paths: dict[str, Any] = document.get("paths", {})
    for route in iter_route_contexts(app.routes):
        dependant: Dependant | None = getattr(route, "dependant", None)
        operations = paths.get(getattr(route, "path_format", ""))
        if dependant is None or operations is None:
            continue
        declared = next(iter(_declarations(dependant)), Exemption.PUBLIC.value)
        takes_input = bool(dependant.query_params or dependant.path_params or dependant.body_params)
        for method in route.methods or ():
            operation = operations.get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status in sorted(
                problem_statuses(declared, method.lower(), takes_input, bool(dependant.path_params))
            ):
                # FastAPI's own 422 names a JSON body; trustd answers with a problem
                # document (`trustd.api.problems`), so it is replaced too.
                responses[str(status)] = {
                    "description": _DESCRIPTIONS[status],
                    "content": {PROBLEM_JSON: {"schema": _REF}},
                }
