"""How a job is shown: its API dict, its broadcast event, its place in the queue.

Usage::

    job_to_dict(job, position=queue_position(session, job), owner_name="ada")
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from common.jobs.reads import queue_positions
from common.models import Job


def job_to_dict(job: Job, *, position: int | None = None, owner_name: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "queue": job.queue,
        "owner_id": job.owner_id,
        "owner": owner_name,
        "parent_id": job.parent_id,
        "params": job.params,
        "result": job.result,
        "error": job.error,
        "progress": round(job.progress, 4),
        "progress_message": job.progress_message,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "position": position,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "heartbeat_at": _iso(job.heartbeat_at),
    }


LISTED_ITEMS = 20  # a list parameter longer than this is cut to its first items where jobs are listed


def listed_params(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (a ``job_to_dict``) as a row of a listing: a long list parameter (a reproject of 100,000
    ids) keeps its first ``LISTED_ITEMS`` items and is named, with its length, in ``params_truncated``.
    Job listings and the queue summary (``GET /api/v1/queues``, the ``queues`` event every few seconds)
    show jobs this way; the job itself (``GET /api/v1/jobs/<id>``) has them all."""
    params = out.get("params")
    if isinstance(params, dict):
        long = {k: len(v) for k, v in params.items() if isinstance(v, list) and len(v) > LISTED_ITEMS}
        if long:
            out["params"] = {k: v[:LISTED_ITEMS] if k in long else v for k, v in params.items()}
            out["params_truncated"] = long
    return out


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place of a queued job in its queue (jobs ahead of it + 1); None when not queued."""
    if job.status != "queued":
        return None
    return queue_positions(session, [job.id]).get(job.id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def event_for(session_factory: sessionmaker[Session], job_id: int) -> dict[str, Any]:
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return {"id": job_id, "status": "gone"}
        return event_of(job)


def event_of(job: Job) -> dict[str, Any]:
    """The broadcast event of a job row as it is in this session (read it before the commit expires it)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "owner_id": job.owner_id,
        "parent_id": job.parent_id,
        "status": job.status,
        "queue": job.queue,
        "progress": round(job.progress, 4),
        "progress_message": job.progress_message,
        "error": job.error,
        "result": job.result,
    }
