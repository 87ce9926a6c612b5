"""Who may do what, for every route of ``app.url_map`` and every method: anonymous, member A (the owner of
the objects tried), member B and an admin, each with a real browser session against A's real objects.

``EXPECTED`` holds one row per (rule, method). A route added to the app without a row fails
``test_every_route_has_an_expectation``, so no future route escapes the matrix.

The rules (docs/API.md): lab data (models, datasets, maps, samples, images, history) is readable by every
signed-in member; jobs, tokens and account settings are private, and another member's private object
answers 404, exactly like one that does not exist; changing or cancelling is for the owner or an admin
(lab data: 403, as its existence is no secret).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.security.conftest import A_SECRET, NAMES, PASSWORDS, World
from tests.support.seeded_map import seed_map
from tests.support.sse import Stream

IDENTITIES = ("anon", "A", "B", "admin")
Status = int | tuple[int, ...]


@dataclass(frozen=True)
class Expect:
    """Expected statuses per identity, and how to build the request against A's objects."""

    anon: Status
    A: Status
    B: Status
    admin: Status
    request: Callable[[World, str], tuple[str, dict[str, Any]]]
    # after each identity's request: e.g. that B's refused cancel left A's job alone
    after: Callable[[World, str, Any, Any], None] | None = None
    ends_sessions: bool = False  # the request signs identities out or replaces their session

    def status(self, who: str) -> Status:
        return getattr(self, who)


def get(path: Callable[[World], str], **kwargs) -> Callable:
    return lambda w, who: (path(w), dict(kwargs))


def post(path: Callable[[World], str], body: Callable[[World, str], dict] | None = None) -> Callable:
    return lambda w, who: (path(w), {"json": body(w, who) if body else None})


LAB = {"anon": 401, "A": 200, "B": 200, "admin": 200}
PAGE = {"anon": 302, "A": 200, "B": 200, "admin": 200}
PUBLIC = {"anon": 200, "A": 200, "B": 200, "admin": 200}
PRIVATE = {"anon": 401, "A": 200, "B": 404, "admin": 200}
CREATE = {"anon": 401, "A": 202, "B": 202, "admin": 202}


def lab(request) -> dict:
    return {**LAB, "request": request}


# -- requests that change things: a fresh object of A per identity ---------------------------------------


def cancel_fresh_job(w: World, who: str):
    job_id = w.new_job_of_a()
    w.scratch = job_id
    return f"/api/v1/jobs/{job_id}/cancel", {}


def cancel_left_alone(w: World, who: str, res, ctx) -> None:
    status = w.job(w.scratch).status
    assert status == ("cancelled" if res.status_code == 200 else "queued"), (who, status)


def revoke_fresh_token(w: World, who: str):
    w.scratch = w.new_token_of_a()
    return f"/api/v1/tokens/{w.scratch}", {}


def revoke_left_alone(w: World, who: str, res, ctx) -> None:
    revoked = w.token(w.scratch).revoked_at is not None
    assert revoked == (res.status_code == 200), (who, revoked)


def grow_fresh_dataset(w: World, who: str):
    """A's own small dataset (ready), grown with its own settings: only A or an admin may."""
    name = f"alice-grow-{who}-{uuid.uuid4().hex[:8]}"
    seed_map(w.sessions, w.settings, owner_id=w.users["A"], n=2, name=name, images=False)
    w.scratch = name
    body = {"model": f"model-{name}", "name": name, "num_samples": 4, "layers": ["midblock"], "seed": 0}
    return "/api/v1/datasets", {"json": body}


def grow_left_alone(w: World, who: str, res, ctx) -> None:
    from sqlalchemy import select

    from common.models import Dataset

    with w.sessions() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == w.scratch))
    assert (ds.target_size == 4) == (res.status_code == 202), (who, ds.target_size, res.json)


def activations_of_a_sample(w: World, who: str):
    """A generated sample's activations (the shard written here: the world has no worker)."""
    import numpy as np

    from common.models import Dataset, Sample

    with w.sessions() as s:
        smp = s.get(Sample, w.generated_id)
        shape = s.get(Dataset, smp.dataset_id).layer_shapes["midblock"]
    path = w.settings.data_root / smp.act_shard / "midblock.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((smp.act_row + 1, int(np.prod(shape))), np.float32))
    return f"/api/v1/samples/{w.generated_id}/activations", {"query_string": {"layer": "midblock"}}


def own_credentials(w: World, who: str):
    if who == "anon":
        return "/api/v1/auth/login", {"json": {"username": "alice", "password": "not-alice-password"}}
    return "/api/v1/auth/login", {"json": {"username": NAMES[who], "password": PASSWORDS[who]}}


def same_password(w: World, who: str):
    pw = PASSWORDS.get(who, PASSWORDS["A"])
    return "/api/v1/auth/password", {"json": {"current_password": pw, "new_password": pw}}


def form_login(w: World, who: str):
    if who == "anon":  # no form token: the form comes back with an error, nobody is signed in
        return "/login", {"data": {"username": "alice", "password": PASSWORDS["A"]}}
    client = w.client(who)
    data = {"username": NAMES[who], "password": PASSWORDS[who], "csrf_token": client.csrf, "next": "/jobs"}
    return "/login", {"data": data}


def generation_body(w: World, who: str) -> dict:
    ids = w.lab.sample_ids
    return {"embedding": w.lab.embedding_id, "selected": ids[5], "neighbors": ids[6:9], "variations": 1}


def sweep_body(w: World, who: str) -> dict:
    return {**generation_body(w, who), "grid": {"strength": [0.0, 1.0]}}


def a_sweep(w: World) -> int:
    """A sweep of A's (recorded here: the world has no worker), with no cells run yet."""
    from common.models import Sweep

    with w.sessions.begin() as s:
        sweep = Sweep(
            embedding_id=w.lab.embedding_id,
            owner_id=w.users["A"],
            params={},
            grid={"strength": [0.0, 1.0]},
            cells=[{"strength": 0.0}, {"strength": 1.0}],
        )
        s.add(sweep)
        s.flush()
        return sweep.id


def twin_of_a_sample(w: World, who: str):
    """A generated sample's natural twin (its own image stands in for it: the world has no worker)."""
    from sqlalchemy import update

    from common.models import Generation, Sample

    with w.sessions.begin() as s:
        path = s.get(Sample, w.generated_id).image_path
        s.execute(
            update(Generation).where(Generation.sample_id == w.generated_id).values(twin_image_path=path)
        )
    return f"/api/v1/samples/{w.generated_id}/twin", {}


# -- listings and streams must not leak A's private jobs or tokens ---------------------------------------


def jobs_list_is_own(w: World, who: str, res, ctx) -> None:
    if res.status_code != 200:
        return
    owners = {j["owner_id"] for j in res.json["jobs"]}
    if who == "B":
        assert owners <= {w.users["B"]} and w.job_id not in {j["id"] for j in res.json["jobs"]}
    if who in ("A", "admin"):
        assert w.job_id in {j["id"] for j in res.json["jobs"]}


def queues_reduced_for_others(w: World, who: str, res, ctx) -> None:
    if res.status_code != 200:
        return
    for entry in res.json["jobs"]:
        if who == "B" and not entry.get("mine"):
            assert set(entry) == {"queue", "kind", "status", "position", "owner", "progress"}, entry


def tokens_list_is_own(w: World, who: str, res, ctx) -> None:
    if res.status_code == 200:
        ids = {t["id"] for t in res.json["tokens"]}
        assert (w.token_id in ids) == (who == "A"), (who, ids)
        assert (w.token_prefix in res.get_data(as_text=True)) == (who == "A")


def stream_opens(w: World, who: str, res, ctx) -> None:
    if res.status_code == 200:
        assert res.mimetype == "text/event-stream"


EXPECTED: dict[tuple[str, str], Expect] = {
    # pages
    ("/", "GET"): Expect(**PAGE, request=get(lambda w: "/")),
    ("/datasets", "GET"): Expect(**PAGE, request=get(lambda w: "/datasets")),
    ("/datasets/<int:dataset_id>", "GET"): Expect(
        **PAGE, request=get(lambda w: f"/datasets/{w.lab.dataset_id}")
    ),
    ("/explorer", "GET"): Expect(**PAGE, request=get(lambda w: "/explorer")),
    ("/history", "GET"): Expect(**PAGE, request=get(lambda w: "/history")),
    ("/tokens", "GET"): Expect(**PAGE, request=get(lambda w: "/tokens")),
    ("/sweeps/<int:sweep_id>", "GET"): Expect(**PAGE, request=get(lambda w: f"/sweeps/{a_sweep(w)}")),
    ("/jobs", "GET"): Expect(**PAGE, request=get(lambda w: "/jobs")),
    ("/login", "GET"): Expect(anon=200, A=302, B=302, admin=302, request=get(lambda w: "/login")),
    ("/login", "POST"): Expect(anon=400, A=302, B=302, admin=302, request=form_login, ends_sessions=True),
    ("/logout", "POST"): Expect(
        anon=302, A=302, B=302, admin=302, request=post(lambda w: "/logout"), ends_sessions=True
    ),
    ("/healthz", "GET"): Expect(**PUBLIC, request=get(lambda w: "/healthz")),
    ("/static/<path:filename>", "GET"): Expect(**PUBLIC, request=get(lambda w: "/static/app.css")),
    ("/static/vendor/plotly.min.js", "GET"): Expect(
        **PUBLIC, request=get(lambda w: "/static/vendor/plotly.min.js")
    ),
    # platform
    ("/api/openapi.json", "GET"): Expect(**PUBLIC, request=get(lambda w: "/api/openapi.json")),
    ("/api/v1/auth/csrf", "GET"): Expect(**PUBLIC, request=get(lambda w: "/api/v1/auth/csrf")),
    ("/api/v1/auth/login", "POST"): Expect(
        anon=401, A=200, B=200, admin=200, request=own_credentials, ends_sessions=True
    ),
    ("/api/v1/auth/logout", "POST"): Expect(
        anon=401, A=200, B=200, admin=200, request=post(lambda w: "/api/v1/auth/logout"), ends_sessions=True
    ),
    ("/api/v1/auth/me", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/auth/me")),
    ("/api/v1/auth/password", "POST"): Expect(
        anon=401, A=200, B=200, admin=200, request=same_password, ends_sessions=True
    ),
    ("/api/v1/tokens", "GET"): Expect(
        **LAB, request=get(lambda w: "/api/v1/tokens"), after=tokens_list_is_own
    ),
    ("/api/v1/tokens", "POST"): Expect(
        anon=401,
        A=201,
        B=201,
        admin=201,
        request=post(lambda w: "/api/v1/tokens", lambda w, who: {"name": "m"}),
    ),
    ("/api/v1/tokens/<int:token_id>", "DELETE"): Expect(
        **PRIVATE, request=revoke_fresh_token, after=revoke_left_alone
    ),
    ("/api/v1/jobs", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/jobs"), after=jobs_list_is_own),
    ("/api/v1/jobs", "POST"): Expect(
        **CREATE,
        request=post(lambda w: "/api/v1/jobs", lambda w, who: {"kind": "ping", "params": {"seconds": 0}}),
    ),
    ("/api/v1/jobs/kinds", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/jobs/kinds")),
    ("/api/v1/jobs/<int:job_id>", "GET"): Expect(
        **PRIVATE, request=get(lambda w: f"/api/v1/jobs/{w.job_id}")
    ),
    ("/api/v1/jobs/<int:job_id>/cancel", "POST"): Expect(
        **PRIVATE, request=cancel_fresh_job, after=cancel_left_alone
    ),
    ("/api/v1/queues", "GET"): Expect(
        **LAB, request=get(lambda w: "/api/v1/queues"), after=queues_reduced_for_others
    ),
    ("/api/v1/events", "GET"): Expect(
        **LAB, request=get(lambda w: "/api/v1/events", buffered=False), after=stream_opens
    ),
    # research loop: lab data, readable by every member
    ("/api/v1/models", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/models")),
    ("/api/v1/datasets", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/datasets")),
    ("/api/v1/datasets", "POST"): Expect(
        anon=401, A=202, B=403, admin=202, request=grow_fresh_dataset, after=grow_left_alone
    ),
    ("/api/v1/datasets/<int:dataset_id>", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/datasets/{w.lab.dataset_id}")
    ),
    ("/api/v1/datasets/<int:dataset_id>/samples", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/datasets/{w.lab.dataset_id}/samples")
    ),
    ("/api/v1/embeddings", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/embeddings")),
    # fitting a map of A's dataset makes a new map of one's own: every member may
    ("/api/v1/embeddings", "POST"): Expect(
        **CREATE,
        request=post(
            lambda w: "/api/v1/embeddings",
            lambda w, who: {"dataset": str(w.lab.dataset_id), "name": f"map-{who}", "n_neighbors": 4},
        ),
    ),
    ("/api/v1/embeddings/<int:embedding_id>", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/embeddings/{w.lab.embedding_id}")
    ),
    ("/api/v1/embeddings/<int:embedding_id>/points", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/embeddings/{w.lab.embedding_id}/points")
    ),
    ("/api/v1/embeddings/<int:embedding_id>/neighbors", "GET"): Expect(
        **LAB,
        request=get(
            lambda w: f"/api/v1/embeddings/{w.lab.embedding_id}/neighbors?sample={w.lab.sample_ids[0]}"
        ),
    ),
    ("/api/v1/embeddings/<int:embedding_id>/generations", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/embeddings/{w.lab.embedding_id}/generations")
    ),
    # generating from A's map is the research loop: a new job and sample of one's own
    ("/api/v1/generations", "POST"): Expect(
        **CREATE, request=post(lambda w: "/api/v1/generations", generation_body)
    ),
    ("/api/v1/history", "GET"): Expect(**LAB, request=get(lambda w: "/api/v1/history")),
    ("/api/v1/embeddings/<int:embedding_id>/effects", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/embeddings/{w.lab.embedding_id}/effects")
    ),
    ("/api/v1/samples/<int:sample_id>", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/samples/{w.generated_id}")
    ),
    ("/api/v1/samples/<int:sample_id>/image", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/samples/{w.generated_id}/image")
    ),
    ("/api/v1/samples/<int:sample_id>/activations", "GET"): Expect(**LAB, request=activations_of_a_sample),
    ("/api/v1/samples/<int:sample_id>/twin", "GET"): Expect(**LAB, request=twin_of_a_sample),
    # the seeded generation has no target tensors on disk: a signed-in user is told it is not available
    ("/api/v1/samples/<int:sample_id>/bundle", "GET"): Expect(
        anon=401, A=404, B=404, admin=404, request=get(lambda w: f"/api/v1/samples/{w.generated_id}/bundle")
    ),
    ("/api/v1/sweeps", "POST"): Expect(**CREATE, request=post(lambda w: "/api/v1/sweeps", sweep_body)),
    ("/api/v1/sweeps/<int:sweep_id>", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/sweeps/{a_sweep(w)}")
    ),
    ("/api/v1/sweeps/<int:sweep_id>/sheet.png", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/sweeps/{a_sweep(w)}/sheet.png")
    ),
    ("/api/v1/exports/history", "GET"): Expect(
        **LAB, request=get(lambda w: "/api/v1/exports/history", query_string={"format": "csv"})
    ),
    ("/api/v1/exports/datasets/<int:dataset_id>/samples", "GET"): Expect(
        **LAB,
        request=get(
            lambda w: f"/api/v1/exports/datasets/{w.lab.dataset_id}/samples", query_string={"format": "csv"}
        ),
    ),
    ("/api/v1/exports/embeddings/<int:embedding_id>/points", "GET"): Expect(
        **LAB,
        request=get(
            lambda w: f"/api/v1/exports/embeddings/{w.lab.embedding_id}/points",
            query_string={"format": "parquet"},
        ),
    ),
    ("/api/v1/samples/<int:sample_id>/lineage", "GET"): Expect(
        **LAB, request=get(lambda w: f"/api/v1/samples/{w.generated_id}/lineage")
    ),
    ("/api/v1/exports/samples/<int:sample_id>/lineage", "GET"): Expect(
        **LAB,
        request=get(
            lambda w: f"/api/v1/exports/samples/{w.generated_id}/lineage", query_string={"format": "csv"}
        ),
    ),
}


def routes(app) -> set[tuple[str, str]]:
    return {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_route_has_an_expectation(world):
    """A new route needs a row in EXPECTED (who may call it, against what); a removed one loses its row."""
    present = routes(world.app)
    missing = sorted(present - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - present)
    assert not missing, f"routes without an access expectation (add them to EXPECTED): {missing}"
    assert not stale, f"EXPECTED rows for routes that no longer exist: {stale}"


def test_access_matrix_for_every_route_method_and_identity(world, capsys):
    failures, table = [], []
    for (rule, method), expect in sorted(EXPECTED.items()):
        row = []
        for who in IDENTITIES:
            path, kwargs = expect.request(world, who)
            res = world.client(who).open(method, path, **kwargs)
            try:
                wanted = expect.status(who)
                wanted = wanted if isinstance(wanted, tuple) else (wanted,)
                row.append(str(res.status_code))
                if res.status_code not in wanted:
                    body = res.get_data(as_text=True)[:200] if kwargs.get("buffered", True) else ""
                    failures.append(f"{method} {rule} as {who}: {res.status_code}, expected {wanted} {body}")
                    continue
                if who == "B" and kwargs.get("buffered", True):
                    # nothing private of A in any answer B gets, whatever the route
                    text = res.get_data().decode(errors="replace")
                    assert A_SECRET not in text, f"{method} {rule} shows A's private job to B"
                    assert world.token_prefix not in text, f"{method} {rule} shows A's token to B"
                if expect.after:
                    expect.after(world, who, res, None)
            except AssertionError as exc:
                failures.append(f"{method} {rule} as {who}: {exc}")
            finally:
                res.close()
            if expect.ends_sessions:
                world.forget_sessions()
        table.append(f"{method:6} {rule:50} " + " ".join(f"{c:>5}" for c in row))
    with capsys.disabled():
        print(f"\n{'':6} {'route':50} " + " ".join(f"{who:>5}" for who in IDENTITIES))
        print("\n".join(table))
    assert not failures, "\n".join(failures)


def test_private_objects_of_another_member_answer_404_with_a_token_too(world):
    """The same rule over Bearer tokens: B's token sees and changes nothing of A's, with the answer a
    missing object gets; A's token and an admin's reach them."""
    b = world.bearer("B")
    client = world.app.test_client()
    for method, template, object_id in (
        ("GET", "/api/v1/jobs/{}", world.job_id),
        ("POST", "/api/v1/jobs/{}/cancel", world.job_id),
        ("DELETE", "/api/v1/tokens/{}", world.token_id),
    ):
        res = client.open(template.format(object_id), method=method, headers=b)
        missing = client.open(template.format(999_999), method=method, headers=b)
        assert res.status_code == missing.status_code == 404, (method, template, res.status_code)
        assert A_SECRET not in res.get_data(as_text=True)
        # the same sentence as for an id that does not exist: nothing tells them apart
        assert res.json["error"].replace(str(object_id), "N") == missing.json["error"].replace("999999", "N")
    assert world.token(world.token_id).revoked_at is None
    listed = world.app.test_client().get(
        "/api/v1/jobs?owner=alice&include_children=true&limit=500", headers=b
    )
    assert listed.status_code == 200 and listed.json["jobs"] == []
    mine = world.app.test_client().get(f"/api/v1/jobs/{world.job_id}", headers=world.bearer("A"))
    assert mine.status_code == 200 and mine.json["result"] == {"note": A_SECRET}
    assert (
        world.app.test_client().get(f"/api/v1/jobs/{world.job_id}", headers=world.bearer("admin")).status_code
        == 200
    )


def test_event_stream_and_queue_listing_never_carry_another_members_job(world):
    """A's real job events (submit, cancel) reach A's stream and never B's; B's queue view of A's queued
    job has no id, params or result."""
    a_client, b_client = world.app.test_client(), world.app.test_client()
    a_stream = Stream(a_client.get("/api/v1/events", headers=world.bearer("A"), buffered=False))
    b_stream = Stream(b_client.get("/api/v1/events", headers=world.bearer("B"), buffered=False))
    try:
        a_queues = a_stream.next_event("queues")
        b_queues = b_stream.next_event("queues")
        submitted = world.app.test_client().post(
            "/api/v1/jobs",
            json={"kind": "ping", "params": {"seconds": 7, "steps": 3}},
            headers=world.bearer("A"),
        )
        assert submitted.status_code == 202
        job_id = submitted.json["id"]
        world.app.test_client().post(f"/api/v1/jobs/{job_id}/cancel", headers=world.bearer("A"))
        seen_by_a = [a_stream.next_event("job")["id"] for _ in range(2)]
        assert job_id in seen_by_a
        # B's stream: a job event of B's own, sent after A's, is the first job event B gets
        mine = world.app.test_client().post(
            "/api/v1/jobs", json={"kind": "ping", "params": {"seconds": 0}}, headers=world.bearer("B")
        )
        first = b_stream.next_event("job")
        assert first["id"] == mine.json["id"] and first["owner_id"] == world.users["B"]
        b_view = world.app.test_client().get("/api/v1/queues", headers=world.bearer("B")).json
        for entry in b_view["jobs"] + b_queues["jobs"]:
            if not entry.get("mine"):
                assert set(entry) == {"queue", "kind", "status", "position", "owner", "progress"}
        assert json.dumps(a_queues)  # A's own view is complete; only shape matters here
    finally:
        a_stream.close()
        b_stream.close()
