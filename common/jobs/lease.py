"""One attempt's fenced hold on a job: ``Lease`` (fencing, progress threading, finish) and its heartbeat.

Usage (inside a worker, after ``common.jobs.runner.claim``)::

    with lease.heartbeating():
        lease.progress(0.5, "half way")   # raises LeaseLost or JobCancelled
        lease.finish("succeeded", result={...})
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import Publisher
from common.jobs.terminal import terminate
from common.jobs.views import event_of
from common.models import Job
from common.models import utcnow as now
from common.models.jobs import FINAL_STATUSES
from common.platform.config import Settings

log = logging.getLogger("common.jobs")


class LeaseLost(Exception):
    """This attempt no longer owns the job (the reaper or another delivery took it); stop, write nothing."""


class JobCancelled(Exception):
    """The owner cancelled the job; stop and write nothing more."""


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Defer:
    """Another attempt is (or was very recently) alive; look again after ``countdown`` seconds."""

    countdown: float
    reason: str


PROGRESS_INTERVAL = 0.25  # seconds: an attempt writes (and broadcasts) its progress at most this often
# seconds: ``Lease.check`` reads the row at most this often, so a job that checks between its steps stops
# within about this long of a cancel (a check that reads is one small fenced UPDATE)
CANCEL_POLL_S = 0.4


@dataclass
class Lease:
    """One attempt's hold on a job. All of its writes go through ``fence`` in the same transaction.

    Progress is written at most every ``progress_interval`` seconds, the first time that long after the
    claim: a report that comes sooner is kept and written when the interval is up (unless a newer one
    or the end of the job replaced it). A click's generation, done in a tenth of a second, so writes no
    progress rows at all, and a chunk reporting every batch writes four a second at most; a long job
    still shows its latest message within a quarter of a second."""

    session_factory: sessionmaker[Session]
    settings: Settings
    job_id: int
    attempt: int
    publisher: Publisher | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _lost: threading.Event = field(default_factory=threading.Event)
    _last_poll: float = field(default_factory=time.monotonic)  # the claim has just read the row
    progress_interval: float = PROGRESS_INTERVAL  # 0: every report is written at once
    _progress_at: float = field(default_factory=time.monotonic)  # the claim, then the last written report
    _pending: tuple[int, float, str | None] | None = None
    _timer: threading.Timer | None = None
    _progress_lock: threading.Lock = field(default_factory=threading.Lock)  # the fields below, briefly
    _write_lock: threading.Lock = field(default_factory=threading.Lock)  # one progress write at a time
    _reports: int = 0  # progress reports made (their sequence numbers)
    _written: int = 0  # the sequence number of the last one written
    _ended: bool = False
    # the claimed row's kind, queue, owner and params (read in the claim's transaction)
    kind: str = ""
    queue: str = ""
    owner_id: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    completed: dict[str, Any] | None = None  # the final event, once ``complete`` succeeded the job

    def fence(self, session: Session, **values: Any) -> None:
        """Assert, inside ``session``'s transaction, that this attempt still owns the job (and apply
        ``values`` to the row); raises LeaseLost or JobCancelled so the transaction rolls back."""
        values.setdefault("heartbeat_at", now())
        res = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.attempts == self.attempt, Job.status == "running")
            .values(**values)
            .returning(Job.cancel_requested)
        ).first()
        if res is None:
            self._lost.set()
            raise LeaseLost(f"job {self.job_id} attempt {self.attempt} lost its lease")
        if res[0]:
            self._cancelled.set()
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def beat(self) -> None:
        """Refresh the heartbeat (and learn about cancellation or a lost lease)."""
        try:
            with self.session_factory.begin() as session:
                self.fence(session)
        except (LeaseLost, JobCancelled):
            pass
        self._last_poll = time.monotonic()

    def check(self, *, fresh: bool = False) -> None:
        """Raise if the job was cancelled or the lease lost; polls the row at most every ``CANCEL_POLL_S``,
        or now with ``fresh`` (before writing files, which no transaction can fence)."""
        if fresh or time.monotonic() - self._last_poll > CANCEL_POLL_S:
            self.beat()
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id} attempt {self.attempt} lost its lease")
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0–1) and a message (now, or within ``progress_interval``); raises if the job
        was cancelled or the lease lost."""
        fraction = min(1.0, max(0.0, float(fraction)))
        report = (fraction, (message or "")[:500] or None)
        with self._progress_lock:  # never held across I/O: end_progress may run inside a transaction
            self._reports += 1
            seq = self._reports
            wait = self._progress_at + self.progress_interval - time.monotonic()
            if wait > 0:
                self._pending = (seq, *report)
                if self._timer is None and not self._ended:
                    self._timer = threading.Timer(wait, self._write_pending)
                    self._timer.daemon = True
                    self._timer.start()
            else:
                self._pending = None
        if wait <= 0:
            self._write_progress(seq, *report)
        self.check()

    def _write_progress(self, seq: int, fraction: float, message: str | None) -> None:
        with self._write_lock:  # one writer at a time, and never an older report over a newer one
            if seq <= self._written or self._ended:
                return
            with self.session_factory.begin() as session:
                self.fence(session, progress=fraction, progress_message=message)
                event = event_of(session.get(Job, self.job_id))
            self._written = seq
            self._last_poll = self._progress_at = time.monotonic()
            if self.publisher:  # under the lock: the final event (``emit_final``) cannot overtake it
                self.publisher.emit(event)

    def emit_final(self, event: dict[str, Any]) -> None:
        """Broadcast the job's final event after any progress event of this attempt (call it outside a
        transaction: it waits for a progress write in flight)."""
        if self.publisher:
            with self._write_lock:
                self.publisher.emit(event)

    def _write_pending(self) -> None:
        with self._progress_lock:
            self._timer = None
            pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._write_progress(*pending)
        except (LeaseLost, JobCancelled):  # recorded in the events; the handler's next check raises
            pass
        except Exception:  # a database hiccup costs this report; the next one retries
            log.warning("progress of job %s could not be written", self.job_id, exc_info=True)

    def end_progress(self) -> None:
        """No more progress writes: the attempt is ending (a pending report would only be overwritten).
        Safe inside a transaction: it waits for no write (one in flight fails its fence, or lands first)."""
        with self._progress_lock:
            self._ended = True
            self._pending = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def finish(
        self, status: str, *, result: dict | None = None, error: str | None = None, message: str | None = None
    ) -> bool:
        """Move the job to a final status (fenced); returns False if another attempt owns it now."""
        assert status in FINAL_STATUSES
        self.end_progress()
        with self.session_factory.begin() as session:
            job = self._owned(session)
            if job is None:
                return False
            job.result = result
            event = terminate(
                session, job, status, result=result, error=error and error[:4000], message=message
            )
        self.emit_final(event)
        return True

    def _owned(self, session: Session) -> Job | None:
        """The job row, locked, if this attempt still runs it (else None: another attempt owns it)."""
        return session.execute(
            select(Job)
            .where(Job.id == self.job_id, Job.attempts == self.attempt, Job.status == "running")
            .with_for_update()
        ).scalar_one_or_none()

    def complete(self, session: Session, result: dict[str, Any]) -> None:
        """Mark the job succeeded with ``result`` inside ``session``'s transaction, the one that writes
        what the job made, so its outputs and its final status commit together (or not at all). Fenced as
        ``fence`` is; ``execute`` broadcasts the final event once the handler returns."""
        self.end_progress()
        self.fence(session)  # raises (rolling the outputs back) unless this attempt still runs the job
        job = session.get(Job, self.job_id, populate_existing=True)
        self.completed = terminate(session, job, "succeeded", result=result)

    def heartbeating(self) -> _Heartbeat:
        return _Heartbeat(self)


class _Heartbeat:
    """Context manager: a daemon thread that beats every ``heartbeat_seconds`` while the job runs."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{lease.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.settings.heartbeat_seconds):
            try:
                self.lease.beat()
            except Exception:  # a database hiccup must not kill the beat; the next one retries
                log.warning("heartbeat of job %s failed", self.lease.job_id, exc_info=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self.lease

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
