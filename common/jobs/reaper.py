"""The reaper's pass: re-publish what the broker lost, re-queue (or give up on) silent attempts, dispatch
held jobs, settle parents. ``workers/reaper.py`` runs it on an interval under a Redis lock.

Usage::

    report = reap(session_factory, publisher, settings)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import Publisher, worker_node
from common.jobs.dispatch import dispatch, publish
from common.jobs.terminal import settle_parent, terminate
from common.models import Job
from common.models import utcnow as now
from common.platform.config import Settings

log = logging.getLogger("common.jobs")


@dataclass
class ReapReport:
    published: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.published or self.requeued or self.failed or self.settled)


def reap(session_factory: sessionmaker[Session], publisher: Publisher, settings: Settings) -> ReapReport:
    """One pass of the reaper:

    * queued jobs whose message a consumer took and lost (its connection dropped with Redis) are
      published again after ``takeover_after``, not after the visibility timeout;
    * queued jobs the broker lost (published, but their marker vanished with a flushed Redis) are
      published again, and held jobs (never published) are dispatched as fair share allows;
    * running jobs whose heartbeat is older than ``stale_after`` are re-queued, or failed at the attempt
      limit (a late write of the old attempt is refused by its fence);
    * so are running jobs silent for ``takeover_after`` whose worker's main process is gone (its liveness
      key expired: the whole worker died, and nothing else would re-deliver its unacked message before
      the visibility timeout); a live main process keeps its key, so a job whose heartbeat only lags
      (a slow database) waits for ``stale_after``;
    * parents whose children all ended are settled.
    """
    report = ReapReport()
    stamp = now()
    grace = stamp - timedelta(seconds=5)
    stale = stamp - timedelta(seconds=settings.stale_after)
    silent = stamp - timedelta(seconds=settings.takeover_after)
    with session_factory() as session:
        queued = session.execute(
            select(Job.id, Job.published_at, Job.celery_task_id).where(
                Job.status == "queued", Job.cancel_requested.is_(False), Job.created_at < grace
            )
        ).all()
        dead = session.scalars(
            select(Job.id).where(
                Job.status == "running",
                (Job.heartbeat_at < stale) | Job.heartbeat_at.is_(None),
            )
        ).all()
        quiet = session.execute(
            select(Job.id, Job.worker).where(
                Job.status == "running", Job.heartbeat_at < silent, Job.heartbeat_at >= stale
            )
        ).all()
        parents = session.scalars(
            select(Job.id).where(Job.status == "running", Job.id.in_(select(Job.parent_id).distinct()))
        ).all()
    published_ids = [jid for jid, when, _ in queued if when is not None]
    present = publisher.markers_present(published_ids)
    # a message a consumer took but lost with its connection (Redis restarted) stays in kombu's unacked
    # set until the visibility timeout; a queued job's message is claimed within moments of being taken
    stranded = publisher.stranded(settings.takeover_after) if present else set()
    for jid, when, task_id in queued:
        if jid in present and task_id in stranded:
            log.warning("reaper: job %s: its message was taken but never run; publishing it again", jid)
            present.discard(jid)
        if when is not None and jid not in present:
            if publish(session_factory, publisher, jid):
                report.published.append(jid)
    nodes = {jid: worker_node(worker) for jid, worker in quiet}
    alive = publisher.nodes_alive(n for n in nodes.values() if n)
    orphaned = {jid for jid, node in nodes.items() if node and node not in alive}
    for jid in [*dead, *sorted(orphaned)]:
        limit = silent if jid in orphaned else stale
        with session_factory.begin() as session:
            job = session.execute(select(Job).where(Job.id == jid).with_for_update()).scalar_one()
            if job.status != "running" or (job.heartbeat_at and job.heartbeat_at >= limit) or job.children:
                continue
            if job.attempts >= settings.max_attempts:
                error = (
                    f"Gave up after {job.attempts} attempts: its worker stopped reporting (last heartbeat "
                    f"{job.heartbeat_at}, on {job.worker})."
                )
                terminate(session, job, "failed", error=error)
                report.failed.append(jid)
                continue
            job.status = "queued"
            job.published_at = None
            job.progress_message = f"re-queued: attempt {job.attempts} stopped reporting"
            log.warning(
                "reaper: job %s attempt %s on %s went silent (%s); re-queued",
                jid,
                job.attempts,
                job.worker,
                "its worker is gone" if jid in orphaned else f"over {settings.stale_after}s",
            )
        report.requeued.append(jid)  # held now: dispatched below (if Redis is down, by the next pass)
    with session_factory() as session:
        held_queues = session.scalars(
            select(Job.queue).where(Job.status == "queued", Job.published_at.is_(None)).distinct()
        ).all()
    for queue in sorted(held_queues):
        report.published.extend(dispatch(session_factory, publisher, settings, queue))
    for pid in parents:
        with session_factory.begin() as session:
            parent = session.get(Job, pid)
            if parent.children and all(c.is_final for c in parent.children):
                settle_parent(session, pid)
                report.settled.append(pid)
    return report
