"""Shared fixtures. Integration tests get real services: a redis-server process, a migrated database
(SQLite by default; PostgreSQL with ``--db=postgres`` and LATENTLAB_TEST_POSTGRES_URL), and workers or
web servers started through the ``latentlab`` CLI."""

from __future__ import annotations

import pytest

from cli.redis_server import RedisServer
from common.platform.config import Settings
from tests.support.services import postgres_admin_url, postgres_database
from tests.support.settings import make_settings


def pytest_addoption(parser):
    parser.addoption("--db", default="sqlite", choices=["sqlite", "postgres"], help="database backend")


@pytest.fixture(scope="session")
def db_backend(request) -> str:
    backend = request.config.getoption("--db")
    if backend == "postgres" and not postgres_admin_url():
        pytest.fail("--db=postgres needs LATENTLAB_TEST_POSTGRES_URL (see .ci/run)")
    return backend


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def database_url(db_backend, tmp_path):
    if db_backend == "postgres":
        with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'data' / 'latentlab.db'}"


@pytest.fixture
def settings(tmp_path, database_url, redis_url) -> Settings:
    from common.platform import migrate

    s = make_settings(tmp_path, database_url, redis_url)
    migrate.upgrade(s)
    return s


@pytest.fixture
def sessions(settings):
    from common.platform.db import make_engine, session_factory

    engine = make_engine(settings)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def admin(sessions):
    from common.platform.accounts import create_user

    with sessions.begin() as session:
        return create_user(session, "admin", "admin-password", role="admin")


@pytest.fixture
def member(sessions):
    from common.platform.accounts import create_user

    with sessions.begin() as session:
        return create_user(session, "alice", "alice-password")


@pytest.fixture
def publisher(settings):
    import redis

    from common.jobs.broker import Publisher
    from workers.app import make_celery

    app = make_celery(settings)
    client = redis.Redis.from_url(settings.redis_url)
    yield Publisher(app.send_task, client)
    client.close()


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory) -> dict:
    """Tiny random-weight diffusers pipeline folders, built once per session: {"sd": path, "sdxl": path}."""
    from tests.support.diffusers_models import make_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    return {kind: make_tiny_pipeline(root / kind, kind=kind) for kind in ("sd", "sdxl")}
