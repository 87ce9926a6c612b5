"""Who is asking, and the request-scoped services every blueprint uses.

Two ways in:

* a browser session (Flask-Login over Flask's signed cookie). The session stores ``"<user id>:<session
  version>"``; the loader refuses it when the user is disabled or their ``session_version`` moved on
  (logout, password change), so an old cookie replayed later is worth nothing;
* ``Authorization: Bearer ll_…``, a personal API token (``common.platform.accounts.user_for_token``).
  When that header is present the session cookie is ignored, which is why token requests need no CSRF token.

Usage in a blueprint::

    @api_route(bp, "/things", methods=["POST"], body=NewThing)   # web.api: login required by default
    def create_thing(body: NewThing):
        user = principal()                 # the signed-in Principal
        with get_sessions().begin() as s:  # write transaction
            ...
        get_db().scalars(...)              # request-scoped read session, closed at teardown
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, jsonify, redirect, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import Publisher
from common.models import User
from common.models.base import row_id
from common.platform.accounts import TOKEN_PREFIX, check_password, user_for_token
from common.platform.config import Settings
from common.platform.errors import Forbidden, UserError
from web.csrf import csrf_token

WRONG_CREDENTIALS = "Wrong username or password."
SIGN_IN_MESSAGE = "sign in or send Authorization: Bearer <token>"
BAD_TOKEN_MESSAGE = (
    "the API token is unknown, revoked, expired or malformed; create a new one with POST /api/v1/tokens "
    "and send it as Authorization: Bearer <token>"
)


@dataclass(frozen=True)
class Principal:
    """The signed-in user as a plain value (no ORM object outlives its session)."""

    id: int
    username: str
    role: str
    session_version: int
    via: str  # "session" | "token"

    is_authenticated = True
    is_active = True
    is_anonymous = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role, "auth": self.via}

    @classmethod
    def of(cls, user: User, via: str) -> Principal:
        return cls(user.id, user.username, user.role, user.session_version, via)


class Unauthorized(UserError):
    status = 401


# -- services -----------------------------------------------------------------------------------------


@dataclass
class WebServices:
    """What ``create_app`` builds once per app: stored on ``app.extensions["latentlab"]``."""

    settings: Settings
    engine: Any
    sessions: sessionmaker[Session]  # write transactions: ``with sessions.begin() as s``
    read_sessions: sessionmaker[Session]  # deferred transactions (never the SQLite write lock)
    broker: Any  # web.queue.BrokerLink
    login_limiter: Any  # web.ratelimit.LoginLimiter

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


def services() -> WebServices:
    return current_app.extensions["latentlab"]


def get_settings() -> Settings:
    return services().settings


def get_sessions() -> sessionmaker[Session]:
    """The session factory for writes (``with get_sessions().begin() as s:``) and for common services."""
    return services().sessions


def get_db() -> Session:
    """The request's read session (closed at teardown). On SQLite its transactions start deferred, so
    reads never queue behind writers; write through ``get_sessions().begin()`` instead."""
    if "latentlab_db" not in g:
        g.latentlab_db = services().read_sessions()
    return g.latentlab_db


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("latentlab_db", None)
    if session is not None:
        session.close()


def get_publisher() -> Publisher | None:
    """The job publisher, or None while no broker is resolvable (jobs then wait for the reaper)."""
    return services().broker.publisher()


def principal() -> Principal:
    """The current user; only call it behind ``current_user_required`` (or an ``api_route``)."""
    user = current_user._get_current_object()
    if not isinstance(user, Principal):
        raise RuntimeError("principal() called on an anonymous request; guard the view")
    return user


# -- Flask-Login --------------------------------------------------------------------------------------


def bearer_token() -> str | None:
    """The raw token of an ``Authorization: Bearer`` header; "" when the header is there but malformed."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, raw = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return raw.strip()


def init_login(app) -> LoginManager:
    manager = LoginManager()
    manager.session_protection = "basic"
    manager.init_app(app)

    @manager.user_loader
    def _load_from_session(user_key: str) -> Principal | None:
        if request.headers.get("Authorization") is not None:
            return None  # an explicit credential wins over the ambient cookie
        user_id, _, version = user_key.partition(":")
        if row_id(user_id) is None or not (version.isascii() and version.isdigit()):
            return None
        # a session of its own: get_db()'s snapshot must not start before the view's writes
        with services().read_sessions() as db:
            user = db.get(User, int(user_id))
            if user is None or not user.active or user.session_version != int(version):
                return None
            return Principal.of(user, "session")

    @manager.request_loader
    def _load_from_token(_request) -> Principal | None:
        raw = bearer_token()
        if raw is None:
            return None
        if not raw.startswith(TOKEN_PREFIX):
            g.latentlab_auth_error = BAD_TOKEN_MESSAGE
            return None
        # user_for_token records last_used_at: a short write transaction
        with get_sessions().begin() as session:
            user = user_for_token(session, raw)
            found = Principal.of(user, "token") if user is not None else None
        if found is None:
            g.latentlab_auth_error = BAD_TOKEN_MESSAGE
        return found

    @manager.unauthorized_handler
    def _unauthorized():
        if request.path.startswith("/api/"):
            return unauthorized_response()
        return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))

    return manager


def unauthorized_response():
    response = jsonify({"error": g.get("latentlab_auth_error", SIGN_IN_MESSAGE)})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="latentlab"'
    return response


def forbidden_response():
    response = jsonify({"error": "this needs an admin account; ask an admin to do it"})
    response.status_code = 403
    return response


def current_user_required(view):
    """API views: 401 JSON unless signed in (session cookie) or authenticated by a Bearer token."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return unauthorized_response()
        return view(*args, **kwargs)

    return wrapper


def admin_required(view):
    """API views: 401 when anonymous, 403 for members."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if not current_user.is_authenticated:
            return unauthorized_response()
        if not current_user.is_admin:
            return forbidden_response()
        return view(*args, **kwargs)

    return wrapper


# -- signing in and out -------------------------------------------------------------------------------


def authenticate(username: str, password: str) -> Principal:
    """Check a username and password (rate limited); the same 401 sentence for every wrong pair."""
    services().login_limiter.hit(username, request.remote_addr)
    with services().read_sessions() as db:
        user = db.scalar(select(User).where(User.username == username))
    # verified after the session closed: argon2 takes a while and needs no database connection
    if not check_password(user, password):
        raise Unauthorized(WRONG_CREDENTIALS)
    if not user.active:
        raise Forbidden("This account is disabled; ask an admin to enable it.")
    return Principal.of(user, "session")


def start_session(user: Principal, *, fresh: bool = True) -> str:
    """Sign ``user`` into this browser session; returns the session's CSRF token. ``fresh`` clears the
    session first (a new CSRF token: nothing from before the sign-in carries over)."""
    if fresh:
        session.clear()
    login_user(user)
    session.permanent = True
    return csrf_token()


def end_all_sessions(user: Principal) -> None:
    """Sign the user out of every browser: bump ``session_version`` so that every session cookie issued
    so far, this one included and even if replayed, is refused. API tokens are not affected."""
    with get_sessions().begin() as db:
        db.execute(update(User).where(User.id == user.id).values(session_version=User.session_version + 1))
    logout_user()
    session.clear()
