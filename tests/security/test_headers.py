"""Security headers on every route and every kind of answer: a Content-Security-Policy with no inline
script, ``frame-ancestors 'none'`` and ``object-src 'none'``, ``X-Content-Type-Options: nosniff``,
``Referrer-Policy``, ``X-Frame-Options: DENY``; only the explorer page adds ``'unsafe-eval'`` (Plotly's
WebGL traces compile their shaders with ``Function``)."""

from __future__ import annotations

import re

from tests.security.conftest import World
from tests.security.test_access_matrix import EXPECTED

EXPLORER = "/explorer"


def directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def check_headers(res, where: str) -> None:
    h = res.headers
    assert h.get("X-Content-Type-Options") == "nosniff", where
    assert h.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin"), (
        where
    )
    assert h.get("X-Frame-Options") == "DENY", where
    policy = directives(h.get("Content-Security-Policy", ""))
    assert policy.get("frame-ancestors") == ["'none'"], where
    assert policy.get("object-src") == ["'none'"], where
    assert policy.get("default-src") == ["'self'"], where
    assert policy.get("base-uri") == ["'self'"], where
    scripts = policy.get("script-src", [])
    assert "'unsafe-inline'" not in scripts and not any(s.startswith(("'nonce-", "'sha")) for s in scripts), (
        where
    )
    assert "*" not in scripts and not any(s.startswith(("http:", "https:", "data:")) for s in scripts), where
    wanted = (
        ["'self'", "'unsafe-eval'"] if where.split()[1] == EXPLORER and res.status_code == 200 else ["'self'"]
    )
    assert scripts == wanted, (where, scripts)
    assert "'unsafe-inline'" not in policy.get("style-src", []), where


def test_every_route_answers_with_the_security_headers(world: World):
    checked = 0
    for (_rule, method), expect in sorted(EXPECTED.items()):
        for who in ("anon", "A"):
            path, kwargs = expect.request(world, who)
            res = world.client(who).open(method, path, **kwargs)
            try:
                check_headers(res, f"{method} {path} as {who} -> {res.status_code}")
                checked += 1
            finally:
                res.close()
            if expect.ends_sessions:
                world.forget_sessions()
    assert checked == 2 * len(EXPECTED)


def test_error_and_conditional_answers_carry_them_too(world: World):
    client = world.app.test_client()
    a = world.bearer("A")
    plotly = client.get("/static/vendor/plotly.min.js")
    points = client.get(f"/api/v1/embeddings/{world.lab.embedding_id}/points", headers=a)
    answers = {
        "unknown API path": client.get("/api/v1/nothing-here", headers=a),
        "unknown page": client.get("/nothing-here"),
        "405": client.delete("/api/v1/jobs", headers=a),
        "413": client.post(
            "/api/v1/jobs", data="x" * (1024 * 1024 + 10), headers={**a, "Content-Type": "application/json"}
        ),
        "400": client.post("/api/v1/jobs", json={"kind": "?"}, headers=a),
        "401": client.get("/api/v1/jobs"),
        "404 private": client.get("/api/v1/jobs/999999", headers=a),
        "304 plotly": client.get(
            "/static/vendor/plotly.min.js", headers={"If-None-Match": plotly.headers["ETag"]}
        ),
        "304 points": client.get(
            f"/api/v1/embeddings/{world.lab.embedding_id}/points",
            headers={**a, "If-None-Match": points.headers["ETag"]},
        ),
        "static": client.get("/static/js/api.js"),
        "static missing": client.get("/static/nothing.js"),
        "image": client.get(f"/api/v1/samples/{world.lab.sample_ids[0]}/image", headers=a),
        "huge id page": client.get("/datasets/99999999999999999999999", headers=a),
    }
    assert answers["304 plotly"].status_code == 304 and answers["304 points"].status_code == 304
    for what, res in answers.items():
        check_headers(res, f"GET {what} -> {res.status_code}")
    # the API never lets a shared cache keep an answer
    assert answers["401"].headers["Cache-Control"] == "no-store"


def test_pages_have_no_inline_script_or_event_handler(world: World):
    client = world.client("A")
    for path in ("/", "/datasets", f"/datasets/{world.lab.dataset_id}", "/explorer", "/jobs", "/history"):
        html = client.raw.get(path).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html, flags=re.I):
            assert re.search(r"\bsrc=", tag), (path, tag)
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html, flags=re.I), path
        assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), path
        assert "javascript:" not in html.lower(), path
    login = world.app.test_client().get("/login").get_data(as_text=True)
    assert not re.search(r"\son[a-z]+\s*=", login, flags=re.I)
