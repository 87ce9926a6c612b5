"""Files: every route that serves a file answers only what really lies inside its root. Sample images
(path from the database, resolved inside the data root), the static folder and the vendored Plotly.js
refuse ``..``, absolute paths, percent-encoded and double-encoded variants, and symlinks that lead out,
through Flask's test client and through a real waitress server (raw request lines, no client-side
normalisation)."""

from __future__ import annotations

import http.client
import os
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from cli.redis_server import free_port
from common.models import Sample
from common.platform.storage import UnsafePath, resolve_inside
from tests.security.conftest import World
from tests.support.services import start_web

SECRET_TEXT = "outside-the-root-do-not-serve"
WEB = Path(__file__).resolve().parents[2] / "web"

TRAVERSALS = [
    "../{name}",
    "../../{name}",
    "datasets/../../{name}",
    "%2e%2e/{name}",
    "%2E%2E%2F{name}",
    "%252e%252e/{name}",
    "%25252e%25252e%25252f{name}",
    "..%2f{name}",
    "..%5c{name}",
    "datasets/%2e%2e/%2e%2e/{name}",
]


@pytest.fixture
def outside(tmp_path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_text(SECRET_TEXT)
    return secret


def set_image_path(world: World, sample_id: int, stored: str) -> None:
    with world.sessions.begin() as s:
        s.execute(update(Sample).where(Sample.id == sample_id).values(image_path=stored))


def image(world: World, sample_id: int):
    return world.app.test_client().get(f"/api/v1/samples/{sample_id}/image", headers=world.bearer("B"))


def test_resolve_inside_refuses_every_escape(tmp_path, outside):
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "ok.png").write_text("fine")
    (root / "datasets" / "out").symlink_to(outside.parent, target_is_directory=True)
    (root / "datasets" / "leak.png").symlink_to(outside)
    (root / "datasets" / "inner.png").symlink_to(root / "datasets" / "ok.png")
    rel = os.path.relpath(outside, root)
    bad = [t.format(name=rel) for t in TRAVERSALS] + [
        str(outside),
        "/etc/passwd",
        "\\etc\\passwd",
        "C:\\Windows\\win.ini",
        "datasets/out/secret.png",
        "datasets/leak.png",
        "datasets/ok.png\x00.txt",
        "%00",
    ]
    for candidate in bad:
        with pytest.raises(UnsafePath):
            resolve_inside(root, candidate)
    assert resolve_inside(root, "datasets/ok.png") == (root / "datasets" / "ok.png").resolve()
    assert resolve_inside(root, "datasets/./inner.png") == (root / "datasets" / "ok.png").resolve()


def test_sample_image_serves_only_files_inside_the_data_root(world: World, outside):
    root = world.settings.data_root
    sid = world.lab.sample_ids[0]
    ok = image(world, sid)
    assert ok.status_code == 200 and ok.data.startswith(b"\x89PNG")
    rel = os.path.relpath(outside, root)
    (root / "datasets" / "leak.png").symlink_to(outside)
    (root / "datasets" / "out").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "datasets" / "fifo.png")
    (root / "datasets" / "folder.png").mkdir()
    stored = [t.format(name=rel) for t in TRAVERSALS] + [
        str(outside),
        "datasets/leak.png",
        "datasets/out/secret.png",
        "datasets/fifo.png",  # a FIFO must not hang the request thread waiting for a writer
        "datasets/folder.png",
    ]
    for path in stored:
        set_image_path(world, sid, path)
        answer: dict = {}
        worker = threading.Thread(target=lambda out=answer: out.update(res=image(world, sid)), daemon=True)
        worker.start()
        worker.join(30)
        assert "res" in answer, f"serving {path!r} hung"
        res = answer["res"]
        assert res.status_code == 404, (path, res.status_code)
        assert SECRET_TEXT.encode() not in res.data and res.json["error"].startswith("The image of sample")


@pytest.fixture
def static_copy(world: World, tmp_path, outside) -> Path:
    """The app's static folder copied to a temporary place, with a symlink leading out and one within."""
    folder = tmp_path / "static"
    shutil.copytree(WEB / "static", folder, symlinks=True)
    (folder / "leak.css").symlink_to(outside)
    (folder / "js" / "out").symlink_to(outside.parent, target_is_directory=True)
    (folder / "alias.css").symlink_to(folder / "app.css")
    world.app.static_folder = str(folder)
    return folder


def test_static_files_refuse_traversal_encodings_and_symlinks_out(world: World, static_copy):
    client = world.app.test_client()
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/alias.css").status_code == 200  # a link that stays inside is fine
    for path in (
        "/static/leak.css",
        "/static/js/out/secret.png",
        "/static/../app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e/app.py",
        "/static/%2e%2e%2fapp.py",
        "/static/%252e%252e/app.py",
        "/static/%252e%252e%252fapp.py",
        "/static/js/../../app.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/vendor/../../app.py",
        "/static/vendor/plotly.min.js/../../../app.py",
        "/static/js/",
    ):
        res = client.get(path)
        if res.status_code == 308:  # werkzeug merges '//' into '/' by redirecting; the target is refused too
            assert res.headers["Location"].split("localhost", 1)[-1].startswith("/static/"), path
            res = client.get(res.headers["Location"])
        assert res.status_code in (404, 400), (path, res.status_code)
        assert SECRET_TEXT.encode() not in res.data and b"create_app" not in res.data, path


def test_plotly_route_serves_only_the_packaged_bundle(world: World):
    """It takes no path from the request: whatever the query, the answer is plotly's own file."""
    from web.blueprints.pages import plotly_bundle

    res = world.app.test_client().get("/static/vendor/plotly.min.js?v=../../../etc/passwd&file=/etc/passwd")
    assert res.status_code == 200 and res.mimetype == "text/javascript"
    assert res.get_data() in (plotly_bundle().body(), plotly_bundle().gzipped())


def raw_get(port: int, target: str, headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=False, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_a_real_server_refuses_raw_traversals(world: World, tmp_path, outside):
    """Through waitress, with the request line sent as written: no client cleans the path first."""
    root = world.settings.data_root
    (root / "datasets" / "leak.png").symlink_to(outside)
    sid = world.lab.sample_ids[1]
    set_image_path(world, sid, "datasets/leak.png")
    port = free_port()
    proc = start_web(world.settings, tmp_path, port)
    try:
        bearer = {"Authorization": f"Bearer {world.tokens['B']}"}
        status, body = raw_get(port, f"/api/v1/samples/{sid}/image", bearer)
        assert status == 404 and SECRET_TEXT.encode() not in body
        for target in (
            "/static/../app.py",
            "/static/..%2fapp.py",
            "/static/%2e%2e/app.py",
            "/static/%252e%252e/app.py",
            "/static/%2e%2e%2f%2e%2e%2fcommon%2fconfig.py",
            "/static/..\\app.py",
            "/static//etc/passwd",
            "/static/vendor/..%2f..%2fapp.py",
            "/static/../../../../../../../../etc/passwd",
        ):
            status, body = raw_get(port, target)
            assert status in (308, 400, 404), (target, status)  # 308: '//' merged into '/', see above
            assert b"create_app" not in body and b"root:" not in body, target
        assert raw_get(port, "/static/app.css")[0] == 200
    finally:
        proc.stop()
