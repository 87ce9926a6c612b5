"""Thin Celery tasks: each receives a job id, and ``common.jobs.execute`` claims the row, runs the
handler from ``workers.handlers`` and records the outcome."""

from __future__ import annotations

import logging

from common.jobs import execute
from common.jobs.broker import task_name
from workers.app import celery_app, state
from workers.handlers import HANDLERS

log = logging.getLogger("latentlab.worker")


def _make_task(kind: str):
    handler = HANDLERS[kind]

    @celery_app.task(name=task_name(kind), bind=True, acks_late=True, reject_on_worker_lost=True)
    def run(self, job_id: int) -> str:
        outcome = execute(
            state.session_factory,
            state.settings,
            int(job_id),
            handler,
            worker=state.worker_id,
            publisher=state.publisher,
            services=state.services,
        )
        log.info("job %s (%s): %s %s", job_id, kind, outcome.status, outcome.detail)
        if outcome.status == "deferred":
            raise self.retry(countdown=outcome.countdown, max_retries=None)
        return outcome.status

    return run


TASKS = {kind: _make_task(kind) for kind in HANDLERS}
