"""Eight users at once through the real API (submit, poll) while a dataset job runs: no "database is
locked" anywhere (worker and web logs), no 5xx answer, every job succeeds. Runs on SQLite and, with
``--db=postgres``, on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from common.platform.accounts import create_user, issue_token
from tests.reliability.support import LOCKED, assert_exactly_once
from tests.support.waiting import poll_job, wait_until
from tests.support.web import Http
from tests.support.web import bearer_header as auth

USERS, ROUNDS = 8, 3


@pytest.mark.both_backends
def test_eight_users_and_a_dataset_job_without_database_is_locked(lab, tiny_model, db_backend):
    with lab.sessions.begin() as s:
        tokens = [issue_token(s, create_user(s, f"user{i}", f"user{i}-password"), "t") for i in range(USERS)]
    lab.workers(["clicks"], queues="interactive", concurrency=3)
    lab.workers(["chunks"], queues="batch")
    web_proc, base = lab.web()
    dataset = lab.submit("generate_dataset", {"model": "tiny", "name": "busy", "num_samples": 150})
    wait_until(  # the users start once the dataset job is writing (its model loaded)
        lambda: any(c.progress > 0 for c in lab.children(dataset.id)), 240, "the dataset job to write"
    )

    answers: list[int] = []
    finished: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def user(token: str) -> None:
        web = Http(base)
        try:
            for _ in range(ROUNDS):
                status, job = web.call(
                    "POST",
                    "/api/v1/jobs",
                    {"kind": "ping", "params": {"seconds": 1, "steps": 10}},
                    auth(token),
                )
                with lock:
                    answers.append(status)
                assert status == 202, job

                def read(job_id=job["id"]) -> dict:
                    status, now = web.call("GET", f"/api/v1/jobs/{job_id}", headers=auth(token))
                    with lock:
                        answers.append(status)
                    return now if status == 200 else {"status": f"HTTP {status}"}

                now, _ = poll_job(read, timeout=180, interval=0.1)
                with lock:
                    finished.append(now)
        except Exception as exc:  # reported below, with the rest
            errors.append(repr(exc))

    t0, t0_wall = time.monotonic(), time.time()
    threads = [threading.Thread(target=user, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - t0
    done = lab.wait(dataset.id, timeout=300)

    assert errors == []
    assert len(finished) == USERS * ROUNDS
    assert [j["status"] for j in finished] == ["succeeded"] * len(finished), finished
    assert all(j["attempts"] == 1 for j in finished)
    assert all(s < 500 for s in answers), sorted(set(answers))
    assert done.status == "succeeded", done.error
    assert_exactly_once(lab.settings, lab.sessions, dataset.params["dataset_id"], 150)
    overlap = sum(c.finished_at.timestamp() > t0_wall for c in lab.children(dataset.id))
    logs = lab.logs()
    assert LOCKED not in logs, [line for line in logs.splitlines() if LOCKED in line][:5]
    assert web_proc.alive()
    print(
        f"\n{db_backend}: {USERS} users x {ROUNDS} pings ({len(answers)} API calls) in {elapsed:.0f}s while "
        f"{overlap} of 3 dataset chunks were written; 0 '{LOCKED}', 0 answers >= 500"
    )
