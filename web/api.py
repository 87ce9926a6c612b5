"""Declaring JSON API endpoints: one decorator routes, authenticates, parses and documents a view.

Usage::

    bp = Blueprint("things", __name__, url_prefix="/api/v1")

    class NewThing(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(min_length=1, max_length=200)

    @api_route(bp, "/things", methods=["POST"], body=NewThing, status=201,
               summary="Create a thing", response=ThingOut)
    def create_thing(body: NewThing):
        ...
        return thing_dict, 201

``body`` is parsed from the JSON request body and passed as ``body=``; ``query`` is parsed from the
query string and passed as ``query=``. Invalid input answers 400 ``{"error": <sentence>, "field": ...}``.
``auth`` is ``"user"`` (default: a session or a Bearer token), ``"admin"`` or ``None`` (public).
``web.openapi`` builds ``/api/openapi.json`` from these declarations and ``app.url_map``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.platform.errors import UserError, pydantic_message
from web.auth import admin_required, current_user_required

NOT_JSON = "send a JSON object with Content-Type: application/json"
MAX_JSON_DEPTH = 32
NOT_FINITE = "numbers must be finite: NaN, Infinity and numbers beyond ±1.8e308 are not accepted"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ApiSpec:
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    description: str = ""
    auth: str | None = "user"
    tag: str = ""


def api_route(
    bp: Blueprint,
    rule: str,
    *,
    methods: list[str],
    summary: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    description: str = "",
    auth: str | None = "user",
) -> Callable:
    if auth not in ("user", "admin", None):
        raise ValueError(f"auth must be 'user', 'admin' or None, not {auth!r}")
    spec = ApiSpec(summary, body, query, response, status, description, auth, tag=bp.name)

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def endpoint(*args, **kwargs):
            if body is not None:
                kwargs["body"] = parse_body(body)
            if query is not None:
                kwargs["query"] = parse_query(query)
            return view(*args, **kwargs)

        if auth == "user":
            endpoint = current_user_required(endpoint)
        elif auth == "admin":
            endpoint = admin_required(endpoint)
        endpoint.api_spec = spec
        if getattr(view, "csrf_exempt", False):
            endpoint.csrf_exempt = True
        bp.add_url_rule(rule, view_func=endpoint, methods=methods)
        return endpoint

    return decorate


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or UserError(400) saying how to send one.

    Parsed here rather than by ``request.get_json``: a body nested thousands deep makes the decoder
    raise RecursionError (not ValueError, so Flask's ``silent`` lets it through as a 500), and Python's
    decoder accepts NaN, Infinity and 1e999, which no parameter means and PostgreSQL's JSON refuses."""
    if not request.is_json:
        raise UserError(NOT_JSON)
    try:
        data = json.loads(request.get_data(cache=True), parse_constant=_refuse_constant)
    except _NotFinite:
        raise UserError(NOT_FINITE) from None
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(NOT_JSON) from None
    if not isinstance(data, dict):
        raise UserError(NOT_JSON)
    _check_json(data)
    return data


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> None:
    raise _NotFinite(name)


def _check_json(data: Any) -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH``, non-finite numbers and NUL characters in strings
    (iteratively: no recursion)."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(NOT_FINITE)
        if isinstance(value, str):
            refuse_nul(value, path)
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise UserError(f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in items:
                where = f"{path}.{key}" if path else str(key)
                if isinstance(key, str):
                    refuse_nul(key, where)
                stack.append((child, depth + 1, where))


def refuse_nul(text: str, field: str) -> None:
    """UserError(400) naming ``field`` for a NUL character: PostgreSQL cannot store one in text, and no
    name, path or parameter here means one."""
    if "\x00" in text:
        raise UserError(f"'{field}' contains a NUL character (\\u0000); remove it.", field=field or None)


def refuse_nul_in_args_and_form() -> None:
    """``before_request``: the query string and a form body, once for every route (JSON bodies are checked
    by ``json_object``)."""
    for key, value in request.args.items(multi=True):
        refuse_nul(key, key)
        refuse_nul(value, key)
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in request.form.items(multi=True):
            refuse_nul(key, key)
            refuse_nul(value, key)


MAX_PAGE = 500  # the most rows one page of a list answers (datasets, maps, tokens, samples, jobs)


class PageQuery(BaseModel):
    """``?limit=&offset=`` of a list endpoint; without them, the first page (of ``limit``'s default)."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=100, ge=1, le=MAX_PAGE, description=f"rows per page (at most {MAX_PAGE})")
    offset: int = Field(default=0, ge=0, le=10_000_000, description="rows to skip (the previous next_offset)")


def parse_body(model: type[M]) -> M:
    return validate(model, json_object())


def parse_query(model: type[M]) -> M:
    data: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    return validate(model, data)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = pydantic_message(exc)
        raise UserError(message, field=field) from None
