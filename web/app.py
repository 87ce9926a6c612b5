"""The Flask app factory: a short list of named steps. It never runs migrations (``latentlab db upgrade``
does) and touches no broker: the broker is resolved at first use (``web.queue``).

Usage::

    app = create_app(settings)        # settings=None: Settings.from_env()
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import timedelta

from flask import Flask, g, request
from sqlalchemy.orm import sessionmaker

from common.config import Settings
from common.db import make_engine, session_factory
from web import auth, csrf, errors
from web.queue import BrokerLink
from web.ratelimit import LoginLimiter

log = logging.getLogger("latentlab.web")

MAX_BODY_BYTES = 1024 * 1024
SESSION_COOKIE = "latentlab_session"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
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
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_BODY_BYTES,
    )
    app.json.sort_keys = False


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
    from web.blueprints import datasets, docs, embeddings, events, health, jobs, pages, queues, samples

    for module in (health, auth_bp, jobs, datasets, embeddings, samples, queues, events, docs, pages):
        app.register_blueprint(module.bp)


def register_request_hooks(app: Flask) -> None:
    app.before_request(_assign_request_id)
    app.before_request(csrf.check_csrf)
    app.after_request(_add_headers)
    app.teardown_appcontext(auth.close_db)
    app.context_processor(lambda: {"csrf_token": csrf.csrf_token})


def _assign_request_id() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex[:16]


def _add_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/") or request.path == "/healthz":
        response.headers.setdefault("Cache-Control", "no-store")
    if "request_id" in g:
        response.headers["X-Request-Id"] = g.request_id
    return response
