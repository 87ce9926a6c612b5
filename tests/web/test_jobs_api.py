"""The jobs API's rules (visibility, filters, positions, children, validation) through Flask's test client
against a real migrated database and a real redis-server; no worker runs, so jobs stay queued."""

from __future__ import annotations

import pytest

from common.models import Job
from common.platform.accounts import create_user
from tests.support.web import issue_bearer
from web.app import create_app


@pytest.fixture
def boss(sessions, admin):
    return issue_bearer(sessions, admin)


@pytest.fixture
def bob(sessions):
    with sessions.begin() as s:
        user = create_user(s, "bob", "bob-password")
    return issue_bearer(sessions, user)


def submit(client, headers, **params):
    res = client.post("/api/v1/jobs", json={"kind": "ping", "params": params}, headers=headers)
    assert res.status_code == 202, res.json
    return res.json


def test_submit_answers_202_with_the_queued_job_and_its_place(client, alice):
    first = submit(client, alice, seconds=1)
    second = submit(client, alice, seconds=1, steps=3)
    assert second["status"] == "queued" and second["owner"] == "alice"
    assert second["params"] == {"seconds": 1.0, "steps": 3, "fault": "none"}
    assert (first["position"], second["position"]) == (1, 2)
    assert second["published_at"] is not None and second["children"] is None
    got = client.get(f"/api/v1/jobs/{second['id']}", headers=alice)
    assert got.status_code == 200 and got.json["position"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "teleport"}, "kind"),
        ({"kind": "Ping!"}, "kind"),
        ({"kind": "x" * 300}, "kind"),
        ({"params": {}}, "kind"),
        ({"kind": "dataset_chunk", "params": {}}, "kind"),
        ({"kind": "ping", "params": [1, 2]}, "params"),
        ({"kind": "ping", "params": "fast"}, "params"),
        ({"kind": "ping", "params": {"seconds": -1}}, "params.seconds"),
        ({"kind": "ping", "params": {"steps": 1000}}, "params.steps"),
        ({"kind": "ping", "params": {"color": "red"}}, "params.color"),
        ({"kind": "ping", "params": {"fault": "crash"}}, "params.fault"),
        ({"kind": "ping", "priority": 1}, "priority"),
    ],
)
def test_bad_submissions_answer_400_naming_the_field(client, alice, sessions, body, field):
    res = client.post("/api/v1/jobs", json=body, headers=alice)
    assert res.status_code == 400 and res.json["field"] == field, res.json
    assert res.json["error"].endswith(".")
    with sessions() as s:
        assert s.query(Job).count() == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("status=done", "status"),
        ("owner=" + "x" * 201, "owner"),
    ],
)
def test_bad_list_queries_answer_400_naming_the_field(client, alice, query, field):
    res = client.get(f"/api/v1/jobs?{query}", headers=alice)
    assert res.status_code == 400 and res.json["field"] == field


def test_members_see_only_their_own_jobs_admins_see_all(client, alice, bob, boss):
    mine = submit(client, alice)
    theirs = submit(client, bob)
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=alice).json["jobs"]] == [mine["id"]]
    # a member filtering on someone else gets an empty list, not their jobs
    assert client.get("/api/v1/jobs?owner=bob", headers=alice).json["jobs"] == []
    assert client.get(f"/api/v1/jobs/{theirs['id']}", headers=alice).status_code == 404
    assert client.get("/api/v1/jobs/999999", headers=alice).status_code == 404
    everyone = client.get("/api/v1/jobs", headers=boss).json["jobs"]
    assert [j["owner"] for j in everyone] == ["bob", "alice"]
    assert [j["id"] for j in client.get("/api/v1/jobs?owner=bob", headers=boss).json["jobs"]] == [
        theirs["id"]
    ]
    assert client.get(f"/api/v1/jobs/{theirs['id']}", headers=boss).status_code == 200


def test_cancel_is_for_the_owner_or_an_admin_and_a_cancelled_job_stays_cancelled(client, alice, bob, boss):
    job = submit(client, bob)
    res = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=alice)
    assert res.status_code == 404
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=bob).json["status"] == "queued"
    res = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=boss)
    assert res.status_code == 200 and res.json["status"] == "cancelled" and res.json["position"] is None
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=bob)
    assert again.status_code == 200 and again.json["status"] == "cancelled"


def test_listing_filters_pages_and_hides_chunk_jobs(client, sessions, alice, member):
    parent = submit(client, alice)
    with sessions.begin() as s:
        for status in ("succeeded", "running", "queued"):
            s.add(
                Job(
                    kind="ping",
                    queue="batch",
                    owner_id=member.id,
                    params={},
                    parent_id=parent["id"],
                    status=status,
                )
            )
    others = [submit(client, alice) for _ in range(3)]
    top = client.get("/api/v1/jobs", headers=alice).json["jobs"]
    assert [j["id"] for j in top] == [o["id"] for o in reversed(others)] + [parent["id"]]
    with_children = client.get("/api/v1/jobs?include_children=1&limit=500", headers=alice).json["jobs"]
    assert len(with_children) == 7
    detail = client.get(f"/api/v1/jobs/{parent['id']}", headers=alice).json
    assert detail["children"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "total": 3,
    }
    page = client.get("/api/v1/jobs?limit=2", headers=alice).json
    assert len(page["jobs"]) == 2 and page["next_before"] == page["jobs"][-1]["id"]
    rest = client.get(f"/api/v1/jobs?limit=2&before={page['next_before']}", headers=alice).json
    assert [j["id"] for j in rest["jobs"]] == [others[0]["id"], parent["id"]]
    assert client.get("/api/v1/jobs?status=running", headers=alice).json["jobs"] == []
    assert client.get("/api/v1/jobs?kind=fit_embedding", headers=alice).json["jobs"] == []
    # listed positions agree with the single-job answer (children count as queue entries too)
    listed = {j["id"]: j["position"] for j in top}
    for job_id, position in listed.items():
        assert client.get(f"/api/v1/jobs/{job_id}", headers=alice).json["position"] == position


def test_submit_without_any_broker_keeps_a_durable_unpublished_row(settings, sessions, member):
    app = create_app(settings.with_(redis_url=""))  # embedded mode, no URL file yet
    try:
        headers = issue_bearer(sessions, member)
        res = app.test_client().post("/api/v1/jobs", json={"kind": "ping"}, headers=headers)
        assert res.status_code == 202 and res.json["published_at"] is None, res.json
        with sessions() as s:
            job = s.get(Job, res.json["id"])
            assert job.status == "queued" and job.published_at is None
    finally:
        app.extensions["latentlab"].close()


def test_kinds_lists_public_kinds_with_their_params_schema(client, alice):
    kinds = {k["name"]: k for k in client.get("/api/v1/jobs/kinds", headers=alice).json["kinds"]}
    assert "ping" in kinds and "dataset_chunk" not in kinds
    assert kinds["ping"]["params_schema"]["properties"]["steps"]["maximum"] == 100
