"""Hostile input found by an outside probe: odd spellings of ids, times at the ends of the calendar, long
static paths, CR/LF in ``next``, NUL characters, oversized bodies, all-digit names and overflowing
weights. Each answers a 4xx with a sentence naming the field, writes nothing and logs no internal error.
Runs against the real database (``--db=postgres`` too: PostgreSQL refuses NUL in text) and redis."""

from __future__ import annotations

import json
import logging
import re
import socket

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from common.models import ApiToken, Dataset, Job
from tests.security.conftest import NAMES, PASSWORDS, World


@pytest.fixture
def quiet_log(caplog):
    """Fails the test if the web app logs an error (an unexpected exception) while it runs."""
    caplog.set_level(logging.ERROR, logger="latentlab.web")
    yield
    errors = [r for r in caplog.records if r.name == "latentlab.web" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def count(world: World, model) -> int:
    with world.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def assert_refused(res, field: str, status: int = 400) -> None:
    assert res.status_code == status, (res.status_code, res.get_data(as_text=True)[:300])
    assert res.json["field"] == field, res.json
    assert field.rsplit(".", 1)[-1] in res.json["error"], res.json


# -- 1. ids ---------------------------------------------------------------------------------------------


ODD = ["\u0663", "\u00b2", "0{id}", "00{id}"]  # Arabic-Indic three, superscript two, leading zeros


def odd(spelling: str, row: int) -> str:
    return spelling.format(id=row)


def test_ids_in_paths_with_other_digits_or_leading_zeros_are_400_naming_the_variable(world: World, quiet_log):
    sample, job = world.lab.sample_ids[2], world.new_job_of_a()
    client = world.app.test_client()
    for spelling in ODD:
        for method, path, field in (
            ("GET", f"/api/v1/samples/{odd(spelling, sample)}", "sample_id"),
            ("GET", f"/api/v1/samples/{odd(spelling, sample)}/image", "sample_id"),
            ("GET", f"/api/v1/datasets/{odd(spelling, world.lab.dataset_id)}", "dataset_id"),
            ("GET", f"/api/v1/embeddings/{odd(spelling, world.lab.embedding_id)}/points", "embedding_id"),
            ("POST", f"/api/v1/jobs/{odd(spelling, job)}/cancel", "job_id"),
            ("DELETE", f"/api/v1/tokens/{odd(spelling, world.token_id)}", "token_id"),
        ):
            res = client.open(path, method=method, headers=world.bearer("A"))
            assert_refused(res, field)
            assert "ASCII digits" in res.json["error"]
    assert world.job(job).status == "queued"  # "٣"/"0…" never reached the job
    assert world.token(world.token_id).revoked_at is None
    page = world.client("A").raw.get(f"/datasets/0{world.lab.dataset_id}")
    assert page.status_code == 400 and b"ASCII digits" in page.data
    # plain ids and words are unchanged: 200, and 404 for what is not a number
    assert client.get(f"/api/v1/samples/{sample}", headers=world.bearer("A")).status_code == 200
    assert client.get("/api/v1/samples/abc", headers=world.bearer("A")).status_code == 404


def test_ids_in_queries_and_bodies_with_other_digits_are_400_and_nothing_is_written(world: World, quiet_log):
    client = world.app.test_client()
    bearer = world.bearer("A")
    emb, ids, ds = world.lab.embedding_id, world.lab.sample_ids, world.lab.dataset_id
    for path, field in (
        (f"/api/v1/history?parent=0{ids[0]}", "parent"),
        ("/api/v1/history?embedding=\u0663", "embedding"),
        ("/api/v1/history?dataset=\u0663", "dataset"),
        (f"/api/v1/history?dataset=0{ds}", "dataset"),
        ("/api/v1/jobs?before=\u00b2", "before"),
        (f"/api/v1/embeddings?dataset=0{ds}", "dataset"),
        (f"/api/v1/embeddings/{emb}/neighbors?sample=\u0663", "sample"),
    ):
        assert_refused(client.get(path, headers=bearer), field)
    jobs_before = count(world, Job)
    generation = {"embedding": emb, "selected": ids[0], "neighbors": ids[1:3]}
    for path, body, field in (
        ("/api/v1/generations", {**generation, "selected": "\u0663"}, "selected"),
        ("/api/v1/generations", {**generation, "embedding": f"0{emb}"}, "embedding"),
        ("/api/v1/generations", {**generation, "neighbors": [ids[1], "\u00b2"]}, "neighbors.1"),
        ("/api/v1/embeddings", {"dataset": "\u0663"}, "dataset"),
        ("/api/v1/embeddings", {"dataset": f"0{ds}"}, "dataset"),
        ("/api/v1/datasets", {"model": "\u0663", "name": "fresh", "num_samples": 1}, "model"),
        ("/api/v1/jobs", {"kind": "reproject", "params": {"embedding": f"00{emb}"}}, "params.embedding"),
    ):
        assert_refused(client.post(path, json=body, headers=bearer), field)
    assert count(world, Job) == jobs_before


def test_cli_refuses_ids_in_other_digits(world: World, monkeypatch):
    from cli.main import main
    from tests.support.services import env_for

    for name, value in env_for(world.settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    for args in (
        ["job", "show", "\u0663"],
        ["job", "show", "007"],
        ["neighbors", "--embedding", "\u00b2", "--sample", "1"],
        ["generate", "--embedding", "1", "--selected", "1", "--neighbors", "2,0\u0663"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "ASCII digits" in result.output, (args, result.output)


# -- 2. times at the ends of the calendar ---------------------------------------------------------------


def test_history_times_beyond_the_calendar_in_utc_are_400_naming_the_field(world: World, quiet_log):
    client = world.app.test_client()
    bearer = world.bearer("A")
    for query, field in (
        ("since=0001-01-01T00:00:00%2B01:00", "since"),
        ("until=9999-12-31T23:59:59-01:00", "until"),
        ("since=0001-01-01T00:00:00%2B14:00&until=2020-01-01", "since"),
    ):
        res = client.get(f"/api/v1/history?{query}", headers=bearer)
        assert_refused(res, field)
        assert "9999" in res.json["error"]
    # the last instants that exist in UTC are fine
    for query in (
        "since=0001-01-01T00:00:00Z",
        "until=9999-12-31T23:59:59Z",
        "since=0001-01-01T00:00:00-01:00",
    ):
        res = client.get(f"/api/v1/history?{query}", headers=bearer)
        assert res.status_code == 200, (query, res.json)


# -- 3. long static paths -------------------------------------------------------------------------------


def test_static_paths_too_long_for_the_file_system_are_404(world: World, quiet_log):
    client = world.app.test_client()
    for path in ("a" * 256, "a" * 300 + ".js", "js/" + "b" * 1000, "/".join(["c" * 200] * 30)):
        res = client.get(f"/static/{path}")
        assert res.status_code == 404, (len(path), res.status_code)


# -- 4. CR/LF in next -----------------------------------------------------------------------------------


def test_next_with_cr_or_lf_redirects_home_from_the_login_page_and_form(world: World, quiet_log):
    from urllib.parse import quote

    hostile = ["/jobs\r\nSet-Cookie: x=1", "/jobs\nX-Injected: 1", "/\t/evil.example", "/jobs\x7f"]
    for target in hostile:
        client = world.app.test_client()
        page = client.get(f"/login?next={quote(target)}")
        assert page.status_code == 200
        assert re.search(rb'name="next" value="/"', page.data), page.data[:2000]
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
        creds = {"username": NAMES["A"], "password": PASSWORDS["A"], "csrf_token": token, "next": target}
        res = client.post("/login", data=creds)
        assert res.status_code == 302 and res.headers["Location"] == "/", (target, res.headers)
        again = client.get(f"/login?next={quote(target)}")  # signed in: straight to a safe place
        assert again.status_code == 302 and again.headers["Location"] == "/"
    ok = world.app.test_client()
    ok.get("/login")
    assert re.search(rb'value="/jobs"', ok.get("/login?next=/jobs").data)


# -- 5. NUL characters ----------------------------------------------------------------------------------


def test_nul_characters_are_400_naming_the_field_in_bodies_queries_and_forms(world: World, quiet_log):
    client = world.app.test_client()
    bearer = world.bearer("A")
    tokens_before, jobs_before = count(world, ApiToken), count(world, Job)
    for path, body, field in (
        ("/api/v1/tokens", {"name": "laptop\u0000"}, "name"),
        ("/api/v1/jobs", {"kind": "ping", "params": {"note": ["ok", "x\u0000y"]}}, "params.note.1"),
        ("/api/v1/jobs", {"kind": "ping", "params": {"k\u0000": 1}}, "params.k\u0000"),
        ("/api/v1/embeddings", {"dataset": "alice\u0000digits"}, "dataset"),
        ("/api/v1/auth/login", {"username": "alice\u0000", "password": "x"}, "username"),
    ):
        assert_refused(client.post(path, json=body, headers=bearer), field)
    for path, field in (
        ("/api/v1/history?user=al%00ice", "user"),
        ("/api/v1/history?dataset=%00", "dataset"),
        ("/api/v1/jobs?owner=alice%00", "owner"),
    ):
        assert_refused(client.get(path, headers=bearer), field)
    form = world.app.test_client()
    form.get("/login")
    res = form.post("/login", data={"username": "alice\u0000", "password": "p"})
    assert res.status_code == 400 and b"NUL" in res.data
    assert count(world, ApiToken) == tokens_before and count(world, Job) == jobs_before


# -- 6. bodies ------------------------------------------------------------------------------------------


def test_flask_answers_413_with_a_sentence_from_the_body_setting(settings, sessions, redis_url):
    from tests.security.conftest import make_world

    world = make_world(settings, sessions, max_body_bytes=4096)
    try:
        res = world.app.test_client().post(
            "/api/v1/jobs", data="x" * 5000, headers={**world.bearer("A"), "Content-Type": "application/json"}
        )
        assert res.status_code == 413 and "4,096 bytes" in res.json["error"], res.json
    finally:
        world.app.extensions["latentlab"].close()


def raw_request(port: int, head: str) -> bytes:
    """Send only a request head (no body) and read what the server answers, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def test_waitress_refuses_a_large_content_length_before_reading_the_body(settings, tmp_path):
    from cli.redis_server import free_port
    from tests.support.services import start_web

    port = free_port()
    web = start_web(settings, tmp_path, port)
    try:
        for who in ("anonymous", "with a body type"):
            extra = "Content-Type: application/json\r\n" if who != "anonymous" else ""
            head = (
                f"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                "Content-Length: 10000000000\r\nConnection: close\r\n\r\n"
            )
            answer = raw_request(port, head)
            # answered without our sending a byte of the 10 GB body, in the API's JSON with a sentence
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            status, headers, body = split_answer(answer)
            assert headers["content-type"] == "application/json", answer[:300]
            assert json.loads(body) == {
                "error": "The request body is larger than 1 MB; send less data in one request."
            }
        # one byte over the limit is refused the same way; at the limit, the app reads it (and answers)
        limit = settings.max_body_bytes
        over = f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n\r\n"
        assert split_answer(raw_request(port, over))[0] == 413
        # a request waitress cannot parse is refused in JSON too (400, not a plain-text page)
        bad = "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n"
        status, headers, body = split_answer(raw_request(port, bad))
        assert status == 400 and headers["content-type"] == "application/json"
        assert "malformed" in json.loads(body)["error"]
        small = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        assert raw_request(port, small).split(b" ", 2)[1] in (b"200", b"503")
    finally:
        web.stop()
    assert "Traceback" not in web.log_text()


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP answer as (status, lower-cased headers, body)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


# -- 9. names and weights -------------------------------------------------------------------------------


def test_all_digit_names_and_overflowing_weights_are_refused(world: World, quiet_log):
    from common.platform.errors import UserError
    from common.research.registry import add_model

    client = world.app.test_client()
    bearer = world.bearer("A")
    datasets_before, jobs_before = count(world, Dataset), count(world, Job)
    res = client.post("/api/v1/datasets", json={"model": "m", "name": "3", "num_samples": 1}, headers=bearer)
    assert_refused(res, "name")
    emb, ids = world.lab.embedding_id, world.lab.sample_ids
    weighted = {"embedding": emb, "selected": ids[0], "neighbors": ids[1:3], "mode": "weighted"}
    for weights, field in (([1e308, 1e308], "weights.0"), ([1.0, 1e7], "weights.1"), ([1, -1], "weights.1")):
        res = client.post("/api/v1/generations", json={**weighted, "weights": weights}, headers=bearer)
        assert_refused(res, field)
    assert count(world, Dataset) == datasets_before and count(world, Job) == jobs_before
    with world.sessions() as s, pytest.raises(UserError, match="only digits"):
        add_model(s, world.settings, "42", checkpoint="missing.safetensors")


def test_ids_beyond_postgresqls_integer_are_404_in_paths_and_400_in_queries_and_bodies(
    world: World, quiet_log
):
    """The id columns are INTEGER (32 bits on PostgreSQL): 2^31 reached the database as "integer out of
    range", a 500 the fuzz run found on PostgreSQL only."""
    big = 2**31
    client = world.app.test_client()
    bearer = world.bearer("A")
    for path in (
        f"/api/v1/datasets/{big}",
        f"/api/v1/embeddings/{big}/generations",
        f"/api/v1/samples/{big}",
    ):
        assert client.get(path, headers=bearer).status_code == 404, path
    for path, field in (
        (f"/api/v1/embeddings?dataset={big}", "dataset"),
        (f"/api/v1/history?embedding={big}", "embedding"),
    ):
        assert_refused(client.get(path, headers=bearer), field)
    generation = {
        "embedding": big,
        "selected": world.lab.sample_ids[0],
        "neighbors": world.lab.sample_ids[1:2],
    }
    assert_refused(client.post("/api/v1/generations", json=generation, headers=bearer), "embedding")
    res = client.get(f"/api/v1/history?dataset={big}", headers=bearer)
    assert_refused(res, "dataset")
    ok = client.get(f"/api/v1/samples/{2**31 - 1}", headers=bearer)
    assert ok.status_code == 404  # the largest id is simply not found
