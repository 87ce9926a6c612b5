"""What is waiting and running on each queue, and whose it is (``GET /api/v1/queues`` and the
``queues`` server-sent event).

Counts come in two kinds per queue: ``queued``/``running`` count top-level jobs (what users submitted);
``chunks_queued``/``chunks_running`` count the chunk jobs of larger jobs (what workers actually take
from the queue). A dataset job stays ``running`` while its chunks wait, and a queued job's ``position``
counts every queued job ahead of it, chunks included (``common.jobs.reads.queue_positions``).

The job list holds active top-level jobs in queue order: per queue, running jobs (oldest first), then
queued ones by position. The viewer's own jobs (an admin's: everyone's) come in full
(``common.jobs.job_to_dict``, long list parameters cut as in job listings: ``listed_params``); other
members' jobs only as ``REDUCED_KEYS``.

``visible_event`` is the rule of the job event stream: which published job events a viewer sees.

Usage::

    summary = queue_summary(session, viewer_id=user.id, is_admin=user.is_admin)
    shown = visible_event(session_factory, event, viewer_id=user.id, is_admin=False)   # dict | None
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import QUEUES
from common.jobs.reads import queue_positions
from common.jobs.views import event_for, job_to_dict, listed_params
from common.models import Job, User
from common.models.jobs import ACTIVE_STATUSES

REDUCED_KEYS = ("queue", "kind", "status", "position", "owner", "progress")
MAX_LISTED = 500


def queue_counts(session: Session) -> dict[str, dict[str, int]]:
    """Per queue: queued and running top-level jobs and chunk jobs."""
    counts = {q: {"queued": 0, "running": 0, "chunks_queued": 0, "chunks_running": 0} for q in QUEUES}
    is_chunk = Job.parent_id.is_not(None)
    rows = session.execute(
        select(Job.queue, Job.status, is_chunk.label("chunk"), func.count(Job.id))
        .where(Job.status.in_(ACTIVE_STATUSES))
        .group_by(Job.queue, Job.status, is_chunk)
    )
    for queue, status, chunk, n in rows:
        entry = counts.setdefault(queue, {"queued": 0, "running": 0, "chunks_queued": 0, "chunks_running": 0})
        entry[f"chunks_{status}" if chunk else status] += int(n)
    return counts


def queue_summary(
    session: Session, *, viewer_id: int, is_admin: bool, limit: int = MAX_LISTED
) -> dict[str, Any]:
    """``{"queues": {queue: counts}, "jobs": [...], "truncated": bool}`` as seen by the viewer."""
    queue_order = {q: i for i, q in enumerate(QUEUES)}
    fetched = session.execute(
        select(Job, User.username)
        .join(User, User.id == Job.owner_id)
        .where(Job.status.in_(ACTIVE_STATUSES), Job.parent_id.is_(None))
        .order_by(Job.id)
        .limit(limit + 1)
    ).all()
    positions = queue_positions(session, [job.id for job, _ in fetched[:limit] if job.status == "queued"])
    rows = [(job, owner, positions.get(job.id)) for job, owner in fetched]
    truncated = len(rows) > limit
    rows = sorted(
        rows[:limit],
        key=lambda r: (
            queue_order.get(r[0].queue, len(queue_order)),
            r[0].status != "running",
            r[2] if r[2] is not None else 0,
            r[0].id,
        ),
    )
    listed = []
    for job, owner, position in rows:
        if is_admin or job.owner_id == viewer_id:
            full = job_to_dict(job, position=position, owner_name=owner)
            full["published_at"] = job.published_at.isoformat() if job.published_at else None
            full["mine"] = job.owner_id == viewer_id
            listed.append(listed_params(full))
        else:
            reduced = {
                "queue": job.queue,
                "kind": job.kind,
                "status": job.status,
                "position": position,
                "owner": owner,
                "progress": round(job.progress, 4),
            }
            listed.append(reduced)
    return {"queues": queue_counts(session), "jobs": listed, "truncated": truncated}


def visible_event(
    session_factory: sessionmaker[Session], event: dict[str, Any], *, viewer_id: int, is_admin: bool
) -> dict[str, Any] | None:
    """The event a viewer's stream shows for a published job event, or None.

    A top-level job's event is shown to its owner (and admins) as it is. A chunk job's event is shown
    as its parent's event, read from the parent's row now (the parent's progress and final status
    change only through its chunks, and ``common.jobs`` publishes events for the chunk alone), with
    the chunk's own state under ``"chunk"``.
    """
    parent_id = event.get("parent_id")
    if parent_id is None:
        owner = event.get("owner_id")
        return event if owner is not None and (is_admin or owner == viewer_id) else None
    parent = event_for(session_factory, int(parent_id))
    if parent.get("status") == "gone" or not (is_admin or parent.get("owner_id") == viewer_id):
        return None
    parent["chunk"] = {
        "id": event.get("id"),
        "status": event.get("status"),
        "progress": event.get("progress"),
    }
    return parent
