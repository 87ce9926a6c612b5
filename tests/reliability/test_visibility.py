"""A job never runs twice at the same time, even when Redis delivers its message again after the
visibility timeout.

The worker's hard time limit (below the visibility timeout) normally ends a task before Redis gives its
message to someone else; these tests take that guard away by freezing (SIGSTOP) the worker's main
process, which is what enforces the limit and acks the message, so Redis really does redeliver:

* main process frozen, pool child still running the job and beating: the redelivered message finds the
  job alive and is deferred until it has finished, then skipped: one execution;
* the whole worker frozen (a zombie, as after a long GC pause or a suspended VM): the reaper sees its
  worker gone and the job silent, re-queues it and the other worker runs attempt 2; the zombie, woken
  while attempt 2 runs, has its next write refused by the fence and stops without writing anything.

The ping job's fault-injection trace records every execution's start, each progress step the lease
accepted, and its end.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.reliability.support import log_lines, main_pid_of, trace_of
from tests.support.waiting import wait_until

VISIBILITY = {"task_time_limit": 14, "visibility_timeout": 16, "stale_after": 60}


@pytest.fixture
def pair(lab):
    lab.settings = lab.settings.with_(**VISIBILITY)
    lab.settings.validate()
    return {p.pid: p for p in lab.workers(["left", "right"])}


def owner_and_other(lab, pair, job_id):
    job = wait_until(lambda: (j := lab.job(job_id)).status == "running" and j, 60, "the job to start")
    owner = pair[main_pid_of(job.worker)]
    (other,) = [p for p in pair.values() if p is not owner]
    return owner, other


def test_redelivered_message_of_a_running_job_is_deferred_not_run(lab, pair):
    job = lab.submit("ping", {"seconds": 26, "steps": 26})
    owner, other = owner_and_other(lab, pair, job.id)
    os.kill(owner.pid, signal.SIGSTOP)  # its pool child goes on running the job (and beating)
    try:
        wait_until(
            lambda: log_lines(other, f"job {job.id} (ping): deferred"),
            40,
            "the other worker to receive the message again after the visibility timeout",
        )
        done = lab.wait(job.id, timeout=60)
    finally:
        os.kill(owner.pid, signal.SIGCONT)
    assert done.status == "succeeded" and done.attempts == 1 and done.result["attempt"] == 1
    wait_until(lambda: log_lines(other, f"job {job.id} (ping): skipped"), 30, "the duplicate to be dropped")

    trace = trace_of(lab.settings, job.id)
    assert [e["event"] for e in trace] == ["start", *["step"] * 26, "end"], trace
    assert {e["attempt"] for e in trace} == {1}
    assert not log_lines(other, f"job {job.id}: attempt"), "the duplicate delivery must not claim the job"
    print(
        f"\nduplicate delivery after the visibility timeout: deferred "
        f"{len(log_lines(other, f'job {job.id} (ping): deferred'))} time(s), then skipped"
    )


def test_zombie_attempt_wakes_up_fenced_and_writes_nothing(lab, pair):
    job = lab.submit("ping", {"seconds": 9, "steps": 18})
    owner, other = owner_and_other(lab, pair, job.id)
    wait_until(lambda: len(trace_of(lab.settings, job.id)) >= 2, 30, "the first attempt's first step")
    os.killpg(owner.pid, signal.SIGSTOP)  # every process of the worker: a zombie, not a dead one
    frozen_at = time.monotonic()
    try:
        wait_until(
            lambda: (
                sum(e["attempt"] == 2 and e["event"] == "step" for e in trace_of(lab.settings, job.id)) >= 2
            ),
            60,
            "attempt 2 to run on the other worker",
        )
        taken_over = time.monotonic() - frozen_at
        # wake the zombie while attempt 2 is half-way through
        wait_until(
            lambda: (
                sum(e["attempt"] == 2 and e["event"] == "step" for e in trace_of(lab.settings, job.id)) >= 6
            ),
            60,
            "attempt 2 to be under way",
        )
        woken = time.monotonic() - frozen_at
    finally:
        os.killpg(owner.pid, signal.SIGCONT)
    done = lab.wait(job.id, timeout=60)
    assert done.status == "succeeded" and done.attempts == 2 and done.result["attempt"] == 2
    # the zombie's next write is refused (or its own main process, awake again, ends it for running past
    # the hard time limit first)
    wait_until(
        lambda: log_lines(owner, f"job {job.id} (ping): lost") or log_lines(owner, "Hard time limit"),
        30,
        "the zombie to stop",
    )

    trace = trace_of(lab.settings, job.id)
    first = [e for e in trace if e["attempt"] == 1]
    second = [e for e in trace if e["attempt"] == 2]
    assert second[0]["event"] == "start" and second[-1]["event"] == "end"
    assert [e["event"] for e in second] == ["start", *["step"] * 18, "end"]
    assert "end" not in {e["event"] for e in first}
    assert max(e["t"] for e in first) < second[0]["t"], "the zombie wrote after the takeover"
    assert log_lines(other, f"job {job.id}: attempt 2 claimed")
    print(
        f"\nzombie: attempt 2 ran {taken_over:.1f}s after the freeze; the zombie woke {woken:.1f}s after "
        "the freeze, during attempt 2, and wrote nothing"
    )
