"""Deterministic micro-batches: a dataset's model calls are aligned to absolute sample indices, so a
sample's image and activation rows are byte-identical whatever the chunk size, the number of workers and
the growth history; the micro-batch is recorded on the dataset and refused when it cannot be kept."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from common import jobs
from common.models import Dataset, Job, Sample
from common.platform import migrate
from common.platform.errors import Conflict, UserError
from common.research.datasets import class_for, noise_seed
from tests.support.models import register_tiny_model
from tests.support.services import start_worker
from tests.support.waiting import follow_job

LAYERS = ["encoder_bottleneck", "midblock"]
BASE = {"model": "tiny", "seed": 11, "steps": 3, "micro_batch": 4, "layers": LAYERS}


@pytest.fixture
def model_id(sessions, settings):
    return register_tiny_model(sessions, settings)


def submit(sessions, publisher, settings, admin, **params):
    return jobs.submit(
        sessions, publisher, settings, owner=admin, kind="generate_dataset", params={**BASE, **params}
    )


def make(sessions, publisher, settings, admin, **params):
    job = submit(sessions, publisher, settings, admin, **params)
    done, _ = follow_job(sessions, job.id, {"succeeded", "failed"}, timeout=240)
    assert done.status == "succeeded", done.error
    return done


def sample_bytes(settings, sessions, dataset_id) -> dict[int, tuple[bytes, dict[str, bytes]]]:
    """index -> (PNG bytes, {layer: its activation row's bytes})."""
    root, out = settings.data_root, {}
    with sessions() as s:
        for r in s.scalars(select(Sample).where(Sample.dataset_id == dataset_id).order_by(Sample.index)):
            acts = {
                name: np.load(root / r.act_shard / f"{name}.npy", mmap_mode="r")[r.act_row].tobytes()
                for name in LAYERS
            }
            out[r.index] = ((root / r.image_path).read_bytes(), acts)
    return out


def test_samples_are_identical_whatever_chunks_workers_and_growth(
    settings, sessions, admin, publisher, model_id, tmp_path
):
    first = start_worker(settings, tmp_path, name="one")
    second = None
    try:
        # A: chunks of 8, one worker, made as 13 then grown to 22 (13 is inside micro-batch 3: 12..15)
        small = settings.with_(chunk_size=8)
        done = make(sessions, publisher, small, admin, name="grown", num_samples=13, batch_size=3)
        a_id = done.params["dataset_id"]
        with sessions() as s:
            ds = s.get(Dataset, a_id)
            assert (ds.micro_batch, ds.chunk_size) == (4, 8)
            paths = [
                settings.data_root / r.image_path
                for r in s.scalars(select(Sample).where(Sample.dataset_id == a_id))
            ]
        written = {p: p.stat().st_mtime_ns for p in paths}
        grow = make(sessions, publisher, small, admin, name="grown", num_samples=22, batch_size=5)
        with sessions() as s:
            results = {
                c.params["chunk"]: c.result for c in s.scalars(select(Job).where(Job.parent_id == grow.id))
            }
        # chunk 1 (8..15) had 8..12: micro-batch 3 (12..15) ran again and only 13..15 were kept
        assert results[1]["computed"] == 3 and results[1]["new_rows"] == 3
        assert {p: p.stat().st_mtime_ns for p in paths} == written, "kept samples were rewritten"
        grown = sample_bytes(settings, sessions, a_id)
        assert sorted(grown) == list(range(22))

        # B: chunks of 12 (a different split), two workers sharing the chunks, all 22 at once
        second = start_worker(settings, tmp_path, name="two")
        wide = settings.with_(chunk_size=10)  # rounded up to a multiple of the micro-batch: 12
        done = make(sessions, publisher, wide, admin, name="split", num_samples=22, batch_size=64)
        b_id = done.params["dataset_id"]
        with sessions() as s:
            assert s.get(Dataset, b_id).chunk_size == 12
            chunks = s.scalars(select(Job).where(Job.parent_id == done.id)).all()
            assert sorted(c.params["chunk"] for c in chunks) == [0, 1]
        split = sample_bytes(settings, sessions, b_id)
        assert sorted(split) == list(range(22))
        for i in range(22):
            assert split[i] == grown[i], f"sample {i} differs between the two histories"
    finally:
        first.stop()
        if second is not None:
            second.stop()

    # the same micro-batch (20..23, 22 and 23 past the target) in one in-process call, with the worker's
    # torch threads (the thread count changes convolution blocking, hence last bits), gives the same bytes
    from common.ml.generation import generate
    from common.platform.storage import png_bytes
    from common.research.modelcache import ModelCache

    with sessions() as s:
        model = ModelCache(threads=settings.cpu_threads()).get(settings, s.get(Dataset, a_id).model)
    idx = [20, 21, 22, 23]
    res = generate(
        model,
        [class_for(list(range(10)), i) for i in idx],
        [noise_seed(11, i) for i in idx],
        steps=3,
        capture=LAYERS,
        micro_batch=4,
    )
    for j, i in enumerate(idx[:2]):
        assert png_bytes(res.images[j]) == grown[i][0]
        assert res.activations["midblock"][j].tobytes() == grown[i][1]["midblock"]


def test_micro_batch_refusals_say_what_to_change_and_write_nothing(
    settings, sessions, admin, publisher, model_id
):
    def ask(params, s=settings):
        return submit(sessions, publisher, s, admin, **params)

    with pytest.raises(UserError, match="micro_batch"):
        ask({"name": "zero", "num_samples": 8, "micro_batch": 0})
    tight = settings.with_(micro_batch_memory_mb=64)
    with pytest.raises(UserError, match=r"over the budget of 64 MiB .*use 128 or less"):
        ask({"name": "huge", "num_samples": 8, "micro_batch": 1024}, tight)
    with sessions() as s:
        assert s.scalar(select(func.count(Dataset.id))) == 0
        assert s.scalar(select(func.count(Job.id))) == 0

    # without one, a new dataset gets the server's default (16), within the budget
    ask({"name": "default", "num_samples": 4, "micro_batch": None})
    ask({"name": "capped", "num_samples": 4, "micro_batch": None}, settings.with_(micro_batch_memory_mb=64))
    with sessions() as s:
        got = {d.name: (d.micro_batch, d.chunk_size) for d in s.scalars(select(Dataset))}
        assert got["default"] == (16, settings.chunk_size)
        assert got["capped"][0] == 16  # 16 tiny samples fit 64 MiB
        s.execute(Dataset.__table__.update().values(status="ready"))
        s.commit()
    with pytest.raises(Conflict, match="made with micro_batch 16; it grows only with that micro-batch"):
        ask({"name": "default", "num_samples": 8, "micro_batch": 8})
    with sessions() as s:
        assert s.scalar(select(Dataset.target_size).where(Dataset.name == "default")) == 4
    ask({"name": "default", "num_samples": 8, "micro_batch": None})  # leaving it out keeps the dataset's


def test_a_dataset_from_before_micro_batches_gets_one_sample_per_call(
    settings, sessions, admin, publisher, model_id
):
    submit(sessions, publisher, settings, admin, name="older", num_samples=4, micro_batch=8)
    migrate.downgrade(settings, "0003_sql_views")  # the schema before the column (the row stays)
    migrate.upgrade(settings)
    with sessions() as s:
        assert s.scalar(select(Dataset.micro_batch).where(Dataset.name == "older")) == 1
