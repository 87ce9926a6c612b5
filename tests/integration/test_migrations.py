"""The Alembic history against real databases: it goes up, all the way down and up again on SQLite and on
PostgreSQL, it has one head, and the ORM and the migrated schema never drift. SQLite connections carry the
pragmas the embedded default relies on.

PostgreSQL runs whenever LATENTLAB_TEST_POSTGRES_URL is set; with LATENTLAB_REQUIRE_POSTGRES=1 (CI) a
missing URL fails the run instead of skipping, so CI can never pass without having exercised PostgreSQL.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import inspect, text

from common.models import Base
from common.platform import migrate
from common.platform.config import Settings
from common.platform.db import make_engine
from tests.support.services import PG_URL_ENV, postgres_admin_url, postgres_database

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend_settings(request, tmp_path) -> Settings:
    """Settings on a fresh, empty database of each backend (independent of --db: both, every run)."""
    base = {
        "LATENTLAB_DATA": str(tmp_path / "data"),
        "LATENTLAB_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
    }
    if request.param == "sqlite":
        yield Settings.from_env(base)
        return
    if not postgres_admin_url():
        if os.environ.get("LATENTLAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"LATENTLAB_REQUIRE_POSTGRES=1 but {PG_URL_ENV} is not set (see .ci/run)")
        pytest.skip(f"PostgreSQL not configured: set {PG_URL_ENV} to run the migrations against it")
    with postgres_database() as url:
        yield Settings.from_env(base | {"LATENTLAB_DATABASE_URL": url})


def table_names(settings: Settings) -> set[str]:
    engine = make_engine(settings)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_history_has_a_single_head():
    assert len(migrate.heads()) == 1, f"several heads: {migrate.heads()}; merge them (alembic merge)"


def test_upgrade_downgrade_to_base_and_upgrade_again(backend_settings):
    s = backend_settings
    orm_tables = set(Base.metadata.tables)

    migrate.upgrade(s)
    assert migrate.is_current(s)
    assert orm_tables <= table_names(s)

    migrate.downgrade(s, "base")
    assert migrate.current(s) is None
    assert table_names(s) - {"alembic_version"} == set(), "downgrade to base leaves no table behind"

    migrate.upgrade(s)
    assert migrate.current(s) == migrate.heads()[0]
    assert orm_tables <= table_names(s)


def test_autogenerate_finds_no_drift_between_the_orm_and_the_migrations(backend_settings):
    migrate.upgrade(backend_settings)
    diffs = migrate.drift(backend_settings)
    assert diffs == [], "the ORM and the migrations differ; add a migration:\n" + "\n".join(map(str, diffs))


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path):
    s = Settings.from_env({"LATENTLAB_DATA": str(tmp_path / "data")})
    migrate.upgrade(s)
    engine = make_engine(s)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar().lower() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() > 0
    finally:
        engine.dispose()
