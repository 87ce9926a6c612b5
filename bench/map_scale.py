"""Maps at scale: the real ``fit_embedding`` job over N synthetic samples of the digits demo's activation
width (encoder_bottleneck + midblock of ``digits16``: 2,048 floats), written in the product's layout
(1,024-sample chunks, one ``.npy`` shard per layer, a ``samples`` row each) so the fit reads them through
the product's shard reader (``iter_activation_batches``); then the cost of transforming new samples into
that map (a reprojection: ``Reducer.transform``, one sample and a batch of 1,024).

Figures: fit seconds, peak resident memory, the longest wait between two progress changes of the job
(the job row, polled every second), transform ms per new sample. The goal at 1,000,000 rows is ≤ 45 min,
≤ 16 GB, progress at least every 30 s, ≤ 50 ms per new sample; on the shared 2-core box run it at
100,000–200,000 and extrapolate with care (UMAP's neighbour search grows a little faster than N).

Run::

    .venv/bin/python bench/map_scale.py --samples 200000 --root /tmp/ll-map-scale
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.embedding import MB, _random_checkpoint, _status_mb, line, measure, synthetic  # noqa: E402

LAYERS = ["encoder_bottleneck", "midblock"]


def write_synthetic_dataset(settings, sessions, n: int, root: Path) -> int:
    """A ``ready`` dataset of ``n`` synthetic samples in the product layout; returns its id (resumable)."""
    from sqlalchemy import select

    from common.jobs import now
    from common.models import Dataset, Sample, User
    from common.platform.accounts import create_user
    from common.platform.db import insert_ignore
    from common.platform.storage import atomic_save_npy
    from common.research.datasets import (
        GenerateDatasetParams,
        class_for,
        noise_seed,
        prepare_generate_dataset,
        shard_rel,
    )
    from common.research.registry import add_model, get_model

    with sessions.begin() as s:
        owner = s.scalar(select(User).where(User.username == "bench")) or create_user(
            s, "bench", "bench-password", role="admin"
        )
        try:
            get_model(s, "digits")
        except Exception:  # noqa: BLE001 - first run: register a random-weight digits16 (same shapes)
            ckpt = root / "digits16-random.safetensors"
            _random_checkpoint(ckpt)
            add_model(s, settings, "digits", checkpoint=ckpt, preset="digits16")
        ds = s.scalar(select(Dataset).where(Dataset.name == "synthetic"))
        if ds is None:
            params = GenerateDatasetParams(model="digits", name="synthetic", num_samples=n, layers=LAYERS)
            prepare_generate_dataset(s, params, owner, settings)
            ds = s.scalar(select(Dataset).where(Dataset.name == "synthetic"))
        ds_id, owner_id, cs, classes = ds.id, owner.id, ds.chunk_size, list(ds.classes)
        widths = {name: int(np.prod(ds.layer_shapes[name])) for name in ds.layers}
    dim = sum(widths.values())
    t0 = time.perf_counter()
    for k in range(-(-n // cs)):
        start, stop = k * cs, min((k + 1) * cs, n)
        folder = settings.data_root / shard_rel(ds_id, k)
        if all((folder / f"{name}.npy").exists() for name in widths):
            continue
        x = synthetic(stop - start, dim, seed=k)  # [rows, D] in the flattened layout: layers sorted
        a = 0
        for name in sorted(widths):
            atomic_save_npy(folder / f"{name}.npy", np.ascontiguousarray(x[:, a : a + widths[name]]))
            a += widths[name]
        rows = [
            {
                "dataset_id": ds_id,
                "index": i,
                "class_label": class_for(classes, i),
                "noise_seed": noise_seed(0, i),
                "image_path": f"datasets/{ds_id}/images/not-rendered/{i:08d}.png",
                "act_shard": shard_rel(ds_id, k),
                "act_row": i - start,
                "origin": "dataset",
                "created_by_id": owner_id,
                "created_at": now(),
            }
            for i in range(start, stop)
        ]
        with sessions.begin() as s:
            insert_ignore(s, Sample.__table__, rows)
        if k % 20 == 0:
            print(f"  wrote {stop:,} of {n:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    with sessions.begin() as s:
        s.get(Dataset, ds_id).status = "ready"
    return ds_id


def fit(settings, sessions, ds_id: int) -> None:
    from sqlalchemy import select

    from common import jobs
    from common.models import Dataset, Embedding, Job, Sample, User
    from common.research.datasets import read_activations
    from common.research.embeddings import (
        FitEmbeddingParams,
        ReducerCache,
        prepare_fit_embedding,
        run_fit_embedding,
    )

    with sessions.begin() as s:
        owner = s.scalar(select(User).where(User.username == "bench"))
        ds = s.get(Dataset, ds_id)
        n = s.query(Sample).filter(Sample.dataset_id == ds_id).count()
        params = prepare_fit_embedding(s, FitEmbeddingParams(dataset=ds.name), owner, settings)
        job = Job(kind="fit_embedding", queue="embed", owner_id=owner.id, params=params)
        s.add(job)
        s.flush()
        job_id = job.id
    line("dataset", samples=n, pca=str(params["pca_dims"]), cpus=os.cpu_count())
    changes: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        last = None
        while not stop.wait(1.0):
            with sessions() as s:
                j = s.get(Job, job_id)
                now_msg = (j.progress, j.progress_message)
            if now_msg != last:
                changes.append(time.perf_counter())
                last = now_msg
                at = time.perf_counter() - t_start
                print(f"  {at:7.1f} s  progress {now_msg[0] or 0:.3f} {now_msg[1]}", flush=True)

    watcher = threading.Thread(target=watch, daemon=True)
    t_start = time.perf_counter()
    watcher.start()
    outcome, seconds, peak = measure(
        jobs.execute, sessions, settings, job_id, run_fit_embedding, worker="bench"
    )
    stop.set()
    marks = [t_start, *changes, time.perf_counter()]
    gaps = np.diff(marks)
    line(
        "fit_embedding job",
        status=outcome.status,
        seconds=seconds,
        peak_rss_mb=peak + _status_mb("VmRSS"),
        progress_changes=len(changes),
        longest_progress_gap_s=float(gaps.max()),
    )
    with sessions() as s:
        emb = s.get(Embedding, params["embedding_id"])
        red = ReducerCache().get(settings, s, emb)
        rows = s.execute(
            select(Sample.act_shard, Sample.act_row).where(Sample.dataset_id == ds_id).limit(1024)
        ).all()
        x = read_activations(settings, [tuple(r) for r in rows], red.layers)
    x = x + np.float32(0.01)  # new samples: near the map's, not its training rows
    red.transform(x[:1])  # warm
    ones = [measure(red.transform, x[i : i + 1])[1] for i in range(20)]
    _, t1024, mb1024 = measure(red.transform, x)
    line(
        f"transform into the {n:,}-point map",
        one_ms_median=1000 * float(np.median(ones)),
        batch1024_ms_per_sample=1000 * t1024 / len(x),
        batch_extra_mb=mb1024,
    )
    line("activation data", mb=n * x.shape[1] * 4 / MB)


def transform_only(rows: int, dims: int = 256) -> None:
    """Transform cost into a map whose reducer holds ``rows`` training rows of ``dims`` (a large map's
    landmarks), without fitting one: random training rows and map positions; the work per new sample (exact
    neighbours among the rows, then the transform epochs) does not depend on the map's quality."""
    from common.maps.transform import Reducer, UmapMap

    rng = np.random.default_rng(0)
    z = rng.standard_normal((rows, dims), dtype=np.float32)
    mp = UmapMap(
        rng.standard_normal((rows, 2), dtype=np.float32) * 5,
        np.ones(rows, np.float32),
        np.full(rows, 0.5, np.float32),
        1.58,
        0.9,
        15,
    )
    red = Reducer(["x"], dims, None, None, None, None, mp, z)
    q = z[:1024] + np.float32(0.01)
    red.transform_z(q[:1])  # warm: compile, prepared training rows
    ones = [measure(red.transform_z, q[i : i + 1])[1] for i in range(20)]
    _, t1024, _ = measure(red.transform_z, q)
    line(
        f"transform into a map of {rows:,} training rows × {dims}",
        one_ms_median=1000 * float(np.median(ones)),
        batch1024_ms_per_sample=1000 * t1024 / len(q),
        load=os.getloadavg()[0],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/ll-map-scale"))
    ap.add_argument(
        "--landmarks", type=int, default=None, help="LATENTLAB_MAP_LANDMARKS (default: the product's)"
    )
    ap.add_argument(
        "--transform-only", type=int, default=0, help="only time transform into a map of this many rows"
    )
    args = ap.parse_args()
    if args.transform_only:
        transform_only(args.transform_only)
        return
    from common.platform import migrate
    from common.platform.db import make_engine, session_factory
    from tests.support.settings import make_settings

    extra = {} if args.landmarks is None else {"map_landmarks": args.landmarks}
    settings = make_settings(
        args.root, chunk_size=1024, max_dataset_samples=max(200_000, args.samples), **extra
    )
    settings.ensure_data_root()
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    print(
        f"# map at {args.samples:,} synthetic samples, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"landmarks {settings.map_landmarks:,}"
    )
    ds_id = write_synthetic_dataset(settings, sessions, args.samples, args.root)
    fit(settings, sessions, ds_id)


if __name__ == "__main__":
    main()
