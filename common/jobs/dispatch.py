"""Handing queued jobs to the broker: ``publish`` one job, and fair-share ``dispatch`` of held ones.

Usage::

    dispatch(session_factory, publisher, settings, "batch")   # publishes what fair share allows now
"""

from __future__ import annotations

import heapq
import logging
import uuid
from collections import deque
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import BrokerUnavailable, Publisher
from common.jobs.views import event_for
from common.models import Job
from common.models import utcnow as now
from common.platform.config import Settings

log = logging.getLogger("common.jobs")


def publish(session_factory: sessionmaker[Session], publisher: Publisher | None, job_id: int) -> bool:
    """Hand a committed queued job to the broker and record that it was; False if the broker is down."""
    if publisher is None:
        return False
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "queued":
            return False
        kind, queue = job.kind, job.queue
    task_id = uuid.uuid4().hex
    try:
        publisher.publish(job_id, kind, queue, task_id)
    except BrokerUnavailable as exc:
        log.warning("%s; the reaper will publish it later", exc)
        return False
    with session_factory.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(published_at=now(), celery_task_id=task_id)
        )
    publisher.emit(event_for(session_factory, job_id))
    return True


# -- fair share: which queued jobs wait in the broker ---------------------------------------------------
#
# The broker's queues are FIFO, so every message published is a place in line. A queued job is published
# only while its owner has fewer than ``settings.fair_share_waiting`` jobs of that queue in the broker
# (published, not yet taken by a worker); the others stay queued rows with ``published_at`` NULL ("held").
# ``dispatch`` publishes held jobs, the owner with the fewest waiting first (each owner's oldest first), and
# runs when a job is submitted, when a worker takes a message (``claim``) and on every reaper pass. So a
# member's single job waits behind at most ``fair_share_waiting`` jobs of each other member, however many
# they queued, and one member alone still keeps every worker busy (each take publishes the next).

DISPATCH_BATCH = 10_000  # without a fair-share limit: the most held jobs of one owner published per pass


def dispatch(
    session_factory: sessionmaker[Session], publisher: Publisher | None, settings: Settings, queue: str
) -> list[int]:
    """Publish the held jobs of ``queue`` that fair share allows; returns their ids (oldest first per
    owner, owners interleaved). Safe to run concurrently: a job is reserved before it is sent."""
    if publisher is None:
        return []
    cap = settings.fair_share_waiting
    with session_factory() as session:
        if session.scalar(select(Job.id).where(*_held(queue)).limit(1)) is None:
            return []  # the usual case: nothing held, nothing to decide
        waiting = dict(
            session.execute(
                select(Job.owner_id, func.count(Job.id))
                .where(Job.queue == queue, Job.status == "queued", Job.published_at.is_not(None))
                .group_by(Job.owner_id)
            ).all()
        )
        ranked = (
            select(
                Job.id,
                Job.owner_id,
                func.row_number().over(partition_by=Job.owner_id, order_by=Job.id).label("rank"),
            )
            .where(*_held(queue))
            .subquery()
        )
        stmt = select(ranked.c.id, ranked.c.owner_id).order_by(ranked.c.owner_id, ranked.c.id)
        stmt = stmt.where(ranked.c.rank <= (cap or DISPATCH_BATCH))
        held = session.execute(stmt).all()
    published = []
    for job_id in fair_order(held, waiting, cap):
        sent = _publish_held(session_factory, publisher, job_id)
        if sent is None:  # the broker is down: the reaper dispatches again later
            break
        if sent:
            published.append(job_id)
    return published


def _held(queue: str) -> tuple:
    """The conditions of a held job of ``queue``: queued, never handed to the broker, not cancelled."""
    return (
        Job.queue == queue,
        Job.status == "queued",
        Job.published_at.is_(None),
        Job.cancel_requested.is_(False),
    )


def fair_order(held: list[tuple[int, int]], waiting: dict[int, int], cap: int) -> list[int]:
    """The order to publish ``held`` (job id, owner) in: repeatedly the oldest job of the owner with the
    fewest jobs waiting in the broker (ties: the owner whose next job is oldest), none beyond ``cap``
    waiting per owner (0: no limit)."""
    lines: dict[int, deque[int]] = {}
    for job_id, owner in held:
        lines.setdefault(owner, deque()).append(job_id)
    heap = [(waiting.get(owner, 0), line[0], owner) for owner, line in lines.items()]
    heapq.heapify(heap)
    order = []
    while heap:
        count, _, owner = heapq.heappop(heap)
        if cap and count >= cap:
            continue
        line = lines[owner]
        order.append(line.popleft())
        if line:
            heapq.heappush(heap, (count + 1, line[0], owner))
    return order


def _publish_held(session_factory: sessionmaker[Session], publisher: Publisher, job_id: int) -> bool | None:
    """Reserve a held job (so that concurrent dispatchers send it once) and send it. True: sent; False:
    someone else took it or it is no longer queued; None: the broker is unreachable (reservation undone)."""
    task_id = uuid.uuid4().hex
    with session_factory.begin() as session:
        reserved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.published_at.is_(None))
            .values(published_at=now(), celery_task_id=task_id)
        )
        if reserved.rowcount != 1:
            return False
        kind, queue = session.execute(select(Job.kind, Job.queue).where(Job.id == job_id)).one()
    return _send_reserved(session_factory, publisher, job_id, kind, queue, task_id)


def _send_reserved(
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    job_id: int,
    kind: str,
    queue: str,
    task_id: str,
    event: dict[str, Any] | None = None,
) -> bool | None:
    """Send a job reserved for publishing (``published_at`` and ``celery_task_id`` set); on a broker
    failure undo the reservation and return None, so the reaper's dispatch publishes it later."""
    try:
        publisher.publish(job_id, kind, queue, task_id)
    except BrokerUnavailable as exc:
        log.warning("%s; the reaper will publish it later", exc)
        with session_factory.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.celery_task_id == task_id, Job.status == "queued")
                .values(published_at=None)
            )
        return None
    publisher.emit(event if event is not None else event_for(session_factory, job_id))
    return True
