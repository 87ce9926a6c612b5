"""Submitting one job kind from a request body: the ``POST`` endpoints of the research loop
(``/api/v1/datasets``, ``/embeddings``, ``/generations``) are ``POST /api/v1/jobs`` with the kind fixed.

Their body *is* the kind's params object, so an error's ``field`` is a path in the body
(``"neighbors"``), where ``POST /api/v1/jobs`` says ``"params.neighbors"``.

Usage (in a view)::

    return submit_kind("fit_embedding", body)      # (job dict, 202, {"Location": ...})
"""

from __future__ import annotations

from flask import url_for
from pydantic import BaseModel

import common.jobkinds  # noqa: F401  (registers every job kind)
from common import jobs
from common.errors import UserError
from web.auth import get_db, get_publisher, get_sessions, get_settings, principal
from web.blueprints.jobs import job_out


def submit_kind(kind: str, body: BaseModel):
    user = principal()
    params = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
    try:
        job = jobs.submit(
            get_sessions(), get_publisher(), get_settings(), owner=user.id, kind=kind, params=params
        )
    except UserError as exc:
        if exc.field and exc.field.startswith("params."):
            exc.field = exc.field.removeprefix("params.")
        raise
    db = get_db()
    out = job_out(job, user.username, jobs.queue_position(db, job))
    return out, 202, {"Location": url_for("jobs.get_job", job_id=job.id)}
