"""Quotas and fairness. Per user: at most ``max_active_jobs_per_queue`` queued or running jobs per queue
and at most ``max_dataset_samples`` samples per dataset, each with a 429 sentence. Per user and queue, at
most ``fair_share_waiting`` jobs wait in the broker at once (``common.jobs.dispatch``), so one member's
20 queued jobs do not hold another member's single job behind them: measured on a real worker."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import redis
from sqlalchemy import select, update

from common import jobs
from common.jobs import claim, dispatch, fair_order, reap, submit
from common.jobs.broker import Publisher
from common.models import Job
from tests.security.conftest import Stack, World
from web.app import create_app


def ping(seconds: float = 0) -> dict:
    return {"kind": "ping", "params": {"seconds": seconds, "steps": 1}}


def test_active_jobs_per_queue_are_limited_per_user_with_a_429_sentence(world: World):
    app = create_app(world.settings.with_(max_active_jobs_per_queue=3))
    try:
        client = app.test_client()
        a, b = world.bearer("A"), world.bearer("B")
        answers = [client.post("/api/v1/jobs", json=ping(), headers=a) for _ in range(4)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429]
        assert "limit is 3" in answers[-1].json["error"] and "'interactive'" in answers[-1].json["error"]
        assert client.post("/api/v1/jobs", json=ping(), headers=b).status_code == 202  # per user
        # another queue has its own count
        other = {"kind": "reproject", "params": {"embedding": world.lab.embedding_id}}
        assert client.post("/api/v1/jobs", json=other, headers=a).status_code == 202
        # finishing (here: cancelling) one frees a place
        client.post(f"/api/v1/jobs/{answers[0].json['id']}/cancel", headers=a)
        assert client.post("/api/v1/jobs", json=ping(), headers=a).status_code == 202
        # the research endpoints count the same way
        gen = {
            "embedding": world.lab.embedding_id,
            "selected": world.lab.sample_ids[0],
            "neighbors": [world.lab.sample_ids[1]],
        }
        refused = client.post("/api/v1/generations", json=gen, headers=a)
        assert refused.status_code == 429 and "limit is 3" in refused.json["error"]
    finally:
        app.extensions["latentlab"].close()


def test_parallel_submits_cannot_overshoot_the_quota(world: World):
    app = create_app(world.settings.with_(max_active_jobs_per_queue=3))
    statuses: list[int] = []
    lock = threading.Lock()

    def one():
        res = app.test_client().post("/api/v1/jobs", json=ping(), headers=world.bearer("A"))
        with lock:
            statuses.append(res.status_code)

    try:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        app.extensions["latentlab"].close()
    assert sorted(statuses) == [202] * 3 + [429] * 5


def test_dataset_size_is_limited_with_a_429_sentence(world: World):
    app = create_app(world.settings.with_(max_dataset_samples=100))
    try:
        body = {"model": "model-alice-digits", "name": "too-big", "num_samples": 101, "layers": ["midblock"]}
        res = app.test_client().post("/api/v1/datasets", json=body, headers=world.bearer("A"))
        assert res.status_code == 429 and "limit of 100" in res.json["error"]
        res = app.test_client().post(
            "/api/v1/datasets", json={**body, "num_samples": 100}, headers=world.bearer("A")
        )
        assert res.status_code == 202
    finally:
        app.extensions["latentlab"].close()


# -- fair share ----------------------------------------------------------------------------------------


def test_fair_order_interleaves_owners_fewest_waiting_first():
    held = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 20), (6, 30), (7, 30)]
    # owner 10 has 1 waiting already, 20 and 30 none; cap 2
    assert fair_order(held, {10: 1}, 2) == [5, 6, 1, 7]
    assert fair_order(held, {}, 0) == [1, 5, 6, 2, 7, 3, 4]  # no cap: everything, interleaved
    assert fair_order(held, {10: 2, 20: 2, 30: 2}, 2) == []


def queue_messages(client, queue: str) -> list[int]:
    """Job ids of the messages waiting in a Redis queue, in the order workers will take them (kombu
    pushes on the left and pops on the right)."""
    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(body[0][0])
    return out


def test_a_heavy_users_jobs_wait_as_rows_and_another_users_job_goes_straight_to_the_broker(
    world: World, publisher: Publisher
):
    settings, sessions = world.settings, world.sessions
    a, b = world.users["A"], world.users["B"]
    heavy = [
        submit(sessions, publisher, settings, owner=a, kind="ping", params={"seconds": 0}) for _ in range(20)
    ]
    single = submit(sessions, publisher, settings, owner=b, kind="ping", params={"seconds": 0})
    cap = settings.fair_share_waiting
    assert cap == 2
    assert [j.published_at is not None for j in heavy] == [True] * cap + [False] * (20 - cap)
    assert single.published_at is not None
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert queue_messages(client, "interactive") == [heavy[0].id, heavy[1].id, single.id]
        # the reaper leaves held jobs held while their owner has a full share waiting
        with sessions.begin() as s:
            old = jobs.now() - timedelta(minutes=1)
            s.execute(update(Job).where(Job.id.in_([j.id for j in heavy])).values(created_at=old))
        assert reap(sessions, publisher, settings).published == []
        # a worker takes A's first message: exactly A's next job is published, behind B's
        got = claim(sessions, settings, heavy[0].id, worker="test:1/1")
        assert not isinstance(got, jobs.Skip)
        assert dispatch(sessions, publisher, settings, "interactive") == [heavy[2].id]
        assert dispatch(sessions, publisher, settings, "interactive") == []
        assert reap(sessions, publisher, settings).published == []
    finally:
        client.close()


def test_held_jobs_are_published_once_the_broker_is_back(world: World, publisher: Publisher):
    """A job submitted while the broker was unreachable is a held row like any other: the reaper's
    dispatch publishes it when the broker is back."""
    settings, sessions = world.settings, world.sessions
    job = submit(sessions, None, settings, owner=world.users["B"], kind="ping", params={"seconds": 0})
    assert job.published_at is None
    report = reap(sessions, publisher, settings)
    assert report.published == [job.id]
    with sessions() as s:
        assert s.get(Job, job.id).published_at is not None


def test_one_members_twenty_jobs_do_not_hold_another_members_job_behind_them(stack: Stack, capsys):
    """On a real worker (concurrency 1): A queues 20 interactive jobs, then B one. B's job starts after
    the job running when it came and at most ``fair_share_waiting`` of A's (those waiting in the broker).
    The same run with fair share off (every job published at once) is the baseline: B waits for all of A's
    backlog."""
    from workers.app import make_celery

    cap = stack.settings.fair_share_waiting
    seconds = 0.5

    def run(publish_all: bool) -> tuple[int, int, float]:
        # A's 20 go in through common.jobs.submit, the function the web calls, in this process: over
        # HTTP on a busy machine the worker would keep up with them and there would be no backlog. The
        # baseline submits them with fair share off (every job published at once, plain FIFO).
        settings = stack.settings.with_(fair_share_waiting=0 if publish_all else cap)
        app = make_celery(settings)
        client = redis.Redis.from_url(settings.redis_url)
        try:
            pub = Publisher(app.send_task, client)
            params = {"seconds": seconds, "steps": 1}
            heavy = [
                submit(stack.sessions, pub, settings, owner=stack.users["A"], kind="ping", params=params).id
                for _ in range(20)
            ]
        finally:
            client.close()
            app.close()
        t0 = time.monotonic()
        status, single, _ = stack.api("POST", "/api/v1/jobs", "B", ping(seconds))
        assert status == 202
        done = stack.wait(single["id"], timeout=180)
        waited = time.monotonic() - t0
        for job_id in heavy:
            stack.wait(job_id, timeout=180)
        with stack.sessions() as s:
            starts = list(s.scalars(select(Job.started_at).where(Job.id.in_(heavy))))
        # A's jobs that had not started when B submitted, and of those, the ones that started before B's
        pending = [t for t in starts if t > done.created_at]
        ahead = [t for t in pending if t < done.started_at]
        return len(ahead), len(pending), waited

    fair_ahead, fair_pending, fair_wait = run(publish_all=False)
    base_ahead, base_pending, base_wait = run(publish_all=True)
    with capsys.disabled():
        print(
            f"\nfair share (at most {cap} waiting per user and queue): {fair_pending} of A's jobs still "
            f"to run when B submitted; {fair_ahead} of them started before B's ({fair_wait:.1f} s wait). "
            f"Without it: {base_pending} still to run, {base_ahead} before B's ({base_wait:.1f} s). "
            f"One worker, {seconds} s jobs."
        )
    assert fair_pending > cap  # A really had a backlog when B came
    assert fair_ahead <= cap  # B waited for the job running and at most `cap` of A's waiting in the broker
    assert base_ahead == base_pending  # the baseline is plain FIFO: B waits for A's whole backlog
