"""The reaper thread of a worker's main process: publishes jobs the broker lost, re-queues dead ones.

Several workers may run it; a Redis lock makes one pass happen per interval across all of them.
"""

from __future__ import annotations

import logging
import threading

from common.jobs import reap

log = logging.getLogger("latentlab.reaper")
LOCK_KEY = "latentlab:reaper-lock"


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
