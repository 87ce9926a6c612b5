"""Read-only job queries shared by the API, the CLI and ``common.jobs.summary``: who may see a job, a job's
chunk jobs, a filtered listing, and queue positions.

A queued job's position is 1 + the queued jobs ahead of it in its queue (smaller id), chunk jobs of
larger jobs included; ``queue_positions`` is the one place that counts it.

Usage::

    positions = queue_positions(session, [12, 15])        # {12: 1, 15: 3}; jobs not queued are absent
    job, owner = visible_job(session, 12, viewer_id=user.id, is_admin=False)   # NotFound otherwise
    counts = children_summary(session, 12)                # {"queued": 3, ..., "total": 8} | None
    rows = list_jobs(session, viewer_id=user.id, is_admin=False, status="queued", limit=50)
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import Job, User
from common.models.jobs import JOB_STATUSES
from common.platform.errors import NotFound


def queue_positions(session: Session, job_ids: list[int]) -> dict[int, int]:
    """1-based queue positions of the queued jobs among ``job_ids``, in one query."""
    if not job_ids:
        return {}
    ranked = (
        select(Job.id, func.row_number().over(partition_by=Job.queue, order_by=Job.id).label("position"))
        .where(Job.status == "queued")
        .subquery()
    )
    positions: dict[int, int] = {}
    unique = sorted(set(job_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(chunk)))
        positions.update({job_id: int(position) for job_id, position in rows})
    return positions


def visible_job(session: Session, job_id: int, *, viewer_id: int, is_admin: bool) -> tuple[Job, str]:
    """The job and its owner's username, if the viewer may see it (their own; an admin: any)."""
    row = session.execute(
        select(Job, User.username).join(User, Job.owner_id == User.id).where(Job.id == job_id)
    ).first()
    if row is None or (row[0].owner_id != viewer_id and not is_admin):
        raise NotFound(f"No job {job_id} of yours exists.")
    return row[0], row[1]


def children_summary(session: Session, job_id: int) -> dict[str, int] | None:
    """Chunk jobs of a job per status, plus ``total``; None for a job without chunks."""
    counts = dict(
        session.execute(
            select(Job.status, func.count(Job.id)).where(Job.parent_id == job_id).group_by(Job.status)
        ).all()
    )
    if not counts:
        return None
    summary = {status: int(counts.get(status, 0)) for status in JOB_STATUSES}
    summary["total"] = sum(summary.values())
    return summary


def list_jobs(
    session: Session,
    *,
    viewer_id: int,
    is_admin: bool,
    owner: str | None = None,
    kind: str | None = None,
    status: str | None = None,
    include_children: bool = False,
    before: int | None = None,
    limit: int = 50,
) -> list[tuple[Job, str]]:
    """Jobs the viewer may see, newest first, as (job, owner username); ``owner`` filters on top."""
    stmt = select(Job, User.username).join(User, Job.owner_id == User.id)
    if not is_admin:
        stmt = stmt.where(Job.owner_id == viewer_id)
    if owner:
        stmt = stmt.where(User.username == owner)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if status:
        stmt = stmt.where(Job.status == status)
    if not include_children:
        stmt = stmt.where(Job.parent_id.is_(None))
    if before:
        stmt = stmt.where(Job.id < before)
    return [(job, name) for job, name in session.execute(stmt.order_by(Job.id.desc()).limit(limit))]
