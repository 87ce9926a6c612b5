"""CSRF protection: a random token per browser session, sent back in ``X-CSRFToken`` (or a form field).

Rule (``check_csrf``, run before every view): a POST/PUT/PATCH/DELETE must carry the session's token
when the request carries the session cookie and no ``Authorization`` header. The cookie is the ambient
credential a forged cross-site request would ride on; a request without it has no authority to abuse,
and a request with an ``Authorization`` header is authenticated by that header alone (the session is
then ignored, see ``web.auth``), which a browser never adds to a cross-site request by itself.

Login is the one state-changing request that comes before a session:

* the HTML form (``POST /login``) requires the token that ``GET /login`` put into the page and session;
* the JSON endpoint (``POST /api/v1/auth/login``) accepts no form encodings, only
  ``application/json``, which a cross-site page cannot send without a CORS preflight that this app never
  grants; and when the browser says where the request comes from (``Origin``, else ``Referer``) it must
  be this host. That stops login CSRF (signing a victim into the attacker's account).

Pages get the token from ``<meta name="csrf-token">``, API clients from ``GET /api/v1/auth/csrf``.
Logging in replaces the token (the session is cleared first), so clients fetch it again afterwards.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import current_app, request, session

from common.platform.errors import UserError

SESSION_KEY = "_csrf"
HEADER = "X-CSRFToken"
FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MESSAGE = "missing or wrong CSRF token; fetch one from /api/v1/auth/csrf and send it in X-CSRFToken"


class CSRFError(UserError):
    status = 400


def csrf_token() -> str:
    """This session's token, created on first use."""
    token = session.get(SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[SESSION_KEY] = token
    return token


def exempt(view):
    """Mark a view as doing its own CSRF defence (only the JSON login does)."""
    view.csrf_exempt = True
    return view


def token_matches() -> bool:
    expected = session.get(SESSION_KEY)
    sent = request.headers.get(HEADER)
    if sent is None and _is_form():
        sent = request.form.get(FORM_FIELD)
    return bool(expected and sent) and hmac.compare_digest(str(expected), str(sent))


def _is_form() -> bool:
    return request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data")


def check_csrf() -> None:
    """``before_request`` hook; raises CSRFError (400) when the rule above is broken."""
    if request.method not in UNSAFE_METHODS or request.headers.get("Authorization") is not None:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if view is not None and getattr(view, "csrf_exempt", False):
        return
    if current_app.config["SESSION_COOKIE_NAME"] not in request.cookies:
        return
    if not token_matches():
        raise CSRFError(MESSAGE)


def require_form_token() -> None:
    """For views that must have a token even without a cookie (the HTML login form)."""
    if not token_matches():
        raise CSRFError(MESSAGE)


def check_same_origin() -> None:
    """Refuse a request whose ``Origin`` (else ``Referer``) names another host."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        if source == "null":
            raise CSRFError("requests from an opaque origin cannot sign in; open the login page directly")
        return
    parts = urlsplit(source)
    if parts.netloc != request.host:
        raise CSRFError(
            f"this request comes from {parts.scheme}://{parts.netloc}, not from this server; sign in from "
            "the server's own pages or without a browser"
        )
