"""``common.jobs.reads``: the one queue-position count, as the job API, ``common.jobs.queue_position`` and
the queue summary all report it, and the listing's visibility rule. Real migrated database."""

from __future__ import annotations

import pytest

from common import jobs
from common.jobs import reads as job_reads
from common.jobs.summary import queue_summary
from common.models import Job
from common.platform.accounts import create_user
from common.platform.errors import NotFound


@pytest.fixture
def owners(sessions):
    with sessions.begin() as s:
        ids = []
        for name, role in (("alice", "member"), ("bob", "member")):
            user = create_user(s, name, f"{name}-password", role=role)
            s.flush()
            ids.append(user.id)
    return ids


def add(sessions, owner: int, *, queue="interactive", status="queued", parent=None, kind="ping") -> int:
    with sessions.begin() as s:
        job = Job(kind=kind, queue=queue, owner_id=owner, params={}, status=status, parent_id=parent)
        s.add(job)
        s.flush()
        return job.id


def test_queue_positions_count_queued_jobs_ahead_per_queue_chunks_included(sessions, owners):
    alice, bob = owners
    a1 = add(sessions, alice)
    parent = add(sessions, bob, queue="batch", status="running", kind="generate_dataset")
    c1 = add(sessions, bob, queue="batch", parent=parent, kind="dataset_chunk")
    running = add(sessions, alice, status="running")
    a2 = add(sessions, alice)
    b1 = add(sessions, bob, queue="batch")
    c2 = add(sessions, bob, queue="batch", parent=parent, kind="dataset_chunk")
    with sessions() as s:
        positions = job_reads.queue_positions(s, [a1, c1, running, a2, b1, c2, parent])
        assert positions == {a1: 1, a2: 2, c1: 1, b1: 2, c2: 3}
        # the single-job helper and the queue summary report the same numbers
        for job_id in (a1, running, a2, b1, c2):
            assert jobs.queue_position(s, s.get(Job, job_id)) == positions.get(job_id)
        summary = queue_summary(s, viewer_id=alice, is_admin=True)
        shown = {j["id"]: j["position"] for j in summary["jobs"]}
        assert shown == {a1: 1, a2: 2, running: None, b1: 2, parent: None}
        assert job_reads.queue_positions(s, []) == {}


def test_list_jobs_shows_members_their_own_and_visible_job_hides_others(sessions, owners):
    alice, bob = owners
    mine = add(sessions, alice)
    theirs = add(sessions, bob)
    parent = add(sessions, alice, queue="batch", status="running", kind="generate_dataset")
    chunk = add(sessions, alice, queue="batch", parent=parent, kind="dataset_chunk")
    with sessions() as s:
        listed = job_reads.list_jobs(s, viewer_id=alice, is_admin=False)
        assert [(job.id, owner) for job, owner in listed] == [(parent, "alice"), (mine, "alice")]
        with_chunks = job_reads.list_jobs(s, viewer_id=alice, is_admin=False, include_children=True, limit=2)
        assert [job.id for job, _ in with_chunks] == [chunk, parent]
        assert job_reads.list_jobs(s, viewer_id=alice, is_admin=False, owner="bob") == []
        everyone = job_reads.list_jobs(s, viewer_id=alice, is_admin=True, before=parent)
        assert [job.id for job, _ in everyone] == [theirs, mine]
        assert job_reads.visible_job(s, theirs, viewer_id=bob, is_admin=False)[1] == "bob"
        with pytest.raises(NotFound):
            job_reads.visible_job(s, theirs, viewer_id=alice, is_admin=False)
        assert job_reads.children_summary(s, parent)["total"] == 1
        assert job_reads.children_summary(s, mine) is None
