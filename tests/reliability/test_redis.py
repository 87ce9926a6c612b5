"""Redis misbehaving: restarted under load, emptied, or down when a user submits. The database is the
truth, so every job still finishes exactly once.

* shut down and restarted three times (2 s apart, same port, its AOF kept) with jobs queued and running:
  all finish, effects once, and the workers keep consuming (a probe finishes; how long after
  the last restart is printed);
* all its data lost (FLUSHALL) before any worker starts: the reaper re-publishes every queued job;
* down when a user submits over HTTP: the API answers 202 with a durable row (never 500; its answer time
  is printed), and the row is published once Redis is back.
"""

from __future__ import annotations

import time

import pytest
import redis

from cli.redis_server import RedisServer
from common.jobs.broker import Publisher
from common.models import Job
from common.platform.accounts import create_user, issue_token
from tests.reliability.support import assert_exactly_once, log_lines, trace_of
from tests.support.waiting import wait_until
from tests.support.web import Http
from tests.support.web import bearer_header as auth


@pytest.fixture
def own_redis(lab, tmp_path):
    """A redis-server of this test's own, on a fixed port and folder (so a restart keeps its AOF); the lab
    (settings, publisher, every process it starts) uses it."""
    from workers.app import make_celery

    server = RedisServer(tmp_path / "own-redis")
    server.start()
    lab.settings = lab.settings.with_(redis_url=server.url)
    client = redis.Redis.from_url(server.url, socket_connect_timeout=2, socket_timeout=5)
    app = make_celery(lab.settings)
    lab.publisher = Publisher(app.send_task, client)
    yield server
    lab.close()
    client.close()
    app.close()
    server.stop()


def restart(server: RedisServer, times: int = 3, gap: float = 2.0) -> float:
    """Shut Redis down (SIGTERM: it writes its AOF and exits) and start it again, ``times`` times."""
    for _ in range(times):
        server.stop()
        time.sleep(gap)
        server.start()
        time.sleep(gap)
    return time.monotonic() - gap


def test_redis_restarted_three_times_under_load_all_jobs_finish_once(lab, own_redis, tiny_model):
    # a visibility timeout longer than every wait below: no job may depend on Redis restoring its message
    lab.settings = lab.settings.with_(task_time_limit=500, visibility_timeout=600, stale_after=700)
    with lab.sessions.begin() as s:
        bob = create_user(s, "bob", "bob-password")
    worker = lab.worker(name="steady", concurrency=2)
    dataset = lab.submit("generate_dataset", {"model": "tiny", "name": "restarts", "num_samples": 100})
    pings = [lab.submit("ping", {"seconds": 2, "steps": 4}, owner=o) for o in (bob, lab.owner) * 3]
    wait_until(
        lambda: (
            any(c.status == "running" for c in lab.children(dataset.id))
            and any(lab.job(p.id).status == "running" for p in pings)
        ),
        240,
        "a chunk and a ping to be running",
    )
    last_restart = restart(own_redis)

    probe = lab.submit("ping", {"seconds": 0, "steps": 1})
    done = lab.wait(probe.id, timeout=60)
    probe_after = time.monotonic() - last_restart
    assert done.status == "succeeded", done
    print(f"\nprobe finished {probe_after:.1f}s after the last restart")  # a figure, not a verdict
    for ping in pings:
        finished = lab.wait(ping.id, timeout=180)
        assert finished.status == "succeeded", finished.error
        starts = [e for e in trace_of(lab.settings, ping.id) if e["event"] == "start"]
        ends = [e for e in trace_of(lab.settings, ping.id) if e["event"] == "end"]
        assert len(ends) == 1 and len(starts) == finished.attempts, (starts, ends)
    finished = lab.wait(dataset.id, timeout=300)
    assert finished.status == "succeeded", finished.error
    assert_exactly_once(lab.settings, lab.sessions, dataset.params["dataset_id"], 100)
    assert worker.alive()
    attempts = sorted(lab.job(p.id).attempts for p in pings) + [c.attempts for c in lab.children(dataset.id)]
    rescued = log_lines(worker, "its message was taken but never run")
    print(
        f"\nredis restarted 3x: probe finished {probe_after:.1f}s after the last restart; "
        f"{len(pings)} pings and 2 chunks finished {time.monotonic() - last_restart:.0f}s after it, "
        f"attempts {attempts}; {len(rescued)} message(s) lost by the consumer were published again"
    )


def test_flushed_redis_is_refilled_from_the_database_by_the_reaper(lab, tiny_model):
    pings = [lab.submit("ping", {"seconds": 0.5, "steps": 2}) for _ in range(4)]
    dataset = lab.submit("generate_dataset", {"model": "tiny", "name": "flushed", "num_samples": 60})
    sent = [j.id for j in [*pings, dataset] if lab.job(j.id).published_at]
    client = redis.Redis.from_url(lab.settings.redis_url)
    assert sent and client.llen("interactive") + client.llen("batch") == len(sent)
    client.flushall()  # every message and publish marker gone; the rows say they were sent
    client.close()

    worker = lab.worker(name="after-flush")
    for job in [*pings, dataset]:
        done = lab.wait(job.id, timeout=240)
        assert done.status == "succeeded" and done.attempts == 1, done.error
    assert_exactly_once(lab.settings, lab.sessions, dataset.params["dataset_id"], 60)
    republished = log_lines(worker, "reaper: published [")
    assert republished, worker.log_text()[-3000:]
    print(
        f"\nflushed redis: {len(sent)} messages lost; the reaper re-published: "
        f"{republished[0].split('reaper: ', 2)[-1]}"
    )


def test_submit_with_redis_down_answers_202_and_publishes_once_redis_is_back(lab, own_redis):
    with lab.sessions.begin() as s:
        tokens = {n: issue_token(s, create_user(s, n, f"{n}-password"), "t") for n in ("alice", "bob")}
    lab.worker(name="patient")
    _, base = lab.web()
    web = Http(base)
    status, warm = web.call("POST", "/api/v1/jobs", {"kind": "ping", "params": {}}, auth(tokens["alice"]))
    assert status == 202 and warm["published_at"], warm  # the web's broker connection is established

    own_redis.stop()
    answers = []
    for name in ("alice", "bob", "alice", "bob"):
        t0 = time.monotonic()
        status, body = web.call(
            "POST", "/api/v1/jobs", {"kind": "ping", "params": {"seconds": 0.2}}, auth(tokens[name])
        )
        answers.append((status, time.monotonic() - t0, body))
    slowest = max(t for _, t, _ in answers)
    assert all(status in (202, 503) for status, _, _ in answers), answers
    print(f"\nwith Redis down the API answered within {slowest:.1f}s")  # a figure, not a verdict
    accepted = [body["id"] for status, _, body in answers if status == 202]
    assert all(body["published_at"] is None for status, _, body in answers if status == 202)
    with lab.sessions() as s:
        assert s.query(Job).count() == 1 + len(accepted), "a 503 must leave no row"
    assert web.call("GET", "/healthz")[0] == 503

    own_redis.start()
    back = time.monotonic()
    for job_id in accepted:
        done = lab.wait(job_id, timeout=120)
        assert done.status == "succeeded" and done.attempts == 1 and done.published_at, done
        assert [e["event"] for e in trace_of(lab.settings, job_id)].count("start") == 1
    print(
        f"\nsubmit with redis down: {[s for s, _, _ in answers]} in at most {slowest:.2f}s; all published "
        f"and finished {time.monotonic() - back:.1f}s after Redis came back"
    )
