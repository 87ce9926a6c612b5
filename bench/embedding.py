"""Embedding benchmark: the map's inverse, transform, saved size, load time, first-call latency and a
100,000-sample fit, each against umap-learn measured in the same run where umap-learn can run.

Usage::

    .venv/bin/python bench/embedding.py inverse-small    # 2,000 × 4,096: quality and cost vs umap-learn
    .venv/bin/python bench/embedding.py inverse-large    # 5,000 × 98,304: inverse, size, load, transform
    .venv/bin/python bench/embedding.py first-call       # fresh process: cold, disk-cached, warmed up
    .venv/bin/python bench/embedding.py make-dataset --root /tmp/scale   # 100,000 samples of digits16
    .venv/bin/python bench/embedding.py scale --root /tmp/scale          # the fit_embedding job at 100k

Prints figures; decides nothing. Synthetic activations (``synthetic``) are clusters on a curved 16-d
manifold in D dims with noise; ``make-dataset`` runs the demo model itself (see its docstring). Memory
is the process's peak resident set above its level before the measured call (VmHWM, reset through
/proc/self/clear_refs), so it counts numpy, BLAS and numba allocations alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

MB = 2**20


# -- measuring ---------------------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn, *args, **kw):
    """(result, seconds, peak MB above the resident level before the call)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident size
    except OSError:
        pass
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    dt = time.perf_counter() - t0
    return out, dt, max(0.0, _status_mb("VmHWM") - before)


def traced_mb(fn, *args, **kw) -> float:
    """Peak of the memory Python and numpy allocate during the call (tracemalloc), in MB; unlike the
    resident-set figure it is not hidden by pages the process had already touched."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn(*args, **kw)
        return tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def median_time(fn, repeat: int) -> float:
    return statistics.median(measure(fn)[1] for _ in range(repeat))


def synthetic(n: int, dim: int, seed: int = 0, chunk: int = 1000, rows_seed: int | None = None) -> np.ndarray:
    """[n, dim] float32 activations: 10 clusters on a curved 16-d manifold, ReLU-like, with noise.

    ``rows_seed``: None draws the manifold and the rows from ``seed`` together (each seed its own
    manifold); a number draws only the rows from it, on the manifold of ``seed``, so the parts of a large
    dataset written piece by piece are samples of one distribution (one set of class clusters, as in a
    dataset of the demo)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, 16)) * 3
    if rows_seed is None:
        t = (centers[rng.integers(0, 10, n)] + rng.normal(size=(n, 16))).astype(np.float32)
    w1 = rng.normal(size=(16, 64)).astype(np.float32) / 4
    w2 = rng.normal(size=(64, dim)).astype(np.float32) / 8
    if rows_seed is not None:
        rng = np.random.default_rng([seed, rows_seed])
        t = (centers[rng.integers(0, 10, n)] + rng.normal(size=(n, 16))).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, chunk):
        h = np.tanh(t[a : a + chunk] @ w1)
        out[a : a + chunk] = np.maximum(
            h @ w2 + 0.05 * rng.standard_normal((len(h), dim), dtype=np.float32), 0
        )
    return out


def batches_of(x: np.ndarray, size: int = 2048):
    def batches():
        for a in range(0, len(x), size):
            yield x[a : a + size]

    return batches


def product_centres(xy: np.ndarray, count: int, seed: int = 1, k: int = 5) -> np.ndarray:
    """Centres as the product makes them: the mean of a random sample's k nearest map neighbours."""
    from scipy.spatial import cKDTree

    pick = np.random.default_rng(seed).choice(len(xy), count, replace=False)
    _, nb = cKDTree(xy).query(xy[pick], k + 1)
    return xy[nb[:, 1:]].mean(axis=1)


def nearest_real(x: np.ndarray, data: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Distance from each row of x to its nearest row of data (input space), exact."""
    sq = np.einsum("ij,ij->i", data, data)
    out = np.empty(len(x))
    for a in range(0, len(x), chunk):
        q = x[a : a + chunk]
        d2 = sq[None, :] - 2.0 * (q @ data.T) + np.einsum("ij,ij->i", q, q)[:, None]
        out[a : a + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return out


def real_spacing(data: np.ndarray, count: int = 300, seed: int = 2) -> float:
    """Median distance from a real sample to its nearest other real sample (input space)."""
    pick = np.random.default_rng(seed).choice(len(data), count, replace=False)
    sq = np.einsum("ij,ij->i", data, data)
    d2 = sq[None, :] - 2.0 * (data[pick] @ data.T) + sq[pick][:, None]
    d2[np.arange(count), pick] = np.inf
    return float(np.median(np.sqrt(np.maximum(d2.min(axis=1), 0))))


def line(label: str, **figures) -> None:
    parts = []
    for key, value in figures.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    print(f"{label:48s} " + "  ".join(parts), flush=True)


# -- inverse quality and cost at a size umap-learn's inverse runs -----------------------------------------


def _fit(train: np.ndarray, **kw):
    """fit_reducer with the product's defaults (the PCA rule of prepare_fit_embedding included)."""
    from common.maps.reducer import FitParams, default_pca_dims, fit_reducer

    kw.setdefault("pca_dims", default_pca_dims(*train.shape))
    params = FitParams(["synthetic"], seed=0, **kw)
    (red, xy), seconds, peak = measure(fit_reducer, batches_of(train), len(train), train.shape[1], params)
    return red, xy, seconds, peak


def _umap_like(red):
    """A umap-learn UMAP fitted on the reducer's z with the same parameters (the same map, checked)."""
    import umap

    mp = red.map
    um = umap.UMAP(
        n_neighbors=mp.n_neighbors, min_dist=0.1, metric=mp.metric, random_state=0, low_memory=True
    )
    xy = um.fit_transform(red.z)
    same = np.array_equal(xy, red.embedding)
    return um, same


def inverse_small(n: int = 2000, dim: int = 4096, points: int = 50) -> None:
    data = synthetic(n + 16, dim)
    train, held = data[:n], data[n:]
    red, xy, fit_s, fit_mb = _fit(train)
    line(
        f"fit {n:,} x {dim:,} (default: no PCA)",
        seconds=fit_s,
        peak_mb=fit_mb,
        pca=str(red.components is not None),
    )
    um, same = _umap_like(red)
    line("umap-learn UMAP on the same z", same_map=str(same))
    mp = red.map
    centres = product_centres(xy, points)
    pick = np.random.default_rng(3).choice(n, points, replace=False)
    floor = np.linalg.norm(red.transform_z(red.z[pick]) - xy[pick], axis=1)
    line(
        "map: neighbour spacing / transform floor",
        spacing=mp.spacing,
        reach=mp.reach,
        floor_median=float(np.median(floor)),
        floor_in_spacings=float(np.median(floor) / mp.spacing),
    )
    real = real_spacing(train)
    line("real samples: median nearest-other distance", input_space=real)

    def ours(method: str, k: int | None = None):
        return lambda pts: red.from_z(red.inverse_z(pts, method=method, k=k)[0])

    def theirs(pts):
        return red.from_z(np.asarray(um.inverse_transform(pts), dtype=np.float32))

    methods = {
        "ours: kNN + fuzzy-set refinement (k=15, product)": ours("fuzzy"),
        "ours: weighted kNN, no refinement (k=15)": ours("weighted"),
        "ours: weighted kNN, no refinement (k=5)": ours("weighted", 5),
        "baseline: kNN inverse-distance 2-D (k=15)": ours("idw"),
        "umap-learn inverse_transform": theirs,
    }
    results = {}
    for name, fn in methods.items():
        fn(centres[:1])  # compile / warm
        slow = name.startswith("umap")
        one = [measure(fn, centres[i : i + 1]) for i in range(2 if slow else 5)]
        t1, mb1 = statistics.median(r[1] for r in one), max(r[2] for r in one)
        mb1 = max(mb1, traced_mb(fn, centres[5:6]))
        _, t16, mb16 = measure(fn, centres[:16])
        x = fn(centres)
        err = np.linalg.norm(red.transform(x) - centres, axis=1)
        near = nearest_real(x, train)
        results[name] = (t1, mb1)
        line(
            name,
            one_point_s=t1,
            one_point_extra_mb=mb1,
            sixteen_s=t16,
            roundtrip_median=float(np.median(err)),
            roundtrip_p90=float(np.quantile(err, 0.9)),
            roundtrip_in_spacings=float(np.median(err) / mp.spacing),
            nearest_real_median=float(np.median(near)),
            nearest_real_vs_real_spacing=float(np.median(near) / real),
        )
    t_ref, mb_ref = results["umap-learn inverse_transform"]
    t_ours, mb_ours = results["ours: kNN + fuzzy-set refinement (k=15, product)"]
    line(
        "ratio umap-learn / ours (one point)",
        latency=t_ref / t_ours,
        memory=mb_ref / max(mb_ours, 1e-3),
    )
    red.transform(held[:1])
    um.transform(red.to_z(held[:1]))
    _, t_tr, _ = measure(red.transform, held[:1])
    mine, t_tr16, _ = measure(red.transform, held)
    _, t_um, _ = measure(um.transform, red.to_z(held[:1]))
    theirs, t_um16, _ = measure(um.transform, red.to_z(held))
    gap = np.linalg.norm(mine - theirs, axis=1)
    line(
        "transform (warm): ours vs umap-learn",
        ours_one_s=t_tr,
        ours_16_s=t_tr16,
        umap_one_s=t_um,
        umap_16_s=t_um16,
        identical=f"{int(np.sum(gap == 0))}/16",
        median_gap=float(np.median(gap)),
    )


# -- real size: 5,000 x 98,304 ------------------------------------------------------------------------------


def inverse_large(n: int = 5000, dim: int = 98_304) -> None:
    from common.maps.reducer import Reducer, load_reducer, save_reducer, saved_bytes

    data = synthetic(n + 16, dim)
    train, held = data[:n], data[n:].copy()
    data_bytes = train.nbytes
    red, xy, fit_s, fit_mb = _fit(train)
    line(
        f"fit {n:,} x {dim:,} (default: PCA {red.z.shape[1]})",
        seconds=fit_s,
        peak_mb=fit_mb,
        explained=red.info.get("pca_explained_variance"),
        design_umap_full_s=72.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sha = save_reducer(red, folder, b"bench-key", np.arange(n))
        size = saved_bytes(folder)
        line(
            "saved reducer vs activation data",
            mb=size / MB,
            data_mb=data_bytes / MB,
            fraction=size / data_bytes,
            design_pickle_mb=4.1 * 1024,
        )
        loads = [measure(load_reducer, folder, sha, b"bench-key", None) for _ in range(3)]
        loaded = loads[-1][0]
        line("load (verify hashes + read)", seconds=statistics.median(r[1] for r in loads), design_s=4.5)
        same = np.array_equal(loaded.transform(held), red.transform(held))
        line("transform after load == fresh (bitwise)", equal=str(same))
    for label, fn, arg in (
        ("transform", red.transform, held),
        ("inverse (PCA map)", red.inverse, xy[:16] + 0.01),
    ):
        fn(arg[:1])
        one = [measure(fn, arg[i : i + 1]) for i in range(5)]
        _, t16, mb16 = measure(fn, arg)
        line(
            f"{label}: one point / sixteen",
            one_s=statistics.median(r[1] for r in one),
            one_extra_mb=max(max(r[2] for r in one), traced_mb(fn, arg[2:3])),
            sixteen_s=t16,
            sixteen_extra_mb=max(mb16, traced_mb(fn, arg)),
        )
    x = red.inverse(xy[:16] + 0.01)
    line("inverse output", shape=str(x.shape), finite=str(bool(np.all(np.isfinite(x)))))

    # the same map held without PCA (pca_dims=0): z is the scaled full matrix; the inverse's cost depends on
    # (n, D, k), not on how the map was fitted, so the PCA map's layout is reused rather than a 10 GB fit
    full = (train - red.mean) / red.scale
    del data, train
    nopca = Reducer(red.layers, dim, red.mean, red.scale, None, None, red.map, full)
    nopca.inverse(xy[:1])
    one = [measure(nopca.inverse, xy[i : i + 1] + 0.01) for i in range(5)]
    _, t16, mb16 = measure(nopca.inverse, xy[:16] + 0.01)
    t1, mb1 = statistics.median(r[1] for r in one), max(r[2] for r in one)
    mb1, mb16 = max(mb1, traced_mb(nopca.inverse, xy[7:8])), max(mb16, traced_mb(nopca.inverse, xy[:16]))
    line(
        "inverse without PCA (z = 5,000 x 98,304)",
        one_s=t1,
        one_extra_mb=mb1,
        sixteen_s=t16,
        sixteen_extra_mb=mb16,
    )
    line(
        "ratio DESIGN umap-learn (45 s, 19 GB) / ours no-PCA",
        latency=45.0 / t1,
        memory=19 * 1024 / max(mb1, 1e-3),
    )
    del full, nopca

    um, same = _umap_like(red)  # PCA first, then umap-learn's own inverse in 256-d (the option 1)
    um.inverse_transform(xy[:1] + 0.01)
    one = [measure(um.inverse_transform, xy[i : i + 1] + 0.01) for i in range(2)]
    line(
        "umap-learn inverse on the PCA-256 map",
        same_map=str(same),
        one_s=statistics.median(r[1] for r in one),
        one_extra_mb=max(r[2] for r in one),
    )


# -- first call in a fresh process --------------------------------------------------------------------------

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
import numpy as np
mode, folder = sys.argv[1], sys.argv[2]
out = {{}}
if mode == "umap-learn":
    import pickle
    import umap
    out["import_s"] = time.perf_counter() - t0
    um = pickle.load(open(os.path.join(folder, "umap.pkl"), "rb"))
    z = np.load(os.path.join(folder, "umap-z.npy"))
    q = z[:1] + 0.01
    t = time.perf_counter(); um.transform(q); out["first_transform_s"] = time.perf_counter() - t
    t = time.perf_counter(); um.transform(q); out["second_transform_s"] = time.perf_counter() - t
    t = time.perf_counter(); um.inverse_transform(um.embedding_[:1] + 0.01)
    out["first_inverse_s"] = time.perf_counter() - t
else:
    from common.maps.reducer import load_reducer
    from common import warmup
    if mode == "warmed":
        t = time.perf_counter(); warmup.warm_up(); out["warm_up_s"] = time.perf_counter() - t
    sha = open(os.path.join(folder, "sha")).read()
    def z_loader(ids, partial):  # as the product rebuilds z: the training rows through the saved chain
        return partial.to_z(np.load(os.path.join(folder, "x.npy"), mmap_mode="r")[ids])
    from pathlib import Path
    t = time.perf_counter(); red = load_reducer(Path(folder), sha, b"bench-key", z_loader)
    out["load_s"] = time.perf_counter() - t
    q = red.z[:1] + 0.01
    t = time.perf_counter(); red.transform_z(q); out["first_transform_s"] = time.perf_counter() - t
    t = time.perf_counter(); red.transform_z(q); out["second_transform_s"] = time.perf_counter() - t
    t = time.perf_counter(); red.inverse(red.embedding[:1] + 0.01)
    out["first_inverse_s"] = time.perf_counter() - t
out["process_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def first_call(n: int = 3000, dim: int = 2048) -> None:
    import pickle

    from common.maps.reducer import save_reducer

    repo = str(Path(__file__).resolve().parents[1])
    data = synthetic(n, dim)
    red, xy, _, _ = _fit(data)
    um, same = _umap_like(red)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "reducer"
        sha = save_reducer(red, folder, b"bench-key", np.arange(n))
        (folder / "sha").write_text(sha)
        np.save(folder / "x.npy", data)  # the "shards" the lean reducer rebuilds its z from
        np.save(folder / "umap-z.npy", red.z)  # umap-learn's input, for its child
        (folder / "umap.pkl").write_bytes(pickle.dumps(um))
        cache = Path(tmp) / "numba-cache"
        script = CHILD.format(repo=repo)

        def child(mode: str) -> dict:
            env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
            res = subprocess.run(
                [sys.executable, "-c", script, mode, str(folder)],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            return json.loads(res.stdout.strip().splitlines()[-1])

        for label, mode in (
            ("fresh process, empty numba cache (cold)", "cold"),
            ("fresh process, numba cache on disk", "cached"),
            ("fresh process, warm_up() first (worker start)", "warmed"),
            ("umap-learn, fresh process (1st run)", "umap-learn"),
            ("umap-learn, fresh process (2nd run)", "umap-learn"),
        ):
            line(label, **child(mode))


# -- the 100,000-sample dataset --------------------------------------------------------------------------


def scale_settings(root: Path):
    from tests.support.settings import make_settings

    return make_settings(root, chunk_size=1024)


class _Stop(Exception):
    pass


def make_dataset(root: Path, n: int, batch: int) -> None:
    """Generate shards directly with the model: ``n`` samples of the demo generator (the trained
    ``data/models/digits-onestep.safetensors`` when present, else random weights of the ``digits16``
    preset, same shapes), one step as the dataset job runs it, written in the product's layout (1,024-sample
    chunks, one .npy per layer) with a ``samples`` row each, through the product's own functions
    (prepare_generate_dataset, noise_seed, class_for, shard_rel, atomic_save_npy, insert_ignore). The
    forward pass stops once ``midblock`` has run (the rest of the decoder and the PNGs are skipped: this box
    has 2 shared cores); the activations are those ``generate`` captures for the same seeds. Resumable."""
    from sqlalchemy import select

    from common.jobs import now
    from common.ml.activations import layer_map
    from common.ml.generation import generate
    from common.models import Dataset, GeneratorModel, Sample, User
    from common.platform import migrate
    from common.platform.accounts import create_user
    from common.platform.db import insert_ignore, make_engine, session_factory
    from common.platform.storage import atomic_save_npy
    from common.research.datasets import (
        GenerateDatasetParams,
        class_for,
        noise_seed,
        prepare_generate_dataset,
        shard_rel,
    )
    from common.research.modelcache import ModelCache
    from common.research.registry import add_model

    settings = scale_settings(root)
    settings.ensure_data_root()
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    shipped = Path(__file__).resolve().parents[1] / "data" / "models" / "digits-onestep.safetensors"
    with sessions.begin() as s:
        owner = s.scalar(select(User).where(User.username == "bench")) or create_user(
            s, "bench", "bench-password", role="admin"
        )
        model = s.scalar(select(GeneratorModel).where(GeneratorModel.name == "digits"))
        if model is None:
            if shipped.exists():
                ckpt, origin = shipped, "trained demo checkpoint"
            else:
                ckpt, origin = root / "digits16-random.safetensors", "random weights (digits16 preset)"
                _random_checkpoint(ckpt)
            model = add_model(s, settings, "digits", checkpoint=ckpt, preset="digits16")
            print(f"model: {origin} ({ckpt})", flush=True)
        ds = s.scalar(select(Dataset).where(Dataset.name == "scale"))
        if ds is None:
            prepare_generate_dataset(
                s,
                GenerateDatasetParams(model="digits", name="scale", num_samples=n, steps=1),
                owner,
                settings,
            )
            ds = s.scalar(select(Dataset).where(Dataset.name == "scale"))
        ds_id, owner_id, layers, steps = ds.id, owner.id, list(ds.layers), ds.steps
        classes, seed, cs = list(ds.classes), ds.seed, ds.chunk_size
        table = layer_map(model.config, model.architecture)
        net = ModelCache().get(settings, model)
        sigma_max = model.default_sigma_max
    modules = {name: net.get_submodule(table[name].module) for name in layers}
    t0, made = time.perf_counter(), 0
    for k in range((n + cs - 1) // cs):
        start, stop = k * cs, min((k + 1) * cs, n)
        folder = settings.data_root / shard_rel(ds_id, k)
        if all((folder / f"{name}.npy").exists() for name in layers):
            continue
        acts = {name: np.empty((stop - start, table[name].size), dtype=np.float32) for name in layers}
        for a in range(start, stop, batch):
            b = min(a + batch, stop)
            got: dict[str, np.ndarray] = {}

            def hook(module, args, out, name=None, got=got):
                got[name] = out.detach().float().cpu().numpy().reshape(out.shape[0], -1)  # [B, C*H*W]
                if len(got) == len(layers):
                    raise _Stop

            handles = [
                m.register_forward_hook(lambda mod, a_, o, nm=name: hook(mod, a_, o, nm))
                for name, m in modules.items()
            ]
            try:
                idx = range(a, b)
                generate(
                    net,
                    [class_for(classes, i) for i in idx],
                    [noise_seed(seed, i) for i in idx],
                    steps=steps,
                    sigma_max=sigma_max,
                    micro_batch=b - a,
                )
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
            for name in layers:
                acts[name][a - start : b - start] = got[name][: b - a]
            made += b - a
        for name in layers:
            atomic_save_npy(folder / f"{name}.npy", acts[name])
        rows = [
            {
                "dataset_id": ds_id,
                "index": i,
                "class_label": class_for(classes, i),
                "noise_seed": noise_seed(seed, i),
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
        rate = made / (time.perf_counter() - t0)
        print(f"chunk {k}: {stop:,} of {n:,} samples, {rate:.1f} samples/s", flush=True)
    with sessions.begin() as s:
        s.get(Dataset, ds_id).status = "ready"
    print(f"dataset 'scale' ready: {n:,} samples, layers {layers}", flush=True)


def _random_checkpoint(path: Path) -> None:
    import torch

    from common.ml.checkpoints import save_generator
    from common.ml.networks import EDMPrecond
    from common.ml.presets import get_preset

    torch.manual_seed(0)
    model = EDMPrecond(**get_preset("digits16").config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_generator(model, path)


def scale(root: Path) -> None:
    """The real ``fit_embedding`` job (jobs.execute: claim, heartbeat, progress, record) over the dataset
    ``make-dataset`` wrote, in this process; then the map it made: size, load, points, clicks."""
    import threading

    from sqlalchemy import select

    from common import jobs
    from common.maps.reducer import saved_bytes
    from common.models import Dataset, Embedding, Job, Sample, User
    from common.platform.db import make_engine, session_factory
    from common.research.embeddings import (
        FitEmbeddingParams,
        ReducerCache,
        points_columns,
        prepare_fit_embedding,
        run_fit_embedding,
    )

    settings = scale_settings(root)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        owner = s.scalar(select(User).where(User.username == "bench"))
        ds = s.scalar(select(Dataset).where(Dataset.name == "scale"))
        n = s.query(Sample).filter(Sample.dataset_id == ds.id).count()
        dim = sum(int(np.prod(v)) for v in ds.layer_shapes.values())
        params = prepare_fit_embedding(s, FitEmbeddingParams(dataset="scale"), owner, settings)
        job = Job(kind="fit_embedding", queue="embed", owner_id=owner.id, params=params)
        s.add(job)
        s.flush()
        job_id = job.id
    line("dataset", samples=n, dim=dim, activation_mb=n * dim * 4 / MB, pca=str(params["pca_dims"]))
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(5.0):
            with sessions() as s:
                j = s.get(Job, job_id)
                msg = f"{j.progress or 0:.2f} {j.progress_message}"
            if not seen or seen[-1] != msg:
                seen.append(msg)
                print(f"  progress {msg}", flush=True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    outcome, seconds, peak = measure(
        jobs.execute, sessions, settings, job_id, run_fit_embedding, worker="bench"
    )
    stop.set()
    with sessions() as s:
        job = s.get(Job, job_id)
        emb = s.get(Embedding, params["embedding_id"])
        line(
            "fit_embedding job",
            status=outcome.status,
            seconds=seconds,
            peak_rss_mb=peak + _status_mb("VmRSS"),
            peak_extra_mb=peak,
            progress_reports=len(seen),
            backend=str(emb.backend),
        )
        folder = settings.data_root / emb.reducer_path
        size = saved_bytes(folder)
        line("saved reducer vs activation data", mb=size / MB, fraction=size / (n * dim * 4))
        cache = ReducerCache()
        red, load_s, _ = measure(cache.get, settings, s, emb)
        line("load (verify + read)", seconds=load_s, explained=red.info.get("pca_explained_variance"))
        cols, cols_s, cols_mb = measure(points_columns, s, emb)
        line("points_columns", points=len(cols["id"]), seconds=cols_s, extra_mb=cols_mb)
        from common.research.datasets import read_activations

        rows = s.execute(
            select(Sample.act_shard, Sample.act_row).where(Sample.dataset_id == ds.id).limit(1024)
        ).all()
        x = read_activations(settings, [tuple(r) for r in rows], red.layers)
    red.transform(x[:1])
    _, t1, _ = measure(red.transform, x[:1])
    _, t1024, mb1024 = measure(red.transform, x)
    line("transform at 100k: one / 1,024 (a reproject batch)", one_s=t1, batch_s=t1024, batch_extra_mb=mb1024)
    pts = red.embedding[:16] + 0.01
    red.inverse(pts[:1])
    _, i1, imb = measure(red.inverse, pts[:1])
    _, i16, _ = measure(red.inverse, pts)
    line("inverse at 100k: one / sixteen", one_s=i1, one_extra_mb=imb, sixteen_s=i16)


# -- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["inverse-small", "inverse-large", "first-call", "make-dataset", "scale"])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "latentlab-bench-scale")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*n_jobs value.*")
    print(f"# {args.what} on {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, numpy {np.__version__}")
    if args.what == "inverse-small":
        inverse_small()
    elif args.what == "inverse-large":
        inverse_large()
    elif args.what == "first-call":
        first_call()
    elif args.what == "make-dataset":
        make_dataset(args.root, args.samples, args.batch)
    else:
        scale(args.root)


if __name__ == "__main__":
    main()
