"""Shared pieces of the research-loop blueprints (datasets, embeddings, samples).

* ``submit_kind``: the ``POST`` endpoints ``/api/v1/datasets``, ``/embeddings`` and ``/generations`` are
  ``POST /api/v1/jobs`` with the kind fixed. Their body *is* the kind's params object, so an error's
  ``field`` is a path in the body (``"neighbors"``), where ``POST /api/v1/jobs`` says
  ``"params.neighbors"``.
* ``download``: a ``common.research.exports.Table`` as a streamed CSV or Parquet attachment (the
  ``?format=csv|parquet`` answer of the export routes and of the JSON lists that offer it).
* ``bound_ids``: ids in paths beyond ``MAX_ROW_ID`` (2^31-1, PostgreSQL's INTEGER) answer 404 instead
  of reaching the database (PostgreSQL answers "integer out of range"; SQLite cannot bind 2^63).

Usage (in a blueprint)::

    bp.url_value_preprocessor(bound_ids)
    return submit_kind("fit_embedding", body)      # (job dict, 202, {"Location": ...})
"""

from __future__ import annotations

import itertools
from typing import Any

from flask import Response, stream_with_context, url_for
from pydantic import BaseModel

import common.research.kinds  # noqa: F401  (registers every job kind)
from common import jobs
from common.models.base import MAX_ROW_ID
from common.platform.errors import NotFound, UserError
from common.research.exports import Table, table_csv, table_parquet_stream
from web.auth import get_db, get_publisher, get_sessions, get_settings, principal
from web.blueprints.jobs import job_out

MAX_INT = 2**63 - 1  # any number in a body (seeds are 64-bit); ids are bounded by MAX_ROW_ID


def bound_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """``url_value_preprocessor``: an id in the path that no row can have is simply not found."""
    for name, value in (values or {}).items():
        if isinstance(value, int) and value > MAX_ROW_ID:
            raise NotFound(f"No {name.removesuffix('_id')} {value}.", field=name)


def check_numbers(data: Any, path: str = "") -> None:
    """Refuse integers that no database column can hold, naming where they are."""
    if isinstance(data, bool):
        return
    if isinstance(data, int) and not -MAX_INT <= data <= MAX_INT:
        raise UserError(f"'{path}': the number is too large.", field=path or None)
    if isinstance(data, dict):
        for key, value in data.items():
            check_numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            check_numbers(value, f"{path}.{index}" if path else str(index))


def submit_kind(kind: str, body: BaseModel):
    user = principal()
    params = body.model_dump(mode="json", by_alias=True, exclude_unset=True)
    check_numbers(params)
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


MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def download(table: Table, fmt: str) -> Response:
    """``table`` streamed as a ``csv`` or ``parquet`` attachment named after it."""
    chunks = table_csv(table) if fmt == "csv" else table_parquet_stream(table)
    # the first piece is made before the status line goes out, so an error is still a JSON answer
    first = next(chunks, b"" if fmt == "parquet" else "")
    response = Response(stream_with_context(itertools.chain([first], chunks)), mimetype=MEDIA_TYPES[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="{table.name}.{fmt}"'
    return response
