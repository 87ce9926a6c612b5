"""Embeddings in real worker processes: a fresh worker is warm before its first click, the inverse
reports where it landed, and a reducer whose files were tampered with is refused with a sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

from common import jobs
from common.models import Embedding, EmbeddingPoint, Generation, Sample
from tests.support.models import register_tiny_model
from tests.support.services import start_worker
from tests.support.waiting import follow_job


def run_job(sessions, publisher, settings, owner, kind, params, want="succeeded", timeout=300):
    job = jobs.submit(sessions, publisher, settings, owner=owner, kind=kind, params=params)
    done, _ = follow_job(sessions, job.id, {"succeeded", "failed", "cancelled"}, timeout=timeout)
    assert done.status == want, f"{kind}: {done.status} {done.error}"
    return done


def dataset_and_map(sessions, publisher, settings, admin, name: str, samples: int):
    """A tiny-model dataset of ``samples`` and its map (n_neighbors 6), run by a worker already started."""
    ds = run_job(
        sessions,
        publisher,
        settings,
        admin,
        "generate_dataset",
        {"model": "tiny", "name": name, "num_samples": samples},
    )
    fit = run_job(sessions, publisher, settings, admin, "fit_embedding", {"dataset": name, "n_neighbors": 6})
    return ds, fit


def test_fresh_worker_is_warm_before_its_first_job_and_refuses_a_tampered_reducer(
    settings, sessions, admin, publisher, tmp_path
):
    settings = settings.with_(chunk_size=32)
    register_tiny_model(sessions, settings)
    first = start_worker(settings, tmp_path, name="fit")
    try:
        ds, fit = dataset_and_map(sessions, publisher, settings, admin, "w", 48)
    finally:
        first.stop()
    emb_id = fit.result["embedding_id"]
    assert fit.result["backend"] == "umap-learn"
    with sessions() as s:
        assert s.get(Embedding, emb_id).backend == "umap-learn"
        ids = s.scalars(
            select(Sample.id).where(Sample.dataset_id == ds.params["dataset_id"]).order_by(Sample.index)
        ).all()

    fresh = start_worker(settings, tmp_path, name="fresh")
    try:
        rep = run_job(
            sessions, publisher, settings, admin, "reproject", {"embedding": emb_id, "samples": ids[:5]}
        )
        warm = rep.result["warm"]
        # taken when the job started: the kernels were compiled before this worker's first job
        assert warm["warmed"] and warm["error"] is None, warm
        assert all(n >= 1 for n in warm["kernels"].values()), warm
        assert any(Path(warm["numba_cache_dir"]).glob("umap_kernels.*.nbi")), warm  # kept on disk

        gen = run_job(
            sessions,
            publisher,
            settings,
            admin,
            "generate_from_neighbors",
            {
                "embedding": emb_id,
                "selected": ids[0],
                "neighbors": ids[1:4],
                "mode": "umap_inverse",
                "seed": 1,
            },
        )
        assert gen.result["inverse_warning"] is None
        with sessions() as s:
            g = s.scalar(select(Generation).where(Generation.sample_id == gen.result["samples"][0]))
            d = g.diagnostics
        assert d["inverse_warning"] is None and d["nearest_sample_distance"] >= 0
        assert d["nearest_sample_input_distance"] >= 0 and np.isfinite(d["roundtrip_in_spacings"])
    finally:
        fresh.stop()

    with sessions() as s:
        folder = settings.data_root / s.get(Embedding, emb_id).reducer_path
    blob = bytearray((folder / "map.npz").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (folder / "map.npz").write_bytes(bytes(blob))
    other = start_worker(settings, tmp_path, name="other")
    try:
        for kind, params in (
            ("reproject", {"embedding": emb_id, "samples": ids[:2]}),
            (
                "generate_from_neighbors",
                {"embedding": emb_id, "selected": ids[0], "neighbors": ids[1:3], "mode": "umap_inverse"},
            ),
        ):
            failed = run_job(sessions, publisher, settings, admin, kind, params, want="failed")
            assert f"Embedding {emb_id}'s saved reducer is refused" in failed.error
            assert "map.npz does not match its signed sha256" in failed.error
            assert "Traceback" not in failed.error
    finally:
        other.stop()


def test_a_map_over_more_rows_than_its_landmarks_records_them_and_places_the_rest(
    settings, sessions, admin, publisher, tmp_path
):
    """LATENTLAB_MAP_LANDMARKS set low: the worker fits UMAP on 100 seeded landmarks of 160 samples, places
    the other 60 with the map's transform, records it on the map, and the saved map serves a reprojection."""
    settings = settings.with_(chunk_size=80)
    register_tiny_model(sessions, settings)
    worker = start_worker(settings, tmp_path, name="landmarks", extra_env={"LATENTLAB_MAP_LANDMARKS": "100"})
    try:
        ds, fit = dataset_and_map(sessions, publisher, settings, admin, "big", 160)
        emb_id = fit.result["embedding_id"]
        assert fit.result["landmarks"] == 100 and fit.result["points"] == 160
        with sessions() as s:
            emb = s.get(Embedding, emb_id)
            assert emb.params["landmarks"] == 100 and emb.params["placed"] == 60
            assert emb.num_points == 160
            projected = s.scalars(
                select(EmbeddingPoint.projected).where(EmbeddingPoint.embedding_id == emb_id)
            ).all()
            ids = s.scalars(
                select(Sample.id).where(Sample.dataset_id == ds.params["dataset_id"]).order_by(Sample.id)
            ).all()
        assert sorted(projected).count(True) == 60 and len(projected) == 160
        manifest = json.loads((settings.data_root / f"embeddings/{emb_id}/manifest.json").read_text())
        assert manifest["info"]["landmarks"] == 100 and manifest["info"]["placed"] == 60
        assert "landmark_rows" not in manifest["info"]
        # the saved map is the landmarks' map: it loads (checked against the landmark ids) and places samples
        rep = run_job(
            sessions, publisher, settings, admin, "reproject", {"embedding": emb_id, "samples": ids[:4]}
        )
        assert rep.result["requested"] == 4
    finally:
        worker.stop()
