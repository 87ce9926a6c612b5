"""Waiting in tests and benches: poll until something holds, and follow a job to a status, from its row
(SQL is the truth for status) or from the API's JSON. The CLI's own ``wait_for_job`` (cli/main.py) is the
product's; this is the tests' and benches' one.

Usage::

    done = wait_for_job(sessions, job.id, timeout=240)                    # the row, once final
    done, trail = follow_job(sessions, job.id, {"succeeded", "failed"})   # and its (status, progress) trail
    now, trail = poll_job(lambda: client.get(f"/api/v1/jobs/{id}", headers=h).json)   # over the API
    wait_until(lambda: lab.job(id).attempts == 2, 60, "the chunk to be taken over")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from common.models import Job
from common.models.jobs import FINAL_STATUSES


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _status(job) -> tuple[str, float | None]:
    if isinstance(job, dict):
        return job["status"], job.get("progress")
    return job.status, job.progress


def poll_job(
    read: Callable[[], Any],
    statuses: Collection[str] = FINAL_STATUSES,
    *,
    timeout: float = 120.0,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
) -> tuple[Any, list[tuple[str, float | None]]]:
    """Call ``read`` (a Job row or the API's job JSON) until its status is in ``statuses``; returns the
    last reading and the distinct (status, progress) pairs seen on the way. On timeout the error names the
    trail, and ``context()`` (e.g. process logs) when given."""
    trail: list[tuple[str, float | None]] = []
    deadline = time.monotonic() + timeout
    while True:
        job = read()
        snap = _status(job)
        if not trail or trail[-1] != snap:
            trail.append(snap)
        if snap[0] in statuses:
            return job, trail
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context else ""
            raise AssertionError(f"job did not reach {sorted(statuses)} in {timeout:.0f}s: {trail}{extra}")
        time.sleep(interval)


def read_job(sessions, job_id: int) -> Job:
    """The job's row, detached (its columns stay readable after the session closes)."""
    with sessions() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def follow_job(
    sessions,
    job_id: int,
    statuses: Collection[str] = FINAL_STATUSES,
    *,
    timeout: float = 120.0,
    interval: float = 0.02,
    context: Callable[[], str] | None = None,
) -> tuple[Job, list[tuple[str, float | None]]]:
    """Poll the job's row until its status is in ``statuses``; returns the row and its trail."""
    return poll_job(
        lambda: read_job(sessions, job_id), statuses, timeout=timeout, interval=interval, context=context
    )


def wait_for_job(
    sessions,
    job_id: int,
    statuses: Collection[str] = FINAL_STATUSES,
    *,
    timeout: float = 120.0,
    interval: float = 0.1,
    context: Callable[[], str] | None = None,
) -> Job:
    """The job's row once its status is in ``statuses`` (by default: final)."""
    return follow_job(sessions, job_id, statuses, timeout=timeout, interval=interval, context=context)[0]
