"""The jobs API (``/api/v1/jobs``): submit, list, inspect and cancel jobs.

Visibility: a member sees and cancels only their own jobs; anything else answers 404, as if the job did
not exist (a 403 would confirm it does). Admins see and cancel everyone's. In a listing, ``owner=`` is a
filter on top of that rule, so a member asking for another user's jobs gets an empty list.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, url_for
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

import common.research.kinds  # noqa: F401  (registers every job kind)
from common import jobs
from common.jobs import reads as job_reads
from common.jobs.views import listed_params
from common.models import Job
from common.models.base import RowId
from common.models.jobs import JOB_STATUSES
from common.platform.errors import Conflict, UserError
from web.api import api_route
from web.auth import Principal, get_db, get_publisher, get_sessions, get_settings, principal

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")

KIND_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class SubmitJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        max_length=64, pattern=KIND_PATTERN, description="the job kind; see GET /api/v1/jobs/kinds"
    )
    # validated per kind by common.jobs (its params schema: components.schemas.JobKindParams)
    params: Any = Field(
        default=None, json_schema_extra={"type": "object"}, description="the kind's parameters"
    )


class JobListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(default=None, max_length=64, pattern=KIND_PATTERN)
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]
    owner: str | None = Field(
        default=None, min_length=1, max_length=200, description="a username (members: only their own)"
    )
    limit: int = Field(default=50, ge=1, le=500)
    before: RowId | None = Field(default=None, description="only jobs with a smaller id (next page)")
    include_children: bool = Field(default=False, description="also list the chunk jobs of larger jobs")


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    queue: str
    owner_id: int
    owner: str | None
    parent_id: int | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    progress: float
    progress_message: str | None
    attempts: int
    cancel_requested: bool
    position: int | None = Field(description="1-based place in its queue while queued")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    published_at: datetime | None = Field(
        description=(
            "when the broker took it; null: waiting to be handed to the broker, either for its owner's "
            "fair share of the queue (see SECURITY.md) or because the broker was unreachable"
        )
    )
    children: dict[str, int] | None = Field(
        default=None, description="chunk jobs per status (and total), for a job split into chunks"
    )
    params_truncated: dict[str, int] | None = Field(
        default=None,
        description="in listings: list parameters cut to their first 20 items, with their full length",
    )


class JobList(BaseModel):
    jobs: list[JobOut]
    next_before: int | None = Field(description="pass as ?before= for the next page; null on the last")


class KindOut(BaseModel):
    name: str
    queue: str
    params_schema: dict[str, Any]


class KindList(BaseModel):
    kinds: list[KindOut]


def job_out(job: Job, owner: str | None, position: int | None, *, listed: bool = False) -> dict[str, Any]:
    """A job as the API answers it; ``listed``: as a row of ``GET /api/v1/jobs``, where a long list
    parameter (a reproject of 100,000 ids) keeps its first ``LISTED_ITEMS`` items and is named in
    ``params_truncated`` (``GET /api/v1/jobs/<id>`` has them all; ``common.jobs.views.listed_params``)."""
    out = jobs.job_to_dict(job, position=position, owner_name=owner)
    out["published_at"] = job.published_at.isoformat() if job.published_at else None
    return listed_params(out) if listed else out


def _detail(db: Session, job_id: int, user: Principal) -> dict[str, Any]:
    job, owner = job_reads.visible_job(db, job_id, viewer_id=user.id, is_admin=user.is_admin)
    out = job_out(job, owner, jobs.queue_position(db, job))
    out["children"] = job_reads.children_summary(db, job.id)
    return out


@api_route(
    bp,
    "/jobs",
    methods=["POST"],
    body=SubmitJob,
    response=JobOut,
    status=202,
    summary="Submit a job; it is queued and runs on a worker",
    description=(
        "Answers 202 with the queued job once its row is committed. If the broker is unreachable the "
        "job stays queued with published_at null and is published when the broker is back."
    ),
)
def submit_job(body: SubmitJob):
    user = principal()
    spec = jobs.get_kind(body.kind)
    if spec.internal:
        public = sorted(k for k, v in jobs.KINDS.items() if not v.internal)
        raise UserError(
            f"Job kind '{body.kind}' is started by other jobs only; use one of: {', '.join(public)}.",
            field="kind",
        )
    job = jobs.submit(
        get_sessions(), get_publisher(), get_settings(), owner=user.id, kind=body.kind, params=body.params
    )
    out = _detail(get_db(), job.id, user)
    return out, 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


@api_route(
    bp,
    "/jobs",
    methods=["GET"],
    query=JobListQuery,
    response=JobList,
    summary="List jobs, newest first (members: their own)",
)
def list_jobs(query: JobListQuery):
    user = principal()
    db = get_db()
    rows = job_reads.list_jobs(
        db,
        viewer_id=user.id,
        is_admin=user.is_admin,
        owner=query.owner,
        kind=query.kind,
        status=query.status,
        include_children=query.include_children,
        before=query.before,
        limit=query.limit,
    )
    positions = job_reads.queue_positions(db, [job.id for job, _ in rows if job.status == "queued"])
    listed = [job_out(job, owner, positions.get(job.id), listed=True) for job, owner in rows]
    next_before = rows[-1][0].id if len(rows) == query.limit else None
    return {"jobs": listed, "next_before": next_before}


@api_route(bp, "/jobs/kinds", methods=["GET"], response=KindList, summary="The job kinds you can submit")
def list_kinds():
    kinds = [
        {"name": k.name, "queue": k.queue, "params_schema": k.params_model.model_json_schema()}
        for k in sorted(jobs.KINDS.values(), key=lambda k: k.name)
        if not k.internal
    ]
    return {"kinds": kinds}


@api_route(bp, "/jobs/<int:job_id>", methods=["GET"], response=JobOut, summary="One job")
def get_job(job_id: int):
    return _detail(get_db(), job_id, principal())


@api_route(
    bp,
    "/jobs/<int:job_id>/cancel",
    methods=["POST"],
    response=JobOut,
    summary="Cancel a job: a queued one never runs, a running one stops at its next check",
)
def cancel_job(job_id: int):
    user = principal()
    job = jobs.cancel(get_sessions(), job_id, user, get_publisher())
    if job.status in ("succeeded", "failed"):
        raise Conflict(f"Job {job_id} already {job.status}; there is nothing to cancel.")
    return _detail(get_db(), job_id, user)
