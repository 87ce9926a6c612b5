"""Running a job in a worker: ``claim`` it for a new attempt, ``execute`` its handler under a heartbeat, and
record how it ended.

The SQL ``jobs`` row is the truth; the broker only carries job ids. A job runs at least once; its
effects happen exactly once because

* a claim increments ``attempts`` and every later write of that attempt is conditional on it
  (``Lease.fence`` in ``common/jobs/lease.py``), so a stale attempt's writes are refused;
* a delivery that finds the job running with a fresh heartbeat does not run it (it is deferred and looks
  again later, when the other attempt has either finished or stopped beating);
* outputs carry unique keys and are written to temporary names and renamed (see
  ``common/platform/storage.py``).

Usage (a worker task)::

    outcome = execute(session_factory, settings, job_id, handler, worker="w1")   # handler(ctx) -> result
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import Publisher
from common.jobs.dispatch import dispatch
from common.jobs.lease import Defer, JobCancelled, Lease, LeaseLost, Skip
from common.jobs.terminal import terminate
from common.jobs.views import event_of
from common.models import Job
from common.models import utcnow as now
from common.models.jobs import FINAL_STATUSES
from common.platform.config import Settings
from common.platform.errors import UserError

log = logging.getLogger("common.jobs")


def claim(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job_id: int,
    *,
    worker: str,
    publisher: Publisher | None = None,
) -> Lease | Skip | Defer:
    """Take the job for a new attempt, or say why not (already final, cancelled, alive elsewhere, or out
    of attempts: then it is failed with the reason)."""
    stamp = now()
    with session_factory.begin() as session:
        job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if job is None:
            return Skip("no such job")
        if job.status in FINAL_STATUSES:
            return Skip(f"job is already {job.status}")
        if job.cancel_requested:
            terminate(session, job, "cancelled")
            return Skip("cancelled")
        if job.status == "running":
            age = (stamp - job.heartbeat_at).total_seconds() if job.heartbeat_at else float("inf")
            if age < settings.takeover_after:
                return Defer(
                    settings.takeover_after - age + 1.0, f"attempt {job.attempts} is alive on {job.worker}"
                )
            log.warning(
                "job %s: attempt %s on %s went silent %.0fs ago; taking over",
                job_id,
                job.attempts,
                job.worker,
                age,
            )
        if job.attempts >= settings.max_attempts:
            error = (
                f"Gave up after {job.attempts} attempts: the worker running it was lost each time "
                f"(last on {job.worker or 'an unknown worker'}). The job may crash its worker; check its "
                "parameters or ask an admin to look at the worker logs."
            )
            terminate(session, job, "failed", error=error)
            return Skip("out of attempts")
        job.status = "running"
        job.attempts += 1
        job.worker = worker[:255]
        job.heartbeat_at = stamp
        job.started_at = job.started_at or stamp
        attempt = job.attempts
        event = event_of(job)
        lease = Lease(session_factory, settings, job_id, attempt, publisher)
        lease.progress_interval = settings.progress_interval
        lease.kind, lease.queue, lease.owner_id = job.kind, job.queue, job.owner_id
        lease.params = dict(job.params)
    log.info("job %s: attempt %s claimed by %s", job_id, attempt, worker)
    if publisher:
        publisher.clear_marker(job_id)
        publisher.emit(event)
    return lease


WAIT_FOR_CHILDREN = object()


@dataclass
class JobContext:
    """What a handler gets: the lease (progress, fencing), the job's params and the shared services."""

    lease: Lease
    settings: Settings
    session_factory: sessionmaker[Session]
    job_id: int
    kind: str
    params: dict[str, Any]
    owner_id: int
    attempt: int
    publisher: Publisher | None
    services: dict[str, Any] = field(default_factory=dict)

    def progress(self, fraction: float, message: str | None = None) -> None:
        self.lease.progress(fraction, message)

    def check(self, *, fresh: bool = False) -> None:
        self.lease.check(fresh=fresh)

    def complete(self, session: Session, result: dict[str, Any]) -> dict[str, Any]:
        """Succeed the job in ``session``'s transaction (see ``Lease.complete``); returns ``result``."""
        self.lease.complete(session, result)
        return result


Handler = Callable[[JobContext], Any]


@dataclass(frozen=True)
class Outcome:
    status: str  # succeeded | failed | cancelled | waiting | skipped | deferred | lost
    detail: str = ""
    countdown: float | None = None


def execute(
    session_factory: sessionmaker[Session],
    settings: Settings,
    job_id: int,
    handler: Handler,
    *,
    worker: str,
    publisher: Publisher | None = None,
    services: dict[str, Any] | None = None,
) -> Outcome:
    """Claim ``job_id``, run ``handler`` under a heartbeat, and record how it ended."""
    got = claim(session_factory, settings, job_id, worker=worker, publisher=publisher)
    if not isinstance(got, Defer):
        queue = got.queue if isinstance(got, Lease) else None
        _dispatch_after_take(session_factory, publisher, settings, job_id, queue)
    if isinstance(got, Skip):
        return Outcome("skipped", got.reason)
    if isinstance(got, Defer):
        return Outcome("deferred", got.reason, countdown=got.countdown)
    lease = got
    ctx = JobContext(
        lease,
        settings,
        session_factory,
        job_id,
        lease.kind,
        lease.params,
        lease.owner_id,
        lease.attempt,
        publisher,
        services if services is not None else {},  # an empty dict is the shared cache too
    )
    with lease.heartbeating():
        try:
            result = handler(ctx)
        except JobCancelled:
            _finish_cancelled(lease)
            return Outcome("cancelled")
        except LeaseLost as exc:
            log.warning("%s; this attempt stops without writing", exc)
            return Outcome("lost", str(exc))
        except UserError as exc:
            lease.finish("failed", error=exc.message)
            return Outcome("failed", exc.message)
        except OSError as exc:
            message = _os_error_message(exc)
            log.exception("job %s failed: %s", job_id, message)
            lease.finish("failed", error=message)
            return Outcome("failed", message)
        except Exception as exc:
            log.exception("job %s failed", job_id)
            message = f"{type(exc).__name__}: {exc}"
            lease.finish("failed", error=message)
            return Outcome("failed", message)
        finally:
            lease.end_progress()  # a report still waiting for its interval is superseded by the end
    if result is WAIT_FOR_CHILDREN:
        return Outcome("waiting")
    if lease.completed is not None:  # the handler's last transaction recorded the success
        lease.emit_final(lease.completed)
        return Outcome("succeeded")
    lease.finish("succeeded", result=result if isinstance(result, dict) else None)
    return Outcome("succeeded")


def _dispatch_after_take(
    session_factory: sessionmaker[Session],
    publisher: Publisher | None,
    settings: Settings,
    job_id: int,
    queue: str | None = None,
) -> None:
    """A worker took a message off the queue: publish what fair share now allows on that queue."""
    if publisher is None:
        return
    try:
        if queue is None:
            with session_factory() as session:
                queue = session.scalar(select(Job.queue).where(Job.id == job_id))
        if queue is not None:
            dispatch(session_factory, publisher, settings, queue)
    except Exception:  # the job runs regardless; the reaper's pass dispatches what this missed
        log.warning("dispatching after job %s was taken failed", job_id, exc_info=True)


def _finish_cancelled(lease: Lease) -> None:
    lease.finish("cancelled", message="cancelled")


def _os_error_message(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        where = exc.filename or "while writing outputs"
        return f"disk full: the data root has no space left ({where}); free space and resubmit."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied writing {exc.filename}: the worker cannot write to the data root."
    return f"{type(exc).__name__}: {exc}"
