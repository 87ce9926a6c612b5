"""The web's link to Redis: a send-only Celery client, a ``Publisher`` and a plain Redis client.

The broker is resolved lazily, at first use and again whenever it was not resolvable or its address
changed: with the embedded Redis the URL file appears only after the launcher starts it, and the web may
be up first. When no broker is resolvable ``publisher()`` answers None, and ``common.jobs.submit`` then
keeps the job as a durable queued row with ``published_at`` NULL for the reaper to publish.

Usage::

    link = BrokerLink(settings)
    publisher = link.publisher()        # Publisher | None
    client = link.redis()               # redis.Redis | None (rate limits, health)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
from celery import Celery

from common.jobs.broker import Publisher, celery_config
from common.platform.config import ConfigError, Settings, redact_url

log = logging.getLogger("latentlab.web")


@dataclass(frozen=True)
class _Resolved:
    url: str
    celery: Celery
    redis: redis.Redis
    publisher: Publisher


class BrokerLink:
    """Lazily built clients for the broker; safe to share between request threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._current: _Resolved | None = None
        self._warned_missing = False

    def url(self) -> str | None:
        """The broker URL now, or None when there is none yet (the reason is logged once)."""
        try:
            url = self.settings.broker_url()
        except ConfigError as exc:
            if not self._warned_missing:
                log.warning("no broker yet; jobs stay queued in the database until one appears: %s", exc)
                self._warned_missing = True
            return None
        self._warned_missing = False
        return url

    def _resolve(self) -> _Resolved | None:
        url = self.url()
        if url is None:
            return None
        current = self._current
        if current is not None and current.url == url:
            return current
        with self._lock:
            current = self._current
            if current is not None and current.url == url:
                return current
            app = Celery("latentlab", set_as_current=False)
            app.conf.update(celery_config(self.settings, broker_url=url))
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
            resolved = _Resolved(url, app, client, Publisher(app.send_task, client))
            self._current = resolved
        if current is not None:
            log.info("the broker moved from %s to %s", redact_url(current.url), redact_url(url))
            _close(current)
        return resolved

    def publisher(self) -> Publisher | None:
        resolved = self._resolve()
        return resolved.publisher if resolved else None

    def redis(self) -> redis.Redis | None:
        resolved = self._resolve()
        return resolved.redis if resolved else None

    def close(self) -> None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            _close(current)


def _close(resolved: _Resolved) -> None:
    try:
        resolved.redis.close()
        resolved.celery.close()
    except Exception:  # closing is best effort; the process may be shutting down
        log.debug("closing broker clients failed", exc_info=True)
