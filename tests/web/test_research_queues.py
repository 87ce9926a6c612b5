"""The queue summary and the live event stream: who sees which job, counts and positions, the SSE framing,
the stream's slot and pub/sub clean-up, and the 503 fallbacks. Flask's test client (streaming, not
buffered) against a real migrated database and a real redis-server; events are published to the real
channel the way ``common.jobs`` publishes them."""

from __future__ import annotations

import json
import time

import pytest
import redis

from cli.redis_server import free_port
from common.jobs.broker import EVENTS_CHANNEL
from common.jobs.summary import queue_summary, visible_event
from common.models import Job
from common.platform.accounts import create_user, issue_token
from tests.support.sse import Stream
from web.app import create_app
from web.blueprints import events as events_bp

FULL_KEYS = {"id", "kind", "status", "queue", "owner", "params", "result", "error", "position", "mine"}
REDUCED = {"queue", "kind", "status", "position", "owner", "progress"}


@pytest.fixture
def people(sessions):
    """alice, bob (members) and root (admin): {name: (user id, bearer headers)}."""
    out = {}
    with sessions.begin() as s:
        for name, role in (("alice", "member"), ("bob", "member"), ("root", "admin")):
            user = create_user(s, name, f"{name}-password", role=role)
            s.flush()
            out[name] = (user.id, {"Authorization": f"Bearer {issue_token(s, user)}"})
    return out


def add_job(sessions, owner: int, *, kind="ping", queue="interactive", status="queued", parent=None) -> int:
    with sessions.begin() as s:
        job = Job(
            kind=kind, queue=queue, owner_id=owner, params={"secret": owner}, status=status, parent_id=parent
        )
        s.add(job)
        s.flush()
        return job.id


def event(job_id: int, owner: int, status="running", parent=None, progress=0.5) -> dict:
    return {
        "id": job_id,
        "kind": "ping",
        "owner_id": owner,
        "parent_id": parent,
        "status": status,
        "queue": "interactive",
        "progress": progress,
        "progress_message": None,
        "error": None,
        "result": None,
    }


def test_queue_summary_counts_top_level_and_chunk_jobs_and_hides_other_members_details(sessions, people):
    alice, bob = people["alice"][0], people["bob"][0]
    a1 = add_job(sessions, alice)
    dataset = add_job(sessions, bob, kind="generate_dataset", queue="batch", status="running")
    chunks = [add_job(sessions, bob, kind="dataset_chunk", queue="batch", parent=dataset) for _ in range(3)]
    a2 = add_job(sessions, alice, kind="generate_dataset", queue="batch")
    add_job(sessions, alice, status="succeeded")
    b1 = add_job(sessions, bob)
    with sessions() as s:
        seen = queue_summary(s, viewer_id=alice, is_admin=False)
        admin = queue_summary(s, viewer_id=people["root"][0], is_admin=True)
    assert seen["queues"]["interactive"] == {
        "queued": 2,
        "running": 0,
        "chunks_queued": 0,
        "chunks_running": 0,
    }
    assert seen["queues"]["batch"] == {"queued": 1, "running": 1, "chunks_queued": 3, "chunks_running": 0}
    assert seen["queues"]["embed"] == {"queued": 0, "running": 0, "chunks_queued": 0, "chunks_running": 0}
    jobs = seen["jobs"]
    # queue order: interactive (a1, b1), then batch (bob's running dataset, then alice's behind 3 chunks)
    assert [j.get("id") for j in jobs] == [a1, None, None, a2]
    assert [j["position"] for j in jobs] == [1, 2, None, 4]
    assert FULL_KEYS <= set(jobs[0]) and jobs[0]["mine"] is True and jobs[3]["owner"] == "alice"
    assert set(jobs[1]) == REDUCED and jobs[1]["owner"] == "bob" and jobs[1]["kind"] == "ping"
    assert set(jobs[2]) == REDUCED and jobs[2]["status"] == "running"
    assert all(j.get("id") not in chunks for j in jobs)
    assert [j["id"] for j in admin["jobs"]] == [a1, b1, dataset, a2]
    assert [j["mine"] for j in admin["jobs"]] == [False, False, False, False]


def test_queues_endpoint_is_the_summary_of_the_signed_in_user(client, sessions, people):
    alice, bob = people["alice"], people["bob"]
    add_job(sessions, alice[0])
    add_job(sessions, bob[0])
    body = client.get("/api/v1/queues", headers=alice[1]).json
    assert body["queues"]["interactive"]["queued"] == 2 and body["truncated"] is False
    assert body["jobs"][0]["params"] == {"secret": alice[0]} and "params" not in body["jobs"][1]
    assert client.get("/api/v1/queues").status_code == 401


def test_visible_event_shows_own_jobs_admins_everything_and_chunks_as_their_parent(sessions, people):
    alice, bob, root = people["alice"][0], people["bob"][0], people["root"][0]
    own = event(7, alice)
    assert visible_event(sessions, own, viewer_id=alice, is_admin=False) == own
    assert visible_event(sessions, own, viewer_id=bob, is_admin=False) is None
    assert visible_event(sessions, own, viewer_id=root, is_admin=True) == own
    assert visible_event(sessions, {"id": 9, "status": "gone"}, viewer_id=alice, is_admin=False) is None
    parent = add_job(sessions, alice, kind="generate_dataset", queue="batch", status="running")
    with sessions.begin() as s:
        s.get(Job, parent).progress_message = "1 of 4 chunks done"
    chunk = add_job(sessions, alice, kind="dataset_chunk", queue="batch", parent=parent, status="running")
    shown = visible_event(
        sessions, event(chunk, alice, parent=parent, progress=0.25), viewer_id=alice, is_admin=False
    )
    assert shown["id"] == parent and shown["kind"] == "generate_dataset" and shown["parent_id"] is None
    assert shown["progress_message"] == "1 of 4 chunks done"
    assert shown["chunk"] == {"id": chunk, "status": "running", "progress": 0.25}
    assert visible_event(sessions, event(chunk, alice, parent=parent), viewer_id=bob, is_admin=False) is None
    assert (
        visible_event(sessions, event(chunk, alice, parent=parent), viewer_id=root, is_admin=True)["id"]
        == parent
    )
    assert visible_event(sessions, event(chunk, alice, parent=10**6), viewer_id=alice, is_admin=False) is None


def publish(redis_url: str, payload: dict) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.publish(EVENTS_CHANNEL, json.dumps(payload)) >= 1
    finally:
        client.close()


def subscribers(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return dict(client.pubsub_numsub(EVENTS_CHANNEL))[EVENTS_CHANNEL.encode()]
    finally:
        client.close()


def test_event_stream_frames_retry_queues_and_only_the_users_job_events(client, people, redis_url):
    alice, bob = people["alice"], people["bob"]
    res = client.get("/api/v1/events", headers=alice[1], buffered=False)
    assert res.status_code == 200 and res.mimetype == "text/event-stream"
    assert res.headers["Cache-Control"] == "no-store"
    stream = Stream(res)
    try:
        assert stream.frame() == "retry: 3000"
        assert set(stream.next_event("queues")) == {"queues", "jobs", "truncated"}
        publish(redis_url, event(1, bob[0]))
        publish(redis_url, event(2, alice[0], status="succeeded"))
        got = stream.next_event("job")
        assert got["id"] == 2 and got["status"] == "succeeded"
    finally:
        stream.close()
    deadline = time.monotonic() + 5
    while subscribers(redis_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscribers(redis_url) == 0 and events_bp.slots.live == 0


def test_admins_stream_carries_every_members_job_events(client, people, redis_url):
    stream = Stream(client.get("/api/v1/events", headers=people["root"][1], buffered=False))
    try:
        stream.next_event("queues")
        publish(redis_url, event(1, people["bob"][0]))
        publish(redis_url, event(2, people["alice"][0]))
        assert [stream.next_event("job")["id"], stream.next_event("job")["id"]] == [1, 2]
    finally:
        stream.close()


def test_streams_beyond_the_per_process_limit_answer_503_and_a_closed_stream_frees_its_slot(
    client, people, redis_url
):
    per_user = client.application.extensions["latentlab"].settings.event_streams_per_user
    openers = [people[name][1] for name in ("alice", "bob", "root") for _ in range(per_user)]
    assert len(openers) >= events_bp.MAX_STREAMS
    open_streams = []
    try:
        for headers in openers[: events_bp.MAX_STREAMS]:
            res = client.get("/api/v1/events", headers=headers, buffered=False)
            assert res.status_code == 200
            open_streams.append(res)
        last = openers[events_bp.MAX_STREAMS]
        refused = client.get("/api/v1/events", headers=last)
        assert refused.status_code == 503 and "poll /api/v1/queues" in refused.json["error"]
        # a stream never read from still releases its slot and its subscription when closed
        open_streams.pop().close()
        again = client.get("/api/v1/events", headers=openers[events_bp.MAX_STREAMS - 1], buffered=False)
        assert again.status_code == 200
        open_streams.append(again)
    finally:
        for res in open_streams:
            res.close()
    assert events_bp.slots.live == 0 and subscribers(redis_url) == 0


def test_one_member_holds_at_most_their_share_of_streams_and_others_still_get_one(client, people, redis_url):
    per_user = client.application.extensions["latentlab"].settings.event_streams_per_user
    assert per_user < events_bp.MAX_STREAMS  # one member can never take every slot
    alice, bob = people["alice"][1], people["bob"][1]
    open_streams = []
    try:
        for _ in range(per_user):
            res = client.get("/api/v1/events", headers=alice, buffered=False)
            assert res.status_code == 200
            open_streams.append(res)
        for _ in range(3):  # more tabs of the same member
            refused = client.get("/api/v1/events", headers=alice)
            assert refused.status_code == 503
            assert "LATENTLAB_EVENT_STREAMS_PER_USER" in refused.json["error"], refused.json
        res = client.get("/api/v1/events", headers=bob, buffered=False)
        assert res.status_code == 200
        open_streams.append(res)
        open_streams.pop(0).close()  # alice closes one tab: she may open another
        res = client.get("/api/v1/events", headers=alice, buffered=False)
        assert res.status_code == 200
        open_streams.append(res)
    finally:
        for res in open_streams:
            res.close()
    assert events_bp.slots.live == 0 and events_bp.slots.by_user == {} and subscribers(redis_url) == 0


def test_event_stream_answers_503_when_the_broker_is_down(settings, people):
    app = create_app(settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        res = app.test_client().get("/api/v1/events", headers=people["alice"][1])
        assert res.status_code == 503 and "Redis" in res.json["error"]
        assert events_bp.slots.live == 0
    finally:
        app.extensions["latentlab"].close()


def test_a_stream_ends_by_itself_after_its_lifetime_and_frees_its_slot(
    client, people, redis_url, monkeypatch
):
    monkeypatch.setattr(events_bp, "STREAM_SECONDS", 1.5)
    res = client.get("/api/v1/events", headers=people["alice"][1], buffered=False)
    t0 = time.monotonic()
    frames = b"".join(res.response)  # the iterator runs out when the stream's lifetime is over
    # not before its lifetime (a lower bound: a slow machine only makes it later, never flaky)
    assert time.monotonic() - t0 >= 1.5
    assert frames.startswith(b"retry: 3000\n\nevent: queues\n")
    res.close()
    assert events_bp.slots.live == 0 and subscribers(redis_url) == 0
