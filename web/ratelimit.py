"""Login attempt limits per username and per client address, counted in Redis so that every web process
shares the count (``latentlab:login:<what>:<value>``, one-minute windows).

Every attempt counts, successful or not, and the count is taken before the password is checked, so
parallel guesses cannot slip past the limit. When Redis is unreachable the counts fall back to this
process (a warning is logged): logins keep working, limited per process instead of per cluster.

Usage::

    limiter = LoginLimiter(settings.login_attempts_per_minute, broker.redis)
    limiter.hit(username, request.remote_addr)    # raises TooManyAttempts (429)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.platform.errors import QuotaExceeded

log = logging.getLogger("latentlab.web")

KEY_PREFIX = "latentlab:login:"
WINDOW_SECONDS = 60


class TooManyAttempts(QuotaExceeded):
    status = 429


class LoginLimiter:
    def __init__(self, per_minute: int, redis_client: Callable[[], object | None]):
        self.per_minute = per_minute
        self._redis = redis_client
        self._local: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._last_warning = 0.0

    def hit(self, username: str, address: str | None) -> None:
        """Count one attempt for ``username`` and ``address``; raise when either is over the limit."""
        keys = {
            "username": KEY_PREFIX + "user:" + (username or "").strip().lower()[:200],
            "address": KEY_PREFIX + "addr:" + (address or "unknown"),
        }
        counts = self._count_in_redis(list(keys.values()))
        if counts is None:
            counts = [self._count_locally(k) for k in keys.values()]
        for what, count in zip(keys, counts, strict=True):
            if count > self.per_minute:
                raise TooManyAttempts(
                    f"Too many sign-in attempts for this {what} (at most {self.per_minute} a minute); "
                    "wait a minute and try again."
                )

    @property
    def redis_client(self) -> Callable[[], object | None]:
        return self._redis

    def _count_in_redis(self, keys: list[str]) -> list[int] | None:
        client = self._redis()
        if client is None:
            self._warn("no Redis configured")
            return None
        try:
            pipe = client.pipeline(transaction=True)
            for key in keys:
                # the window starts at the first attempt; INCR keeps the expiry SET gave it
                pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
                pipe.incr(key)
            replies = pipe.execute()
        except Exception as exc:  # any redis failure: count here rather than refuse logins
            self._warn(f"{type(exc).__name__}: {exc}")
            return None
        return [int(r) for r in replies[1::2]]

    def _count_locally(self, key: str) -> int:
        now = time.monotonic()
        with self._lock:
            started, count = self._local.get(key, (now, 0))
            if now - started >= WINDOW_SECONDS:
                started, count = now, 0
            self._local[key] = (started, count + 1)
            if len(self._local) > 10_000:  # drop finished windows so the map cannot grow without end
                self._local = {k: v for k, v in self._local.items() if now - v[0] < WINDOW_SECONDS}
            return count + 1

    def _warn(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > WINDOW_SECONDS:
            self._last_warning = now
            log.warning("login rate limits are counted per process: Redis is unreachable (%s)", why)


class TooManyDownloads(QuotaExceeded):
    status = 429


class DownloadLimiter(LoginLimiter):
    """Downloads per user per minute (``latentlab:downloads:user:<id>``), counted like sign-ins.

    Usage: ``DownloadLimiter(600, broker.redis).hit(user.id)`` raises TooManyDownloads (429)."""

    def hit(self, user_id: int) -> None:  # type: ignore[override]
        key = f"latentlab:downloads:user:{user_id}"
        counts = self._count_in_redis([key]) or [self._count_locally(key)]
        if counts[0] > self.per_minute:
            raise TooManyDownloads(
                f"Too many downloads (at most {self.per_minute} a minute per user); wait a minute and "
                "try again, or export a whole dataset with `latentlab export activations`."
            )
