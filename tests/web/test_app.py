"""The app shell: security headers, error answers, the OpenAPI document, pages and /healthz, through
Flask's test client against a real migrated database and a real redis-server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cli.redis_server import free_port
from tests.support.web import sign_in
from web.app import create_app
from web.security_headers import CONTENT_SECURITY_POLICY


def test_importing_web_pulls_in_no_torch_workers_or_cli():
    code = (
        "import sys, web.app, web.blueprints.jobs; "
        "bad = [m for m in ('torch', 'workers', 'cli') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_create_app_runs_no_migrations(tmp_path, redis_url):
    from tests.support.settings import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}", redis_url)
    app = create_app(settings)
    try:
        assert inspect(app.extensions["latentlab"].engine).get_table_names() == []
    finally:
        app.extensions["latentlab"].close()


@pytest.mark.parametrize("path", ["/healthz", "/login", "/api/v1/auth/me", "/nope", "/api/nope"])
def test_every_response_carries_the_security_headers(client, path):
    res = client.get(path)
    assert res.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["Referrer-Policy"] == "same-origin"
    assert res.headers["X-Frame-Options"] == "DENY"
    assert res.headers["X-Request-Id"]


def test_api_errors_are_json_sentences(app, client, member):
    app.add_url_rule("/api/v1/test-boom", "boom", lambda: 1 / 0)
    assert client.get("/api/v1/nothing-here").json["error"].startswith("There is no API endpoint")
    res = client.delete("/api/v1/auth/me")
    assert res.status_code == 405 and res.json == {
        "error": "DELETE is not allowed on /api/v1/auth/me; use GET."
    }
    boom = client.get("/api/v1/test-boom")
    assert boom.status_code == 500
    assert re.fullmatch(
        r"internal error; the server log has details \(request id [0-9a-f]{16}\)", boom.json["error"]
    )
    assert boom.headers["X-Request-Id"] in boom.json["error"]
    assert "Traceback" not in boom.get_data(as_text=True)


def test_oversized_and_non_json_bodies_are_refused_with_a_sentence(client, member):
    csrf = sign_in(client)
    big = client.post(
        "/api/v1/jobs",
        data=b'{"kind": "ping", "params": {"x": "' + b"a" * (1024 * 1024 + 10) + b'"}}',
        content_type="application/json",
        headers={"X-CSRFToken": csrf},
    )
    assert big.status_code == 413 and "1 MB" in big.json["error"]
    for kwargs in (
        {"data": "kind=ping", "content_type": "application/x-www-form-urlencoded"},
        {"data": "{not json", "content_type": "application/json"},
        {"json": ["ping"]},
    ):
        res = client.post("/api/v1/jobs", headers={"X-CSRFToken": csrf}, **kwargs)
        assert res.status_code == 400
        assert res.json == {"error": "send a JSON object with Content-Type: application/json"}


def test_openapi_lists_every_api_route_of_the_url_map(app, client):
    doc = client.get("/api/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    api_rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/")]
    assert len(api_rules) >= 10
    for rule in api_rules:
        assert hasattr(app.view_functions[rule.endpoint], "api_spec"), f"{rule} is not an api_route"
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], f"{method} {path} missing"
    submit = doc["paths"]["/api/v1/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SubmitJob")
    listing = {p["name"] for p in doc["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert {"kind", "status", "owner", "limit", "include_children"} <= listing
    schemas = doc["components"]["schemas"]
    assert schemas["PingParams"]["properties"]["seconds"]["maximum"] == 600
    assert any(v["title"] == "ping" for v in schemas["JobKindParams"]["oneOf"])
    assert doc["paths"]["/api/v1/auth/login"]["post"]["security"] == []


def test_anonymous_index_redirects_to_login(client):
    res = client.get("/")
    assert res.status_code == 302 and res.headers["Location"].startswith("/login")
    assert client.get("/jobs").headers["Location"].startswith("/login?next=/jobs")


def test_pages_use_no_inline_script_or_style(client, member):
    login_page = client.get("/login").get_data(as_text=True)
    sign_in(client)
    home = client.get("/")
    assert home.status_code == 200
    html = home.get_data(as_text=True)
    assert "alice" in html and "data-jobs" in html
    assert '<meta name="csrf-token" content="' in html
    for text in (login_page, html, client.get("/jobs").get_data(as_text=True)):
        scripts = re.findall(r"<script\b[^>]*>", text)
        assert all('src="/static/' in s and 'type="module"' in s for s in scripts), scripts
        assert " style=" not in text and "<style" not in text and " on" + "click=" not in text
    for asset in ("/static/app.css", "/static/js/jobs.js", "/static/js/api.js"):
        assert client.get(asset).status_code == 200


def test_the_explorer_loads_its_own_plotly_bundle_and_the_full_one_on_request(client, member):
    """The explorer's page names the vendored bundle of its trace types by its digest; ?plotly=full names
    the plotly package's full bundle (bench/web.py's baseline). Both are cached for good and revalidate."""
    import importlib.resources

    sign_in(client)
    own = client.get("/explorer").get_data(as_text=True)
    full = client.get("/explorer?plotly=full").get_data(as_text=True)
    srcs = []
    for html in (own, full):
        found = re.findall(r'data-plotly-src="([^"]+)"', html)
        assert found and re.search(rf'rel="preload" as="script" href="{re.escape(found[0])}"', html)
        srcs.append(found[0].replace("&amp;", "&"))
    assert re.fullmatch(r"/static/vendor/plotly\.min\.js\?v=[0-9a-f]{16}", srcs[0]), srcs
    assert srcs[1].endswith("&bundle=full") and srcs[1] != srcs[0] + "&bundle=full", srcs
    vendored = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor" / "plotly-explorer.min.js"
    packaged = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    etags = set()
    for src, body in zip(srcs, (vendored.read_bytes(), packaged), strict=True):
        res = client.get(src)
        assert res.status_code == 200 and res.get_data() == body
        assert res.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert client.get(src, headers={"If-None-Match": res.headers["ETag"]}).status_code == 304
        etags.add(res.headers["ETag"])
    assert len(etags) == 2
    assert b"traces: scatter, scattergl, heatmap" in vendored.read_bytes()[:300]
    assert len(vendored.read_bytes()) < len(packaged) / 2


def test_page_errors_are_html(client):
    res = client.get("/no-such-page")
    assert res.status_code == 404 and res.mimetype == "text/html"


def test_healthz_is_200_with_both_up_and_503_with_the_broker_down(client, settings):
    res = client.get("/healthz")
    assert res.status_code == 200 and res.json == {"database": "ok", "broker": "ok"}
    down = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        res = down.test_client().get("/healthz")
        assert res.status_code == 503
        assert res.json["database"] == "ok" and res.json["broker"].startswith("down: ")
    finally:
        down.extensions["latentlab"].close()


def test_healthz_reports_a_missing_broker(settings):
    app = create_app(settings.with_(redis_url=""))  # embedded mode before `latentlab up` wrote its URL
    try:
        res = app.test_client().get("/healthz")
        assert res.status_code == 503 and "no broker configured" in res.json["broker"]
    finally:
        app.extensions["latentlab"].close()
