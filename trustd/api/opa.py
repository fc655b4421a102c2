"""The OPA-compatible API (`/v1/data`, `/v1/policies`, `/health`, batch) and the admin API
for policy bundles and the decision log.

OPA clients work unchanged against these routes (OPA REST API reference: Data API,
Policy API, Health API). Who may ask for decisions is a setting (`policy_api_auth`):
`token` (default) accepts an admin token or the dedicated `policy_api_token`; `mtls`
accepts the SPIFFE IDs in `policy_api_identities`, as forwarded by the mTLS-terminating
proxy on this host in `X-Forwarded-Client-Cert`; `none` is for a loopback listener only.
Changing policies always needs an admin token.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime
from starlette.types import ASGIApp, Receive, Scope, Send

from pki.errors import TrustdError
from policy import json_text
from policy.bundle import Bundle
from policy.data import parse_data_path, parse_patch
from policy.engine import NO_INPUT
from policy.errors import (
    InvalidDataWrite,
    InvalidInput,
    PolicyCompileError,
    PolicyError,
    PolicyEvaluationError,
    UnknownPath,
)
from trustd.api.deps import (
    LOCAL_ADMIN_SCOPE_KEY,
    AdminDep,
    Exemption,
    ServicesDep,
    bearer_token,
    exempt,
    require,
)
from trustd.api.middleware import answered_by, read_body
from trustd.api.policy_schemas import (
    BundleCreate,
    DecisionPublic,
    PolicyRevisionPublic,
    PolicyStatus,
)
from trustd.api.problems import problem_response, problem_type, trustd_error_response
from trustd.api.wire import CountQuery, LimitQuery, RevisionPath
from trustd.domain.policy import Decision, PolicyRevisionRecord
from trustd.errors import InvalidRequest, NotFound, Unauthenticated
from trustd.services.auth import Principal
from trustd.services.container import Services
from trustd.services.policy import decision_document, normalise_input
from trustd.xfcc import MalformedXfcc, parse_xfcc

_bearer = HTTPBearer(auto_error=False, description="Admin token or the policy API token")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the active revision and follow activations announced by any replica."""
    services: Services = app.state.services
    await run_in_threadpool(services.policy.load)
    stop = asyncio.Event()
    watcher = asyncio.create_task(services.policy.watch(stop), name="trustd-policy-watch")
    yield
    stop.set()
    await watcher
    await run_in_threadpool(services.policy.close)


router = APIRouter(lifespan=_lifespan)
opa = APIRouter(tags=["opa"])
admin = APIRouter(prefix="/v1/admin/policy", tags=["policy"])


def _xfcc_identity(header: str) -> str | None:
    # One element only: several mean several hops, and this host's proxy must sanitise the
    # header (Envoy `forward_client_cert_details: SANITIZE_SET`).
    try:
        elements = parse_xfcc(header)
    except MalformedXfcc:
        return None
    return elements[0].get("uri") if len(elements) == 1 else None


async def decision_caller(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who asks for a decision, per `policy_api_auth`.

    Raises:
        Unauthenticated: no acceptable credential.
    """
    return await identify_caller(
        services,
        local=bool(request.scope.get(LOCAL_ADMIN_SCOPE_KEY)),
        peer=request.client.host if request.client else "",
        xfcc=request.headers.get("x-forwarded-client-cert", ""),
        token=credentials.credentials if credentials is not None else None,
    )


async def identify_caller(
    services: Services, *, local: bool, peer: str, xfcc: str, token: str | None
) -> str:
    """The caller's name from what the request carries: the admin socket, the forwarded
    client certificate (`mtls`) or a bearer token (`token`), per `policy_api_auth`.

    Raises:
        Unauthenticated: no acceptable credential.
    """
    settings = services.settings
    if local:
        return "local:admin-socket"
    mode = settings.policy_api_auth
    if mode == "none":
        return "anonymous"
    if mode == "mtls":
        identity = _xfcc_identity(xfcc)
        # Only a proxy on this host may vouch for the caller's certificate.
        if _is_loopback(peer) and identity in settings.policy_api_identities:
            return str(identity)
        raise Unauthenticated("this endpoint needs an allowed SPIFFE ID over mTLS")
    if token is None:
        raise Unauthenticated("this endpoint needs a token: Authorization: Bearer <token>")
    expected = settings.policy_api_token
    if expected is not None and hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    ):
        return "policy-token"
    principal: Principal = await run_in_threadpool(services.tokens.authenticate, token)
    return principal.name


CallerDep = Annotated[str, Depends(decision_caller)]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Options:
    """The Data API's query parameters (OPA REST API, Data API "Query Parameters")."""

    metrics: bool = False
    provenance: bool = False
    explain: bool = False
    strict: bool = False


_NO_OPTIONS = _Options()
# Embedded decisions of a request up to this many inputs are evaluated on the event loop's
# thread (tens of microseconds each); a larger batch goes to a worker thread.
ON_LOOP_INPUTS = 16


def _options(params: Mapping[str, str]) -> _Options:
    if not params:
        return _NO_OPTIONS
    return _Options(
        metrics=_flag(params, "metrics"),
        provenance=_flag(params, "provenance"),
        explain=bool(params.get("explain")),
        strict=_flag(params, "strict-builtin-errors"),
    )


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name)
    return value is not None and value.lower() not in ("false", "0")


class _Json(JSONResponse):
    """`application/json` rendered by orjson (the same bytes as `JSONResponse` gives for
    what a decision answers, a few times faster)."""

    def render(self, content: Any) -> bytes:
        return json_text.dumps(content)


def _decision_body(options: _Options, decision: Decision, version: str) -> dict[str, Any]:
    body: dict[str, Any] = {"decision_id": decision.decision_id}
    if decision.result.defined:
        body["result"] = decision.result.value
    if options is _NO_OPTIONS:
        return body
    if options.metrics:
        # OPA's metric names (REST API "Performance Metrics").
        body["metrics"] = {
            "timer_server_handler_ns": decision.latency_us * 1000,
            "timer_rego_query_eval_ns": 0 if decision.cached else decision.latency_us * 1000,
            "counter_server_query_cache_hit": int(decision.cached),
        }
    if options.provenance:
        body["provenance"] = {
            "version": version,
            "bundles": {"trustd": {"revision": str(decision.revision)}},
        }
    if options.explain:
        # The engines expose no trace; say so instead of silently ignoring the flag.
        body["explanation"] = []
        body["warning"] = {"code": "api_usage_warning", "message": "explain is not supported"}
    return body


def _parse_input(raw: bytes) -> str:
    """The canonical input text, `NO_INPUT` when the body has no `input` key: OPA then
    leaves `input` undefined (Data API: "If the input document is not provided, the input
    document is undefined")."""
    if not raw.strip():
        return NO_INPUT
    try:
        document = json_text.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc.args[0]}") from None
    if not isinstance(document, dict):
        raise InvalidInput('the request body must be an object: {"input": ...}')
    if "input" not in document:
        return NO_INPUT
    return normalise_input(document["input"])


def _opa_error(status: int, exc: PolicyError, **extra: Any) -> JSONResponse:
    """An OPA error body (`code`, `message`) inside the problem document."""
    return problem_response(
        status,
        exc.title,
        exc.detail,
        problem_type(type(exc).__name__),
        code=str(exc.fields.get("code", exc.code)),
        message=str(exc.fields.get("message", exc.detail)),
        **extra,
    )


async def _evaluate(
    services: Services, path: str, inputs: list[str], caller: str, *, strict: bool = False
) -> list[Decision | PolicyError]:
    """Every input's decision (or the error its evaluation failed with), through the one
    loop single decisions and batches share."""
    decide = functools.partial(services.policy.decide_many, path, inputs, caller, strict=strict)
    if services.settings.policy_engine == "remote" or len(inputs) > ON_LOOP_INPUTS:
        # A remote OPA's round trip, or a batch, would hold the loop: in a worker thread.
        return await run_in_threadpool(decide)
    # A few embedded decisions take microseconds each: on the event loop's own thread,
    # without the thread pool's hop (bench/decisions.py measures both). regorus objects
    # are bound to the thread that made them; policy/engine.py keeps one prepared state per
    # thread and raises its errors without reference cycles, so each dies on its thread.
    return decide()


async def _evaluate_one(
    services: Services, path: str, input_json: str, caller: str, *, strict: bool = False
) -> Decision:
    """Raises:
    UnknownPath: nothing lives at `path`.
    PolicyEvaluationError: the evaluation failed.
    """
    outcome = (await _evaluate(services, path, [input_json], caller, strict=strict))[0]
    if isinstance(outcome, PolicyError):
        try:
            raise outcome
        finally:
            # Its traceback holds this frame: no reference cycle through the local
            # (policy/engine.py `_guard`).
            del outcome
    return outcome


async def _decide(
    services: Services,
    options: _Options,
    version: str,
    path: str,
    input_json: str,
    caller: str,
    method: str,
) -> JSONResponse:
    try:
        # OPA REST API, Data API query parameters: strict-builtin-errors.
        decision = await _evaluate_one(services, path, input_json, caller, strict=options.strict)
    except UnknownPath:
        # OPA: a path nothing lives at is an undefined document, 200 without `result`.
        return _Json({})
    except PolicyEvaluationError as exc:
        # OPA answers a failed evaluation with 500 and its code (eval_conflict_error,
        # eval_type_error, eval_builtin_error, ...).
        return _opa_error(500, exc)
    body = _decision_body(options, decision, version)
    if input_json == NO_INPUT and method == "POST":
        body["warning"] = {
            "code": "api_usage_warning",
            "message": "'input' key missing from the request",
        }
    return _Json(body)


async def _post_data(
    services: Services, options: _Options, version: str, path: str, raw: bytes, caller: str
) -> JSONResponse:
    return await _decide(services, options, version, path, _parse_input(raw), caller, "POST")


@opa.post(
    "/v1/data/{path:path}",
    summary="Evaluate a document for an input (OPA Data API)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
@opa.post("/v1/data", include_in_schema=False, dependencies=[exempt(Exemption.POLICY_API)])
async def post_data(
    request: Request, services: ServicesDep, caller: CallerDep, path: str = ""
) -> JSONResponse:
    """`{"input": ...}` in, `{"result": ..., "decision_id": ...}` out; no `result` when the
    document is undefined for that input. (Answered by `DecisionPath` before routing; the
    route declares it and serves whatever reaches the router.)"""
    options = _options(request.query_params)
    return await _post_data(
        services, options, request.app.version, path, await request.body(), caller
    )


@opa.get(
    "/v1/data/{path:path}",
    summary="Evaluate a document (input as a query parameter)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
@opa.get("/v1/data", include_in_schema=False, dependencies=[exempt(Exemption.POLICY_API)])
async def get_data(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    path: str = "",
    input: Annotated[str | None, Query(max_length=65536)] = None,
) -> JSONResponse:
    """OPA's GET form: `?input=<JSON>`."""
    input_json = NO_INPUT
    if input is not None:
        input_json = _parse_input(json.dumps({"input": _loads(input)}).encode())
    options = _options(request.query_params)
    return await _decide(services, options, request.app.version, path, input_json, caller, "GET")


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"input is not JSON: {exc.args[0]}") from None


def _ad_hoc(services: Services, query: str, input_json: str) -> JSONResponse:
    try:
        rows = services.policy.ad_hoc(query, input_json)
    except PolicyCompileError as exc:
        # OPA's Query API: a query that does not parse or compile is a 400
        # `invalid_parameter` with the problem (`rego_parse_error`, ...) in `errors[]`.
        errors = exc.fields.get("errors")
        return _opa_error(400, exc, **({"errors": errors} if isinstance(errors, list) else {}))
    except PolicyEvaluationError as exc:
        return _opa_error(500, exc)
    return JSONResponse({"result": rows} if rows else {})


async def _data_body(request: Request) -> Any:
    """The JSON body of a data write (OPA answers a body that does not decode with 400
    invalid_parameter, and writes nothing)."""
    raw = await request.body()
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise InvalidDataWrite("the request body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidDataWrite(f"the request body is not JSON: {exc}") from None


def _not_json(constant: str) -> Any:
    # RFC 8259 §6: NaN and Infinity are not JSON numbers (Python's decoder takes them; the
    # store and the engine would not).
    raise ValueError(f"{constant} is not a JSON value")


def _written(request: Request, started: float) -> Response:
    """OPA's answer to a data write: 204, or 200 with the metrics when asked for them."""
    if _flag(request.query_params, "metrics"):
        elapsed = int((time.perf_counter() - started) * 1e9)
        return JSONResponse({"metrics": {"timer_server_handler_ns": elapsed}})
    return Response(status_code=204)


@opa.put(
    "/v1/data/{path:path}",
    summary="Create or overwrite a data document (OPA Data API)",
    status_code=204,
    dependencies=[require("admin:data:write")],
)
@opa.put(
    "/v1/data",
    include_in_schema=False,
    status_code=204,
    dependencies=[require("admin:data:write")],
)
async def put_data(
    request: Request, principal: AdminDep, services: ServicesDep, path: str = ""
) -> Response:
    """The body is the JSON document; missing objects above `path` are created. With
    `If-None-Match: *` an existing document is kept and the answer is 304. A new revision
    on every replica; data where a rule lives is refused (400)."""
    started = time.perf_counter()
    segments = parse_data_path(path)
    value = await _data_body(request)
    # OPA honours exactly `*` (RFC 9110 §13.1.2: "*" matches any current representation).
    keep = request.headers.get("if-none-match", "").strip() == "*"
    row = await run_in_threadpool(
        functools.partial(services.policy.put_data, principal, segments, value, if_none_match=keep)
    )
    if row is None:
        return Response(status_code=304)
    return _written(request, started)


@opa.patch(
    "/v1/data/{path:path}",
    summary="Apply a JSON Patch to the data documents (OPA Data API)",
    status_code=204,
    dependencies=[require("admin:data:write")],
)
@opa.patch(
    "/v1/data",
    include_in_schema=False,
    status_code=204,
    dependencies=[require("admin:data:write")],
)
async def patch_data(
    request: Request, principal: AdminDep, services: ServicesDep, path: str = ""
) -> Response:
    """The body is a list of `{"op": "add"|"remove"|"replace", "path", "value"}` (RFC
    6902), each path under `path`; all apply or none does (404 when a target is missing)."""
    started = time.perf_counter()
    patches = parse_patch(parse_data_path(path), await _data_body(request))
    await run_in_threadpool(services.policy.patch_data, principal, patches, "/" + path)
    return _written(request, started)


@opa.delete(
    "/v1/data/{path:path}",
    summary="Delete a data document (OPA Data API)",
    status_code=204,
    dependencies=[require("admin:data:write")],
)
@opa.delete(
    "/v1/data",
    include_in_schema=False,
    status_code=204,
    dependencies=[require("admin:data:write")],
)
async def delete_data(
    request: Request, principal: AdminDep, services: ServicesDep, path: str = ""
) -> Response:
    """404 when nothing lives at `path`; the root cannot be deleted (400)."""
    started = time.perf_counter()
    await run_in_threadpool(services.policy.delete_data, principal, parse_data_path(path))
    return _written(request, started)


@opa.post(
    "/v1/query",
    summary="Evaluate an ad-hoc query (OPA Query API)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
async def post_query(request: Request, services: ServicesDep, caller: CallerDep) -> JSONResponse:
    """`{"query": "<rego>", "input": ...}` in; `{"result": [<bindings>, ...]}` out, with no
    `result` when the query is undefined (OPA's Query API omits an empty result set)."""
    try:
        document = json.loads(await request.body())
    except ValueError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc.args[0]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("query"), str):
        raise InvalidInput('the request body must be {"query": "<rego>", "input": ...}')
    input_json = normalise_input(document["input"]) if "input" in document else NO_INPUT
    return _ad_hoc(services, document["query"], input_json)


@opa.get(
    "/v1/query",
    summary="Evaluate an ad-hoc query given as `q` (OPA Query API)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
async def get_query(
    services: ServicesDep,
    caller: CallerDep,
    q: Annotated[str, Query(max_length=65536)],
) -> JSONResponse:
    """OPA's GET form, `?q=<rego>`, without input."""
    return _ad_hoc(services, q, NO_INPUT)


@opa.post(
    "/",
    summary="Evaluate the default decision for the body as input (OPA's `POST /`)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
async def default_decision(
    request: Request, services: ServicesDep, caller: CallerDep
) -> JSONResponse:
    """The body is the input itself (not `{"input": ...}`); the answer is the bare value of
    `policy_default_decision` (`data.system.main` unless configured), 404
    `undefined_document` when it is undefined (OPA REST API, "Execute a Simple Query")."""
    raw = await request.body()
    input_json = NO_INPUT
    if raw.strip():
        try:
            input_json = normalise_input(json.loads(raw))
        except ValueError as exc:
            raise InvalidInput(f"the request body is not JSON: {exc.args[0]}") from None
    path = services.settings.policy_default_decision
    document = "data." + path.strip("/").replace("/", ".")
    message = f"document undefined: {document}"
    # OPA's body (`code`, `message`) inside the problem document, as every OPA API error.
    undefined = problem_response(
        404,
        "Undefined document",
        message,
        problem_type("UndefinedDocument"),
        code="undefined_document",
        message=message,
    )
    try:
        decision = await _evaluate_one(services, path, input_json, caller)
    except UnknownPath:
        return undefined
    except PolicyEvaluationError as exc:
        return _opa_error(500, exc)
    if not decision.result.defined:
        return undefined
    return JSONResponse(decision.result.value)


@opa.post(
    "/v1/batch/data/{path:path}",
    summary="Evaluate one document for many inputs",
    dependencies=[exempt(Exemption.POLICY_API)],
)
async def batch_data(
    request: Request, services: ServicesDep, caller: CallerDep, path: str
) -> JSONResponse:
    """`{"inputs": {"<id>": input, ...}}` -> `{"responses": {"<id>": {"result": ...,
    "decision_id": ...}}}` (Enterprise OPA's batch shape). An input whose evaluation fails
    gets `{"code", "message"}` in its place and the status is 207. (Answered by
    `DecisionPath` before routing, as `POST /v1/data`.)"""
    options = _options(request.query_params)
    return await _batch(services, options, request.app.version, path, await request.body(), caller)


async def _batch(
    services: Services, options: _Options, version: str, path: str, raw: bytes, caller: str
) -> JSONResponse:
    try:
        document = json_text.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"the request body is not JSON: {exc.args[0]}") from None
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, dict):
        raise InvalidInput('the request body must be {"inputs": {"<id>": <input>, ...}}')
    policy = services.policy
    # An unknown path fails the whole request, as a single decision would.
    policy.require_known(path)
    responses: dict[str, Any] = {}
    keys: list[str] = []
    texts: list[str] = []
    for key, item in inputs.items():
        responses[key] = None  # the answer keeps the request's order
        try:
            texts.append(normalise_input(item))
            keys.append(key)
        except PolicyError as exc:
            responses[key] = _batch_error(exc)
    failed = len(keys) < len(inputs)
    outcomes = await _evaluate(services, path, texts, caller, strict=options.strict)
    for key, outcome in zip(keys, outcomes, strict=True):
        if isinstance(outcome, PolicyError):
            failed = True
            responses[key] = _batch_error(outcome)
        else:
            responses[key] = _decision_body(options, outcome, version)
    return _Json({"responses": responses}, status_code=207 if failed else 200)


def _batch_error(exc: PolicyError) -> dict[str, Any]:
    return {"code": exc.fields.get("code"), "message": exc.detail}


class DecisionPath:
    """The lean path of the hot Data API routes, `POST /v1/data/{path}` and `POST
    /v1/batch/data/{path}`: answered here, below the middleware every request passes
    (request id, size and nesting limits, the last word on errors, metrics, access log),
    without the router and the per-request dependency solving the admin API needs, which
    profiles showed cost more than the decision itself. The answers are the routes': the
    same functions build them, errors go through the one mapper
    (`trustd.api.problems`), and the routes stay declared for the OpenAPI document.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The routes the answers belong to: their path templates label the latency metric.
        self._single = _route(post_data)
        self._batch = _route(batch_data)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        url: str = scope["path"]
        if url == "/v1/data" or url.startswith("/v1/data/"):
            batch, path, route = False, url[len("/v1/data/") :], self._single
        elif url.startswith("/v1/batch/data/"):
            batch, path, route = True, url[len("/v1/batch/data/") :], self._batch
        else:
            await self.app(scope, receive, send)
            return
        answered_by(scope, route)
        app = scope["app"]
        services: Services = app.state.services
        raw, receive = await read_body(receive)
        try:
            caller = await self._caller(scope, services)
            query = scope.get("query_string", b"")
            params = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            options = _options(params)
            answer = _batch if batch else _post_data
            response = await answer(services, options, app.version, path, raw, caller)
        except TrustdError as exc:
            response = trustd_error_response(exc)
        await response(scope, receive, send)

    @staticmethod
    async def _caller(scope: Scope, services: Services) -> str:
        authorization: str | None = None
        xfcc = ""
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-forwarded-client-cert" and not xfcc:
                xfcc = value.decode("latin-1")
        client = scope.get("client")
        return await identify_caller(
            services,
            local=bool(scope.get(LOCAL_ADMIN_SCOPE_KEY)),
            peer=client[0] if client else "",
            xfcc=xfcc,
            token=bearer_token(authorization),
        )


def _route(endpoint: Any) -> APIRoute:
    for route in opa.routes:
        if isinstance(route, APIRoute) and route.endpoint is endpoint and "{" in route.path:
            return route
    raise LookupError(endpoint.__name__)


@opa.get(
    "/health",
    summary="OPA health: 200 once a policy revision is active",
    dependencies=[exempt(Exemption.PUBLIC)],
)
def health(services: ServicesDep) -> dict[str, Any]:
    """200 `{}` when this process evaluates an active revision."""
    _ = services.policy.active
    return {}


def _policy_document(module_id: str, source: str) -> dict[str, Any]:
    return {"id": module_id, "raw": source}


@opa.get(
    "/v1/policies",
    summary="List the active bundle's modules (OPA Policy API)",
    dependencies=[exempt(Exemption.POLICY_API)],
)
@opa.get("/v1/policies/", include_in_schema=False, dependencies=[exempt(Exemption.POLICY_API)])
def list_policies(services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    return {
        "result": [_policy_document(k, v) for k, v in sorted(services.policy.modules().items())]
    }


@opa.get(
    "/v1/policies/{module_id:path}",
    summary="One module of the active bundle",
    dependencies=[exempt(Exemption.POLICY_API)],
)
def get_policy(module_id: str, services: ServicesDep, caller: CallerDep) -> dict[str, Any]:
    """Raises:
    NotFound: no such module.
    """
    modules = services.policy.modules()
    if module_id not in modules:
        raise NotFound(f"no policy {module_id!r}")
    return {"result": _policy_document(module_id, modules[module_id])}


@opa.put(
    "/v1/policies/{module_id:path}",
    summary="Add or replace a module (new revision)",
    dependencies=[require("admin:policy:write")],
)
async def put_policy(
    module_id: str, request: Request, principal: AdminDep, services: ServicesDep
) -> Response:
    """The body is Rego source. A module set that does not compile is refused (400, with
    file:line and OPA's `errors[]`) and the active revision stays active."""
    raw = await request.body()
    try:
        source = raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("the policy must be UTF-8 text") from None
    try:
        await run_in_threadpool(services.policy.put_module, principal, module_id, source)
    except PolicyCompileError as exc:
        errors = exc.fields.get("errors")
        return _opa_error(400, exc, **({"errors": errors} if isinstance(errors, list) else {}))
    return JSONResponse({})


@opa.delete(
    "/v1/policies/{module_id:path}",
    summary="Remove a module (new revision)",
    dependencies=[require("admin:policy:write")],
)
async def delete_policy(
    module_id: str, principal: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    await run_in_threadpool(services.policy.delete_module, principal, module_id)
    return {}


# -- admin: bundles and the decision log -------------------------------------------------


def _revision(row: PolicyRevisionRecord, active: int | None) -> PolicyRevisionPublic:
    return PolicyRevisionPublic(
        revision=row.revision,
        label=row.label,
        digest=row.digest,
        modules=sorted(row.modules),
        signed=row.signed,
        note=row.note,
        created_by=row.created_by,
        created_at=row.created_at,
        active=row.revision == active,
    )


@admin.get("/status", response_model=PolicyStatus, dependencies=[require("admin:policy:read")])
def status(principal: AdminDep, services: ServicesDep) -> PolicyStatus:
    """The revision this process evaluates, the cache and the decision log."""
    policy = services.policy
    return PolicyStatus(
        revision=policy.revision,
        engine=services.settings.policy_engine,
        cached_decisions=len(policy.cache),
        decision_log_dropped=policy.decision_log.dropped,
    )


@admin.get(
    "/bundles",
    response_model=list[PolicyRevisionPublic],
    dependencies=[require("admin:policy:read")],
)
def list_bundles(principal: AdminDep, services: ServicesDep) -> list[PolicyRevisionPublic]:
    """Revisions, newest first."""
    active = services.policy.revision
    return [_revision(r, active) for r in services.policy.list_revisions()]


@admin.post(
    "/bundles",
    response_model=PolicyRevisionPublic,
    status_code=201,
    dependencies=[require("admin:policy:write")],
)
def create_bundle(
    body: BundleCreate, principal: AdminDep, services: ServicesDep
) -> PolicyRevisionPublic:
    """Store modules + data as a new revision (and activate it unless told not to)."""
    row = services.policy.create_revision(
        principal,
        Bundle(body.modules, body.data, body.label),
        activate=body.activate,
        note=body.note,
    )
    return _revision(row, services.policy.revision)


@admin.get("/bundles/{revision}", dependencies=[require("admin:policy:read")])
def get_bundle(
    revision: RevisionPath, principal: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    """A revision with its modules and data."""
    row = services.policy.get_revision(revision)
    return {
        **_revision(row, services.policy.revision).model_dump(mode="json"),
        "modules": row.modules,
        "data": row.data,
    }


@admin.post(
    "/bundles/{revision}/activate",
    response_model=PolicyRevisionPublic,
    dependencies=[require("admin:policy:write")],
)
def activate_bundle(
    revision: RevisionPath, principal: AdminDep, services: ServicesDep
) -> PolicyRevisionPublic:
    """Make a revision active on every replica."""
    row = services.policy.activate(principal, revision)
    return _revision(row, services.policy.revision)


@admin.post(
    "/rollback", response_model=PolicyRevisionPublic, dependencies=[require("admin:policy:write")]
)
def rollback(principal: AdminDep, services: ServicesDep) -> PolicyRevisionPublic:
    """Activate the revision that was active before the current one."""
    row = services.policy.rollback(principal)
    return _revision(row, services.policy.revision)


@admin.get("/diff", dependencies=[require("admin:policy:read")])
def diff_bundles(
    principal: AdminDep,
    services: ServicesDep,
    old: Annotated[CountQuery, Query(alias="from")],
    new: Annotated[CountQuery, Query(alias="to")],
) -> dict[str, Any]:
    """Modules and data that differ between two revisions."""
    return services.policy.diff(old, new)


@admin.post(
    "/bundles/import",
    response_model=PolicyRevisionPublic,
    status_code=201,
    dependencies=[require("admin:policy:write")],
)
async def import_bundle(
    request: Request, principal: AdminDep, services: ServicesDep, activate: bool = True
) -> PolicyRevisionPublic:
    """An OPA bundle (`application/gzip`); its signature is verified with the configured
    keys. A bad or missing signature or a module that does not compile stores nothing."""
    blob = await request.body()
    row = await run_in_threadpool(
        lambda: services.policy.import_bundle(principal, blob, activate=activate)
    )
    return _revision(row, services.policy.revision)


@admin.get(
    "/bundles/{revision}/export",
    response_class=Response,
    dependencies=[require("admin:policy:read")],
)
def export_bundle(revision: RevisionPath, principal: AdminDep, services: ServicesDep) -> Response:
    """The revision as an OPA bundle (signed when a signing key is configured)."""
    return Response(
        services.policy.export_bundle(revision),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="bundle-{revision}.tar.gz"'},
    )


@admin.get(
    "/decisions",
    response_model=list[DecisionPublic],
    response_model_exclude_unset=True,
    dependencies=[require("admin:decision:read")],
)
def list_decisions(
    principal: AdminDep,
    services: ServicesDep,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    path: str | None = None,
    caller: str | None = None,
    result: Annotated[
        str | None,
        Query(
            description=(
                "JSON value; true/false match the verdict (a boolean result, or its "
                "allowed/allow field)"
            )
        ),
    ] = None,
    undefined: bool = False,
    limit: LimitQuery = 100,
) -> list[DecisionPublic]:
    """Logged decisions, newest first, filtered by time, path, caller and result."""
    rows = services.policy.query_decisions(
        since=since,
        until=until,
        path=path,
        caller=caller,
        result=_loads(result) if result is not None else None,
        undefined=undefined,
        limit=limit,
    )
    return [DecisionPublic.model_validate(decision_document(r)) for r in rows]


@admin.get(
    "/decisions/export",
    response_class=StreamingResponse,
    dependencies=[require("admin:decision:read")],
)
def export_decisions(
    principal: AdminDep, services: ServicesDep, since: AwareDatetime | None = None
) -> StreamingResponse:
    """Every logged decision as JSON lines, oldest first."""
    return StreamingResponse(
        services.policy.export_decisions(since), media_type="application/x-ndjson"
    )


router.include_router(opa)
router.include_router(admin)
