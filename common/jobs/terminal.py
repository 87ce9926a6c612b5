"""The one terminal transition of a job: final status and ``finished_at``, the kind's failure hook, the
parent settled from its children, and the final event. Every path that ends a job goes through
``terminate`` (a worker's finish or cancel, a claim that finds the job cancelled or out of attempts, a
cancel of a queued job, the reaper giving up, a parent settled from its children).

Usage (inside the transaction that ends the job; emit the returned event after the commit)::

    event = terminate(session, job, "failed", error="disk full")
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.jobs.kinds import get_kind
from common.jobs.views import event_of
from common.models import Job
from common.models import utcnow as now
from common.models.jobs import ACTIVE_STATUSES, FINAL_STATUSES
from common.platform.errors import UserError


def terminate(
    session: Session,
    job: Job,
    status: str,
    *,
    result: dict | None = None,
    error: str | None = None,
    message: str | None = None,
    settle: bool = True,
) -> dict[str, Any]:
    """End ``job`` (a row locked or fenced in ``session``'s transaction) with ``status``: set it and
    ``finished_at`` (``result``, ``error``, ``message`` when given; progress 1 on success), run the kind's
    ``on_failed`` hook for a failed or cancelled job, settle its parent (unless ``settle`` is False: the
    caller decides the parent itself), and return the final event to broadcast after the commit."""
    assert status in FINAL_STATUSES
    job.status, job.finished_at = status, now()
    if status == "succeeded":
        job.progress = 1.0
        job.result = result
    elif result is not None:
        job.result = result
    if error is not None:
        job.error = error
    if message is not None:
        job.progress_message = message
    if status in ("failed", "cancelled"):
        _run_on_failed(session, job)
    if settle and job.parent_id is not None:
        settle_parent(session, job.parent_id)
    return event_of(job)


def _run_on_failed(session: Session, job: Job) -> None:
    try:
        spec = get_kind(job.kind)
    except UserError:  # a kind retired since the job was made: nothing to undo
        return
    if spec.on_failed:
        spec.on_failed(session, job)


def settle_parent(session: Session, parent_id: int) -> None:
    """Update a parent job from its children: progress; succeeded when all succeeded; failed or
    cancelled when any child ended so and none is still active."""
    # read under the lock as it is now (not as this session last saw it): another transaction may have
    # settled it meanwhile
    locked = select(Job).where(Job.id == parent_id).with_for_update()
    locked = locked.execution_options(populate_existing=True)
    parent = session.execute(locked).scalar_one_or_none()
    if parent is None or parent.is_final:
        return
    children = parent.children
    done = sum(1 for c in children if c.status == "succeeded")
    active = [c for c in children if c.status in ACTIVE_STATUSES]
    parent.progress = done / len(children) if children else 0.0
    parent.progress_message = f"{done} of {len(children)} chunks done"
    parent.heartbeat_at = now()
    if active:
        return
    failed = [c for c in children if c.status == "failed"]
    if failed:
        error = f"{len(failed)} of {len(children)} chunks failed; first error: {failed[0].error}"
        terminate(session, parent, "failed", error=error)
    elif any(c.status == "cancelled" for c in children):
        terminate(session, parent, "cancelled")
    else:
        spec = get_kind(parent.kind)
        result = spec.on_children_done(session, parent) if spec.on_children_done else None
        terminate(session, parent, "succeeded", result=result or {"chunks": len(children)})
