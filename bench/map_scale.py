"""Maps at scale: the real ``fit_embedding`` job over N synthetic samples of the digits demo's activation
width (encoder_bottleneck + midblock of ``digits16``: 2,048 floats; 10 class clusters on one curved
manifold, the same distribution in every chunk), written in the product's layout (1,024-sample chunks,
one ``.npy`` shard per layer, a ``samples`` row each) so the fit reads them through the product's shard
reader (``iter_activation_batches``); then the map's neighbour search and placement against the exact
search on 1,024 dataset rows (recall@15, kNN kept on the map), and the cost of transforming new samples
into that map (a reprojection: ``Reducer.transform``, one sample and a batch of 1,024).

Figures: fit seconds, peak resident memory, the longest wait between two progress changes of the job
(the job row, polled every second), transform ms per new sample. The goal at 1,000,000 rows is ≤ 45 min,
≤ 16 GB, progress at least every 30 s, ≤ 50 ms per new sample (about 20 min at 1M on the shared 2-core
box at load 5–7, plus 7 min to write the synthetic dataset once). ``--transform-only`` times the
transform into a map of that many training rows, the IVF index against the exact search.

Run::

    .venv/bin/python bench/map_scale.py --samples 1000000 --root /tmp/ll-map-scale
    .venv/bin/python bench/map_scale.py --transform-only 100000
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
        x = synthetic(stop - start, dim, seed=0, rows_seed=k)  # [rows, D] flattened: layers sorted
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
    placement_quality(red, x)
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


def placement_quality(red, x: np.ndarray, k: int = 15) -> None:
    """The fitted map's neighbour search and placement against the exact search, on the samples ``x``
    ([m, D], dataset rows): recall@k of the neighbours among the map's training rows, and for each way of
    placing them (the map's own search, then the exact search) the kNN preservation: the mean fraction of
    a sample's k nearest training rows in z that are among its k nearest training points on the map."""
    from scipy.spatial import cKDTree

    from common.maps import neighbors as nb
    from common.maps.transform import Reducer, exact_neighbors

    zq = red.to_z(x)
    truth, _ = exact_neighbors(zq, red.z, k, red.map.metric)
    got, _ = red.neighbors(zq, k)
    tree = cKDTree(red.map.embedding)
    kept = {}
    for name, r in [("the map's search", red), ("exact search", None)]:
        if r is None:
            limit, nb.INDEX_ROWS = nb.INDEX_ROWS, 10**12
            r = Reducer(
                red.layers, red.dim, red.mean, red.scale, red.pca_mean, red.components, red.map, red.z
            )
        xy = r.transform_z(zq)
        if name == "exact search":
            nb.INDEX_ROWS = limit
        _, on_map = tree.query(xy, k)
        kept[name] = recall(on_map, truth)
    line(
        f"neighbours and placement of {len(x):,} dataset rows, among {red.z.shape[0]:,} training rows",
        index=nb.use_index(red.z.shape[0], red.map.metric),
        recall_at_15=recall(got, truth),
        knn_kept_map_search=kept["the map's search"],
        knn_kept_exact_search=kept["exact search"],
    )


def transform_only(rows: int, dims: int = 256) -> None:
    """Transform cost into a map whose reducer holds ``rows`` training rows of ``dims`` (a large map's
    landmarks), without fitting one: training rows like a fitted map's (the synthetic activations through
    the scaler and a 256-dim PCA) and random map positions; the work per new sample (neighbours among the
    rows, then the transform epochs) does not depend on the map's quality. The indexed search
    (``common.maps.neighbors``, what maps of more than ``INDEX_ROWS`` rows use) against the exact search
    in the same run, with the recall@k of the indexed neighbours."""
    from common.maps import neighbors as nb
    from common.maps.transform import Reducer, UmapMap

    z = pca_rows(rows + 1024, dims)
    train, q = z[:rows], z[rows:]
    rng = np.random.default_rng(0)
    mp = UmapMap(
        rng.standard_normal((rows, 2), dtype=np.float32) * 5,
        np.ones(rows, np.float32),
        np.full(rows, 0.5, np.float32),
        1.58,
        0.9,
        15,
    )
    found = {}
    for name, limit in [("exact search", 10**12), ("IVF index", 0)]:
        nb.INDEX_ROWS = limit
        red = Reducer(["x"], dims, None, None, None, None, mp, train)
        _, t_build, _ = measure(red.transform_z, q[:1])  # warm: compile, prepared rows, the index
        ones = [measure(red.transform_z, q[i : i + 1])[1] for i in range(20)]
        _, t1024, _ = measure(red.transform_z, q)
        found[name] = red.neighbors(q, 15)[0]
        line(
            f"transform into a map of {rows:,} training rows × {dims}, {name}",
            one_ms_median=1000 * float(np.median(ones)),
            batch1024_ms_per_sample=1000 * t1024 / len(q),
            first_call_s=t_build,
            load=os.getloadavg()[0],
        )
    line(
        "IVF recall@15 vs exact, 1,024 new samples", recall=recall(found["IVF index"], found["exact search"])
    )


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true neighbours found ([m, k] index arrays)."""
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(got, truth, strict=True)]))


def pca_rows(n: int, dims: int = 256) -> np.ndarray:
    """[n, dims] float32 like a fitted map's training rows: the synthetic activations (the demo's width)
    standardised and projected on a 256-dim PCA basis fitted on 20,000 of them."""
    from sklearn.decomposition import PCA

    x = synthetic(min(n, 20_000), 2048, rows_seed=0)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    pca = PCA(dims, svd_solver="randomized", random_state=0).fit((x - mean) / std)
    out = np.empty((n, dims), dtype=np.float32)
    for a in range(0, n, 20_000):
        xb = synthetic(min(n - a, 20_000), 2048, rows_seed=1 + a)
        out[a : a + len(xb)] = pca.transform((xb - mean) / std)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--root", type=Path, default=Path("/tmp/ll-map-scale"))
    ap.add_argument(
        "--landmarks", type=int, default=None, help="LATENTLAB_MAP_LANDMARKS (default: the product's)"
    )
    ap.add_argument(
        "--index-rows",
        type=int,
        default=None,
        help="common.maps.neighbors.INDEX_ROWS (default: the module's)",
    )
    ap.add_argument(
        "--transform-only", type=int, default=0, help="only time transform into a map of this many rows"
    )
    args = ap.parse_args()
    if args.index_rows is not None:
        from common.maps import neighbors as nb

        nb.INDEX_ROWS = args.index_rows
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
    from common.maps import neighbors as nb

    print(f"# IVF index above {nb.INDEX_ROWS:,} training rows: √n cells, {nb.PROBE} probed", flush=True)
    ds_id = write_synthetic_dataset(settings, sessions, args.samples, args.root)
    fit(settings, sessions, ds_id)


if __name__ == "__main__":
    main()
