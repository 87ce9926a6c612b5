"""Sign-in, sessions, CSRF, API tokens and login rate limits, through Flask's test client against a real
migrated database and a real redis-server."""

from __future__ import annotations

from cli.redis_server import free_port
from common.platform.accounts import issue_token
from tests.support.web import login
from web.app import SESSION_COOKIE, create_app
from web.csrf import MESSAGE as CSRF_MESSAGE


def token_for(sessions, user, name="t") -> str:
    with sessions.begin() as s:
        return issue_token(s, s.merge(user), name)


def test_login_sets_an_httponly_samesite_lax_session_cookie(client, member):
    res = login(client)
    assert res.status_code == 200
    assert res.json["user"]["username"] == "alice" and res.json["csrf_token"]
    cookie = next(c for c in res.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE + "="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "secure" not in flags
    assert any(f.startswith("expires=") for f in flags)  # a permanent session with a lifetime
    assert client.get("/api/v1/auth/me").json == {
        "id": member.id,
        "username": "alice",
        "role": "member",
        "auth": "session",
    }


def test_secure_cookies_setting_marks_the_cookie_secure(settings, member):
    app = create_app(settings.with_(secure_cookies=True))
    try:
        res = login(app.test_client())
        cookie = next(c for c in res.headers.getlist("Set-Cookie") if c.startswith(SESSION_COOKIE + "="))
        assert "secure" in [p.strip().lower() for p in cookie.split(";")]
    finally:
        app.extensions["latentlab"].close()


def test_wrong_password_and_unknown_user_get_the_same_generic_401(client, member):
    wrong = login(client, password="not-her-password")
    unknown = login(client, username="nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json == unknown.json == {"error": "Wrong username or password."}
    assert client.get("/api/v1/auth/me").status_code == 401


def test_disabled_user_cannot_sign_in_and_loses_open_sessions(client, sessions, member):
    from common.models import User

    assert login(client).status_code == 200
    with sessions.begin() as s:
        s.get(User, member.id).active = False
    assert client.get("/api/v1/auth/me").status_code == 401
    assert login(client).status_code == 403


def test_cookie_authenticated_json_post_needs_the_csrf_token(client, member):
    token = login(client).json["csrf_token"]
    body = {"kind": "ping", "params": {"seconds": 0}}
    refused = client.post("/api/v1/jobs", json=body)
    assert refused.status_code == 400 and refused.json == {"error": CSRF_MESSAGE}
    wrong = client.post("/api/v1/jobs", json=body, headers={"X-CSRFToken": "guess"})
    assert wrong.status_code == 400
    assert client.post("/api/v1/jobs", json=body, headers={"X-CSRFToken": token}).status_code == 202
    # the token endpoint answers the same token for this session
    assert client.get("/api/v1/auth/csrf").json["csrf_token"] == token


def test_bearer_token_requests_need_no_csrf_token(client, sessions, member):
    raw = token_for(sessions, member)
    res = client.post(
        "/api/v1/jobs", json={"kind": "ping", "params": {}}, headers={"Authorization": f"Bearer {raw}"}
    )
    assert res.status_code == 202 and res.json["owner"] == "alice"


def test_a_bad_bearer_token_is_not_rescued_by_a_session_cookie(client, member):
    login(client)
    res = client.get("/api/v1/auth/me", headers={"Authorization": "Bearer ll_not-a-real-token"})
    assert res.status_code == 401 and "token" in res.json["error"]
    assert client.get("/api/v1/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_logout_makes_a_replayed_session_cookie_worthless(app, member):
    first = app.test_client()
    csrf = login(first).json["csrf_token"]
    old_cookie = first.get_cookie(SESSION_COOKIE).value
    assert first.post("/api/v1/auth/logout", headers={"X-CSRFToken": csrf}).json == {"ok": True}
    assert first.get("/api/v1/auth/me").status_code == 401

    replay = app.test_client()
    replay.set_cookie(SESSION_COOKIE, old_cookie)
    assert replay.get("/api/v1/auth/me").status_code == 401
    res = replay.post("/api/v1/jobs", json={"kind": "ping"}, headers={"X-CSRFToken": csrf})
    assert res.status_code == 401


def test_password_change_ends_other_sessions_and_keeps_this_one(app, member):
    this, other = app.test_client(), app.test_client()
    csrf = login(this).json["csrf_token"]
    login(other)
    old_cookie = this.get_cookie(SESSION_COOKIE).value

    bad = this.post(
        "/api/v1/auth/password",
        json={"current_password": "wrong-password", "new_password": "new-password-1"},
        headers={"X-CSRFToken": csrf},
    )
    assert bad.status_code == 400 and bad.json["field"] == "current_password"
    short = this.post(
        "/api/v1/auth/password",
        json={"current_password": "alice-password", "new_password": "short"},
        headers={"X-CSRFToken": csrf},
    )
    assert short.status_code == 400 and short.json["field"] == "new_password"

    res = this.post(
        "/api/v1/auth/password",
        json={"current_password": "alice-password", "new_password": "new-password-1"},
        headers={"X-CSRFToken": csrf},
    )
    assert res.status_code == 200
    assert this.get("/api/v1/auth/me").status_code == 200
    assert other.get("/api/v1/auth/me").status_code == 401
    replay = app.test_client()
    replay.set_cookie(SESSION_COOKIE, old_cookie)
    assert replay.get("/api/v1/auth/me").status_code == 401
    assert login(app.test_client(), password="alice-password").status_code == 401
    assert login(app.test_client(), password="new-password-1").status_code == 200


def test_tokens_are_listed_created_once_and_revoked_by_their_owner_only(client, sessions, member, admin):
    csrf = login(client).json["csrf_token"]
    created = client.post("/api/v1/tokens", json={"name": "notebook"}, headers={"X-CSRFToken": csrf})
    assert created.status_code == 201
    raw, token_id = created.json["token"], created.json["id"]
    assert raw.startswith("ll_") and raw.startswith(created.json["prefix"])
    listed = client.get("/api/v1/tokens").json["tokens"]
    assert [t["name"] for t in listed] == ["notebook"] and "token" not in listed[0]

    bearer = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/v1/auth/me", headers=bearer).json["auth"] == "token"

    from common.platform.accounts import create_user

    with sessions.begin() as s:
        bob = create_user(s, "bob", "bob-password")
    bob_raw = token_for(sessions, bob)
    foreign = client.delete(f"/api/v1/tokens/{token_id}", headers={"Authorization": f"Bearer {bob_raw}"})
    assert foreign.status_code == 404

    revoked = client.delete(f"/api/v1/tokens/{token_id}", headers={"X-CSRFToken": csrf})
    assert revoked.status_code == 200 and revoked.json["revoked_at"]
    assert client.get("/api/v1/auth/me", headers=bearer).status_code == 401
    too_long = client.post("/api/v1/tokens", json={"name": "x" * 65}, headers={"X-CSRFToken": csrf})
    assert too_long.status_code == 400 and too_long.json["field"] == "name"


def test_json_login_from_another_site_is_refused(client, member):
    res = login(client, headers={"Origin": "https://evil.example"})
    assert res.status_code == 400 and "evil.example" in res.json["error"]
    assert login(client, headers={"Origin": "http://localhost"}).status_code == 200
    # form encodings are not accepted by the JSON endpoint (a cross-site form could send them)
    form = client.post("/api/v1/auth/login", data={"username": "alice", "password": "alice-password"})
    assert form.status_code == 400


def test_form_login_needs_the_page_token_and_redirects_to_a_local_next(client, member):
    page = client.get("/login?next=/jobs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    token = html.split('name="csrf_token" value="')[1].split('"')[0]
    assert f'<meta name="csrf-token" content="{token}">' in html

    form = {"username": "alice", "password": "alice-password", "next": "/jobs"}
    assert client.post("/login", data=form).status_code == 400  # no token
    ok = client.post("/login", data={**form, "csrf_token": token})
    assert ok.status_code == 302 and ok.headers["Location"] == "/jobs"
    assert client.get("/api/v1/auth/me").status_code == 200


def test_form_login_never_redirects_off_site(client, member):
    client.get("/login")
    with client.session_transaction() as sess:
        token = sess["_csrf"]
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        res = client.post(
            "/login",
            data={"username": "alice", "password": "alice-password", "next": target, "csrf_token": token},
        )
        assert res.status_code == 302 and res.headers["Location"] == "/", target
        client.get("/login")
        with client.session_transaction() as sess:
            token = sess["_csrf"]


def test_login_rate_limit_is_shared_between_app_instances(settings, member):
    limited = settings.with_(login_attempts_per_minute=3)
    one, two = create_app(limited), create_app(limited)
    try:
        a, b = one.test_client(), two.test_client()
        assert [login(a, password="wrong-password").status_code for _ in range(3)] == [401] * 3
        res = login(b)  # the right password, on the other instance: still over the limit
        assert res.status_code == 429 and "wait a minute" in res.json["error"]
    finally:
        one.extensions["latentlab"].close()
        two.extensions["latentlab"].close()


def test_login_rate_limit_counts_per_address_too(settings, member, admin):
    app = create_app(settings.with_(login_attempts_per_minute=2))
    try:
        c = app.test_client()
        login(c, username="alice", password="x-wrong-pass")
        login(c, username="admin", password="x-wrong-pass")
        res = login(c, username="someone-else", password="x-wrong-pass")
        assert res.status_code == 429 and "address" in res.json["error"]
    finally:
        app.extensions["latentlab"].close()


def test_login_rate_limit_falls_back_to_the_process_when_redis_is_down(settings, member):
    down = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0", login_attempts_per_minute=2)
    app = create_app(down)
    try:
        c = app.test_client()
        assert login(c).status_code == 200  # logins keep working without Redis
        assert login(c, password="wrong-password").status_code == 401
        assert login(c).status_code == 429
    finally:
        app.extensions["latentlab"].close()
