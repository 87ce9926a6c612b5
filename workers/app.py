"""The Celery app of the workers, built from settings in this one place; no torch at import time.

Run: ``latentlab worker`` (or ``celery -A workers.app worker -Q interactive,batch,embed``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import redis
from celery import Celery, signals

from common.jobs.broker import Publisher, celery_config, worker_identity
from common.platform.config import Settings
from common.platform.db import make_engine, session_factory

log = logging.getLogger("latentlab.worker")
# the worker's main process imports this module before its pool forks, so pool children inherit its pid
MAIN_PID = os.getpid()


def make_celery(settings: Settings) -> Celery:
    app = Celery("latentlab", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(include=["workers.tasks"])
    return app


class WorkerState:
    """Per-process resources, created lazily in the process that uses them: the engine, the Redis client,
    the publisher, the model caches and the worker identity. Every attribute access checks the pid, so a
    pool child never uses what its parent built, even when forked after the main process built its own
    (the reaper and liveness threads use them there)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pid: int | None = None
        self._local: dict | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> dict:
        if self._pid == os.getpid() and self._local is not None:
            return self._local
        with self._lock:
            if self._pid == os.getpid() and self._local is not None:
                return self._local
            inherited = self._local
            if inherited is not None:
                inherited["engine"].dispose(close=False)  # never close the parent's connections from a child
            engine = make_engine(self.settings)
            client = redis.Redis.from_url(
                self.settings.broker_url(), socket_connect_timeout=2, socket_timeout=10
            )
            self._local = {
                "engine": engine,
                "session_factory": session_factory(engine),
                "redis": client,
                "publisher": Publisher(celery_app.send_task, client),
                "services": {},
                "node_id": f"{socket.gethostname()}:{MAIN_PID}",
                "worker_id": worker_identity(socket.gethostname(), MAIN_PID, os.getpid()),
            }
            self._pid = os.getpid()
            return self._local

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held the parent's at the fork)."""
        self._lock = threading.Lock()
        self._pid = None

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "settings":
            raise AttributeError(name)
        try:
            return self._ensure()[name]
        except KeyError:
            raise AttributeError(name) from None


settings = Settings.from_env()
celery_app = make_celery(settings)
state = WorkerState(settings)


@signals.worker_init.connect
def _warm_up_embeddings(**_kwargs) -> None:
    # before the pool forks: children inherit compiled kernels, so no first click waits for numba
    from common.maps import warmup

    warmup.configure_numba_cache(settings.data_root)
    warmup.warm_up()


@signals.worker_init.connect
def _start_liveness(**_kwargs) -> None:
    # before any task is claimed: the reaper takes a silent job's worker for dead once this key expires
    from workers.reaper import start_liveness_thread

    start_liveness_thread(state)


@signals.worker_process_init.connect
def _reset_after_fork(**_kwargs) -> None:
    # a pool child starts clean: its own engine, redis client and model cache (built on first use)
    state.after_fork()
    from common.maps import warmup

    warmup.warm_up_after_fork()


@signals.worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    from workers.reaper import start_reaper_thread

    start_reaper_thread(state)
