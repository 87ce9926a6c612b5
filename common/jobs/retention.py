"""How long finished jobs are kept: ``LATENTLAB_JOB_RETENTION_DAYS`` (0: forever).

A finished job (succeeded, failed or cancelled) older than that is deleted with its chunk jobs, unless a
sample, a map or a generation records it (or one of its chunks) as the job that made it: lineage keeps
those for good, since a replay reads the recipe from them. The reaper prunes at most once an hour
(across workers); ``latentlab jobs prune --older-than DAYS`` does it by hand.

Usage::

    deleted = prune_jobs(sessions, older_than_days=30)     # number of job rows deleted (chunks included)
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from common.models import Embedding, Generation, Job, Sample, utcnow
from common.models.jobs import FINAL_STATUSES
from common.platform.errors import UserError

BATCH = 500  # jobs deleted per transaction: a short write lock on SQLite, bounded IN lists everywhere
MAX_DAYS = 36_500


def prune_jobs(sessions: sessionmaker[Session], older_than_days: float) -> int:
    """Delete finished top-level jobs that ended more than ``older_than_days`` ago and made nothing a
    sample, map or generation points to, with their chunk jobs; returns the rows deleted."""
    if not 0 <= older_than_days <= MAX_DAYS:
        raise UserError(f"'older-than' must be 0 to {MAX_DAYS} days.", field="older_than")
    cutoff = utcnow() - timedelta(days=older_than_days)
    made = (
        select(Sample.job_id)
        .where(Sample.job_id.is_not(None))
        .union(
            select(Embedding.job_id).where(Embedding.job_id.is_not(None)),
            select(Generation.job_id).where(Generation.job_id.is_not(None)),
        )
    )
    made_by_child = select(Job.parent_id).where(Job.id.in_(made), Job.parent_id.is_not(None))
    stale = (
        select(Job.id)
        .where(
            Job.parent_id.is_(None),
            Job.status.in_(FINAL_STATUSES),
            or_(Job.finished_at < cutoff, and_(Job.finished_at.is_(None), Job.created_at < cutoff)),
            Job.id.not_in(made),
            Job.id.not_in(made_by_child),
        )
        .order_by(Job.id)
        .limit(BATCH)
    )
    deleted = 0
    while True:
        with sessions.begin() as session:
            ids = list(session.scalars(stale))
            if not ids:
                return deleted
            children = session.scalar(select(func.count(Job.id)).where(Job.parent_id.in_(ids)))
            session.execute(delete(Job).where(Job.parent_id.in_(ids)))
            session.execute(delete(Job).where(Job.id.in_(ids)))
            deleted += len(ids) + int(children or 0)
