"""Read-only queries about accounts, shared by the API and the CLI.

Usage::

    users = list_users(session)                      # id order
    admin = first_admin_id(session)                  # int | None
    tokens = user_tokens(session, user.id)           # newest first
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import ApiToken, User
from common.platform.db import page


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def first_admin_id(session: Session) -> int | None:
    return session.scalar(select(User.id).where(User.role == "admin").order_by(User.id))


def user_id_named(session: Session, username: str) -> int | None:
    return session.scalar(select(User.id).where(User.username == username))


def token_page(
    session: Session, user_id: int, *, limit: int, offset: int = 0
) -> tuple[list[ApiToken], int | None]:
    """A user's API tokens newest first, one page (``common.platform.db.page``)."""
    stmt = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())
    return page(session, stmt, limit, offset)


def user_tokens(session: Session, user_id: int, limit: int | None = None) -> list[ApiToken]:
    """A user's API tokens, newest first (at most ``limit``)."""
    stmt = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
