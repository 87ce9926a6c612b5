"""The OpenAPI 3.1 document of the JSON API, built from ``app.url_map`` and the ``web.api.api_route``
declarations (request body, query and response models), plus every public job kind's params schema.

A route under ``/api/`` without a declaration still appears (with its endpoint name as summary), so the
document never silently misses an endpoint; declare it with ``api_route`` to document its inputs.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel

from common import jobs
from web.api import NOT_JSON, ApiSpec

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}


def build_document(app: Flask) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": _error_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/"):
            continue
        view = app.view_functions[rule.endpoint]
        spec: ApiSpec = getattr(view, "api_spec", None) or ApiSpec(summary=rule.endpoint, auth=None)
        path, path_params = _openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                rule.endpoint, method, spec, path_params, components
            )
    _add_job_kinds(components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "latentlab API",
            "version": "1",
            "description": (
                "Authenticate with a browser session (then send the CSRF token from /api/v1/auth/csrf in "
                "X-CSRFToken on POST/PUT/PATCH/DELETE) or with a personal API token in "
                "`Authorization: Bearer ll_…` (no CSRF token needed). Errors are JSON "
                '`{"error": "<what to change>", "field": "<which input>"}`.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a personal API token"},
                "session": {"type": "apiKey", "in": "cookie", "name": "latentlab_session"},
            },
        },
    }


def _openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def replace(match: re.Match) -> str:
        schema = _CONVERTER_TYPES.get(match.group("conv") or "", {"type": "string"})
        params.append({"name": match.group("name"), "in": "path", "required": True, "schema": schema})
        return "{" + match.group("name") + "}"

    return _PARAM.sub(replace, rule), params


def _operation(
    endpoint: str, method: str, spec: ApiSpec, path_params: list, components: dict
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{endpoint.replace('.', '_')}_{method.lower()}",
        "summary": spec.summary,
        "tags": [spec.tag or endpoint.split(".")[0]],
    }
    if spec.description:
        op["description"] = spec.description
    parameters = list(path_params)
    if spec.query is not None:
        parameters += _query_parameters(spec.query, components)
    if parameters:
        op["parameters"] = parameters
    if spec.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(spec.body, components)}},
        }
    ok: dict[str, Any] = {"description": spec.summary}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": _schema_ref(spec.response, components)}}
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
    responses: dict[str, Any] = {str(spec.status): ok}
    if spec.body is not None or spec.query is not None or path_params:
        responses["400"] = {"description": f"invalid input ({NOT_JSON} for bodies)", **error}
    if spec.auth is not None:
        responses["401"] = {"description": "not signed in, or a bad API token", **error}
        op["security"] = [{"bearer": []}, {"session": []}]
    else:
        op["security"] = []
    if spec.auth == "admin":
        responses["403"] = {"description": "needs an admin account", **error}
    if path_params:
        responses["404"] = {"description": "no such object of yours", **error}
    op["responses"] = responses
    return op


def _schema_ref(model: type[BaseModel], components: dict) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel], components: dict) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema.get("properties", {}).items():
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return out


def _add_job_kinds(components: dict) -> None:
    import common.research.kinds  # noqa: F401  (registers every kind)

    variants = []
    for name, kind in sorted(jobs.KINDS.items()):
        if kind.internal:
            continue
        ref = _schema_ref(kind.params_model, components)
        variants.append(
            {
                "type": "object",
                "title": name,
                "properties": {"kind": {"const": name}, "params": ref},
                "required": ["kind"],
            }
        )
    components["JobKindParams"] = {
        "description": "The params object each job kind accepts (POST /api/v1/jobs).",
        "oneOf": variants,
    }


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "a sentence saying what to change"},
            "field": {"type": "string", "description": "the input the error is about"},
        },
        "required": ["error"],
    }
