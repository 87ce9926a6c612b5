"""Cancelling a parent while one of its chunks is ending: the cancel and the chunk's ending take their row
locks in the same order (the chunk, then the parent), so neither is aborted as a deadlock on PostgreSQL
(the aborted ending left the chunk, and the whole dataset, "running" until the reaper found it stale), and
the parent ends ``cancelled`` once its last chunk has."""

from __future__ import annotations

import threading

from sqlalchemy import select, text

from common import jobs
from common.jobs.terminal import terminate
from common.models import Job, User
from tests.support.waiting import wait_until


def make_tree(sessions, owner_id: int) -> tuple[int, list[int]]:
    with sessions.begin() as s:
        parent = Job(kind="ping", queue="interactive", owner_id=owner_id, params={}, status="running")
        s.add(parent)
        s.flush()
        kids = [
            Job(
                kind="ping",
                queue="interactive",
                owner_id=owner_id,
                params={},
                status=status,
                parent_id=parent.id,
            )
            for status in ("succeeded", "running", "running", "queued")
        ]
        s.add_all(kids)
        s.flush()
        return parent.id, [k.id for k in kids]


def test_a_cancel_while_a_chunk_ends_neither_deadlocks_and_the_parent_ends_cancelled(
    settings, sessions, admin
):
    parent_id, (_, ending, other, queued) = make_tree(sessions, admin.id)
    with sessions() as s:
        user = s.get(User, admin.id)

    # the chunk's ending, as ``Lease.finish`` does it: the chunk's row locked first ...
    worker = sessions()
    worker.begin()
    chunk = worker.execute(select(Job).where(Job.id == ending).with_for_update()).scalar_one()

    outcome: dict = {}

    def cancel() -> None:
        try:
            outcome["job"] = jobs.cancel(sessions, parent_id, user, None)
        except Exception as exc:  # noqa: BLE001 - the test reports what the cancel raised
            outcome["error"] = exc

    canceller = threading.Thread(target=cancel)
    if settings.is_sqlite:
        # SQLite has one writer at a time and no row locks to take in an order: the ending commits first
        terminate(worker, chunk, "succeeded", result={"done": True})
        worker.commit()
        canceller.start()
    else:
        canceller.start()
        with sessions() as s:  # ... while the cancel waits for a row lock ...
            wait_until(
                lambda: s.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")) > 0,
                30,
                "the cancel to wait for a row lock",
            )
        # ... then its parent (settle_parent), as the last step of the same transaction
        terminate(worker, chunk, "succeeded", result={"done": True})
        worker.commit()
    worker.close()
    canceller.join(60)

    assert "error" not in outcome, f"the cancel failed: {outcome.get('error')!r}"
    with sessions() as s:
        states = {
            j.id: (j.status, j.cancel_requested)
            for j in s.scalars(select(Job).where(Job.parent_id == parent_id))
        }
        assert states[ending][0] == "succeeded"
        assert states[queued][0] == "cancelled" and states[other] == ("running", True)
        assert s.get(Job, parent_id).status == "running"  # one chunk is still stopping

    # the last running chunk stops (as its worker does on seeing cancel_requested): the parent ends
    with sessions.begin() as s:
        terminate(s, s.get(Job, other), "cancelled")
    with sessions() as s:
        assert s.get(Job, parent_id).status == "cancelled"
