"""The web tier: the Flask app under its test client against a real migrated database (SQLite, or
PostgreSQL with ``--db=postgres``) and a real redis-server. No worker runs here; tests that need one live in
tests/integration."""

from __future__ import annotations

import pytest

from tests.support.web import app_for, issue_bearer


@pytest.fixture
def app(settings):
    with app_for(settings) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def alice(sessions, member) -> dict[str, str]:
    """Bearer headers of the member alice."""
    return issue_bearer(sessions, member)
