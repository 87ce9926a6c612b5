"""Cancelling: a running dataset job stops part-way and writes nothing afterwards (how fast
is a figure: it prints here, and bench/pipeline.py measures it); a cancelled queued job
never runs, even when every worker is restarted before its message is taken from the queue."""

from __future__ import annotations

import time

import pytest

from common import jobs
from common.models import User
from tests.reliability.support import log_lines, temp_files, trace_of
from tests.support.waiting import wait_until

SETTLE = 1.0  # seconds after cancel() returns in which a write already under way may still land


def files_under(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.both_backends
def test_cancelled_dataset_job_stops_and_writes_nothing_after(lab, tiny_model):
    lab.worker(name="busy")
    job = lab.submit(
        "generate_dataset",
        # micro-batches of 5 keep the lab's chunks at 50 samples (a chunk is a multiple of the micro-batch)
        {"model": "tiny", "name": "to-cancel", "num_samples": 200, "batch_size": 5, "micro_batch": 5},
    )
    dataset_id = job.params["dataset_id"]
    folder = lab.settings.data_root / "datasets" / str(dataset_id)
    wait_until(
        lambda: (
            lab.count_samples(dataset_id) >= 50
            and any(c.status == "running" and c.progress >= 0.2 for c in lab.children(job.id))
        ),
        240,
        "the second chunk to be part-way through",
    )
    with lab.sessions() as s:
        user = s.get(User, lab.owner.id)
    jobs.cancel(lab.sessions, job.id, user, lab.publisher)
    returned, returned_wall = time.monotonic(), time.time()

    done = lab.wait(job.id, timeout=30)
    stopped = time.monotonic() - returned
    assert done.status == "cancelled", done
    assert {c.status for c in lab.children(job.id)} <= {"succeeded", "cancelled"}

    rows = lab.count_samples(dataset_id)
    files = files_under(folder)
    time.sleep(3)  # several heartbeats and batches later: nothing new
    assert lab.count_samples(dataset_id) == rows and rows in (50, 100, 150), "rows after the cancel"
    assert files_under(folder) == files, "files changed after the job was cancelled"
    last_write = max(mtime for _, mtime in files.values()) / 1e9 - returned_wall
    assert last_write < SETTLE, f"a file was written {last_write:.2f}s after cancel() returned"
    assert temp_files(folder) == []
    print(f"\ncancel: job stopped {stopped:.2f}s after cancel() returned; last file write {last_write:+.2f}s")


def test_cancelled_queued_job_never_runs_even_after_every_worker_restarts(lab):
    first = lab.worker(name="first")
    blocker = lab.submit("ping", {"seconds": 5, "steps": 5})
    lab.wait(blocker.id, statuses={"running"}, timeout=60)
    queued = lab.submit("ping", {"seconds": 0, "steps": 1})  # waits behind the blocker (prefetch 1)
    with lab.sessions() as s:
        user = s.get(User, lab.owner.id)
    assert jobs.cancel(lab.sessions, queued.id, user, lab.publisher).status == "cancelled"

    first.kill_group()  # every worker gone, hard; its unacked message and the queued one stay in Redis
    second = lab.worker(name="second")
    probe = lab.submit("ping", {"seconds": 0, "steps": 1})
    assert lab.wait(probe.id, timeout=120).status == "succeeded"
    assert lab.wait(blocker.id, timeout=120).status == "succeeded"
    wait_until(
        lambda: log_lines(second, f"job {queued.id} (ping): skipped"),
        60,
        "the cancelled job's message to be taken and dropped",
    )
    row = lab.job(queued.id)
    assert row.status == "cancelled" and row.attempts == 0 and row.started_at is None
    assert trace_of(lab.settings, queued.id) == [], "the cancelled job ran"
