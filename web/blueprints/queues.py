"""``GET /api/v1/queues``: counts per queue and the active jobs in queue order (``common.jobs.summary``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel, Field

from common.jobs.summary import queue_summary
from web.api import api_route
from web.auth import get_db, principal

bp = Blueprint("queues", __name__, url_prefix="/api/v1")


class QueueCounts(BaseModel):
    queued: int = Field(description="top-level jobs waiting")
    running: int = Field(description="top-level jobs running (a dataset job runs while its chunks wait)")
    chunks_queued: int = Field(description="chunk jobs of larger jobs waiting")
    chunks_running: int = Field(description="chunk jobs of larger jobs running")


class QueueSummary(BaseModel):
    queues: dict[str, QueueCounts]
    jobs: list[dict[str, Any]] = Field(
        description=(
            "active top-level jobs in queue order; yours (admins: all) as full job objects with "
            "'mine', other members' as {queue, kind, status, position, owner, progress}"
        )
    )
    truncated: bool


@api_route(
    bp,
    "/queues",
    methods=["GET"],
    response=QueueSummary,
    summary="What waits and runs on each queue, and whose it is",
)
def get_queues():
    user = principal()
    return queue_summary(get_db(), viewer_id=user.id, is_admin=user.is_admin)
