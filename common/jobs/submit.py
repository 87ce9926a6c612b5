"""Submitting and cancelling jobs: validate the params, check the quota, commit the row, then publish.

Usage (the web or the CLI)::

    job = submit(session_factory, publisher, settings, owner=user, kind="ping", params={"seconds": 1})
    cancel(session_factory, job.id, user, publisher)
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import Publisher
from common.jobs.dispatch import _held, _send_reserved, dispatch
from common.jobs.kinds import get_kind, parse_params
from common.jobs.terminal import settle_parent, terminate
from common.jobs.views import event_for, event_of
from common.models import Job, User
from common.models import utcnow as now
from common.models.jobs import ACTIVE_STATUSES
from common.platform.config import Settings
from common.platform.errors import NotFound, QuotaExceeded, UserError


def submit(
    session_factory: sessionmaker[Session],
    publisher: Publisher | None,
    settings: Settings,
    *,
    owner: User | int,
    kind: str,
    params: Any,
    parent_id: int | None = None,
) -> Job:
    """Validate, commit the Job row, then publish it. Returns the job (``published_at`` None when the
    broker was unreachable: the row is durable and the reaper publishes it once Redis is back)."""
    spec = get_kind(kind)
    model = parse_params(spec, params)
    owner_id = owner if isinstance(owner, int) else owner.id
    with session_factory.begin() as session:
        user = session.get(User, owner_id)
        if user is None or not user.active:
            raise NotFound("That user does not exist or is disabled.")
        queue = spec.queue_for(model)
        _check_quota(session, settings, user, queue)
        clean = model.model_dump(mode="json")
        if spec.prepare is not None:
            clean = spec.prepare(session, model, user, settings) or clean
        # the usual case, decided here rather than by a dispatch pass after the commit: nothing of this
        # queue is held and the owner is under the fair-share cap, so the job is reserved for publishing
        # in the transaction that creates it (and sent right after it)
        direct = publisher is not None and _may_publish_now(session, settings, queue, owner_id)
        job = Job(kind=kind, queue=queue, owner_id=owner_id, params=clean, parent_id=parent_id)
        task_id = uuid.uuid4().hex
        if direct:
            job.published_at, job.celery_task_id = now(), task_id
        session.add(job)
        session.flush()
        job_id = job.id
        event = event_of(job)
    if direct:
        _send_reserved(session_factory, publisher, job_id, kind, queue, task_id, event)
    else:
        dispatch(session_factory, publisher, settings, queue)
    with session_factory() as session:
        return session.get(Job, job_id)


def _may_publish_now(session: Session, settings: Settings, queue: str, owner_id: int) -> bool:
    """True when a new job of ``owner_id`` on ``queue`` would be published at once by ``dispatch``:
    no held job waits on that queue and the owner has fewer than the fair-share cap in the broker."""
    if session.scalar(select(Job.id).where(*_held(queue)).limit(1)) is not None:
        return False
    cap = settings.fair_share_waiting
    if not cap:
        return True
    waiting = session.scalar(
        select(func.count(Job.id)).where(
            Job.owner_id == owner_id,
            Job.queue == queue,
            Job.status == "queued",
            Job.published_at.is_not(None),
        )
    )
    return waiting < cap


def _check_quota(session: Session, settings: Settings, user: User, queue: str) -> None:
    # one user's submits take turns (a row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE already
    # serialises writers), so two parallel requests cannot both pass the count below
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    active = session.scalar(
        select(func.count(Job.id)).where(
            Job.owner_id == user.id,
            Job.queue == queue,
            Job.status.in_(ACTIVE_STATUSES),
            Job.parent_id.is_(None),
        )
    )
    if active >= settings.max_active_jobs_per_queue:
        raise QuotaExceeded(
            f"You already have {active} queued or running jobs on the '{queue}' queue (the limit is "
            f"{settings.max_active_jobs_per_queue}); wait for some to finish or cancel them."
        )


def cancel(
    session_factory: sessionmaker[Session], job_id: int, user: User, publisher: Publisher | None
) -> Job:
    """Cancel a job of ``user`` (admins: anyone's). Queued: cancelled at once and never run. Running:
    flagged; the worker stops at its next check (within a heartbeat) and writes nothing after."""
    with session_factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or (job.owner_id != user.id and not user.is_admin):
            raise NotFound(f"No job {job_id} of yours exists.")
        if job.parent_id is not None:
            raise UserError("This is a chunk of a larger job; cancel its parent job instead.")
        _cancel_tree(session, job)
    if publisher:
        publisher.emit(event_for(session_factory, job_id))
    with session_factory() as session:
        return session.get(Job, job_id)


def _cancel_tree(session: Session, job: Job) -> None:
    # Rows are locked children first, then the parent: a worker ending a chunk locks the chunk, then its
    # parent (``settle_parent``), so the reverse order deadlocked on PostgreSQL, which aborted the
    # worker's ending and left the chunk "running" (and its parent) until the reaper found it stale.
    # The children are not settled one by one: their parent (``job``) is decided after them.
    children = sorted(job.children, key=lambda c: c.id)
    for child in children:
        if child.status == "queued":
            terminate(session, child, "cancelled", message="cancelled before it started", settle=False)
        elif child.status == "running":
            child.cancel_requested = True
    session.flush()  # the children's locks first
    if job.status == "queued":
        terminate(session, job, "cancelled", message="cancelled before it started", settle=False)
    elif job.status == "running":
        job.cancel_requested = True
    session.flush()
    if job.status == "running" and children:
        for child in children:  # read again: a chunk may have ended while this waited for its lock
            session.expire(child)
        settle_parent(session, job.id)
