"""The unit tier starts no services: these overrides make a unit test that asks for Redis or the migrated
database fail with where it belongs instead (tests/web for the app under its test client, tests/integration
for workers)."""

from __future__ import annotations

import pytest

MISPLACED = (
    "tests/unit starts no services; a test that needs {what} belongs in tests/web (the app under its test "
    "client) or tests/integration (real workers)"
)


@pytest.fixture(scope="session")
def redis_server():
    pytest.fail(MISPLACED.format(what="a redis-server"))


@pytest.fixture
def database_url():
    pytest.fail(MISPLACED.format(what="the migrated database"))
