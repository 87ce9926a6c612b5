"""Workers killed mid-job: the job runs again, its effects happen once.

* a pool child SIGKILLed in the middle of a dataset chunk: Celery re-queues the unacked message
  (``reject_on_worker_lost``), the redelivery waits until the dead attempt's heartbeat is older than
  ``takeover_after``, takes the job over as attempt 2 and writes the chunk again (same bytes, no new rows);
* the whole worker (every process of its group) killed with -9: nobody is left to re-queue its message
  before the visibility timeout, so the reaper of a new worker does it once the dead worker's liveness key
  has expired and the job has been silent for ``takeover_after``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.reliability.support import assert_exactly_once, log_lines, main_pid_of, pid_of
from tests.support.waiting import wait_until

DATASET = {"model": "tiny", "num_samples": 200, "batch_size": 10, "seed": 5}


def running_chunk(lab, parent_id: int, min_progress: float):
    for chunk in lab.children(parent_id):
        if chunk.status == "running" and chunk.worker and chunk.progress >= min_progress:
            return chunk
    return None


@pytest.mark.both_backends
def test_killed_pool_child_chunk_is_redone_once(lab, tiny_model):
    worker = lab.worker(name="crashy")
    job = lab.submit("generate_dataset", {**DATASET, "name": "killed-child"})
    dataset_id = job.params["dataset_id"]

    # half done: two of four chunks written, the third part-way through
    victim = wait_until(
        lambda: lab.count_samples(dataset_id) >= 100 and running_chunk(lab, job.id, 0.2),
        240,
        "the dataset job to be half done",
    )
    child = pid_of(victim.worker)
    assert child != worker.pid and main_pid_of(victim.worker) == worker.pid, victim.worker
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()

    wait_until(lambda: lab.job(victim.id).attempts == 2, 60, "the killed chunk to be taken over")
    print(f"\nkilled chunk re-claimed {time.monotonic() - killed_at:.1f}s after the kill")
    done = lab.wait(job.id)
    assert done.status == "succeeded", done.error
    assert worker.alive(), "the worker's main process must survive the loss of a pool child"

    chunks = {c.id: c for c in lab.children(job.id)}
    assert len(chunks) == 4 and all(c.status == "succeeded" for c in chunks.values())
    assert chunks[victim.id].attempts == 2, "the killed chunk ran exactly twice"
    assert [c.attempts for cid, c in chunks.items() if cid != victim.id] == [1, 1, 1]
    assert pid_of(chunks[victim.id].worker) != child

    rows = assert_exactly_once(lab.settings, lab.sessions, dataset_id, 200)
    killed = {r.index for r in rows if r.job_id == victim.id}
    assert killed == set(range(victim.params["start"], victim.params["stop"]))
    assert log_lines(worker, "signal 9") or log_lines(worker, "WorkerLostError"), worker.log_text()[-2000:]


def test_whole_worker_killed_its_work_is_recovered_by_a_new_worker(lab, tiny_model):
    settings = lab.settings
    doomed = lab.worker(name="doomed")
    job = lab.submit("generate_dataset", {**DATASET, "num_samples": 100, "name": "killed-group"})
    dataset_id = job.params["dataset_id"]
    victim = wait_until(
        lambda: lab.count_samples(dataset_id) >= 50 and running_chunk(lab, job.id, 0.2),
        240,
        "a chunk to be part-way through after the first one",
    )
    doomed.kill_group()
    killed_at = time.monotonic()

    rescuer = lab.worker(name="rescuer")
    ready_at = time.monotonic()

    def handed_back():  # re-queued (it then waits behind the chunks already queued) or already re-claimed
        j = lab.job(victim.id)
        return j.status == "queued" or j.attempts >= 2

    wait_until(handed_back, 120, "the dead worker's chunk to be re-queued")
    recovered_at = time.monotonic()
    done = lab.wait(job.id)
    finished_at = time.monotonic()

    recovery = recovered_at - ready_at
    bound = settings.takeover_after + 2 * settings.reaper_interval + 10
    print(
        f"\nwhole-group kill: new worker ready {ready_at - killed_at:.1f}s after the kill; the dead "
        f"worker's chunk re-queued {recovery:.1f}s after that (bound {bound:.0f}s; the visibility "
        f"timeout is {settings.visibility_timeout}s); the job finished {finished_at - killed_at:.1f}s "
        "after the kill"
    )
    assert recovery <= bound
    assert recovered_at - killed_at < settings.visibility_timeout, "recovered by the reaper, not Redis"
    assert done.status == "succeeded", done.error
    assert lab.job(victim.id).attempts == 2
    assert all(c.status == "succeeded" for c in lab.children(job.id))
    assert log_lines(rescuer, f"reaper: job {victim.id} attempt 1"), rescuer.log_text()[-3000:]
    assert_exactly_once(settings, lab.sessions, dataset_id, 100)
