"""The web app in tests: the app under Flask's test client, bearer headers, sign-in, and a test client that
sends the session's CSRF token. Shared by tests/web, tests/security, tests/integration
and tests/reliability; ``Http`` talks to a real ``latentlab web`` process over HTTP.

Usage::

    with app_for(settings) as app:
        client = app.test_client()
        csrf = sign_in(client, "alice", "alice-password")
        client.get("/api/v1/jobs", headers=issue_bearer(sessions, user))
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from common.platform.accounts import issue_token
from web.app import SESSION_COOKIE, create_app


@contextmanager
def app_for(settings, **overrides) -> Iterator:
    """``create_app(settings.with_(**overrides))`` for the block; its engine and Redis clients are closed
    after it."""
    app = create_app(settings.with_(**overrides) if overrides else settings)
    try:
        yield app
    finally:
        app.extensions["latentlab"].close()


def bearer_header(raw: str) -> dict[str, str]:
    """The ``Authorization`` header of a raw API token."""
    return {"Authorization": f"Bearer {raw}"}


def issue_bearer(sessions, user, name: str = "default") -> dict[str, str]:
    """A new API token of ``user`` (a row or a detached row), as request headers."""
    with sessions.begin() as s:
        return bearer_header(issue_token(s, s.merge(user), name))


def login(client, username: str = "alice", password: str = "alice-password", **kwargs):
    """``POST /api/v1/auth/login``; returns the response."""
    return client.post("/api/v1/auth/login", json={"username": username, "password": password}, **kwargs)


def sign_in(client, username: str = "alice", password: str = "alice-password") -> str:
    """Sign ``client`` in with a browser session; returns the session's CSRF token."""
    res = login(client, username, password)
    assert res.status_code == 200, res.json
    return res.json["csrf_token"]


class SessionClient:
    """Flask's test client plus the session's CSRF token on POST/PUT/PATCH/DELETE."""

    def __init__(self, raw):
        self.raw = raw
        self.csrf: str | None = None

    def open(self, method: str, path: str, **kwargs):
        headers = dict(kwargs.pop("headers", None) or {})
        if method in ("POST", "PUT", "PATCH", "DELETE") and self.csrf and "X-CSRFToken" not in headers:
            headers["X-CSRFToken"] = self.csrf
        return self.raw.open(path, method=method, headers=headers, **kwargs)

    def cookie(self) -> str | None:
        found = self.raw.get_cookie(SESSION_COOKIE)
        return found.value if found else None


class Http:
    """A tiny JSON client over urllib (a cookie jar, so it can hold a browser session too)."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def call(self, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self.opener.open(request, timeout=30) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")


def submit_job(client, headers, path, body) -> dict:
    """POST a job-creating request; asserts 202 with the job's Location; returns the job."""
    res = client.post(path, json=body, headers=headers)
    assert res.status_code == 202, res.json
    assert res.headers["Location"] == f"/api/v1/jobs/{res.json['id']}"
    return res.json


def wait_job_succeeded(client, headers, job_id, timeout=300.0) -> dict:
    """Poll ``/api/v1/jobs/ID`` until the job ends; asserts it succeeded; returns it."""
    from tests.support.waiting import poll_job

    job, _ = poll_job(lambda: client.get(f"/api/v1/jobs/{job_id}", headers=headers).json, timeout=timeout)
    assert job["status"] == "succeeded", job
    return job
