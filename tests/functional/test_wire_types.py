"""Every number a request carries is bounded and every body integer or flag is strict
(`trustd.api.wire`): the class of "a huge integer reaches `timedelta` or BIGINT and the
server answers 500" is refused by construction, not one field at a time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel

from trustd.api.wire import INT64_MAX
from trustd.app import create_app

from .conftest import make_settings


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app as `trustd serve` builds it; not started, so no database is needed."""
    tmp = tmp_path_factory.mktemp("wire")
    settings = make_settings(tmp, f"sqlite:///{tmp}/unused.db")
    settings.data_dir.mkdir(parents=True)
    return create_app(settings)


def _integers(node: Any, doc: dict[str, Any], where: str, seen: set[str]) -> Iterator[str]:
    """Where `node` (an OpenAPI schema fragment) has an integer without an upper bound."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            target: Any = doc
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            yield from _integers(target, doc, f"{where}->{ref}", seen | {ref})
        if node.get("type") == "integer":
            bound = node.get("maximum", node.get("exclusiveMaximum"))
            # FastAPI writes some bounds as floats: 2^63 - 1 then reads as 2^63.
            if bound is None or float(bound) > float(INT64_MAX):
                yield where
        for key, value in node.items():
            yield from _integers(value, doc, f"{where}/{key}", seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _integers(value, doc, f"{where}[{i}]", seen)


def test_every_request_integer_has_an_upper_bound(app: FastAPI) -> None:
    doc = app.openapi()
    unbounded = [
        where
        for path, operations in doc["paths"].items()
        for method, op in operations.items()
        for where in _integers(
            {"p": op.get("parameters", []), "b": op.get("requestBody", {})},
            doc,
            f"{method.upper()} {path}",
            set(),
        )
    ]
    assert unbounded == []
    # The walk sees integers at all (a walk that finds nothing proves nothing).
    assert '"maximum": 9223372036854775807' in str(doc).replace("'", '"')


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _models(arg)


def _lax_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[str]:
    for name, field in model.model_fields.items():
        for nested in _models(field.annotation):
            if nested not in seen:
                seen.add(nested)
                yield from _lax_fields(nested, seen)
        annotation = field.annotation
        scalars = {annotation, *getattr(annotation, "__args__", ())}
        if scalars & {int, bool} and not any(getattr(m, "strict", False) for m in field.metadata):
            yield f"{model.__name__}.{name}"


def test_every_body_integer_and_flag_is_strict(app: FastAPI) -> None:
    lax: list[str] = []
    checked = 0
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        params = dependant.body_params if dependant is not None else []
        for model in (m for p in params for m in _models(p.field_info.annotation)):
            checked += 1
            lax.extend(_lax_fields(model, {model}))
    assert checked > 10
    assert sorted(set(lax)) == []


def test_every_operation_declares_its_problem_responses(app: FastAPI) -> None:
    doc = app.openapi()
    assert doc["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    missing = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            expected = {"503"}
            if path.startswith(("/v1/admin", "/v1/entries", "/v1/svid")):
                expected |= {"401", "403"}
            if op.get("parameters") or op.get("requestBody"):
                expected |= {"400", "422"}
            for status in expected:
                content = responses.get(status, {}).get("content", {})
                if list(content) != ["application/problem+json"]:
                    missing.append(f"{method.upper()} {path} {status}")
    assert missing == []
    svid = doc["paths"]["/v1/svid/x509"]["post"]["responses"]
    assert {"201", "400", "401", "403", "413", "422", "503"} <= set(svid)


def test_every_integer_parameter_has_an_upper_bound_including_the_ui(app: FastAPI) -> None:
    """The UI's routes are not in the OpenAPI document: their parameters are checked here."""
    unbounded = []
    checked = 0
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            continue
        for param in [*dependant.query_params, *dependant.path_params]:
            annotation = param.field_info.annotation
            if int not in {annotation, *getattr(annotation, "__args__", ())}:
                continue
            checked += 1
            bounds = [getattr(m, "le", None) for m in param.field_info.metadata]
            if not any(b is not None and b <= INT64_MAX for b in bounds):
                unbounded.append(f"{route.path} {param.name}")
    assert checked > 10
    assert unbounded == []
