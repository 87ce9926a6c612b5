"""The research loop through real workers: dataset → embedding → generate from neighbours → lineage,
reprojection and replay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common import jobs
from common.models import Embedding, EmbeddingPoint, Generation, Job, Lineage, Sample
from common.platform.errors import UserError
from tests.support.models import register_tiny_model
from tests.support.services import start_worker
from tests.support.waiting import follow_job


def run_job(sessions, publisher, settings, owner, kind, params, timeout=240):
    job = jobs.submit(sessions, publisher, settings, owner=owner, kind=kind, params=params)
    done, _ = follow_job(sessions, job.id, {"succeeded", "failed", "cancelled"}, timeout=timeout)
    assert done.status == "succeeded", f"{kind}: {done.error}"
    return done


@pytest.fixture
def loop_env(settings, sessions, admin, publisher, tmp_path):
    settings = settings.with_(chunk_size=32)
    register_tiny_model(sessions, settings)
    worker = start_worker(settings, tmp_path, name="loop")
    yield settings
    worker.stop()


def test_dataset_embedding_generation_lineage_and_replay(loop_env, sessions, admin, publisher):
    settings = loop_env
    ds_job = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_dataset",
        {"model": "tiny", "name": "loop", "num_samples": 60, "seed": 3},
    )
    emb_job = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "fit_embedding",
        {"dataset": "loop", "n_neighbors": 8, "seed": 1},
    )
    emb_id = emb_job.result["embedding_id"]
    with sessions() as s:
        emb = s.get(Embedding, emb_id)
        assert emb.status == "ready" and emb.num_points == 60 and emb.reducer_sha256
        assert emb.versions["umap-learn"] and emb.input_hash and emb.fit_seconds > 0
        samples = s.scalars(
            select(Sample.id).where(Sample.dataset_id == ds_job.params["dataset_id"]).order_by(Sample.index)
        ).all()
    selected, neighbors = samples[0], samples[1:6]

    gen = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_from_neighbors",
        {"embedding": emb_id, "selected": selected, "neighbors": neighbors, "variations": 4, "seed": 11},
    )
    new_ids = gen.result["samples"]
    assert len(new_ids) == 4 and gen.result["model_cache"]["loads"] == 1
    with sessions() as s:
        for sid in new_ids:
            smp = s.get(Sample, sid)
            assert smp.origin == "generated" and smp.index is None and smp.job_id == gen.id
            with Image.open(settings.data_root / smp.image_path) as im:
                im.verify()
            g = s.scalar(select(Generation).where(Generation.sample_id == sid))
            assert g.mode == "activation_mean" and g.actual_x is not None and g.distance_to_intended >= 0
            assert g.layers == ["encoder_bottleneck", "midblock"]
            parents = s.execute(
                select(Lineage.parent_id, Lineage.role, Lineage.weight).where(Lineage.child_id == sid)
            ).all()
            assert {(p, r) for p, r, _ in parents} == {(selected, "selected")} | {
                (n, "neighbor") for n in neighbors
            }
            assert sum(w for _, r, w in parents if r == "neighbor") == pytest.approx(1.0)
            assert s.get(EmbeddingPoint, (emb_id, sid)).projected is True
        images = [np.asarray(Image.open(settings.data_root / s.get(Sample, i).image_path)) for i in new_ids]
    assert len({im.tobytes() for im in images}) == 4, "variations must differ"

    # generated samples are first-class: one becomes a neighbour of the next generation (umap_inverse)
    inv = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_from_neighbors",
        {
            "embedding": emb_id,
            "selected": new_ids[0],
            "neighbors": [new_ids[1], samples[7]],
            "mode": "umap_inverse",
            "class": "neighbor_majority",
            "seed": 5,
        },
    )
    cache = inv.result["model_cache"]
    assert cache["loads"] == 1 and cache["hits"] >= 2, f"a warm worker reloaded its checkpoint: {cache}"
    assert inv.result["roundtrip_error"] is not None and inv.result["roundtrip_error"] >= 0
    weighted = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_from_neighbors",
        {
            "embedding": emb_id,
            "selected": selected,
            "neighbors": neighbors[:2],
            "mode": "weighted",
            "weights": [3, 1],
            "class": "blend",
            "steps": 2,
            "mask_steps": 1,
            "seed": 2,
        },
    )
    with sessions() as s:
        wl = dict(
            s.execute(
                select(Lineage.parent_id, Lineage.weight).where(
                    Lineage.child_id == weighted.result["samples"][0], Lineage.role == "neighbor"
                )
            ).all()
        )
        assert wl == {neighbors[0]: pytest.approx(0.75), neighbors[1]: pytest.approx(0.25)}

    # grow the dataset, then place the new samples without moving the old ones
    with sessions() as s:
        before = {
            (p.sample_id): (p.x, p.y)
            for p in s.scalars(select(EmbeddingPoint).where(EmbeddingPoint.embedding_id == emb_id))
        }
    run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_dataset",
        {"model": "tiny", "name": "loop", "num_samples": 70, "seed": 3},
    )
    rep = run_job(sessions, publisher, settings, admin, "reproject", {"embedding": emb_id})
    assert rep.result["placed"] == 10
    with sessions() as s:
        after = {
            p.sample_id: (p.x, p.y)
            for p in s.scalars(select(EmbeddingPoint).where(EmbeddingPoint.embedding_id == emb_id))
        }
    assert all(after[k] == v for k, v in before.items())
    assert len(after) == len(before) + 10

    # replay: the recorded recipe gives the same image
    from common.platform.storage import png_bytes
    from common.research.embeddings import ReducerCache
    from common.research.generations import replay
    from common.research.modelcache import ModelCache

    with sessions() as s:
        for sid in (new_ids[2], inv.result["samples"][0], weighted.result["samples"][0]):
            image, stored = replay(settings, s, sid, ModelCache(), ReducerCache())
            assert png_bytes(image) == stored


def test_bad_generation_requests_write_nothing(loop_env, sessions, admin, publisher):
    settings = loop_env
    run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_dataset",
        {"model": "tiny", "name": "a", "num_samples": 40, "seed": 1},
    )
    run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_dataset",
        {"model": "tiny", "name": "b", "num_samples": 40, "seed": 2},
    )
    emb = run_job(sessions, publisher, settings, admin, "fit_embedding", {"dataset": "a", "n_neighbors": 5})
    emb_id = emb.result["embedding_id"]
    with sessions() as s:
        a = s.scalars(select(Sample.id).join(Sample.dataset).where(Sample.dataset.has(name="a"))).all()
        b = s.scalars(select(Sample.id).join(Sample.dataset).where(Sample.dataset.has(name="b"))).all()
        jobs_before = s.scalar(select(func.count(Job.id)))
    base = {"embedding": emb_id, "selected": a[0], "neighbors": a[1:4]}
    cases = [
        ({**base, "neighbors": [b[0]]}, "not on embedding"),
        ({**base, "neighbors": []}, "neighbors"),
        ({**base, "layers": ["nope"]}, "Cannot mask"),
        ({**base, "variations": 65}, "variations"),
        ({**base, "mode": "weighted"}, "weights"),
        ({**base, "class": 99}, "out of range"),
        ({**base, "embedding": 999}, "No embedding"),
    ]
    for params, message in cases:
        with pytest.raises(UserError, match=message):
            jobs.submit(
                sessions, publisher, settings, owner=admin, kind="generate_from_neighbors", params=params
            )
    with pytest.raises(UserError, match="larger than the data allows"):
        jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="fit_embedding",
            params={"dataset": "a", "pca_dims": 500},
        )
    with pytest.raises(UserError, match="not captured"):
        jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="fit_embedding",
            params={"dataset": "a", "layers": ["decoder_block_3"]},
        )
    jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_dataset",
        params={"model": "tiny", "name": "c", "num_samples": 40},
    )
    with pytest.raises(UserError, match="generating"):
        jobs.submit(sessions, publisher, settings, owner=admin, kind="fit_embedding", params={"dataset": "c"})
    with sessions() as s:
        assert s.scalar(select(func.count(Job.id))) == jobs_before + 1
        assert s.scalar(select(func.count(Embedding.id))) == 1
