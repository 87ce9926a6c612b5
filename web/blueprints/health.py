"""``GET /healthz`` (no sign-in): can this web process reach its database and its broker?

Both checks run at once, each bounded to ``CHECK_SECONDS``: a check that has not answered by then is
reported down, so a hung database or a black-holed Redis cannot hang the probe (its thread finishes on
its own socket timeout). 200 when both are ok, 503 otherwise.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

import redis
from flask import Blueprint
from sqlalchemy import text

from web.auth import services

bp = Blueprint("health", __name__)

CHECK_SECONDS = 2.0
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="healthz")
        return _executor


def _check_database(engine) -> str:
    # a deferred transaction: on SQLite the probe never waits for the write lock
    with engine.execution_options(latentlab_readonly=True).connect() as conn:
        conn.execute(text("SELECT 1"))
    return "ok"


def _check_broker(url: str | None) -> str:
    if url is None:
        return "down: no broker configured; set LATENTLAB_REDIS_URL or start `latentlab up`"
    client = redis.Redis.from_url(url, socket_connect_timeout=CHECK_SECONDS, socket_timeout=CHECK_SECONDS)
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


def _outcome(future: Future, done: set[Future]) -> str:
    if future not in done:
        return f"down: no answer within {CHECK_SECONDS:g} s"
    try:
        return future.result()
    except Exception as exc:  # any failure of the probe is the answer
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"down: {type(exc).__name__}: {first_line}"[:300]


@bp.get("/healthz")
def healthz():
    svc = services()
    pool = _pool()
    database = pool.submit(_check_database, svc.engine)
    broker = pool.submit(_check_broker, svc.broker.url())
    done, _ = wait([database, broker], timeout=CHECK_SECONDS)
    body = {"database": _outcome(database, done), "broker": _outcome(broker, done)}
    healthy = all(v == "ok" for v in body.values())
    return body, 200 if healthy else 503
