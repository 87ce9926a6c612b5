"""A poison job (it SIGKILLs the process running it, every time) ends failed after ``max_attempts``
with a reason, while other users' jobs submitted meanwhile all succeed and the queues drain."""

from __future__ import annotations

import time

import redis

from common.platform.accounts import create_user
from tests.reliability.support import trace_of
from tests.support.waiting import wait_until


def test_poison_job_fails_after_the_attempt_limit_and_others_all_succeed(lab):
    settings = lab.settings
    with lab.sessions.begin() as s:
        bob, carol = create_user(s, "bob", "bob-password"), create_user(s, "carol", "carol-password")
    worker = lab.worker(name="victim", concurrency=2)
    t0 = time.monotonic()
    poison = lab.submit("ping", {"seconds": 0, "fault": "crash"})
    others = [
        lab.submit("ping", {"seconds": 1, "steps": 4}, owner=owner)
        for _ in range(4)
        for owner in (bob, carol, lab.owner)
    ]
    done = lab.wait(poison.id, timeout=180)
    failed_after = time.monotonic() - t0
    assert done.status == "failed" and done.attempts == settings.max_attempts
    assert done.error.startswith(f"Gave up after {settings.max_attempts} attempts"), done.error
    assert "worker running it was lost" in done.error
    starts = [e for e in trace_of(settings, poison.id) if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == list(range(1, settings.max_attempts + 1))

    for job in others:
        finished = lab.wait(job.id, timeout=120)
        assert finished.status == "succeeded" and finished.attempts == 1, (finished, finished.error)
    assert worker.alive()

    client = redis.Redis.from_url(settings.redis_url)
    try:
        wait_until(
            lambda: (
                sum(client.llen(q) for q in ("interactive", "batch", "embed")) == 0
                and client.hlen("unacked") == 0
            ),
            60,
            "the queues to drain (nothing waiting, nothing unacknowledged)",
        )
    finally:
        client.close()
    print(
        f"\npoison job failed after {done.attempts} attempts in {failed_after:.1f}s; "
        f"{len(others)} other jobs succeeded, each on its first attempt; queues empty"
    )
