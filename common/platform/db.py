"""Engines and sessions, without any web framework.

Usage::

    engine = make_engine(settings)
    Session = session_factory(engine)
    with Session.begin() as session:      # commits on success, rolls back on error
        session.add(...)

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on. Write
transactions start with ``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of
failing with "database is locked" when a read transaction tries to upgrade; read-only work can use
``readonly_session`` (a deferred transaction that never takes the write lock).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from common.platform.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 60_000


def make_engine(settings: Settings, **kwargs) -> Engine:
    """Create the engine for ``settings.sqlalchemy_url`` with the pragmas and pool the backend needs."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and ":memory:" not in url:
            os.makedirs(os.path.dirname(os.path.abspath(url.removeprefix("sqlite:///"))), exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # let SQLAlchemy's "begin" event decide how transactions start
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # writers queue on the busy timeout at BEGIN; readers never take the write lock
        if conn.get_execution_options().get("latentlab_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class SessionMaker(sessionmaker):
    """``maker()`` gives a session for reading (on SQLite a deferred transaction, which never holds the
    write lock however long it stays open); ``maker.begin()`` gives a write transaction that commits on
    success (on SQLite ``BEGIN IMMEDIATE``: it waits for the write lock up front instead of failing when a
    read transaction would have to upgrade). Write only inside ``begin()``."""

    @contextmanager
    def begin(self) -> Iterator[Session]:  # type: ignore[override]
        with self() as session, session.begin():
            session.connection(execution_options={"latentlab_write": True})
            yield session


def session_factory(engine: Engine) -> SessionMaker:
    return SessionMaker(bind=engine, expire_on_commit=False)


@contextmanager
def readonly_session(engine: Engine) -> Iterator[Session]:
    """A session for reads only: on SQLite it never takes the write lock (WAL readers never block)."""
    ro = engine.execution_options(latentlab_readonly=True)
    with Session(bind=ro, expire_on_commit=False) as session:
        yield session
        session.rollback()


def dispose_after_fork(engine: Engine) -> None:
    """Drop pooled connections inherited from a parent process (call in a forked worker child)."""
    engine.dispose(close=False)


def insert_ignore(session: Session, table, rows: list[dict]) -> int:
    """INSERT rows, skipping those that collide with a unique key (a redelivered chunk is a no-op).

    Returns how many rows were new.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    # rowcount of an executemany is not reliable across drivers (psycopg reports 0 for batched inserts):
    # count the rows the database says it inserted
    stmt = insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return len(session.execute(stmt, rows).all())


def page(session: Session, stmt, limit: int, offset: int = 0) -> tuple[list[Any], int | None]:
    """The rows of ``stmt`` (an ordered ``select`` of one entity) from ``offset``, at most ``limit``, and the
    offset of the next page (None on the last): one row more than the page is read to know."""
    rows = list(session.scalars(stmt.limit(limit + 1).offset(offset)))
    return rows[:limit], (offset + limit if len(rows) > limit else None)


def fetch_tuples(session: Session, stmt) -> list[tuple]:
    """Every row of a Core ``select`` as plain tuples, read through the DBAPI cursor of the session's
    connection (in its transaction). For bulk numeric reads only: no result processing (types come as
    the driver gives them), which is what costs most at a million rows through SQLAlchemy's rows."""
    conn = session.connection()
    compiled = stmt.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    if compiled.positional:
        args: Any = tuple(params[name] for name in compiled.positiontup)
    else:
        args = params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return cursor.fetchall()
    finally:
        cursor.close()
