"""Bounded growth: lists answer pages (``limit``/``offset``, at most 500 rows, ``next_offset``), job listings
cut long parameters, tokens expire and admins can find and revoke any member's, and finished jobs are
pruned after their retention (``latentlab jobs prune``, and the reaper)."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

from click.testing import CliRunner
from sqlalchemy import select, update

from common.models import ApiToken, Job, Sample, utcnow
from tests.security.conftest import World


def get(world: World, path: str, who: str = "A"):
    return world.app.test_client().get(path, headers=world.bearer(who))


def test_lists_of_datasets_maps_and_tokens_are_pages_with_a_next_offset(world: World):
    for _ in range(3):
        world.new_token_of_a()
    for path, key in (("/api/v1/datasets", "datasets"), ("/api/v1/embeddings", "embeddings")):
        first = get(world, path)
        assert first.status_code == 200 and first.json["next_offset"] is None and len(first.json[key]) >= 1
        assert get(world, f"{path}?limit=501").status_code == 400
    tokens = get(world, "/api/v1/tokens").json
    assert len(tokens["tokens"]) == 4 and tokens["next_offset"] is None
    seen, offset = [], 0
    while offset is not None:
        page = get(world, f"/api/v1/tokens?limit=3&offset={offset}").json
        assert len(page["tokens"]) <= 3
        seen += [t["id"] for t in page["tokens"]]
        offset = page["next_offset"]
    assert seen == [t["id"] for t in tokens["tokens"]]
    res = get(world, "/api/v1/tokens?limit=0")
    assert res.status_code == 400 and res.json["field"] == "limit"


def test_a_job_listing_cuts_long_parameters_and_the_job_itself_has_them_all(world: World):
    ids = list(range(1, 100_001))
    with world.sessions.begin() as s:
        job = Job(
            kind="reproject",
            queue="embed",
            owner_id=world.users["A"],
            params={"embedding": world.lab.embedding_id, "samples": ids},
            status="succeeded",
        )
        s.add(job)
        s.flush()
        job_id = job.id
    listed = next(j for j in get(world, "/api/v1/jobs").json["jobs"] if j["id"] == job_id)
    assert listed["params"]["samples"] == ids[:20]
    assert listed["params_truncated"] == {"samples": 100_000}
    assert listed["params"]["embedding"] == world.lab.embedding_id
    full = get(world, f"/api/v1/jobs/{job_id}").json
    assert full["params"]["samples"] == ids and full.get("params_truncated") is None


def test_the_queue_summary_and_its_live_event_cut_long_parameters_too(world: World):
    ids = list(range(1, 100_001))
    with world.sessions.begin() as s:
        job = Job(
            kind="reproject",
            queue="embed",
            owner_id=world.users["A"],
            params={"embedding": world.lab.embedding_id, "samples": ids},
            status="queued",
        )
        s.add(job)
        s.flush()
        job_id = job.id
    try:
        summary = get(world, "/api/v1/queues").json
        shown = next(j for j in summary["jobs"] if j.get("id") == job_id)
        assert shown["params"]["samples"] == ids[:20] and shown["params_truncated"] == {"samples": 100_000}
        # the same summary is the ``queues`` event the live stream sends at once and every few seconds
        res = world.app.test_client().get("/api/v1/events", headers=world.bearer("A"), buffered=False)
        frames = b""
        for frame in res.response:
            frames += frame
            if b"event: queues" in frames and frames.endswith(b"\n\n"):
                break
        res.close()
        data = json.loads(frames.split(b"event: queues\ndata: ", 1)[1].split(b"\n", 1)[0])
        streamed = next(j for j in data["jobs"] if j.get("id") == job_id)
        assert streamed["params"]["samples"] == ids[:20]
        assert streamed["params_truncated"] == {"samples": 100_000}
        assert len(frames) < 20_000, len(frames)  # the 100,000 ids (about 700 kB) are not repeated
    finally:
        with world.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))


def test_tokens_expire_and_admins_list_and_revoke_a_members_token(world: World):
    client = world.app.test_client()
    made = client.post("/api/v1/tokens", json={"name": "ci", "expires_in_days": 7}, headers=world.bearer("A"))
    assert made.status_code == 201 and made.json["expires_at"] is not None
    raw = made.json["token"]
    bearer = {"Authorization": f"Bearer {raw}"}
    assert client.get("/api/v1/auth/me", headers=bearer).status_code == 200
    for days in (0, 3651, "soon"):
        res = client.post("/api/v1/tokens", json={"expires_in_days": days}, headers=world.bearer("A"))
        assert res.status_code == 400 and res.json["field"] == "expires_in_days", res.json
    with world.sessions.begin() as s:
        s.execute(
            update(ApiToken)
            .where(ApiToken.id == made.json["id"])
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    refused = client.get("/api/v1/auth/me", headers=bearer)
    assert refused.status_code == 401 and "expired" in refused.json["error"]

    # an admin finds alice's leaked token by her name and revokes it
    listed = get(world, "/api/v1/tokens?user=alice", who="admin").json["tokens"]
    leaked = next(t for t in listed if t["id"] == world.token_id)
    assert leaked["user_id"] == world.users["A"]
    res = client.delete(f"/api/v1/tokens/{leaked['id']}", headers=world.bearer("admin"))
    assert res.status_code == 200 and res.json["revoked_at"]
    assert client.get("/api/v1/auth/me", headers=world.bearer("A")).status_code == 401
    # members list only their own
    res = get(world, "/api/v1/tokens?user=alice", who="B")
    assert res.status_code == 403 and res.json["field"] == "user"
    assert get(world, "/api/v1/tokens?user=nobody", who="admin").status_code == 404


def old_jobs(world: World) -> dict[str, int]:
    """Finished and running jobs of A, some 100 days old; one made a dataset."""
    long_ago = utcnow() - timedelta(days=100)
    ids = {}
    with world.sessions.begin() as s:
        for name, status, finished in (
            ("old", "failed", long_ago),
            ("old_parent", "succeeded", long_ago),
            ("made_dataset", "succeeded", long_ago),
            ("recent", "succeeded", utcnow()),
            ("running", "running", None),
        ):
            job = Job(kind="ping", queue="interactive", owner_id=world.users["A"], params={}, status=status)
            job.created_at, job.finished_at = long_ago, finished
            s.add(job)
            s.flush()
            ids[name] = job.id
        chunk = Job(
            kind="ping", queue="interactive", owner_id=world.users["A"], params={}, status="succeeded"
        )
        chunk.parent_id, chunk.finished_at = ids["old_parent"], long_ago
        s.add(chunk)
        s.flush()
        ids["chunk"] = chunk.id
        s.get(Sample, world.lab.sample_ids[0]).job_id = ids["made_dataset"]
    return ids


def remaining(world: World, ids: dict[str, int]) -> set[str]:
    with world.sessions() as s:
        present = set(s.scalars(select(Job.id).where(Job.id.in_(ids.values()))))
    return {name for name, jid in ids.items() if jid in present}


def test_jobs_prune_deletes_old_finished_jobs_but_not_what_made_data(world: World, monkeypatch):
    from cli.main import main
    from tests.support.services import env_for

    ids = old_jobs(world)
    for name, value in env_for(world.settings).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "30"])
    assert result.exit_code == 0, result.output
    assert remaining(world, ids) == {"made_dataset", "recent", "running"}
    assert "deleted 3 finished jobs" in result.output  # old, old_parent and its chunk
    bad = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "-1"])
    assert bad.exit_code == 2 and "older-than" in bad.output


def test_the_reaper_prunes_past_the_retention_setting_once_an_hour(world: World, redis_url, publisher):
    import redis

    from workers.reaper import PRUNE_KEY, reap_once

    ids = old_jobs(world)
    client = redis.Redis.from_url(redis_url)
    state = SimpleNamespace(
        settings=world.settings.with_(job_retention_days=30),
        redis=client,
        worker_id="test-reaper",
        session_factory=world.sessions,
        publisher=publisher,
    )
    reap_once(state)
    assert remaining(world, ids) == {"made_dataset", "recent", "running"}
    assert client.ttl(PRUNE_KEY) > 3000
    # within the hour, another pass does not prune again
    more = old_jobs(world)
    client.delete("latentlab:reaper-lock")
    reap_once(state)
    assert remaining(world, more) == set(more)
    client.close()
