"""Error answers: JSON ``{"error": <what to change>, "field": ...}`` under ``/api/``, an HTML page
elsewhere; never a stack trace. Unexpected errors are logged with the request id the answer names."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from common.platform.errors import UserError

log = logging.getLogger("latentlab.web")


def register(app: Flask) -> None:
    app.register_error_handler(UserError, _user_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def _answer(status: int, body: dict):
    if wants_json():
        response = jsonify(body)
        response.status_code = status
        return response
    try:
        return render_template("error.html", status=status, message=body["error"]), status
    except Exception:  # the page shell itself failed (e.g. the database is down): plain text
        log.exception("rendering the error page failed")
        return body["error"], status, {"Content-Type": "text/plain; charset=utf-8"}


def _user_error(exc: UserError):
    return _answer(exc.status, exc.to_dict())


def _http_error(exc: HTTPException):
    status = exc.code or 500
    if status >= 500:
        return _unexpected(exc)
    return _answer(status, {"error": _sentence(exc, status)})


def _sentence(exc: HTTPException, status: int) -> str:
    method, path = request.method, request.path
    if status == 404:
        if wants_json():
            return f"There is no API endpoint {method} {path}; see /api/openapi.json for the endpoints."
        return f"There is no page at {path}."
    if status == 405:
        valid = getattr(exc, "valid_methods", None) or []
        allowed = sorted(m for m in valid if m not in ("OPTIONS", "HEAD"))
        return f"{method} is not allowed on {path}; use {', '.join(allowed) or 'another method'}."
    if status == 413:
        return f"The request body is larger than {body_limit()}; send less data in one request."
    if status == 400:
        return "The request is malformed; send a JSON object with Content-Type: application/json."
    return exc.description or exc.name


def body_limit() -> str:
    """The body limit in words: "1 MB" (MiB, as everywhere here), else a count of bytes."""
    return limit_in_words(current_app.config.get("MAX_CONTENT_LENGTH") or 0)


def limit_in_words(limit: int) -> str:
    """A byte limit as the API says it: "1 MB" (MiB, as everywhere here), else a count of bytes."""
    return f"{limit // 2**20} MB" if limit and limit % 2**20 == 0 else f"{limit:,} bytes"


def _unexpected(exc: BaseException):
    request_id = g.get("request_id", "unknown")
    log.error("request %s %s %s failed", request_id, request.method, request.path, exc_info=exc)
    return _answer(500, {"error": f"internal error; the server log has details (request id {request_id})"})
