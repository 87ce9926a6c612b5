"""The job lifecycle: submit, claim with a fenced lease, heartbeat, progress, finish, cancel, reap.

The SQL ``jobs`` row is the truth; the broker only carries job ids. A job runs at least once; its
effects happen exactly once because

* a claim increments ``attempts`` and every later write of that attempt is conditional on it
  (``Lease.fence``), so a stale attempt's writes are refused;
* a delivery that finds the job running with a fresh heartbeat does not run it (it is deferred and looks
  again later, when the other attempt has either finished or stopped beating);
* outputs carry unique keys and are written to temporary names and renamed (see ``common.storage``).

Usage (a worker task)::

    outcome = execute(ctx_factory, job_id, handler)   # handler(ctx) -> result dict

Usage (the web or the CLI)::

    job = submit(session_factory, publisher, settings, owner=user, kind="ping", params={"seconds": 1})
"""

from __future__ import annotations

import errno
import heapq
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.errors import NotFound, QuotaExceeded, UserError, pydantic_message
from common.models import Job, User
from common.models.jobs import ACTIVE_STATUSES, FINAL_STATUSES
from common.queue import BrokerUnavailable, Publisher, worker_node

log = logging.getLogger(__name__)

RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]  # a database id (refuses what no backend can bind)


def now() -> datetime:
    return datetime.now(UTC)


# -- kinds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """What a job kind is: its queue, its parameter schema and the DB-aware checks run at submit time.

    ``prepare(session, params, owner, settings)`` runs inside the submit transaction; it raises
    ``UserError`` for bad input and may return a replacement params dict (normalised, with ids of rows
    it created). ``on_children_done(session, parent)`` finishes a parent whose chunk jobs all succeeded.
    """

    name: str
    queue: str
    params_model: type[BaseModel]
    prepare: Callable[..., dict | None] | None = None
    on_children_done: Callable[[Session, Job], dict | None] | None = None
    on_failed: Callable[[Session, Job], None] | None = None
    internal: bool = False  # spawned by other jobs only, never submitted through the API


KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    import common.jobkinds  # noqa: F401  (registers every kind)

    try:
        return KINDS[name]
    except KeyError:
        public = sorted(k for k, v in KINDS.items() if not v.internal)
        raise UserError(
            f"Unknown job kind '{name}'; use one of: {', '.join(public)}.", field="kind"
        ) from None


def parse_params(kind: JobKind, params: Any) -> BaseModel:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise UserError("'params' must be a JSON object.", field="params")
    try:
        return kind.params_model.model_validate(params)
    except ValidationError as exc:
        message, loc = pydantic_message(exc)
        raise UserError(
            f"Invalid params for '{kind.name}': {message}", field=f"params.{loc}" if loc else "params"
        ) from None


# -- submit and cancel ----------------------------------------------------------------------------------


def submit(
    session_factory: sessionmaker[Session],
    publisher: Publisher | None,
    settings: Settings,
    *,
    owner: User | int,
    kind: str,
    params: Any,
    parent_id: int | None = None,
) -> Job:
    """Validate, commit the Job row, then publish it. Returns the job (``published_at`` None when the
    broker was unreachable: the row is durable and the reaper publishes it once Redis is back)."""
    spec = get_kind(kind)
    model = parse_params(spec, params)
    owner_id = owner if isinstance(owner, int) else owner.id
    with session_factory.begin() as session:
        user = session.get(User, owner_id)
        if user is None or not user.active:
            raise NotFound("That user does not exist or is disabled.")
        _check_quota(session, settings, user, spec.queue)
        clean = model.model_dump(mode="json")
        if spec.prepare is not None:
            clean = spec.prepare(session, model, user, settings) or clean
        # the usual case, decided here rather than by a dispatch pass after the commit: nothing of this
        # queue is held and the owner is under the fair-share cap, so the job is reserved for publishing
        # in the transaction that creates it (and sent right after it)
        direct = publisher is not None and _may_publish_now(session, settings, spec.queue, owner_id)
        job = Job(kind=kind, queue=spec.queue, owner_id=owner_id, params=clean, parent_id=parent_id)
        task_id = uuid.uuid4().hex
        if direct:
            job.published_at, job.celery_task_id = now(), task_id
        session.add(job)
        session.flush()
        job_id = job.id
        event = _event_of(job)
    if direct:
        _send_reserved(session_factory, publisher, job_id, kind, spec.queue, task_id, event)
    else:
        dispatch(session_factory, publisher, settings, spec.queue)
    with session_factory() as session:
        return session.get(Job, job_id)


def _may_publish_now(session: Session, settings: Settings, queue: str, owner_id: int) -> bool:
    """True when a new job of ``owner_id`` on ``queue`` would be published at once by ``dispatch``:
    no held job waits on that queue and the owner has fewer than the fair-share cap in the broker."""
    if session.scalar(select(Job.id).where(*_held(queue)).limit(1)) is not None:
        return False
    cap = settings.fair_share_waiting
    if not cap:
        return True
    waiting = session.scalar(
        select(func.count(Job.id)).where(
            Job.owner_id == owner_id,
            Job.queue == queue,
            Job.status == "queued",
            Job.published_at.is_not(None),
        )
    )
    return waiting < cap


def _check_quota(session: Session, settings: Settings, user: User, queue: str) -> None:
    # one user's submits take turns (a row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE already
    # serialises writers), so two parallel requests cannot both pass the count below
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    active = session.scalar(
        select(func.count(Job.id)).where(
            Job.owner_id == user.id,
            Job.queue == queue,
            Job.status.in_(ACTIVE_STATUSES),
            Job.parent_id.is_(None),
        )
    )
    if active >= settings.max_active_jobs_per_queue:
        raise QuotaExceeded(
            f"You already have {active} queued or running jobs on the '{queue}' queue (the limit is "
            f"{settings.max_active_jobs_per_queue}); wait for some to finish or cancel them."
        )


def publish(session_factory: sessionmaker[Session], publisher: Publisher | None, job_id: int) -> bool:
    """Hand a committed queued job to the broker and record that it was; False if the broker is down."""
    if publisher is None:
        return False
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "queued":
            return False
        kind, queue = job.kind, job.queue
    task_id = uuid.uuid4().hex
    try:
        publisher.publish(job_id, kind, queue, task_id)
    except BrokerUnavailable as exc:
        log.warning("%s; the reaper will publish it later", exc)
        return False
    with session_factory.begin() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(published_at=now(), celery_task_id=task_id)
        )
    publisher.emit(_event_for(session_factory, job_id))
    return True


# -- fair share: which queued jobs wait in the broker ---------------------------------------------------
#
# The broker's queues are FIFO, so every message published is a place in line. A queued job is published
# only while its owner has fewer than ``settings.fair_share_waiting`` jobs of that queue in the broker
# (published, not yet taken by a worker); the others stay queued rows with ``published_at`` NULL ("held").
# ``dispatch`` publishes held jobs, the owner with the fewest waiting first (each owner's oldest first), and
# runs when a job is submitted, when a worker takes a message (``claim``) and on every reaper pass. So a
# member's single job waits behind at most ``fair_share_waiting`` jobs of each other member, however many
# they queued, and one member alone still keeps every worker busy (each take publishes the next).

DISPATCH_BATCH = 10_000  # without a fair-share limit: the most held jobs of one owner published per pass


def dispatch(
    session_factory: sessionmaker[Session], publisher: Publisher | None, settings: Settings, queue: str
) -> list[int]:
    """Publish the held jobs of ``queue`` that fair share allows; returns their ids (oldest first per
    owner, owners interleaved). Safe to run concurrently: a job is reserved before it is sent."""
    if publisher is None:
        return []
    cap = settings.fair_share_waiting
    with session_factory() as session:
        if session.scalar(select(Job.id).where(*_held(queue)).limit(1)) is None:
            return []  # the usual case: nothing held, nothing to decide
        waiting = dict(
            session.execute(
                select(Job.owner_id, func.count(Job.id))
                .where(Job.queue == queue, Job.status == "queued", Job.published_at.is_not(None))
                .group_by(Job.owner_id)
            ).all()
        )
        ranked = (
            select(
                Job.id,
                Job.owner_id,
                func.row_number().over(partition_by=Job.owner_id, order_by=Job.id).label("rank"),
            )
            .where(*_held(queue))
            .subquery()
        )
        stmt = select(ranked.c.id, ranked.c.owner_id).order_by(ranked.c.owner_id, ranked.c.id)
        stmt = stmt.where(ranked.c.rank <= (cap or DISPATCH_BATCH))
        held = session.execute(stmt).all()
    published = []
    for job_id in fair_order(held, waiting, cap):
        sent = _publish_held(session_factory, publisher, job_id)
        if sent is None:  # the broker is down: the reaper dispatches again later
            break
        if sent:
            published.append(job_id)
    return published


def _held(queue: str) -> tuple:
    """The conditions of a held job of ``queue``: queued, never handed to the broker, not cancelled."""
    return (
        Job.queue == queue,
        Job.status == "queued",
        Job.published_at.is_(None),
        Job.cancel_requested.is_(False),
    )


def fair_order(held: list[tuple[int, int]], waiting: dict[int, int], cap: int) -> list[int]:
    """The order to publish ``held`` (job id, owner) in: repeatedly the oldest job of the owner with the
    fewest jobs waiting in the broker (ties: the owner whose next job is oldest), none beyond ``cap``
    waiting per owner (0: no limit)."""
    lines: dict[int, deque[int]] = {}
    for job_id, owner in held:
        lines.setdefault(owner, deque()).append(job_id)
    heap = [(waiting.get(owner, 0), line[0], owner) for owner, line in lines.items()]
    heapq.heapify(heap)
    order = []
    while heap:
        count, _, owner = heapq.heappop(heap)
        if cap and count >= cap:
            continue
        line = lines[owner]
        order.append(line.popleft())
        if line:
            heapq.heappush(heap, (count + 1, line[0], owner))
    return order


def _publish_held(session_factory: sessionmaker[Session], publisher: Publisher, job_id: int) -> bool | None:
    """Reserve a held job (so that concurrent dispatchers send it once) and send it. True: sent; False:
    someone else took it or it is no longer queued; None: the broker is unreachable (reservation undone)."""
    task_id = uuid.uuid4().hex
    with session_factory.begin() as session:
        reserved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.published_at.is_(None))
            .values(published_at=now(), celery_task_id=task_id)
        )
        if reserved.rowcount != 1:
            return False
        kind, queue = session.execute(select(Job.kind, Job.queue).where(Job.id == job_id)).one()
    return _send_reserved(session_factory, publisher, job_id, kind, queue, task_id)


def _send_reserved(
    session_factory: sessionmaker[Session],
    publisher: Publisher,
    job_id: int,
    kind: str,
    queue: str,
    task_id: str,
    event: dict[str, Any] | None = None,
) -> bool | None:
    """Send a job reserved for publishing (``published_at`` and ``celery_task_id`` set); on a broker
    failure undo the reservation and return None, so the reaper's dispatch publishes it later."""
    try:
        publisher.publish(job_id, kind, queue, task_id)
    except BrokerUnavailable as exc:
        log.warning("%s; the reaper will publish it later", exc)
        with session_factory.begin() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.celery_task_id == task_id, Job.status == "queued")
                .values(published_at=None)
            )
        return None
    publisher.emit(event if event is not None else _event_for(session_factory, job_id))
    return True


def cancel(
    session_factory: sessionmaker[Session], job_id: int, user: User, publisher: Publisher | None
) -> Job:
    """Cancel a job of ``user`` (admins: anyone's). Queued: cancelled at once and never run. Running:
    flagged; the worker stops at its next check (within a heartbeat) and writes nothing after."""
    with session_factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or (job.owner_id != user.id and not user.is_admin):
            raise NotFound(f"No job {job_id} of yours exists.")
        if job.parent_id is not None:
            raise UserError("This is a chunk of a larger job; cancel its parent job instead.")
        _cancel_tree(session, job)
    if publisher:
        publisher.emit(_event_for(session_factory, job_id))
    with session_factory() as session:
        return session.get(Job, job_id)


def _cancel_tree(session: Session, job: Job) -> None:
    stamp = now()
    for target in [job, *job.children]:
        if target.status == "queued":
            target.status = "cancelled"
            target.finished_at = stamp
            target.progress_message = "cancelled before it started"
            _run_on_failed(session, target)
        elif target.status == "running":
            target.cancel_requested = True
    if job.status == "running" and job.children and all(c.is_final for c in job.children):
        job.status, job.finished_at = "cancelled", stamp
        _run_on_failed(session, job)


# -- claiming and the lease ----------------------------------------------------------------------------


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
                event = _event_of(session.get(Job, self.job_id))
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

    def finish(self, status: str, *, result: dict | None = None, error: str | None = None) -> bool:
        """Move the job to a final status (fenced); returns False if another attempt owns it now."""
        assert status in FINAL_STATUSES
        self.end_progress()
        values: dict[str, Any] = {"status": status, "finished_at": now(), "result": result}
        if status == "succeeded":
            values["progress"] = 1.0
        if error is not None:
            values["error"] = error[:4000]
        with self.session_factory.begin() as session:
            res = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.attempts == self.attempt, Job.status == "running")
                .values(**values)
            )
            if res.rowcount == 0:
                return False
            job = session.get(Job, self.job_id)
            if status == "failed":
                _run_on_failed(session, job)
            if job.parent_id is not None:
                settle_parent(session, job.parent_id)
            event = _event_of(job)
        self.emit_final(event)
        return True

    def complete(self, session: Session, result: dict[str, Any]) -> None:
        """Mark the job succeeded with ``result`` inside ``session``'s transaction, the one that writes
        what the job made, so its outputs and its final status commit together (or not at all). Fenced as
        ``fence`` is; ``execute`` broadcasts the final event once the handler returns."""
        self.end_progress()
        self.fence(session, status="succeeded", finished_at=now(), result=result, progress=1.0)
        job = session.get(Job, self.job_id)
        if job.parent_id is not None:
            settle_parent(session, job.parent_id)
        self.completed = _event_of(job)

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
            job.status, job.finished_at = "cancelled", stamp
            _run_on_failed(session, job)
            if job.parent_id is not None:
                settle_parent(session, job.parent_id)
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
            job.status, job.finished_at = "failed", stamp
            job.error = (
                f"Gave up after {job.attempts} attempts: the worker running it was lost each time "
                f"(last on {job.worker or 'an unknown worker'}). The job may crash its worker; check its "
                "parameters or ask an admin to look at the worker logs."
            )
            _run_on_failed(session, job)
            if job.parent_id is not None:
                settle_parent(session, job.parent_id)
            return Skip("out of attempts")
        job.status = "running"
        job.attempts += 1
        job.worker = worker[:255]
        job.heartbeat_at = stamp
        job.started_at = job.started_at or stamp
        attempt = job.attempts
        event = _event_of(job)
        lease = Lease(session_factory, settings, job_id, attempt, publisher)
        lease.progress_interval = settings.progress_interval
        lease.kind, lease.queue, lease.owner_id = job.kind, job.queue, job.owner_id
        lease.params = dict(job.params)
    log.info("job %s: attempt %s claimed by %s", job_id, attempt, worker)
    if publisher:
        publisher.clear_marker(job_id)
        publisher.emit(event)
    return lease


# -- running a job ------------------------------------------------------------------------------------


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
            _finish_cancelled(session_factory, lease)
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


def _finish_cancelled(session_factory: sessionmaker[Session], lease: Lease) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == lease.job_id, Job.attempts == lease.attempt, Job.status == "running")
            .values(status="cancelled", finished_at=now(), progress_message="cancelled")
        )
        job = session.get(Job, lease.job_id)
        if job.parent_id is not None:
            settle_parent(session, job.parent_id)
        event = _event_of(job)
    lease.emit_final(event)


def _os_error_message(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        where = exc.filename or "while writing outputs"
        return f"disk full: the data root has no space left ({where}); free space and resubmit."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied writing {exc.filename}: the worker cannot write to the data root."
    return f"{type(exc).__name__}: {exc}"


def _run_on_failed(session: Session, job: Job) -> None:
    spec = KINDS.get(job.kind)
    if spec and spec.on_failed:
        spec.on_failed(session, job)


# -- parents and children ------------------------------------------------------------------------------


def settle_parent(session: Session, parent_id: int) -> None:
    """Update a parent job from its children: progress; succeeded when all succeeded; failed or
    cancelled when any child ended so and none is still active."""
    parent = session.execute(select(Job).where(Job.id == parent_id).with_for_update()).scalar_one_or_none()
    if parent is None or parent.is_final:
        return
    children = parent.children
    done = sum(1 for c in children if c.status == "succeeded")
    active = [c for c in children if c.status in ACTIVE_STATUSES]
    parent.progress = done / len(children) if children else 0.0
    parent.progress_message = f"{done} of {len(children)} chunks done"
    parent.heartbeat_at = now()
    if active:
        return
    failed = [c for c in children if c.status == "failed"]
    stamp = now()
    if failed:
        parent.status, parent.finished_at = "failed", stamp
        parent.error = f"{len(failed)} of {len(children)} chunks failed; first error: {failed[0].error}"
        _run_on_failed(session, parent)
    elif any(c.status == "cancelled" for c in children):
        parent.status, parent.finished_at = "cancelled", stamp
        _run_on_failed(session, parent)
    else:
        spec = KINDS.get(parent.kind)
        result = spec.on_children_done(session, parent) if spec and spec.on_children_done else None
        parent.status, parent.finished_at, parent.progress = "succeeded", stamp, 1.0
        parent.result = result or {"chunks": len(children)}


# -- the reaper ---------------------------------------------------------------------------------------


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
                job.status, job.finished_at = "failed", stamp
                job.error = (
                    f"Gave up after {job.attempts} attempts: its worker stopped reporting (last heartbeat "
                    f"{job.heartbeat_at}, on {job.worker})."
                )
                _run_on_failed(session, job)
                if job.parent_id is not None:
                    settle_parent(session, job.parent_id)
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


# -- reading ------------------------------------------------------------------------------------------


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


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place of a queued job in its queue (jobs ahead of it + 1); None when not queued."""
    if job.status != "queued":
        return None
    ahead = session.scalar(
        select(func.count(Job.id)).where(Job.queue == job.queue, Job.status == "queued", Job.id < job.id)
    )
    return int(ahead) + 1


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _event_for(session_factory: sessionmaker[Session], job_id: int) -> dict[str, Any]:
    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return {"id": job_id, "status": "gone"}
        return _event_of(job)


def _event_of(job: Job) -> dict[str, Any]:
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
