"""The Flask app factory: a short list of named steps. It never runs migrations (``latentlab db upgrade``
does) and touches no broker: the broker is resolved at first use (``web.queue``).

Usage::

    app = create_app(settings)        # settings=None: Settings.from_env()
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

from flask import Flask, abort, g, has_request_context, request, send_from_directory
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy.orm import sessionmaker
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter, ValidationError

from common.models.base import ID_SPELLING, is_id_text, looks_numeric
from common.platform.config import Settings
from common.platform.db import make_engine, session_factory
from common.platform.errors import UserError
from common.platform.storage import UnsafePath, resolve_inside
from web import auth, csrf, errors
from web.queue import BrokerLink
from web.ratelimit import LoginLimiter
from web.security_headers import HSTS, SECURITY_HEADERS

log = logging.getLogger("latentlab.web")

SESSION_COOKIE = "latentlab_session"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class LatentlabFlask(Flask):
    """Flask with a static file view that refuses what resolves outside the static folder.

    Werkzeug's ``safe_join`` refuses ``..`` and absolute paths but follows symlinks; here the real path
    (symlinks followed, percent-encoding decoded) must lie inside the real static folder."""

    def send_static_file(self, filename: str):
        if self.static_folder is None:
            abort(404)
        root = Path(os.path.realpath(self.static_folder))
        try:
            path = resolve_inside(root, filename)
            if not path.is_file():
                abort(404)
        except (UnsafePath, OSError):  # OSError: a name the file system cannot even look up
            abort(404)
        relative = path.relative_to(root).as_posix()
        return send_from_directory(root, relative, max_age=self.get_send_file_max_age(relative))


class OddId(str):
    """A path id written with other digits ("٣", "²", "007"); ``_refuse_odd_ids`` answers 400 naming it."""


class RowIdConverter(IntegerConverter):
    """The ``int`` converter of every route: ids are ASCII digits without a leading zero. Werkzeug's own
    matches any Unicode decimal digit (``/samples/٣`` reached sample 3) and leading zeros; here digits of
    another spelling become an ``OddId`` (400 naming the variable, before the view runs), and anything else
    does not match (404 as before)."""

    regex = r"[^/]+"

    def to_python(self, value: str):
        if is_id_text(value) or value == "0":
            return int(value)
        if looks_numeric(value):
            return OddId(value)
        raise ValidationError()


class SessionCookies(SecureCookieSessionInterface):
    """The session cookie is Secure when ``LATENTLAB_SECURE_COOKIES`` says so, and also whenever the
    request came over HTTPS (directly, or as a trusted proxy's ``X-Forwarded-Proto`` says)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = super().get_cookie_secure(app)
        return configured or (has_request_context() and request.is_secure)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = LatentlabFlask(__name__)
    configure(app, settings)
    init_extensions(app, settings)
    register_blueprints(app)
    errors.register(app)
    register_request_hooks(app)
    return app


def configure(app: Flask, settings: Settings) -> None:
    """Flask's configuration, mapped explicitly from Settings."""
    app.config.update(
        SECRET_KEY=settings.resolved_secret_key(),
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        # the lifetime counts from sign-in (or the last change), not from the last request
        SESSION_REFRESH_EACH_REQUEST=False,
        # the same limit is waitress's max_request_body_size (``latentlab web``), checked before reading
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_body_bytes,
    )
    app.json.sort_keys = False
    app.url_map.converters["int"] = RowIdConverter
    app.session_interface = SessionCookies()
    if settings.trusted_proxies:
        # believe X-Forwarded-* only from the proxies we were told about; otherwise any client could
        # choose its own address (and dodge the per-address login limit) or claim https
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)


def init_extensions(app: Flask, settings: Settings) -> None:
    """The engine, the session factories, the broker link, the login limiter and Flask-Login."""
    engine_options = {} if settings.is_sqlite else {"connect_args": {"connect_timeout": 5}}
    engine = make_engine(settings, **engine_options)
    broker = BrokerLink(settings)
    app.extensions["latentlab"] = auth.WebServices(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        read_sessions=sessionmaker(
            bind=engine.execution_options(latentlab_readonly=True), expire_on_commit=False
        ),
        broker=broker,
        login_limiter=LoginLimiter(settings.login_attempts_per_minute, broker.redis),
    )
    auth.init_login(app)


def register_blueprints(app: Flask) -> None:
    from web.blueprints import auth as auth_bp
    from web.blueprints import (
        datasets,
        docs,
        embeddings,
        events,
        exports,
        health,
        jobs,
        pages,
        queues,
        samples,
        sweeps,
    )

    modules = (
        health,
        auth_bp,
        jobs,
        datasets,
        embeddings,
        samples,
        sweeps,
        exports,
        queues,
        events,
        docs,
        pages,
    )
    for module in modules:
        app.register_blueprint(module.bp)


def register_request_hooks(app: Flask) -> None:
    from web.api import refuse_nul_in_args_and_form
    from web.research import bound_ids

    # every blueprint: an id in a path that no row can have (beyond 64 bits) is a 404, not a 500
    app.url_value_preprocessor(_refuse_odd_ids)
    app.url_value_preprocessor(bound_ids)
    app.before_request(_assign_request_id)
    app.before_request(refuse_nul_in_args_and_form)
    app.before_request(csrf.check_csrf)
    app.after_request(_add_headers)
    app.teardown_appcontext(auth.close_db)
    app.context_processor(lambda: {"csrf_token": csrf.csrf_token})


def _refuse_odd_ids(_endpoint: str | None, values: dict | None) -> None:
    for name, value in (values or {}).items():
        if isinstance(value, OddId):
            raise UserError(f"'{name}': {str(value)!r} is not an id; {ID_SPELLING}.", field=name)


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]


def _add_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    if request.path.startswith("/api/") or request.path == "/healthz":
        response.headers.setdefault("Cache-Control", "no-store")
    if "request_id" in g:
        response.headers["X-Request-Id"] = g.request_id
    return response
