"""Fixtures of the security tests: a lab with two members (A = alice, B = bob) and an admin (root), real
objects of A (jobs, an API token, a dataset with samples and images, a map, a generation), and the app
under Flask's test client against the real database and a real redis-server.

The private objects of A carry marker strings (``A_SECRET``) in the places another member must never
see: a job's result, progress message and error, and the token's prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from common.models import ApiToken, Job, User
from common.platform.accounts import create_user, issue_token
from tests.support.seeded_map import SeededMap, add_generation, seed_map
from tests.support.waiting import wait_for_job
from tests.support.web import SessionClient, bearer_header
from web.app import create_app

A_SECRET = "alice-private-7f3a9c"
PASSWORDS = {"A": "alice-password", "B": "bob-password-2", "admin": "root-password-3"}
NAMES = {"A": "alice", "B": "bob", "admin": "root"}


@dataclass
class World:
    settings: object
    sessions: object
    app: object
    users: dict[str, int]
    tokens: dict[str, str]  # identity -> raw bearer token
    lab: SeededMap
    generated_id: int
    job_id: int  # A's finished job, with A_SECRET in its result, message and error
    token_id: int  # A's token (its raw value is tokens["A"])
    token_prefix: str
    scratch: Any = None  # the fresh object a matrix row made for its current request
    _clients: dict[str, object] = field(default_factory=dict)

    # -- objects of A, made fresh for requests that change them ----------------------------------------

    def new_job_of_a(self) -> int:
        """A queued ping job of A (not published: nothing runs it)."""
        with self.sessions.begin() as s:
            job = Job(kind="ping", queue="interactive", owner_id=self.users["A"], params={"seconds": 1})
            s.add(job)
            s.flush()
            return job.id

    def new_token_of_a(self) -> int:
        with self.sessions.begin() as s:
            issue_token(s, s.get(User, self.users["A"]), "fresh")
            newest = (
                select(ApiToken.id).where(ApiToken.user_id == self.users["A"]).order_by(ApiToken.id.desc())
            )
            return s.scalars(newest).first()

    def job(self, job_id: int) -> Job:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def token(self, token_id: int) -> ApiToken:
        with self.sessions() as s:
            return s.get(ApiToken, token_id)

    # -- clients -----------------------------------------------------------------------------------------

    def client(self, who: str, *, fresh: bool = False):
        """A test client signed in as ``who`` with a browser session ("anon": signed out); it sends the
        session's CSRF token on every state-changing request."""
        if who in self._clients and not fresh:
            return self._clients[who]
        client = SessionClient(self.app.test_client())
        if who != "anon":
            res = client.raw.post(
                "/api/v1/auth/login", json={"username": NAMES[who], "password": PASSWORDS[who]}
            )
            assert res.status_code == 200, res.json
            client.csrf = res.json["csrf_token"]
        self._clients[who] = client
        return client

    def forget_sessions(self) -> None:
        self._clients.clear()

    def bearer(self, who: str) -> dict[str, str]:
        return bearer_header(self.tokens[who])


def make_members(sessions) -> tuple[dict[str, int], dict[str, str]]:
    """Members A and B and an admin (``NAMES``): their ids and raw API tokens, keyed by identity."""
    users, tokens = {}, {}
    with sessions.begin() as s:
        for who, name in NAMES.items():
            user = create_user(s, name, PASSWORDS[who], role="admin" if who == "admin" else "member")
            users[who] = user.id
            tokens[who] = issue_token(s, user, f"{name}-token")
    return users, tokens


def make_world(settings, sessions, **app_overrides) -> World:
    users, tokens = make_members(sessions)
    lab = seed_map(sessions, settings, owner_id=users["A"], n=12, name="alice-digits")
    generated = add_generation(
        sessions,
        settings,
        lab,
        owner_id=users["A"],
        selected=lab.sample_ids[0],
        neighbors=lab.sample_ids[1:4],
    )
    with sessions.begin() as s:
        job = Job(
            kind="ping",
            queue="interactive",
            owner_id=users["A"],
            params={"seconds": 1.25, "steps": 3},
            status="failed",
            result={"note": A_SECRET},
            progress_message=f"step 2 of {A_SECRET}",
            error=f"failed on purpose: {A_SECRET}",
        )
        s.add(job)
        s.flush()
        job_id = job.id
        token = s.scalars(select(ApiToken).where(ApiToken.user_id == users["A"])).one()
        token_id, prefix = token.id, token.prefix
    app = create_app(settings.with_(login_attempts_per_minute=10_000, **app_overrides))
    return World(settings, sessions, app, users, tokens, lab, generated, job_id, token_id, prefix)


@pytest.fixture
def world(settings, sessions, redis_url):
    w = make_world(settings, sessions)
    yield w
    w.app.extensions["latentlab"].close()

    def close(self) -> None:
        self.response.close()


# -- a running lab: redis, database, one worker and one web process, shared by the tests that need them ---


@dataclass
class Stack:
    """Real services for the tests that run jobs: a redis-server of its own (the function-scoped
    ``redis_url`` fixture flushes the shared one), a migrated database, one worker (every queue,
    concurrency 1) and one web server, all started through the product's CLI."""

    settings: Any
    sessions: Any
    log_dir: Any
    users: dict[str, int]
    tokens: dict[str, str]
    lab: SeededMap
    web_url: str = ""
    procs: list = field(default_factory=list)

    @property
    def worker(self):
        return self.procs[0]

    @property
    def web(self):
        return self.procs[1]

    def api(self, method: str, path: str, who: str = "A", body=None, headers=None) -> tuple[int, Any, dict]:
        """One request to the web process; returns (status, parsed JSON or text, headers)."""
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.web_url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if who:
            request.add_header("Authorization", f"Bearer {self.tokens[who]}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as res:
                status, raw, hdrs = res.status, res.read(), dict(res.headers)
        except urllib.error.HTTPError as err:
            status, raw, hdrs = err.code, err.read(), dict(err.headers)
        try:
            return status, json.loads(raw), hdrs
        except ValueError:
            return status, raw.decode(errors="replace"), hdrs

    def job(self, job_id: int) -> Job:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def wait(self, job_id: int, timeout: float = 120.0) -> Job:
        return wait_for_job(self.sessions, job_id, timeout=timeout, context=lambda: self.logs()[-3000:])

    def logs(self) -> str:
        return "\n".join(p.log_text() for p in self.procs)


@pytest.fixture(scope="package")
def stack(tmp_path_factory, db_backend):
    """One running lab for the package (see ``Stack``). The web process generates its own session key
    into the data root (``LATENTLAB_SECRET_KEY`` empty), as a first run does."""
    import contextlib

    from cli.redis_server import RedisServer, free_port
    from common.platform import migrate
    from common.platform.db import make_engine, session_factory
    from tests.support.services import postgres_database, start_web, start_worker
    from tests.support.settings import make_settings

    root = tmp_path_factory.mktemp("stack")
    redis = RedisServer(root / "redis")
    redis.start()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(redis.stop)
        if db_backend == "postgres":
            database_url = cleanup.enter_context(postgres_database())
        else:
            database_url = f"sqlite:///{root / 'data' / 'latentlab.db'}"
        settings = make_settings(root, database_url, redis.url).with_(secret_key="", reaper_interval=2.0)
        migrate.upgrade(settings)
        settings.resolved_signing_key()  # the HMAC key file, made once, outside the data root
        engine = make_engine(settings)
        cleanup.callback(engine.dispose)
        sessions = session_factory(engine)
        users, tokens = make_members(sessions)
        lab = seed_map(sessions, settings, owner_id=users["A"], n=12, name="stack-digits")
        log_dir = root / "logs"
        log_dir.mkdir()
        st = Stack(settings, sessions, log_dir, users, tokens, lab)
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LATENTLAB_SECRET_KEY": ""}
        try:
            st.procs.append(start_worker(settings, log_dir, name="sec", extra_env=env, ready_timeout=240))
            port = free_port()
            st.procs.append(start_web(settings, log_dir, port, extra_env=env))
            st.web_url = f"http://127.0.0.1:{port}"
            yield st
        finally:
            for proc in st.procs:
                proc.stop()
