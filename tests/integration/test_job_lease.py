"""What an attempt writes, and when: submit's direct publish, coalesced progress, and ``complete``
(a job's outputs and its success in one transaction). Real database (SQLite, and PostgreSQL with
``--db=postgres``) and a real Redis."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, update

from common import jobs
from common.models import Job, User


def row(sessions, job_id: int) -> Job:
    with sessions() as s:
        return s.get(Job, job_id)


def submit_ping(sessions, publisher, settings, owner):
    return jobs.submit(sessions, publisher, settings, owner=owner, kind="ping", params={"seconds": 0})


def submit_and_claim(sessions, publisher, settings, owner) -> tuple[Job, jobs.Lease]:
    job = submit_ping(sessions, publisher, settings, owner)
    lease = jobs.claim(sessions, settings, job.id, worker="test:1/1", publisher=publisher)
    assert isinstance(lease, jobs.Lease)
    return job, lease


def test_a_job_submitted_with_nothing_held_is_published_by_its_own_transaction(
    settings, sessions, publisher, admin
):
    job = submit_ping(sessions, publisher, settings, admin)
    assert job.published_at is not None and job.celery_task_id
    assert publisher.markers_present([job.id]) == {job.id}, "the message is in the broker"
    # a held job (its owner over the fair-share cap) still waits for dispatch, and then goes first
    with sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job.id).values(published_at=None))
    later = submit_ping(sessions, publisher, settings, admin)
    assert row(sessions, job.id).published_at is not None, "dispatch published the held job"
    assert later.published_at is not None


def test_progress_reported_within_the_interval_is_coalesced_and_written_once_it_is_up(
    settings, sessions, publisher, admin
):
    job, lease = submit_and_claim(sessions, publisher, settings, admin)
    lease.progress(0.1, "first")
    lease.progress(0.2, "second")
    now = row(sessions, job.id)
    assert (now.progress, now.progress_message) == (0.0, None), "nothing written inside the interval"
    time.sleep(jobs.PROGRESS_INTERVAL + 0.3)
    now = row(sessions, job.id)
    assert (now.progress, now.progress_message) == (0.2, "second"), "the latest report, once it was due"
    time.sleep(jobs.PROGRESS_INTERVAL)
    lease.progress(0.5, "due at once")
    assert row(sessions, job.id).progress == 0.5
    lease.progress(0.6, "superseded by the end")
    assert lease.finish("succeeded", result={"ok": True})
    time.sleep(jobs.PROGRESS_INTERVAL + 0.3)
    done = row(sessions, job.id)
    assert (done.status, done.progress, done.progress_message) == ("succeeded", 1.0, "due at once")


@pytest.mark.parametrize("lost", [False, True])
def test_complete_commits_the_outputs_and_the_success_together(settings, sessions, publisher, admin, lost):
    job, lease = submit_and_claim(sessions, publisher, settings, admin)
    if lost:  # another attempt took the job over meanwhile
        with sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job.id).values(attempts=Job.attempts + 1))
    with sessions() as s:
        users = s.scalar(select(func.count(User.id)))

    def write_outputs_and_complete():
        with sessions.begin() as s:
            s.add(User(username="an-output-row", password_hash="x"))
            s.flush()
            lease.complete(s, {"made": 1})

    if lost:
        with pytest.raises(jobs.LeaseLost):
            write_outputs_and_complete()
    else:
        write_outputs_and_complete()
    with sessions() as s:
        after = s.scalar(select(func.count(User.id)))
    now = row(sessions, job.id)
    if lost:
        assert after == users, "the outputs rolled back with the refused success"
        assert (now.status, now.result) == ("running", None)
        assert lease.completed is None
    else:
        assert after == users + 1
        assert (now.status, now.result, now.progress) == ("succeeded", {"made": 1}, 1.0)
        assert lease.completed["status"] == "succeeded" and lease.completed["result"] == {"made": 1}


def test_a_report_falling_due_inside_the_final_transaction_does_not_stall_it(
    settings, sessions, publisher, admin
):
    # the report's timer fires while the handler's last transaction is open (on SQLite it holds the
    # write lock, so the report's write waits for it); complete() must not wait for that write in turn
    job, lease = submit_and_claim(sessions, publisher, settings, admin)
    lease.progress(0.3, "rendering")
    with sessions.begin() as s:
        s.add(User(username="an-output-row", password_hash="x"))
        s.flush()
        time.sleep(jobs.PROGRESS_INTERVAL + 0.4)  # the report is due now, and waits for this transaction
        started = time.monotonic()
        lease.complete(s, {"made": 1})
        took = time.monotonic() - started
    assert took < 1.0, f"complete() waited {took:.1f}s for a progress write"
    time.sleep(0.5)
    done = row(sessions, job.id)
    assert (done.status, done.progress, done.result) == ("succeeded", 1.0, {"made": 1})
