"""The job pipe end to end: a committed row, a real Redis, a real Celery worker process."""

from __future__ import annotations

import pytest

from common import jobs
from common.models import Job
from tests.support.services import start_worker
from tests.support.waiting import follow_job


@pytest.fixture
def worker(settings, tmp_path):
    proc = start_worker(settings, tmp_path)
    yield proc
    proc.stop()


def test_ping_goes_queued_running_succeeded_with_rising_progress(
    settings, sessions, admin, publisher, worker
):
    job = jobs.submit(
        sessions, publisher, settings, owner=admin, kind="ping", params={"seconds": 1.5, "steps": 5}
    )
    assert job.status == "queued" and job.published_at is not None
    done, seen = follow_job(sessions, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    statuses = [s for s, _ in seen]
    assert "running" in statuses
    progresses = [p for s, p in seen if s == "running"]
    assert len(set(progresses)) >= 3 and progresses == sorted(progresses)
    assert done.result["attempt"] == 1 and done.attempts == 1
    assert done.finished_at >= done.started_at >= done.created_at


def test_cancelled_queued_job_never_runs(settings, sessions, admin, publisher, tmp_path):
    job = jobs.submit(sessions, publisher, settings, owner=admin, kind="ping", params={"seconds": 0})
    with sessions.begin() as s:
        user = s.merge(admin)
    jobs.cancel(sessions, job.id, user, publisher)
    proc = start_worker(settings, tmp_path, name="late")
    try:
        probe = jobs.submit(sessions, publisher, settings, owner=admin, kind="ping", params={"seconds": 0})
        follow_job(sessions, probe.id, {"succeeded"})
        with sessions() as s:
            j = s.get(Job, job.id)
            assert j.status == "cancelled" and j.attempts == 0 and j.started_at is None
    finally:
        proc.stop()


def test_running_job_cancel_stops_it(settings, sessions, admin, publisher, worker):
    job = jobs.submit(
        sessions, publisher, settings, owner=admin, kind="ping", params={"seconds": 30, "steps": 30}
    )
    follow_job(sessions, job.id, {"running"})
    with sessions() as s:
        user = s.merge(admin)
    jobs.cancel(sessions, job.id, user, publisher)
    # a 30 s job: stopped part-way, not run to the end (bench/pipeline.py prints the cancel latency)
    done, _ = follow_job(sessions, job.id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert done.status == "cancelled"
    assert done.progress < 1.0


def test_failing_handler_records_error(settings, sessions, admin, publisher, tmp_path):
    faulty = settings.with_(fault_injection=True)
    proc = start_worker(faulty, tmp_path, name="faulty")
    try:
        job = jobs.submit(
            sessions, publisher, faulty, owner=admin, kind="ping", params={"seconds": 0, "fault": "error"}
        )
        done, _ = follow_job(sessions, job.id, {"succeeded", "failed"})
        assert done.status == "failed" and "ping was asked to fail" in done.error
    finally:
        proc.stop()


def test_fault_injection_is_refused_unless_enabled(settings, sessions, admin, publisher):
    from common.platform.errors import UserError

    with pytest.raises(UserError, match="LATENTLAB_FAULT_INJECTION"):
        jobs.submit(sessions, publisher, settings, owner=admin, kind="ping", params={"fault": "crash"})
    with sessions() as s:
        assert s.query(Job).count() == 0
