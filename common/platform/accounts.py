"""Users, passwords (argon2id) and personal API tokens (stored as sha256, shown once).

Usage::

    user = create_user(session, "ada", "correct horse", role="admin")
    raw = issue_token(session, user, name="notebook")     # give raw to the user; only its hash is kept
    user = user_for_token(session, raw)                    # None when unknown or revoked
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import ApiToken, User, utcnow
from common.models.users import ROLES
from common.platform.errors import Conflict, NotFound, UserError

TOKEN_PREFIX = "ll_"
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")
MIN_PASSWORD = 8
_hasher = PasswordHasher()
_dummy_hash: str | None = None


def _dummy() -> str:
    # verifying against this when the user does not exist keeps the timing of both answers alike
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("not a password of anyone")
    return _dummy_hash


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _dummy(), password) and user is not None
    except (VerificationError, InvalidHashError):
        return False


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"The password must have at least {MIN_PASSWORD} characters.", field="password")
    if len(password) > 1024:
        raise UserError("The password must have at most 1024 characters.", field="password")


def create_user(session: Session, username: str, password: str, *, role: str = "member") -> User:
    if not USERNAME_RE.match(username or ""):
        raise UserError("A username has 2–64 characters: letters, digits, '_', '.' or '-'.", field="username")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}.", field="role")
    validate_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"A user named '{username}' already exists; pick another name.", field="username")
    user = User(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"No user named '{username}'.")
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """Change the password and end every existing session of the user."""
    validate_password(password)
    user.password_hash = hash_password(password)
    user.session_version += 1


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


MAX_TOKEN_DAYS = 3650


def issue_token(
    session: Session, user: User, name: str = "default", expires_in_days: int | None = None
) -> str:
    """Create a personal API token; returns the raw token (shown once, never stored). With
    ``expires_in_days`` it stops working that many days from now."""
    name = (name or "default").strip()
    if not 1 <= len(name) <= 64:
        raise UserError("A token name has 1–64 characters.", field="name")
    expires_at = None
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
            raise UserError(f"'expires_in_days' must be 1 to {MAX_TOKEN_DAYS}.", field="expires_in_days")
        expires_at = utcnow() + timedelta(days=expires_in_days)
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id, name=name, token_hash=_digest(raw), prefix=raw[:10], expires_at=expires_at
    )
    session.add(token)
    session.flush()
    return raw


def user_for_token(session: Session, raw: str) -> User | None:
    if not raw or not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(raw)))
    if token is None or token.revoked_at is not None or not token.user.active:
        return None
    stamp = utcnow()
    if token.expires_at is not None and token.expires_at <= stamp:
        return None
    # a write per request would serialise every Bearer call on SQLite; a minute's precision is enough
    if token.last_used_at is None or (stamp - token.last_used_at).total_seconds() > 60:
        token.last_used_at = stamp
    return token.user


def revoke_token(session: Session, user: User, token_id: int) -> None:
    """Revoke a token of ``user``; an admin may revoke anyone's (a leaked token). Another member's token
    is NotFound, exactly like a token that does not exist."""
    token = session.get(ApiToken, token_id)
    if token is None or (token.user_id != user.id and user.role != "admin"):
        raise NotFound(f"No token {token_id} of yours exists.")
    token.revoked_at = token.revoked_at or utcnow()


def ensure_admin(session: Session, password: str | None = None, username: str = "admin") -> str | None:
    """Create the first admin when no user exists; returns the password to print once (None if users
    already exist). ``password`` (``LATENTLAB_ADMIN_PASSWORD``) is used instead of a random one."""
    if session.scalar(select(User.id).limit(1)) is not None:
        return None
    password = password or secrets.token_urlsafe(12)
    create_user(session, username, password, role="admin")
    return password
