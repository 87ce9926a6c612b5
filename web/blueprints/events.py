"""``GET /api/v1/events``: Server-Sent Events for the signed-in user.

* ``event: job`` for each published change of a job the user may see (``common.jobs.summary.visible_event``:
  their own, admins all; a chunk job's change as its parent's), relayed from the Redis pub/sub channel
  ``common.jobs.broker.EVENTS_CHANNEL`` that ``common.jobs`` publishes to;
* ``event: queues`` with the ``GET /api/v1/queues`` body at once and every ``QUEUES_EVERY`` seconds;
* ``: ping`` comments every ``PING_EVERY`` seconds and a ``retry:`` hint first.

Each live stream holds one server thread (waitress), so a process serves at most ``MAX_STREAMS`` at once,
and one member at most ``LATENTLAB_EVENT_STREAMS_PER_USER`` of them (so a member with many tabs open
cannot take every slot from the others); each ends after ``STREAM_SECONDS`` (the browser's EventSource
reconnects after ``retry``). Beyond either limit, or with the broker unreachable, the answer is an
immediate 503 JSON and the page polls instead.

The stream is an iterator object rather than a bare generator so that ``close()`` (called by the
server when the client goes away, or when the response is dropped before it starts) always closes the
pub/sub connection and frees the slot. No request context is held while streaming: each queue summary
and each parent lookup opens its own short read session.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request
from sqlalchemy.orm import Session, sessionmaker

from common.jobs.broker import EVENTS_CHANNEL
from common.jobs.summary import queue_summary, visible_event
from common.platform.errors import ServiceUnavailable
from web.api import api_route
from web.auth import Principal, principal, services

log = logging.getLogger("latentlab.web")

bp = Blueprint("events", __name__, url_prefix="/api/v1")

RETRY_MS = 3000
QUEUES_EVERY = 5.0
PING_EVERY = 15.0
STREAM_SECONDS = 600.0
POLL_SECONDS = 1.0
MAX_STREAMS = 4

NO_BROKER = (
    "live updates are unavailable: the broker (Redis) cannot be reached; poll /api/v1/queues and "
    "/api/v1/jobs/<id> instead"
)
TOO_MANY = (
    "this web server already serves its maximum of live event streams; poll /api/v1/queues and "
    "/api/v1/jobs/<id> instead, or retry later"
)


TOO_MANY_OF_YOURS = (
    "you already have {n} live event stream(s) open (the limit per member, "
    "LATENTLAB_EVENT_STREAMS_PER_USER); close another tab, or poll /api/v1/queues and "
    "/api/v1/jobs/<id> instead"
)


class StreamSlots:
    """A bounded count of live streams in this process, and of each user's."""

    def __init__(self, limit: int):
        self.limit = limit
        self.live = 0
        self.by_user: dict[int, int] = {}
        self._lock = threading.Lock()

    def take(self, user_id: int, per_user: int) -> None:
        """Take a slot for ``user_id``, or ServiceUnavailable saying which limit was reached."""
        with self._lock:
            if self.by_user.get(user_id, 0) >= per_user:
                raise ServiceUnavailable(TOO_MANY_OF_YOURS.format(n=self.by_user.get(user_id, 0)))
            if self.live >= self.limit:
                raise ServiceUnavailable(TOO_MANY)
            self.live += 1
            self.by_user[user_id] = self.by_user.get(user_id, 0) + 1

    def give(self, user_id: int) -> None:
        with self._lock:
            self.live = max(0, self.live - 1)
            left = self.by_user.get(user_id, 0) - 1
            if left > 0:
                self.by_user[user_id] = left
            else:
                self.by_user.pop(user_id, None)


slots = StreamSlots(MAX_STREAMS)


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class EventStream:
    """The body of one event-stream response (a WSGI iterable with ``close``)."""

    def __init__(
        self,
        pubsub,
        sessions: sessionmaker[Session],
        user: Principal,
        disconnected: Callable[[], bool] | None = None,
    ):
        self._pubsub = pubsub
        self._sessions = sessions
        self._user = user
        self._disconnected = disconnected
        self._released = False
        self._release_lock = threading.Lock()
        self._events = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._events)

    def close(self) -> None:
        self._events.close()
        self._release()

    def _release(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        try:
            self._pubsub.close()
        except Exception:  # closing is best effort; the connection may already be gone
            log.debug("closing the event pub/sub failed", exc_info=True)
        slots.give(self._user.id)

    def _run(self) -> Iterator[bytes]:
        try:
            start = time.monotonic()
            yield f"retry: {RETRY_MS}\n\n".encode()
            yield self._queues()
            next_queues, next_ping = start + QUEUES_EVERY, start + PING_EVERY
            while True:
                now = time.monotonic()
                if now - start >= STREAM_SECONDS or (self._disconnected and self._disconnected()):
                    return
                if now >= next_queues:
                    yield self._queues()
                    next_queues = now + QUEUES_EVERY
                if now >= next_ping:
                    yield b": ping\n\n"
                    next_ping = now + PING_EVERY
                wait = max(0.0, min(POLL_SECONDS, next_queues - now, next_ping - now))
                message = self._pubsub.get_message(timeout=wait)
                if message is not None and message.get("type") == "message":
                    shown = self._relay(message["data"])
                    if shown is not None:
                        yield sse("job", shown)
        except redis.RedisError as exc:
            # the browser reconnects after `retry`; with Redis still down it gets a 503 and polls
            log.info("event stream of %s ended: the broker went away (%s)", self._user.username, exc)
        finally:
            self._release()

    def _relay(self, raw: bytes | str) -> dict[str, Any] | None:
        try:
            event = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        try:
            return visible_event(self._sessions, event, viewer_id=self._user.id, is_admin=self._user.is_admin)
        except Exception:  # a database hiccup costs this one event, not the stream
            log.warning("could not relay a job event", exc_info=True)
            return None

    def _queues(self) -> bytes:
        try:
            with self._sessions() as session:
                summary = queue_summary(session, viewer_id=self._user.id, is_admin=self._user.is_admin)
        except Exception:  # the next summary retries; job events still flow
            log.warning("could not build the queue summary for the event stream", exc_info=True)
            return b": queue summary unavailable\n\n"
        return sse("queues", summary)


@api_route(
    bp,
    "/events",
    methods=["GET"],
    summary="Live job and queue updates as Server-Sent Events (text/event-stream)",
    description=(
        "event: job — a change of one of your jobs (admins: any job; chunk jobs arrive as their parent's "
        "event); event: queues — the GET /api/v1/queues body, at once and every 5 s; ': ping' comments "
        "every 15 s. The stream ends after 10 minutes; EventSource reconnects. 503 when the broker is "
        "unreachable, the server has no free stream slot or you have your maximum open "
        "(LATENTLAB_EVENT_STREAMS_PER_USER): poll instead."
    ),
)
def stream_events():
    user = principal()
    svc = services()
    client = svc.broker.redis()
    if client is None:
        raise ServiceUnavailable(NO_BROKER)
    slots.take(user.id, svc.settings.event_streams_per_user)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(EVENTS_CHANNEL)
    except redis.RedisError as exc:
        log.info("event stream refused: %s", exc)
        try:
            pubsub.close()
        finally:
            slots.give(user.id)
        raise ServiceUnavailable(NO_BROKER) from None
    stream = EventStream(pubsub, svc.read_sessions, user, request.environ.get("waitress.client_disconnected"))
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response
