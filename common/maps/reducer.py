"""Fitted 2-D maps of activations: scaler → optional PCA → UMAP, saved lean (plain arrays) and signed.

This module fits a map; saving and loading it is ``common/maps/store.py``, and the fitted map's runtime
(``UmapMap``, ``Reducer``: transform and inverse) is ``common/maps/transform.py``.

The chain maps an activation vector x (D = Σ C·H·W over the layers, sorted by name) to
``z = pca((x - mean) / scale)`` (d dims, or D without PCA) and then to the 2-D point ``umap(z)``.

A fitted map is kept as plain arrays, not as a pickled ``umap.UMAP``: the training points' map positions,
their fuzzy-set bandwidths (sigma, rho) and the training matrix ``z``. That is everything UMAP's transform
and inverse read, whichever library fitted the map (umap-learn on CPU, cuML on a GPU), and it carries no
nearest-neighbour search index, no ``graph_`` and no second copy of the data.

* ``transform``: umap-learn's algorithm (its small-data path) for every map size: neighbours in ``z``
  (exact: a matrix product, then exact distances of the candidates; above 50,000 training rows through
  a seeded IVF index, ``common.maps.neighbors``), then umap-learn's own fuzzy-set and layout kernels (vendored
  in ``common.maps.umap_kernels``: serving never imports umap-learn).
* ``inverse``: umap-learn's inverse restricted to the k nearest training points on the map: the
  membership-weighted mean of their ``z`` as the start, then the same fuzzy-set cross entropy (the input-
  space memberships exp(-(d - rho)/sigma) should equal the map's 1/(1 + a·r^2b)) lowered over convex
  combinations of those k points, by gradient steps in their k×k Gram matrix. Cost O(k·d) per point plus
  O(k²) per step, whatever the dataset size; umap-learn's own inverse connects every point to min(n, d)
  training points and is O(n·d) with a Python loop over all Delaunay simplices.

The signed format on disk (``save_reducer``, ``load_reducer``, ``ReducerIntegrityError``) is
``common/maps/store.py``; its names are re-exported here for the callers that fit and save in one place.

Usage::

    reducer, xy = fit_reducer(batches, n, dim, params, progress)
    manifest_sha = save_reducer(reducer, folder, key, train_ids)
    reducer = load_reducer(folder, manifest_sha, key, z_loader)
    xy_new = reducer.transform(X_new)                                   # [m, 2]
    x_hat, notes = reducer.inverse_with_diagnostics(xy_center)          # [m, D], one dict per point
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.maps.store import (
    FORMAT,
    SAVED_FRACTION,
    ReducerIntegrityError,
    _sign,
    library_versions,
    load_reducer,
    save_reducer,
    saved_bytes,
    verify_manifest,
    z_digest,
)
from common.maps.transform import Reducer, UmapMap
from common.platform.interrupt import call_interruptible

__all__ = [
    "FORMAT",
    "SAVED_FRACTION",
    "FitParams",
    "Reducer",
    "ReducerIntegrityError",
    "UmapMap",
    "_sign",
    "cuml_available",
    "default_pca_dims",
    "find_ab_params",
    "fit_map",
    "fit_reducer",
    "fit_scaler",
    "library_versions",
    "load_reducer",
    "save_reducer",
    "saved_bytes",
    "verify_manifest",
    "z_digest",
]

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

PCA_DIMS = 256  # the default PCA width
PCA_MIN_SAMPLES = 10 * PCA_DIMS  # below this the PCA basis (PCA_DIMS × D) would be > 10 % of the data
PCA_LARGE_DIM = 1024  # above this the full-width training matrix is too costly to fit, keep and reload
PCA_ALWAYS_SAMPLES = 20_000
PCA_FIT_ROWS = 20_000  # the PCA basis is fitted on at most this many rows (random, seeded) ...
PCA_FIT_BYTES = 2 * 2**30  # ... and at most this much float32 sample; every row is projected


@dataclass
class FitParams:
    layers: list[str]
    scaler: str = "standard"  # standard | none
    pca_dims: int | None = None
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int = 0
    backend: str = "auto"  # auto (cuML when importable, else umap-learn) | umap-learn | cuml


# -- fitting --------------------------------------------------------------------------------------------


def default_pca_dims(n_samples: int, dim: int | None = None) -> int | None:
    """PCA to 256 dims from 20,000 samples, and from 2,560 samples when D > 1,024; otherwise none.

    Why: with PCA the map keeps an n × 256 training matrix (5 MB at 5,000 samples) instead of n × D (2 GB
    at 5,000 × 98,304: fit 72 s and 10 GB, and a second read of every shard at each load); below
    2,560 samples the 256 × D PCA basis itself would be over 10 % of the data, and the data is small."""
    if dim is not None and dim <= PCA_DIMS:
        return None
    if n_samples >= PCA_ALWAYS_SAMPLES:
        return PCA_DIMS
    if dim is not None and dim > PCA_LARGE_DIM and n_samples >= PCA_MIN_SAMPLES:
        return PCA_DIMS
    return None


def fit_scaler(batches: Callable[[], Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Streaming per-feature mean and std over row batches ([m, D] arrays), in float64."""
    acc = _Moments(dim)
    for xb in batches():
        acc.add(np.asarray(xb))
    return acc.result()


class _Moments:
    def __init__(self, dim: int):
        self.total = np.zeros(dim)
        self.total_sq = np.zeros(dim)
        self.n = 0

    def add(self, xb: np.ndarray) -> None:
        for a in range(0, xb.shape[0], 256):  # float64 temporaries of 256 rows, whatever the batch
            part = np.asarray(xb[a : a + 256], dtype=np.float64)
            self.total += part.sum(axis=0)
            self.total_sq += np.square(part).sum(axis=0)
        self.n += xb.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        var = np.maximum(self.total_sq / self.n - np.square(mean), 0.0)
        std = np.sqrt(var)
        std[std < 1e-8] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)


class _Throttled:
    """Progress reports at most every ``every`` seconds (each one is a database write)."""

    def __init__(self, progress: Progress, every: float = 2.0):
        self.progress = progress
        self.every = every
        self.last = -math.inf

    def __call__(self, fraction: float, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.progress(fraction, message)


def fit_reducer(
    batches: Callable[[], Iterable[np.ndarray]],
    n: int,
    dim: int,
    params: FitParams,
    progress: Progress | None = None,
    check: Callable[[], None] | None = None,
    landmarks: int | None = None,
    progress_every: float = 2.0,
) -> tuple[Reducer, np.ndarray]:
    """Fit scaler → PCA → UMAP over ``n`` rows of width ``dim`` read by ``batches()`` (an iterable
    of [m, D] float arrays, re-readable: it is called once per pass; at most two passes, in batches).

    PCA is fitted on a seeded random sample of at most 20,000 rows (and 2 GiB), then every row is
    projected; memory stays O(sample + n·d) whatever n·D is. Returns the reducer and the [n, 2] map.

    ``check`` (no arguments) is called between phases and between UMAP's optimisation epochs, and every
    0.1 s from a watcher thread while PCA fits and UMAP searches neighbours and compiles
    (``common.platform.interrupt``); raising from it stops the fit there (a job's cancel check) and is
    raised from this call. It never changes the result. While a library call runs without progress of its
    own (PCA, the neighbour search, the spectral initialisation) the watcher also reports the phase and
    its seconds so far, so progress moves at least every few seconds; the layout epochs report their count.

    ``landmarks``: above this many rows, UMAP is fitted on that many seeded landmark rows and the others
    are placed by the map's transform (``common.maps.landmarks``); the reducer's training rows are then
    the landmarks, at positions ``reducer.info["landmark_rows"]`` (popped before saving by the caller;
    ``info["landmarks"]`` and ``info["placed"]`` stay). None, or n at or below it: the plain fit.
    ``progress_every``: the least seconds between two calls of ``progress`` (phase starts always report)."""
    report = _Throttled(progress or (lambda f, m: None), progress_every)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"samples": int(n), "dim": int(dim)}
    pca_dims = params.pca_dims or None
    sample_pos = None
    if pca_dims:
        rows = min(n, PCA_FIT_ROWS, max(PCA_FIT_BYTES // (4 * dim), 2 * pca_dims))
        rng = np.random.default_rng(params.seed)
        sample_pos = np.arange(n) if rows >= n else np.sort(rng.choice(n, rows, replace=False))
    mean = scale = sample = None
    if params.scaler == "standard" or sample_pos is not None:
        moments = _Moments(dim) if params.scaler == "standard" else None
        if sample_pos is not None:
            sample = np.empty((len(sample_pos), dim), dtype=np.float32)
        done, taken = 0, 0
        for xb in batches():
            xb = np.asarray(xb, dtype=np.float32)
            if moments is not None:
                moments.add(xb)
            if sample is not None:
                hi = np.searchsorted(sample_pos, done + xb.shape[0])
                sample[taken:hi] = xb[sample_pos[taken:hi] - done]
                taken = hi
            done += xb.shape[0]
            report(
                0.02 + 0.13 * done / n,
                f"pass 1 (scaler{', PCA sample' if sample is not None else ''}): {done:,} of {n:,} rows",
            )
        if done != n:
            raise ValueError(f"expected {n} rows, read {done}")
        if moments is not None:
            mean, scale = moments.result()

    def scaled():
        for xb in batches():
            xb = np.asarray(xb, dtype=np.float32)
            yield xb if mean is None else (xb - mean) / scale

    pca_mean = components = None
    if pca_dims:
        from sklearn.decomposition import PCA

        report(0.15, f"PCA to {pca_dims} dims on {len(sample_pos):,} rows × {dim:,}", force=True)
        if mean is not None:
            sample -= mean
            sample /= scale
        small = pca_dims >= 0.8 * min(sample.shape)
        pca = PCA(
            n_components=pca_dims,
            svd_solver="full" if small else "randomized",
            iterated_power=4,
            random_state=params.seed,
            copy=False,
        )
        t_pca = time.monotonic()

        def pca_heartbeat() -> None:  # from the interrupt watcher: the fit has no progress of its own
            check()
            seconds = time.monotonic() - t_pca
            report(0.15, f"PCA to {pca_dims} dims on {len(sample_pos):,} rows ({seconds:.0f} s)")

        call_interruptible(lambda: pca.fit(sample), pca_heartbeat if check else None)
        del sample
        pca_mean = pca.mean_.astype(np.float32)
        components = np.ascontiguousarray(pca.components_, dtype=np.float32)
        info["pca_explained_variance"] = float(np.sum(pca.explained_variance_ratio_))
        info["pca_fit_rows"] = int(len(sample_pos))
        z = np.empty((n, pca_dims), dtype=np.float32)
        done = 0
        for xb in scaled():
            z[done : done + xb.shape[0]] = (xb - pca_mean) @ components.T
            done += xb.shape[0]
            report(0.25 + 0.1 * done / n, f"pass 2 (projecting): {done:,} of {n:,} rows")
    else:
        z = np.ascontiguousarray(np.concatenate(list(scaled())), dtype=np.float32)
    info["prep_seconds"] = round(time.perf_counter() - t0, 3)
    use_landmarks = landmarks is not None and n > landmarks and not _wants_cuml(params)
    report(
        0.35,
        f"UMAP on {landmarks:,} landmarks of {z.shape[0]:,} × {z.shape[1]:,}"
        if use_landmarks
        else f"UMAP on {z.shape[0]:,} × {z.shape[1]:,}",
        force=True,
    )
    between_epochs = None
    if check is not None:
        check()

        def between_epochs(done: int | None = None, total: int | None = None) -> None:
            phase[0] = None  # the epochs report themselves: the heartbeat stops
            if done is not None and total:
                lo, hi = (0.6, 0.75) if use_landmarks else (0.6, 0.9)
                report(lo + (hi - lo) * done / total, f"UMAP: optimising the layout, epoch {done} of {total}")
            check()

    t_umap = [time.monotonic()]  # when the running library call began

    def heartbeat() -> None:  # from the interrupt watcher while a library call runs
        check()
        if phase[0] is not None:
            report(
                0.35 if not use_landmarks else 0.45,
                f"UMAP: {phase[0]} ({time.monotonic() - t_umap[0]:.0f} s)",
            )

    phase = ["neighbour search, fuzzy graph and spectral layout"]
    if use_landmarks:
        from common.maps import landmarks as lm

        rows = lm.landmark_rows(n, landmarks, params.seed)
        zl = np.ascontiguousarray(z[rows])
        phase[0] = f"fuzzy graph and spectral layout of {landmarks:,} landmarks"

        def guarded_fit(zz, pp, _check, **kw):
            t_umap[0] = time.monotonic()
            return call_interruptible(
                lambda: fit_map(zz, pp, between_epochs, **kw), heartbeat if check else None
            )

        mp, xl, backend, note, index = lm.fit_landmark_map(
            zl,
            params,
            report,
            check,
            guarded_fit,
        )
        red = Reducer(list(params.layers), dim, mean, scale, pca_mean, components, mp, zl, backend, info)
        if index is not None:  # the placement searches the index the graph was built with
            red._cache[f"ivf:{params.metric}"] = index
        rest = np.ones(n, dtype=bool)
        rest[rows] = False
        xy = np.empty((n, 2), dtype=np.float32)
        xy[rows] = xl
        xy[rest] = lm.place_rows(red, z[rest], report, check)
        del z
        info.update(landmarks=int(landmarks), placed=int(n - landmarks), landmark_rows=rows)
    else:
        mp, xy, backend, note = call_interruptible(
            lambda: fit_map(z, params, between_epochs), heartbeat if check else None
        )
        red = Reducer(list(params.layers), dim, mean, scale, pca_mean, components, mp, z, backend, info)
    if note:
        info["backend_note"] = note
    info["fit_seconds"] = time.perf_counter() - t0
    return red, xy


def _wants_cuml(params: FitParams) -> bool:
    return params.backend == "cuml" or (params.backend == "auto" and cuml_available())


def cuml_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("cuml") is not None


class _EpochCheck:
    """A file for the tqdm bar of umap-learn's epoch loop that calls ``check`` on every write: umap-learn
    has no epoch callback, but with ``mininterval`` its bar writes every few epochs, between two of them.
    A ``check`` that takes two arguments also gets the bar's epoch count (done, total)."""

    COUNT = re.compile(r"(\d+)/(\d+)")

    def __init__(self, check: Callable[..., None]):
        self.check = check
        self.counts = len(inspect.signature(check).parameters) >= 2

    def write(self, text: str) -> int:
        found = self.COUNT.findall(text) if self.counts else None
        if found:
            self.check(int(found[-1][0]), int(found[-1][1]))
        else:
            self.check()
        return 0

    def flush(self) -> None:
        pass


def fit_map(
    z: np.ndarray,
    params: FitParams,
    check: Callable[..., None] | None = None,
    precomputed_knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[UmapMap, np.ndarray, str, str | None]:
    """Fit the 2-D map over z with the chosen backend: (map, [n, 2], backend, note on a fallback).
    ``check`` is called between the epochs of the CPU fit (see ``fit_reducer``; with two parameters it
    also gets the epoch count). ``precomputed_knn``: each row's k nearest rows of z, itself first
    ([n, k] indices, distances), used by the CPU fit instead of its own neighbour search."""
    note = None
    if _wants_cuml(params):
        try:
            mp, xy = _fit_map_cuml(z, params)
            return mp, xy, "cuml", None
        except Exception as exc:  # noqa: BLE001 - any GPU failure falls back to the CPU fit
            if params.backend == "cuml":
                raise
            note = f"cuML failed ({type(exc).__name__}: {exc}); fitted with umap-learn on the CPU"
            log.warning(note)
    import umap

    um = umap.UMAP(
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=params.seed,
        n_components=2,
        low_memory=True,
        **(
            {}
            if precomputed_knn is None
            else {"precomputed_knn": (*precomputed_knn, None), "force_approximation_algorithm": True}
        ),
        tqdm_kwds=None
        if check is None
        else {"disable": False, "file": _EpochCheck(check), "mininterval": 0.1, "miniters": 1},
    )
    with warnings.catch_warnings():
        if precomputed_knn is not None:  # no search index is kept: the map's transform is latentlab's own
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        xy = np.asarray(um.fit_transform(z), dtype=np.float32)
    mp = UmapMap.from_umap(um)
    return mp, xy, "umap-learn", note


def _fit_map_cuml(z: np.ndarray, params: FitParams) -> tuple[UmapMap, np.ndarray]:
    """cuML's UMAP on the GPU, converted to the same arrays (sigma and rho from cuML's exact kNN).
    Untested here: cuML is not installable on the development machines."""
    from cuml.manifold import UMAP as CumlUMAP
    from cuml.neighbors import NearestNeighbors

    from common.maps import umap_kernels as kern

    n = z.shape[0]
    k = min(params.n_neighbors, n - 1)
    um = CumlUMAP(
        n_neighbors=k,
        min_dist=params.min_dist,
        metric=params.metric,
        random_state=params.seed,
        n_components=2,
        output_type="numpy",
    )
    xy = np.ascontiguousarray(um.fit_transform(z), dtype=np.float32)
    nn = NearestNeighbors(n_neighbors=k, metric=params.metric, output_type="numpy").fit(z)
    dists, _ = nn.kneighbors(z)
    dists = np.ascontiguousarray(np.sort(np.asarray(dists, dtype=np.float32), axis=1))
    sigmas, rhos = kern.smooth_knn_dist(dists, float(k), 64, 1.0, 1.0)
    a, b = find_ab_params(1.0, params.min_dist)
    disconnection = {"cosine": 2.0, "correlation": 2.0}.get(params.metric, math.inf)
    mp = UmapMap(xy, sigmas, rhos, a, b, k, params.metric, disconnection_distance=disconnection)
    mp.measure_extent()
    return mp, xy


def find_ab_params(spread: float, min_dist: float) -> tuple[float, float]:
    """The map curve 1/(1 + a·r^2b) that best matches the offset exponential (umap.umap_.find_ab_params)."""
    from scipy.optimize import curve_fit

    def curve(x, a, b):
        return 1.0 / (1.0 + a * x ** (2 * b))

    xv = np.linspace(0, spread * 3, 300)
    yv = np.zeros(xv.shape)
    yv[xv < min_dist] = 1.0
    yv[xv >= min_dist] = np.exp(-(xv[xv >= min_dist] - min_dist) / spread)
    params, _ = curve_fit(curve, xv, yv)
    return float(params[0]), float(params[1])
