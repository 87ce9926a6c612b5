"""Sessions and sign-in: logout and a password change end sessions on the server (a replayed cookie is
refused), cookie flags (HttpOnly, SameSite=Lax, Secure behind TLS, also through a trusted proxy), and
login rate limits per user and per address whose counts two real web processes share through Redis."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request

from cli.redis_server import free_port
from tests.security.conftest import PASSWORDS, World, make_world
from tests.support.services import start_web
from web.app import SESSION_COOKIE, create_app


def cookie_flags(response) -> list[str]:
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE + "="))
    return [part.strip().lower() for part in cookie.split(";")]


def replay(world: World, cookie: str):
    client = world.app.test_client()
    client.set_cookie(SESSION_COOKIE, cookie)
    return client


def test_logout_ends_every_session_and_a_replayed_cookie_is_refused(world: World):
    one, two = world.client("A"), world.client("A", fresh=True)
    stolen, csrf = one.cookie(), one.csrf
    assert one.open("POST", "/api/v1/auth/logout").status_code == 200
    for client in (one.raw, two.raw, replay(world, stolen)):
        assert client.get("/api/v1/auth/me").status_code == 401
    job_id = world.new_job_of_a()
    res = replay(world, stolen).post(f"/api/v1/jobs/{job_id}/cancel", headers={"X-CSRFToken": csrf})
    assert res.status_code == 401 and world.job(job_id).status == "queued"
    page = replay(world, stolen).get("/jobs")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")


def test_password_change_ends_other_sessions_and_replays_of_the_old_cookie(world: World):
    this, other = world.client("A"), world.client("A", fresh=True)
    stolen = this.cookie()
    new = "a-new-password-42"
    res = this.open(
        "POST", "/api/v1/auth/password", json={"current_password": PASSWORDS["A"], "new_password": new}
    )
    assert res.status_code == 200
    assert this.raw.get("/api/v1/auth/me").status_code == 200  # the browser that changed it stays in
    assert other.raw.get("/api/v1/auth/me").status_code == 401
    assert replay(world, stolen).get("/api/v1/auth/me").status_code == 401
    old = world.app.test_client().post(
        "/api/v1/auth/login", json={"username": "alice", "password": PASSWORDS["A"]}
    )
    assert old.status_code == 401


def test_a_forged_or_tampered_session_cookie_is_refused(world: World):
    cookie = world.client("A").cookie()
    body, _, signature = cookie.rpartition(".")
    tampered = body + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert replay(world, tampered).get("/api/v1/auth/me").status_code == 401
    # a session signed with another key (someone else's install) is worth nothing here
    other = make_world_app(world, secret_key="another-installations-key")
    try:
        c = other.test_client()
        c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORDS["A"]})
        foreign = c.get_cookie(SESSION_COOKIE).value
    finally:
        other.extensions["latentlab"].close()
    assert replay(world, foreign).get("/api/v1/auth/me").status_code == 401


def make_world_app(world: World, **overrides):
    return create_app(world.settings.with_(login_attempts_per_minute=10_000, **overrides))


def test_signing_in_replaces_the_session_it_started_in(world: World):
    client = world.app.test_client()
    client.get("/login")  # an anonymous session with a CSRF token (what a fixation attack would plant)
    planted = client.get_cookie(SESSION_COOKIE).value
    before = client.get("/api/v1/auth/csrf").json["csrf_token"]
    res = client.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORDS["A"]})
    assert res.json["csrf_token"] != before
    assert client.get_cookie(SESSION_COOKIE).value != planted
    assert replay(world, planted).get("/api/v1/auth/me").status_code == 401


def test_session_cookie_is_httponly_lax_and_secure_behind_tls(settings, sessions, redis_url):
    creds = {"username": "alice", "password": PASSWORDS["A"]}
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    plain = make_world(settings, sessions)
    try:
        res = plain.app.test_client().post("/api/v1/auth/login", json=creds)
        flags = cookie_flags(res)
        assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags
        # without a trusted proxy, X-Forwarded-Proto is anyone's to send: ignored
        res = plain.app.test_client().post("/api/v1/auth/login", json=creds, headers=https)
        assert "secure" not in cookie_flags(res) and "Strict-Transport-Security" not in res.headers
        # a request that really came over TLS
        res = plain.app.test_client().post("/api/v1/auth/login", json=creds, base_url="https://localhost")
        assert "secure" in cookie_flags(res) and res.headers["Strict-Transport-Security"]
    finally:
        plain.app.extensions["latentlab"].close()
    for overrides, headers in (({"secure_cookies": True}, {}), ({"trusted_proxies": 1}, https)):
        app = create_app(settings.with_(**overrides))
        try:
            res = app.test_client().post("/api/v1/auth/login", json=creds, headers=headers)
            assert res.status_code == 200
            flags = cookie_flags(res)
            assert {"secure", "httponly", "samesite=lax"} <= set(flags), (overrides, flags)
        finally:
            app.extensions["latentlab"].close()


def test_spoofed_forwarded_for_does_not_dodge_the_per_address_limit(settings, sessions, redis_url):
    make_world(settings, sessions).app.extensions["latentlab"].close()  # users only
    creds = [{"username": f"nobody-{i}", "password": "wrong-password"} for i in range(4)]
    app = create_app(settings.with_(login_attempts_per_minute=3))
    try:
        client = app.test_client()
        answers = [
            client.post(
                "/api/v1/auth/login", json=c, headers={"X-Forwarded-For": f"198.51.100.{i}"}
            ).status_code
            for i, c in enumerate(creds)
        ]
        assert answers == [401, 401, 401, 429]
    finally:
        app.extensions["latentlab"].close()
    # behind one trusted proxy the forwarded address is the client's: each address has its own count,
    # and the per-username count still holds whatever address the guesses come from
    app = create_app(settings.with_(login_attempts_per_minute=3, trusted_proxies=1))
    try:
        client = app.test_client()
        answers = [
            client.post("/api/v1/auth/login", json=c, headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code
            for i, c in enumerate(creds)
        ]
        assert answers == [401, 401, 401, 401]
        guesses = [
            client.post(
                "/api/v1/auth/login",
                json={"username": "bob", "password": f"guess-{i}"},
                headers={"X-Forwarded-For": f"192.0.2.{100 + i}"},
            ).status_code
            for i in range(4)
        ]
        assert guesses == [401, 401, 401, 429]
    finally:
        app.extensions["latentlab"].close()


class Http:
    """A JSON client over urllib with its own cookie jar."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def test_login_limits_are_shared_by_two_real_web_processes_through_redis(settings, sessions, tmp_path):
    make_world(settings, sessions).app.extensions["latentlab"].close()  # alice, bob, root
    env = {"LATENTLAB_LOGIN_ATTEMPTS_PER_MINUTE": "3"}
    ports = [free_port(), free_port()]
    procs = [start_web(settings, tmp_path, port, extra_env=env) for port in ports]
    try:
        one, two = (Http(f"http://127.0.0.1:{port}") for port in ports)
        wrong = {"username": "alice", "password": "not-her-password"}
        # per user: three wrong guesses spread over both processes, then the right password is refused too
        assert [one.post("/api/v1/auth/login", wrong)[0], two.post("/api/v1/auth/login", wrong)[0]] == [
            401,
            401,
        ]
        assert one.post("/api/v1/auth/login", wrong)[0] == 401
        status, body = two.post("/api/v1/auth/login", {"username": "alice", "password": PASSWORDS["A"]})
        assert status == 429 and "username" in body["error"], body
        # per address: other usernames from the same address, counted across both processes
        from redis import Redis

        Redis.from_url(settings.redis_url).flushall()
        others = [("bob", one), ("root", two), ("nobody", one)]
        assert [
            web.post("/api/v1/auth/login", {"username": u, "password": "x-wrong-1"})[0] for u, web in others
        ] == [
            401,
            401,
            401,
        ]
        status, body = two.post("/api/v1/auth/login", {"username": "bob", "password": PASSWORDS["B"]})
        assert status == 429 and "address" in body["error"], body
    finally:
        for proc in procs:
            proc.stop()
