"""Cancel means stop, for every kind: a running job notices a cancel between its steps (ping slices,
sampler steps and micro-batches, UMAP epochs, reprojection parts), its row reaches ``cancelled`` and the
same worker (one process, every queue) runs the next job. Each job is made long enough that, stopping only
at its old check points (a whole ping slice, a whole dataset batch, the whole UMAP fit, the whole
generation or sweep), it would still be running when the generous ``STOP_BOUND`` is up; the bench
(bench/interactive.py) measures how soon it stops."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from common import jobs
from common.models import EmbeddingPoint, Generation, Sample, User
from tests.support.waiting import wait_until

STOP_BOUND = 30.0  # seconds from cancel() to the final row: a bound for a stuck job, never a figure


def cancel_and_expect_stop(lab, job_id: int) -> None:
    """Cancel ``job_id`` (running), then: its row reaches ``cancelled`` and the worker runs a new job."""
    with lab.sessions() as s:
        user = s.get(User, lab.owner.id)
    jobs.cancel(lab.sessions, job_id, user, lab.publisher)
    done = lab.wait(job_id, timeout=STOP_BOUND)
    assert done.status == "cancelled", done
    assert all(c.status in ("succeeded", "cancelled") for c in lab.children(job_id))
    probe = lab.submit("ping", {"seconds": 0, "steps": 1})
    assert lab.wait(probe.id, timeout=120).status == "succeeded"


def running(lab, job_id: int, at_least: float = 0.0):
    def reached():
        job = lab.job(job_id)
        ended = f"job {job_id} ended before the cancel: {job!r} {job.error}"
        assert job.status in ("queued", "running"), ended
        return job.status == "running" and job.progress >= at_least

    wait_until(reached, 300, f"job {job_id} to run (progress ≥ {at_least})", interval=0.02)


def test_a_ping_sleeping_one_long_slice_stops_when_cancelled(lab):
    lab.worker(name="pinger")
    job = lab.submit("ping", {"seconds": 600, "steps": 1})  # one 600 s slice
    running(lab, job.id)
    cancel_and_expect_stop(lab, job.id)


def test_a_dataset_chunk_stops_between_sampler_steps_when_cancelled(lab, tiny_model):
    lab.worker(name="chunks")
    # one batch of 64 samples × 255 model calls each: minutes between two of the old per-batch checks
    job = lab.submit(
        "generate_dataset",
        {"model": "tiny", "name": "long-steps", "num_samples": 64, "batch_size": 64, "steps": 128},
    )

    def chunk_running():
        return any(c.status == "running" for c in lab.children(job.id))

    wait_until(chunk_running, 300, "the chunk to run")
    cancel_and_expect_stop(lab, job.id)
    assert lab.count_samples(job.params["dataset_id"]) == 0


@pytest.mark.timeout(1200)  # three fits, the first compiling umap-learn: over 10 min on a busy 2-core machine
def test_a_map_fit_and_a_generation_stop_when_cancelled(lab, tiny_model):
    # a first fit in a fresh worker compiles umap-learn's kernels (minutes on a busy machine): longer limits
    roomy = lab.settings.with_(task_time_limit=900, visibility_timeout=1000, stale_after=1100)
    lab.worker(name="maps", settings=roomy)
    ds = lab.submit("generate_dataset", {"model": "tiny", "name": "fitme", "num_samples": 3000, "steps": 1})
    assert lab.wait(ds.id, timeout=600).status == "succeeded"

    # the first fit, cancelled while UMAP searches neighbours and numba compiles its kernels (progress
    # 0.35): before, the cancel waited for the first epoch (progress 0.6); it must stop before that
    first = lab.submit("fit_embedding", {"dataset": "fitme", "n_neighbors": 15, "pca_dims": 0})
    running(lab, first.id, at_least=0.35)
    assert lab.job(first.id).progress < 0.6, "the fit reached its epochs before the cancel; cancel sooner"
    cancel_and_expect_stop(lab, first.id)
    stopped = lab.job(first.id)
    assert stopped.progress < 0.6, f"the cancel waited for the epochs: {stopped.progress_message}"

    # the interrupted compile left nothing broken: the next fit in the same worker compiles and succeeds
    small = lab.submit(
        "fit_embedding", {"dataset": "fitme", "n_neighbors": 15, "max_samples": 200, "name": "small"}
    )
    done = lab.wait(small.id, timeout=900)
    assert done.status == "succeeded", done
    emb_id = done.result["embedding_id"]
    with lab.sessions() as s:
        ids = s.scalars(select(EmbeddingPoint.sample_id).where(EmbeddingPoint.embedding_id == emb_id)).all()

    # a reprojection of a few points is a click (interactive queue); "every unplaced sample" is batch work
    with lab.sessions() as s:
        unplaced = s.scalars(
            select(Sample.id)
            .where(Sample.dataset_id == ds.params["dataset_id"], Sample.id.not_in(ids))
            .order_by(Sample.id)
            .limit(3)
        ).all()
    # both cancelled while they wait behind a running ping on this one worker: neither ever runs
    blocker = lab.submit("ping", {"seconds": 600, "steps": 1})
    running(lab, blocker.id)
    few = lab.submit("reproject", {"embedding": emb_id, "samples": unplaced})
    everything = lab.submit("reproject", {"embedding": emb_id})
    assert (few.queue, everything.queue) == ("interactive", "embed")
    with lab.sessions() as s:
        user = s.get(User, lab.owner.id)
    for job in (few, everything):
        assert jobs.cancel(lab.sessions, job.id, user, lab.publisher).status == "cancelled"
    cancel_and_expect_stop(lab, blocker.id)
    assert [lab.job(j.id).started_at for j in (few, everything)] == [None, None]
    again = lab.submit("reproject", {"embedding": emb_id, "samples": unplaced})
    placed = lab.wait(again.id, timeout=120)
    assert (placed.status, placed.queue, placed.result["placed"]) == ("succeeded", "interactive", 3)

    # a running reprojection of every unplaced sample (~2,800 rows in parts of at most 0.25 s or 512 rows)
    # stops at the next part boundary: some rows are placed, not all
    rest = lab.submit("reproject", {"embedding": emb_id})
    running(lab, rest.id, at_least=0.001)
    cancel_and_expect_stop(lab, rest.id)
    with lab.sessions() as s:
        on_map = s.scalar(select(func.count()).where(EmbeddingPoint.embedding_id == emb_id))
    assert len(ids) + 3 < on_map < 3000, f"{on_map} points: the cancel did not stop the reprojection midway"

    # the fit, compiled now: cancelled once UMAP optimises the layout (progress 0.6), between two epochs
    fit = lab.submit("fit_embedding", {"dataset": "fitme", "n_neighbors": 15, "pca_dims": 0})
    running(lab, fit.id, at_least=0.6)
    cancel_and_expect_stop(lab, fit.id)

    # a click made long: 64 variations × 256 steps, one model call per micro-batch and step
    gen = lab.submit(
        "generate_from_neighbors",
        {"embedding": emb_id, "selected": ids[0], "neighbors": ids[1:4], "steps": 256, "variations": 64},
    )
    running(lab, gen.id)
    cancel_and_expect_stop(lab, gen.id)

    # a sweep made long (5 cells × 32 variations × 128 steps): stops inside its first cells, records nothing
    sweep = lab.submit(
        "sweep",
        {
            "embedding": emb_id,
            "selected": ids[0],
            "neighbors": ids[1:4],
            "steps": 128,
            "variations": 32,
            "grid": {"strength": [0.0, 0.25, 0.5, 0.75, 1.0]},
        },
    )
    running(lab, sweep.id)
    cancel_and_expect_stop(lab, sweep.id)
    with lab.sessions() as s:
        made = s.scalar(select(func.count()).select_from(Generation).where(Generation.job_id == sweep.id))
    assert made == 0, f"a cancelled sweep recorded {made} generations"
