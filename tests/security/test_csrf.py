"""CSRF: every state-changing route of ``app.url_map`` refuses a cookie-authenticated request without the
session's CSRF token (JSON bodies included) and changes nothing; a Bearer-token request needs none.

The two sign-in routes come before any session and defend themselves (``web.csrf``): they are the only
exempt views, and their own checks are tested here too.
"""

from __future__ import annotations

from tests.security.conftest import PASSWORDS, World
from tests.security.test_access_matrix import EXPECTED
from web.csrf import MESSAGE as CSRF_MESSAGE

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
EXEMPT = {"auth.login", "pages.login_submit"}


def state_changing(app) -> list[tuple[str, str, str]]:
    return sorted(
        (rule.rule, method, rule.endpoint)
        for rule in app.url_map.iter_rules()
        for method in rule.methods & UNSAFE
    )


def test_only_the_two_sign_in_views_are_exempt_from_the_csrf_check(world):
    exempt = {
        endpoint
        for _, _, endpoint in state_changing(world.app)
        if getattr(world.app.view_functions[endpoint], "csrf_exempt", False)
    }
    assert exempt == EXEMPT


def test_every_cookie_authenticated_state_change_needs_the_csrf_token(world: World):
    routes = state_changing(world.app)
    assert len(routes) >= 10
    checked = []
    for rule, method, endpoint in routes:
        if endpoint in EXEMPT:
            continue
        expect = EXPECTED[(rule, method)]
        client = world.client("A")  # a refused request leaves the session as it was: one sign-in will do
        for sent in (None, "not-the-token", ""):
            before = client.cookie()
            path, kwargs = expect.request(world, "A")
            rows = row_counts(world)
            headers = {} if sent is None else {"X-CSRFToken": sent}
            res = client.raw.open(path, method=method, headers=headers, **kwargs)
            refused = res.json == {"error": CSRF_MESSAGE} if path.startswith("/api/") else "CSRF" in res.text
            assert res.status_code == 400 and refused, (method, rule, sent, res.text[:200])
            assert row_counts(world) == rows, (method, rule)  # no job, token, dataset or map was made
            if expect.after:  # the refused request changed nothing (A's job queued, token alive, ...)
                expect.after(world, "B", _Refused(), None)
            # the session survived: a refused logout or password change did not end it
            assert client.raw.get("/api/v1/auth/me").status_code == 200, (method, rule)
            assert client.cookie() == before
        # a form post without the token is refused as well (the field is the only other place it may be)
        path, kwargs = expect.request(world, "A")
        res = client.raw.open(path, method=method, data={"csrf_token": "forged"})
        assert res.status_code == 400, (method, rule)
        checked.append(f"{method} {rule}")
    print(f"\nCSRF refused without, with a wrong and with an empty token: {len(checked)} routes")
    print("\n".join(checked))


def row_counts(world: World) -> tuple:
    from sqlalchemy import func, select

    from common.models import ApiToken, Dataset, Embedding, Job, User

    with world.sessions() as s:
        counts = tuple(
            s.scalar(select(func.count()).select_from(t)) for t in (Job, ApiToken, Dataset, Embedding)
        )
        versions = tuple(s.scalars(select(User.session_version).order_by(User.id)))
        hashes = tuple(s.scalars(select(User.password_hash).order_by(User.id)))
        cancelled = s.scalar(select(func.count()).where(Job.status == "cancelled"))
        revoked = s.scalar(select(func.count()).where(ApiToken.revoked_at.is_not(None)))
    return counts, versions, hashes, cancelled, revoked


class _Refused:
    status_code = 400
    json = None


def test_the_right_token_or_a_bearer_token_passes(world: World):
    for rule, method, endpoint in state_changing(world.app):
        if endpoint in EXEMPT or endpoint in ("auth.logout", "pages.logout"):
            continue
        expect = EXPECTED[(rule, method)]
        world.forget_sessions()
        path, kwargs = expect.request(world, "A")
        with_token = world.client("A").open(method, path, **kwargs)
        assert with_token.status_code == expect.A, (method, rule, with_token.status_code)
        # Bearer: no cookie, no CSRF token, and the request does what the owner may do
        path, kwargs = expect.request(world, "A")
        res = world.app.test_client().open(path, method=method, headers=world.bearer("A"), **kwargs)
        assert res.status_code == expect.A, (method, rule, res.status_code, res.get_data(as_text=True)[:200])
        # a cookie AND a token: the token decides, so no CSRF token is needed either
        client = world.client("A", fresh=True)
        path, kwargs = expect.request(world, "A")
        both = client.raw.open(path, method=method, headers=world.bearer("A"), **kwargs)
        assert both.status_code == expect.A, (method, rule, both.status_code)


def test_bearer_logout_is_refused_and_a_bad_token_is_not_rescued_by_the_cookie(world: World):
    res = world.app.test_client().post("/api/v1/auth/logout", headers=world.bearer("A"))
    assert res.status_code == 400 and "revoke it" in res.json["error"]
    client = world.client("A")
    job_id = world.new_job_of_a()
    forged = client.raw.post(f"/api/v1/jobs/{job_id}/cancel", headers={"Authorization": "Bearer ll_forged"})
    assert forged.status_code == 401 and world.job(job_id).status == "queued"


def test_sign_in_routes_defend_themselves(world: World):
    """The exempt views: JSON login takes only application/json and refuses a foreign Origin/Referer;
    the form login needs the token its page put in the session."""
    client = world.app.test_client()
    creds = {"username": "alice", "password": PASSWORDS["A"]}
    assert client.post("/api/v1/auth/login", data=creds).status_code == 400
    as_text = client.post("/api/v1/auth/login", data="{}", headers={"Content-Type": "text/plain"})
    assert as_text.status_code == 400
    for header in ("Origin", "Referer"):
        res = client.post("/api/v1/auth/login", json=creds, headers={header: "https://evil.example/x"})
        assert res.status_code == 400 and "evil.example" in res.json["error"]
    assert client.post("/api/v1/auth/login", json=creds, headers={"Origin": "null"}).status_code == 400
    assert client.get("/api/v1/auth/me").status_code == 401

    fresh = world.app.test_client()
    assert fresh.post("/login", data=creds).status_code == 400
    fresh.get("/login")
    forged = fresh.post("/login", data={**creds, "csrf_token": "forged"})
    assert forged.status_code == 400 and fresh.get("/api/v1/auth/me").status_code == 401
