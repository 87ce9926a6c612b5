"""generate_dataset through the queue: chunks shared by workers, exactly-once outputs, byte-identical
samples however the work was split, growth continuing the seed stream."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common import jobs
from common.models import Dataset, Job, Sample
from common.platform.errors import Conflict, UserError
from common.research.datasets import class_for, noise_seed
from tests.support.models import register_tiny_model
from tests.support.services import start_worker
from tests.support.waiting import follow_job


@pytest.fixture
def small_chunks(settings):
    return settings.with_(chunk_size=8)


@pytest.fixture
def model_id(sessions, small_chunks):
    return register_tiny_model(sessions, small_chunks)


def outputs_exactly_once(settings, sessions, dataset_id, n):
    root = settings.data_root
    with sessions() as s:
        rows = s.scalars(select(Sample).where(Sample.dataset_id == dataset_id).order_by(Sample.index)).all()
        assert [r.index for r in rows] == list(range(n))
        for r in rows:
            with Image.open(root / r.image_path) as im:
                im.verify()
            shard = np.load(root / r.act_shard / "midblock.npy", mmap_mode="r", allow_pickle=False)
            assert np.isfinite(shard[r.act_row]).all()
    leftovers = [p for p in (root / "datasets").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    return rows


def test_dataset_is_generated_in_chunks_by_two_workers(
    small_chunks, sessions, admin, publisher, model_id, tmp_path
):
    settings = small_chunks
    workers = [start_worker(settings, tmp_path, name=f"w{i}") for i in range(2)]
    try:
        job = jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="generate_dataset",
            params={
                "model": "tiny",
                "name": "demo",
                "num_samples": 30,
                "batch_size": 5,
                "seed": 7,
                "micro_batch": 1,
            },
        )
        done, seen = follow_job(sessions, job.id, {"succeeded", "failed"}, timeout=180)
        assert done.status == "succeeded", done.error
        with sessions() as s:
            children = s.scalars(select(Job).where(Job.parent_id == job.id)).all()
            assert len(children) == 4 and all(c.status == "succeeded" for c in children)
            assert len({c.worker.split(":")[0] for c in children}) >= 1
            ds = s.get(Dataset, done.params["dataset_id"])
            assert ds.status == "ready"
        rows = outputs_exactly_once(settings, sessions, ds.id, 30)
        assert [r.class_label for r in rows] == [class_for(list(range(10)), i) for i in range(30)]
        assert [r.noise_seed for r in rows] == [noise_seed(7, i) for i in range(30)]
        before = {r.index: (settings.data_root / r.image_path).read_bytes() for r in rows}
        shard3 = np.load(settings.data_root / rows[24].act_shard / "midblock.npy")

        # grow 30 -> 37: the partial last chunk (24..29) is redone to 24..31, then 32..36
        grow = jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="generate_dataset",
            params={
                "model": "tiny",
                "name": "demo",
                "num_samples": 37,
                "batch_size": 3,
                "seed": 7,
                "micro_batch": 1,
            },
        )
        done, _ = follow_job(sessions, grow.id, {"succeeded", "failed"}, timeout=180)
        assert done.status == "succeeded", done.error
        rows = outputs_exactly_once(settings, sessions, ds.id, 37)
        for r in rows[:30]:
            assert (settings.data_root / r.image_path).read_bytes() == before[r.index], r.index
        grown3 = np.load(settings.data_root / rows[24].act_shard / "midblock.npy")
        np.testing.assert_array_equal(grown3[:6], shard3)
    finally:
        for w in workers:
            w.stop()

    # at micro-batch 1 (today's CPU path) the same samples made in one in-process call are byte-identical
    from common.ml.generation import generate
    from common.platform.storage import png_bytes
    from common.research.modelcache import ModelCache

    with sessions() as s:
        model_row = s.get(Dataset, ds.id).model
        model = ModelCache().get(settings, model_row)
    idx = [3, 17, 33]
    res = generate(model, [class_for(list(range(10)), i) for i in idx], [noise_seed(7, i) for i in idx])
    for j, i in enumerate(idx):
        assert png_bytes(res.images[j]) == (settings.data_root / rows[i].image_path).read_bytes()


def test_bad_dataset_requests_are_refused_and_write_nothing(
    small_chunks, sessions, admin, publisher, model_id
):
    settings = small_chunks
    cases = [
        ({"model": "nope", "name": "x", "num_samples": 4}, "No model 'nope'"),
        ({"model": "tiny", "name": "x", "num_samples": 4, "layers": ["bogus"]}, "unknown layer"),
        ({"model": "tiny", "name": "x", "num_samples": 4, "classes": [12]}, "out of range"),
        ({"model": "tiny", "name": "x", "num_samples": 0}, "num_samples"),
        ({"model": "tiny", "name": "../x", "num_samples": 4}, "name"),
    ]
    for params, message in cases:
        with pytest.raises(UserError, match=message):
            jobs.submit(sessions, publisher, settings, owner=admin, kind="generate_dataset", params=params)
    with sessions() as s:
        assert s.scalar(select(func.count(Job.id))) == 0
        assert s.scalar(select(func.count(Dataset.id))) == 0
    jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_dataset",
        params={"model": "tiny", "name": "busy", "num_samples": 4},
    )
    with pytest.raises(Conflict, match="still generating"):
        jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="generate_dataset",
            params={"model": "tiny", "name": "busy", "num_samples": 8},
        )
