"""What the broker needs to know, without importing Celery: configuration, task names, publishing.

``celery_config(settings)`` is the one mapping every Celery app in latentlab is built from (the worker's
in ``workers.app``, the web's send-only client in ``web.queue``). ``Publisher`` sends a job id to its
queue through any ``send_task`` callable and keeps a marker per published job in Redis, so the reaper can
tell a job the broker lost (a flushed or replaced Redis) from one that is merely waiting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from common.platform.config import Settings

log = logging.getLogger(__name__)

QUEUES = ("interactive", "batch", "embed")
# the queue of clicks (generate from neighbours): served by a worker of its own, never behind batch work
INTERACTIVE_QUEUE = "interactive"
TASK_PREFIX = "latentlab."
MARKER_PREFIX = "latentlab:published:"
# a worker's main process keeps ``<prefix><node>`` alive (short TTL) while it runs; see ``worker_node``
ALIVE_PREFIX = "latentlab:worker-alive:"
EVENTS_CHANNEL = "latentlab:job-events"
# kombu's Redis transport keeps each delivered, unacknowledged message here until it is acked or restored
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


def task_name(kind: str) -> str:
    """The stable Celery task name of a job kind: ``latentlab.<kind>``."""
    return TASK_PREFIX + kind


def celery_config(settings: Settings, broker_url: str | None = None) -> dict[str, Any]:
    """The Celery configuration mapping for ``settings`` (JSON only, late acks, prefetch 1, no results)."""
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps unacked messages every interval × throttle seconds (10 × 10 by default), so a message
        # of a dead worker would come back up to 100 s after its visibility timeout; sweep at a tenth of it
        "unacked_restore_interval": min(10, max(1, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 10,
    }
    return {
        "broker_url": broker_url or _broker_or_placeholder(settings),
        "broker_transport_options": transport,
        "broker_connection_timeout": 2,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_heartbeat": 0,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit),
        "task_default_queue": "interactive",
        "task_create_missing_queues": True,
        "task_publish_retry": False,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_max_memory_per_child": None,
        "timezone": "UTC",
        "enable_utc": True,
    }


def soft_time_limit(hard: int) -> int:
    """The soft limit that warns a task before the hard one kills it: 30 s earlier, or a tenth of a short
    limit (``hard - 30`` alone would leave 1 s for a 20 s limit)."""
    return max(1, hard - min(30, max(1, hard // 10)))


def _broker_or_placeholder(settings: Settings) -> str:
    try:
        return settings.broker_url()
    except ValueError:
        # importing the app must work with nothing running; any use names the problem in its hostname
        return "redis://no-broker-configured-set-LATENTLAB_REDIS_URL.invalid:6379/0"


def worker_identity(host: str, main_pid: int, pid: int) -> str:
    """What a job's ``worker`` column holds: ``host:main-pid/pid``, the node (the worker's main process,
    which keeps its liveness key) and the process that runs the job (a pool child, or the main one)."""
    return f"{host}:{main_pid}/{pid}"


def worker_node(worker: str | None) -> str | None:
    """The node (``host:main-pid``) of a job's ``worker``; None for an identity without one."""
    if not worker or "/" not in worker:
        return None
    return worker.split("/", 1)[0]


class BrokerUnavailable(RuntimeError):
    """The message could not be handed to Redis; the job row stays queued and the reaper retries."""


class Publisher:
    """Publishes job ids by task name and tracks which jobs the broker holds.

    ``send_task`` is ``celery_app.send_task`` (or anything with that signature); ``redis`` is a
    ``redis.Redis`` client on the broker.
    """

    def __init__(self, send_task: Callable[..., Any], redis: Any):
        self._send_task = send_task
        self._redis = redis

    def publish(
        self, job_id: int, kind: str, queue: str, task_id: str, countdown: float | None = None
    ) -> None:
        try:
            self._redis.set(MARKER_PREFIX + str(job_id), task_id)
            self._send_task(
                task_name(kind), args=[job_id], queue=queue, task_id=task_id, retry=False, countdown=countdown
            )
        except Exception as exc:  # the redis and kombu errors differ; all mean "not handed over"
            raise BrokerUnavailable(f"could not publish job {job_id}: {exc}") from exc

    def markers_present(self, job_ids: Iterable[int]) -> set[int]:
        ids = list(job_ids)
        if not ids:
            return set()
        pipe = self._redis.pipeline()
        for job_id in ids:
            pipe.exists(MARKER_PREFIX + str(job_id))
        return {job_id for job_id, found in zip(ids, pipe.execute(), strict=True) if found}

    def clear_marker(self, job_id: int) -> None:
        try:
            self._redis.delete(MARKER_PREFIX + str(job_id))
        except Exception:  # a missing marker only makes the reaper re-publish; a duplicate is a no-op
            log.warning("could not clear the publish marker of job %s", job_id)

    def stranded(self, older_than: float) -> set[str]:
        """Task ids of messages a consumer took from a queue over ``older_than`` seconds ago and has not
        acknowledged: kombu keeps them in its unacked set, and restores them only after the visibility
        timeout (or when that consumer closes its channel cleanly, which a lost connection is not)."""
        tags = self._redis.zrangebyscore(UNACKED_INDEX_KEY, "-inf", time.time() - older_than)
        if not tags:
            return set()
        found = set()
        for raw in self._redis.hmget(UNACKED_KEY, tags):
            try:
                found.add(json.loads(raw)[0]["headers"]["id"])
            except (TypeError, ValueError, LookupError):  # gone meanwhile, or not a task message
                continue
        return found

    def mark_alive(self, node: str, ttl: float) -> None:
        """Say that worker ``node``'s main process is alive for the next ``ttl`` seconds."""
        self._redis.set(ALIVE_PREFIX + node, "1", px=max(1, int(ttl * 1000)))

    def nodes_alive(self, nodes: Iterable[str]) -> set[str]:
        """Which of ``nodes`` have a live main process (their key has not expired)."""
        names = sorted(set(nodes))
        if not names:
            return set()
        pipe = self._redis.pipeline()
        for node in names:
            pipe.exists(ALIVE_PREFIX + node)
        return {node for node, found in zip(names, pipe.execute(), strict=True) if found}

    def emit(self, event: dict[str, Any]) -> None:
        """Broadcast a job event (SSE subscribers); failures only cost liveness, never correctness."""
        try:
            self._redis.publish(EVENTS_CHANNEL, json.dumps(event, default=str))
        except Exception:
            log.debug("could not broadcast a job event", exc_info=True)
