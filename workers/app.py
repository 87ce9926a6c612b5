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

from common.config import Settings
from common.db import make_engine, session_factory
from common.queue import Publisher, celery_config

log = logging.getLogger("latentlab.worker")


def make_celery(settings: Settings) -> Celery:
    app = Celery("latentlab", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.conf.update(include=["workers.tasks"])
    return app


class WorkerState:
    """Per-process resources: created lazily in the process that uses them (never before fork)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pid: int | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            inherited = self.__dict__.get("engine")
            if inherited is not None:
                inherited.dispose(close=False)  # never close the parent's connections from a child
            self.engine = make_engine(self.settings)
            self.session_factory = session_factory(self.engine)
            self.redis = redis.Redis.from_url(
                self.settings.broker_url(), socket_connect_timeout=2, socket_timeout=10
            )
            self.publisher = Publisher(celery_app.send_task, self.redis)
            self.services: dict = {}
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
            self._pid = os.getpid()

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "settings":
            raise AttributeError(name)
        self._ensure()
        return self.__dict__[name]


settings = Settings.from_env()
celery_app = make_celery(settings)
state = WorkerState(settings)


@signals.worker_process_init.connect
def _reset_after_fork(**_kwargs) -> None:
    # a pool child starts clean: its own engine, redis client and model cache (built on first use)
    state._pid = None


@signals.worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    from workers.reaper import start_reaper_thread

    start_reaper_thread(state)
