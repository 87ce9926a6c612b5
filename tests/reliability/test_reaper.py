"""The reaper and the fence, driven directly against the real database and a real Redis: running jobs
with a stale or missing heartbeat are re-queued (failed at the attempt limit), running jobs of a dead
worker are re-queued after ``takeover_after``, and every late write of a superseded attempt is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from common import jobs
from common.models import Job, User

DEAD = "ghost:999999/1000000"  # a worker whose main process never marked itself alive


@pytest.fixture
def reaping(fast, sessions, publisher, admin):
    def submit():
        return jobs.submit(sessions, publisher, fast, owner=admin, kind="ping", params={"seconds": 0})

    def claim(job_id, worker=DEAD):
        lease = jobs.claim(sessions, fast, job_id, worker=worker, publisher=publisher)
        assert isinstance(lease, jobs.Lease), lease
        lease.progress_interval = 0  # these tests fence each write: progress is written when reported
        return lease

    def silence(job_id, seconds):
        with sessions.begin() as s:
            beat = None if seconds is None else jobs.now() - timedelta(seconds=seconds)
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=beat))

    def reap():
        return jobs.reap(sessions, publisher, fast)

    return submit, claim, silence, reap


def job(sessions, job_id) -> Job:
    with sessions() as s:
        return s.get(Job, job_id)


def users(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count(User.id)))


@pytest.mark.both_backends
def test_stale_attempt_is_requeued_and_its_late_writes_are_refused(fast, sessions, reaping):
    submit, claim, silence, reap = reaping
    j = submit()
    old = claim(j.id)
    old.progress(0.4, "half")
    silence(j.id, fast.stale_after + 1)

    report = reap()
    assert report.requeued == [j.id]
    row = job(sessions, j.id)
    assert row.status == "queued" and row.published_at is not None and row.attempts == 1
    new = claim(j.id, worker="live:1/2")
    assert new.attempt == 2

    before = users(sessions)
    with pytest.raises(jobs.LeaseLost):
        with sessions.begin() as s:  # a write of the stale attempt, fenced in its own transaction
            s.add(User(username="written-by-a-zombie", password_hash="x"))
            old.fence(s, progress=0.9)
    with pytest.raises(jobs.LeaseLost):
        old.progress(0.95, "late")
    assert old.finish("succeeded", result={"by": "zombie"}) is False
    with pytest.raises(jobs.LeaseLost):
        old.check(fresh=True)

    row = job(sessions, j.id)
    assert users(sessions) == before, "the zombie's transaction must have rolled back"
    assert (row.status, row.attempts, row.progress, row.result) == ("running", 2, 0.4, None)
    assert row.progress_message == "re-queued: attempt 1 stopped reporting"
    new.progress(0.5)
    assert new.finish("succeeded", result={"by": "attempt 2"}) is True
    assert job(sessions, j.id).result == {"by": "attempt 2"}


@pytest.mark.both_backends
def test_missing_heartbeat_is_requeued_and_the_last_attempt_is_failed_with_a_reason(fast, sessions, reaping):
    submit, claim, silence, reap = reaping
    missing = submit()
    claim(missing.id)
    silence(missing.id, None)

    last = submit()
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == last.id).values(attempts=fast.max_attempts - 1))
    final = claim(last.id)
    assert final.attempt == fast.max_attempts
    silence(last.id, fast.stale_after + 1)

    report = reap()
    assert report.requeued == [missing.id] and report.failed == [last.id]
    assert job(sessions, missing.id).status == "queued"
    failed = job(sessions, last.id)
    assert failed.status == "failed"
    assert failed.error.startswith(f"Gave up after {fast.max_attempts} attempts")
    assert "stopped reporting" in failed.error
    with pytest.raises(jobs.LeaseLost):
        final.progress(0.5)
    assert final.finish("succeeded") is False
    assert job(sessions, last.id).status == "failed"


@pytest.mark.both_backends
def test_job_of_a_dead_worker_is_requeued_after_takeover_after_not_stale_after(
    fast, sessions, publisher, reaping
):
    submit, claim, silence, reap = reaping
    dead, alive, fresh, legacy = submit(), submit(), submit(), submit()
    claim(dead.id)  # its worker never marked itself alive
    publisher.mark_alive("live:77", fast.takeover_after)
    claim(alive.id, worker="live:77/78")
    claim(fresh.id)
    claim(legacy.id, worker="oldhost:123")  # an identity without a node: only stale_after applies
    for j in (dead, alive, legacy):
        silence(j.id, fast.takeover_after + 1)  # silent, but far from stale_after
    silence(fresh.id, 0)

    report = reap()
    assert report.requeued == [dead.id], report
    assert job(sessions, dead.id).status == "queued"
    assert {job(sessions, j.id).status for j in (alive, fresh, legacy)} == {"running"}


@pytest.mark.both_backends
def test_queued_job_whose_message_was_taken_and_lost_is_published_again(fast, sessions, publisher, reaping):
    """A consumer that loses its connection (Redis restarted) right after taking a message leaves it in
    kombu's unacked set until the visibility timeout; the reaper publishes such a job again."""
    import json
    import time

    import redis as redis_lib

    from common.jobs.broker import UNACKED_INDEX_KEY, UNACKED_KEY

    submit, _claim, _silence, reap = reaping
    client = redis_lib.Redis.from_url(fast.redis_url)
    stranded, fresh = submit(), submit()
    for j, taken_ago in ((stranded, fast.takeover_after + 2), (fresh, 0)):
        raw = client.rpop("interactive")  # what a consumer's BRPOP does, then it records the delivery
        payload = json.loads(raw)
        assert payload["headers"]["id"] == job(sessions, j.id).celery_task_id
        tag = payload["properties"]["delivery_tag"]
        client.hset(UNACKED_KEY, tag, json.dumps([payload, "interactive", "interactive"]))
        client.zadd(UNACKED_INDEX_KEY, {tag: time.time() - taken_ago})
    with sessions.begin() as s:  # submitted a minute ago (the reaper leaves just-submitted jobs alone)
        s.execute(update(Job).values(created_at=jobs.now() - timedelta(seconds=60)))
    before = job(sessions, stranded.id).celery_task_id

    report = reap()
    assert report.published == [stranded.id], report
    again = job(sessions, stranded.id)
    assert again.status == "queued" and again.celery_task_id != before
    assert json.loads(client.rpop("interactive"))["headers"]["id"] == again.celery_task_id
    assert reap().published == [], "published once, not on every pass"
    assert job(sessions, fresh.id).celery_task_id == fresh.celery_task_id
    client.close()
