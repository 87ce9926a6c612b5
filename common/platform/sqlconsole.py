"""Read-only SQL over the lab database (``latentlab sql``): one statement, bounded in rows and time.

Usage::

    result = run_readonly(settings, "SELECT mode, COUNT(*) FROM v_generations GROUP BY mode",
                          max_rows=1000, timeout_s=10)
    result.columns, result.rows, result.truncated

Three layers keep it read-only: the text is parsed and must be exactly one ``SELECT``/``WITH``/``VALUES``
statement; on SQLite the file is opened with ``mode=ro`` and ``PRAGMA query_only=ON`` (a progress handler
stops it at the time limit); on PostgreSQL it runs in a ``READ ONLY`` transaction with a
``statement_timeout``, rolled back afterwards. Password hashes and token hashes read as NULL on SQLite.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from common.platform.config import Settings
from common.platform.errors import UserError

READ_KEYWORDS = ("select", "with", "values")
SECRET_COLUMNS = {("users", "password_hash"), ("api_tokens", "token_hash")}


class SqlRefused(UserError):
    status = 400


@dataclass
class SqlResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows than max_rows existed


def split_statements(sql: str) -> list[str]:
    """The statements of ``sql`` (semicolon-separated, ignoring quotes and comments), comments removed,
    empty ones dropped."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            buf.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            buf.append(" ")
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            buf.append(" ")
        elif ch == ";":
            out.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(ch)
            i += 1
    out.append("".join(buf))
    return [s.strip() for s in out if s.strip()]


def check_statement(sql: str) -> str:
    """The single read-only statement in ``sql``; raises SqlRefused saying what to change otherwise."""
    statements = split_statements(sql)
    if not statements:
        raise SqlRefused('No SQL statement given; pass one SELECT, e.g. "SELECT * FROM v_samples LIMIT 5".')
    if len(statements) > 1:
        raise SqlRefused(f"Only one statement is allowed and {len(statements)} were given; drop the others.")
    first = statements[0].split(None, 1)[0].lower().lstrip("(")
    if first not in READ_KEYWORDS:
        raise SqlRefused(
            f"Only read-only queries (SELECT, WITH … SELECT, VALUES) are allowed, not {first.upper()}."
        )
    return statements[0]


def run_readonly(settings: Settings, sql: str, *, max_rows: int = 1000, timeout_s: float = 10.0) -> SqlResult:
    if max_rows < 1:
        raise SqlRefused("--max-rows must be at least 1.")
    if timeout_s <= 0:
        raise SqlRefused("--timeout must be more than 0 seconds.")
    statement = check_statement(sql)
    if settings.is_sqlite:
        return _run_sqlite(settings, statement, max_rows, timeout_s)
    return _run_postgres(settings, statement, max_rows, timeout_s)


def _sqlite_path(settings: Settings) -> str:
    url = settings.sqlalchemy_url
    path = url.removeprefix("sqlite:///")
    if path == url or not path or ":memory:" in path:
        raise SqlRefused(
            "latentlab sql needs a database file; LATENTLAB_DATABASE_URL is not a sqlite file URL."
        )
    return path


def _authorize(action: int, arg1, arg2, _db, _source) -> int:
    if action == sqlite3.SQLITE_READ and (arg1, arg2) in SECRET_COLUMNS:
        return sqlite3.SQLITE_IGNORE  # reads as NULL
    return sqlite3.SQLITE_OK


def _run_sqlite(settings: Settings, statement: str, max_rows: int, timeout_s: float) -> SqlResult:
    from pathlib import Path

    path = Path(_sqlite_path(settings)).resolve()
    if not path.exists():
        raise SqlRefused(f"No database at {path}; run `latentlab db upgrade` first.")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only=ON")
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
        conn.set_authorizer(_authorize)
        try:
            cur = conn.execute(statement)
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise SqlRefused(
                    f"The query ran past the time limit of {timeout_s:g} s and was stopped; "
                    "narrow it (WHERE, LIMIT) or raise --timeout."
                ) from None
            raise SqlRefused(f"SQL error: {exc}") from None
        except (sqlite3.DatabaseError, sqlite3.Warning, sqlite3.ProgrammingError) as exc:
            raise SqlRefused(f"SQL error: {exc}") from None
        columns = [d[0] for d in cur.description or ()]
        return SqlResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)
    finally:
        conn.close()


def _run_postgres(settings: Settings, statement: str, max_rows: int, timeout_s: float) -> SqlResult:
    from sqlalchemy.exc import DBAPIError

    from common.platform.db import make_engine

    engine = make_engine(settings, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            try:
                result = conn.exec_driver_sql(statement)
                rows = result.fetchmany(max_rows + 1)
            except DBAPIError as exc:
                conn.rollback()
                message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                if "statement timeout" in message:
                    raise SqlRefused(
                        f"The query ran past the time limit of {timeout_s:g} s and was stopped; "
                        "narrow it (WHERE, LIMIT) or raise --timeout."
                    ) from None
                raise SqlRefused(f"SQL error: {message}") from None
            columns = list(result.keys())
            conn.rollback()
        return SqlResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)
    finally:
        engine.dispose()
