"""Schema migrations as plain functions (the CLI's ``latentlab db …`` and the tests call these).

Usage::

    upgrade(settings)                 # to head
    downgrade(settings, "base")
    drift(settings)                   # [] when the ORM and the database agree
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from common.models import Base
from common.platform.config import Settings
from common.platform.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return cfg


@contextmanager
def _bound_config(settings: Settings):
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(settings)
            cfg.attributes["connection"] = conn
            yield cfg
    finally:
        engine.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    if settings.is_sqlite:
        settings.ensure_data_root()
    with _bound_config(settings) as cfg:
        command.upgrade(cfg, revision)


def downgrade(settings: Settings, revision: str) -> None:
    with _bound_config(settings) as cfg:
        command.downgrade(cfg, revision)


def heads() -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(Settings())).get_heads())


def current(settings: Settings) -> str | None:
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_current(settings: Settings) -> bool:
    """True when the database is at the single head revision."""
    return current(settings) in heads()


def drift(settings: Settings) -> list:
    """Differences autogenerate finds between the ORM and the migrated database ([] = none)."""
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
