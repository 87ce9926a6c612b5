"""common.platform.db helpers on the configured backend (SQLite, and PostgreSQL with --db=postgres)."""

from __future__ import annotations

from sqlalchemy import func, select

from common.models import User
from common.platform.db import insert_ignore


def _users(names):
    return [{"username": n, "password_hash": "x", "role": "member"} for n in names]


def test_insert_ignore_counts_only_new_rows(sessions):
    with sessions.begin() as s:
        assert insert_ignore(s, User.__table__, _users(["a", "b", "c", "d", "e"])) == 5
    with sessions.begin() as s:  # a redelivered batch overlapping the first: only the 3 new rows count
        assert insert_ignore(s, User.__table__, _users(["d", "e", "f", "g", "h"])) == 3
        assert insert_ignore(s, User.__table__, []) == 0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 8
