"""The threads of a worker's main process: the reaper (publishes jobs the broker lost, re-queues dead
ones, and hourly deletes finished jobs past ``LATENTLAB_JOB_RETENTION_DAYS``: ``common.jobs.retention``)
and the liveness key that tells the reaper this worker is alive.

Several workers may run the reaper; a Redis lock makes one pass happen per interval across all of them.
"""

from __future__ import annotations

import logging
import threading

from common.jobs import reap
from common.jobs.retention import prune_jobs

log = logging.getLogger("latentlab.reaper")
LOCK_KEY = "latentlab:reaper-lock"
PRUNE_KEY = "latentlab:prune-lock"
PRUNE_EVERY = 3600  # seconds between two prunes of finished jobs, across all workers


def reap_once(state) -> None:
    interval = state.settings.reaper_interval
    if not state.redis.set(LOCK_KEY, state.worker_id, nx=True, ex=max(1, int(interval * 0.9))):
        return
    report = reap(state.session_factory, state.publisher, state.settings)
    if report:
        log.warning(
            "reaper: published %s, re-queued %s, failed %s, settled %s",
            report.published,
            report.requeued,
            report.failed,
            report.settled,
        )
    days = state.settings.job_retention_days
    if days > 0 and state.redis.set(PRUNE_KEY, state.worker_id, nx=True, ex=PRUNE_EVERY):
        deleted = prune_jobs(state.session_factory, days)
        if deleted:
            log.info("reaper: deleted %s finished jobs older than %s days", deleted, days)


def start_liveness_thread(state) -> threading.Thread:
    """Keep this worker's liveness key (``node_id``, TTL ``takeover_after``) alive every heartbeat.

    The reaper re-queues a running job silent for ``takeover_after`` once its worker's key is gone, so a
    worker killed whole (every process of it) has its jobs recovered in seconds, not after the visibility
    timeout or ``stale_after``. The first mark is made before this returns, before any job is claimed.
    """
    settings = state.settings
    stop = threading.Event()

    def mark() -> None:
        try:
            state.publisher.mark_alive(state.node_id, settings.takeover_after)
        except Exception:  # Redis is down: the reaper cannot run either; mark again next beat
            log.debug("could not refresh the liveness key", exc_info=True)

    def loop() -> None:
        while not stop.wait(settings.heartbeat_seconds):
            mark()

    mark()
    thread = threading.Thread(target=loop, name="latentlab-liveness", daemon=True)
    thread.start()
    return thread


def start_reaper_thread(state) -> threading.Thread:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(state.settings.reaper_interval):
            try:
                reap_once(state)
            except Exception:  # Redis or the database is down: try again next interval
                log.warning("reaper pass failed", exc_info=True)

    thread = threading.Thread(target=loop, name="latentlab-reaper", daemon=True)
    thread.start()
    return thread
