"""Fitted 2-D maps of activations: scaler → optional PCA → UMAP, saved lean (plain arrays) and signed.

The chain maps an activation vector x (D = Σ C·H·W over the layers, sorted by name) to
``z = pca((x - mean) / scale)`` (d dims, or D without PCA) and then to the 2-D point ``umap(z)``.

A fitted map is kept as plain arrays, not as a pickled ``umap.UMAP``: the training points' map positions,
their fuzzy-set bandwidths (sigma, rho) and the training matrix ``z``. That is everything UMAP's transform
and inverse read, whichever library fitted the map (umap-learn on CPU, cuML on a GPU), and it carries no
nearest-neighbour search index, no ``graph_`` and no second copy of the data.

* ``transform``: umap-learn's algorithm (its small-data path) for every map size: exact neighbours in
  ``z`` (a matrix product, then exact distances of the candidates), then umap-learn's own fuzzy-set and
  layout kernels (vendored in ``common.umap_kernels``: serving never imports umap-learn).
* ``inverse``: umap-learn's inverse restricted to the k nearest training points on the map: the
  membership-weighted mean of their ``z`` as the start, then the same fuzzy-set cross entropy (the input-
  space memberships exp(-(d - rho)/sigma) should equal the map's 1/(1 + a·r^2b)) lowered over convex
  combinations of those k points, by gradient steps in their k×k Gram matrix. Cost O(k·d) per point plus
  O(k²) per step, whatever the dataset size; umap-learn's own inverse connects every point to min(n, d)
  training points and is O(n·d) with a Python loop over all Delaunay simplices.

Saved per embedding, under ``embeddings/<id>/`` (no pickle):

* ``chain.npz``: scaler and PCA arrays;
* ``map.npz``: embedding [n, 2], sigmas [n], rhos [n];
* ``z.npy``: the training matrix, only when PCA made it small (basis + z within 10 % of the activation
  data); otherwise it is rebuilt from the activation shards at load and checked against the fit's (its
  sha256 without PCA, its row norms through the PCA's matrix product);
* ``train_ids.npy``: the sample ids the map was fitted on, in row order;
* ``manifest.json``: each file's sha256, the map's numbers and an HMAC over the manifest with a key kept
  outside the data root and the database. The embedding row stores the manifest's sha256.

Usage::

    reducer, xy = fit_reducer(batches, n, dim, params, progress)
    manifest_sha = save_reducer(reducer, folder, key, train_ids)
    reducer = load_reducer(folder, manifest_sha, key, z_loader)
    xy_new = reducer.transform(X_new)                                   # [m, 2]
    x_hat, notes = reducer.inverse_with_diagnostics(xy_center)          # [m, D], one dict per point
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.storage import atomic_save_npy, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

FORMAT = "latentlab-reducer-2"
PCA_DIMS = 256  # the default PCA width
PCA_MIN_SAMPLES = 10 * PCA_DIMS  # below this the PCA basis (PCA_DIMS × D) would be > 10 % of the data
PCA_LARGE_DIM = 1024  # above this the full-width training matrix is too costly to fit, keep and reload
PCA_ALWAYS_SAMPLES = 20_000
PCA_FIT_ROWS = 20_000  # the PCA basis is fitted on at most this many rows (random, seeded) ...
PCA_FIT_BYTES = 2 * 2**30  # ... and at most this much float32 sample; every row is projected
SAVED_FRACTION = 0.10  # a saved reducer stays within this share of its activation data when it can
INT32_MIN = np.iinfo(np.int32).min + 1
INT32_MAX = np.iinfo(np.int32).max - 1


class ReducerIntegrityError(ValueError):
    """The saved reducer does not match its manifest, signature or database row; it is not loaded."""


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


# -- the map ----------------------------------------------------------------------------------------------


@dataclass
class UmapMap:
    """What UMAP's transform and inverse read, as arrays and numbers (no estimator object)."""

    embedding: np.ndarray  # [n, 2] float32, the training points on the map
    sigmas: np.ndarray  # [n] float32, each training point's fuzzy-set bandwidth in z
    rhos: np.ndarray  # [n] float32, its distance to its nearest neighbour in z
    a: float
    b: float
    n_neighbors: int
    metric: str = "euclidean"
    local_connectivity: float = 1.0
    repulsion_strength: float = 1.0
    negative_sample_rate: int = 5
    initial_alpha: float = 1.0
    n_epochs: int | None = None
    transform_seed: int = 42
    disconnection_distance: float = math.inf
    spacing: float = 0.0  # median distance from a training point to its nearest other one, on the map
    reach: float = 0.0  # 99th percentile of the distance to the n_neighbors-th neighbour, on the map

    NUMBERS = (
        "a",
        "b",
        "n_neighbors",
        "metric",
        "local_connectivity",
        "repulsion_strength",
        "negative_sample_rate",
        "initial_alpha",
        "n_epochs",
        "transform_seed",
        "disconnection_distance",
        "spacing",
        "reach",
    )

    @classmethod
    def from_umap(cls, um: Any) -> UmapMap:
        """From a fitted ``umap.UMAP`` (umap-learn)."""
        m = cls(
            embedding=np.ascontiguousarray(um.embedding_, dtype=np.float32),
            sigmas=np.ascontiguousarray(um._sigmas, dtype=np.float32),
            rhos=np.ascontiguousarray(um._rhos, dtype=np.float32),
            a=float(um._a),
            b=float(um._b),
            n_neighbors=int(um._n_neighbors),
            metric=str(um.metric),
            local_connectivity=float(um.local_connectivity),
            repulsion_strength=float(um.repulsion_strength),
            negative_sample_rate=int(um.negative_sample_rate),
            initial_alpha=float(um._initial_alpha),
            n_epochs=None if um.n_epochs is None else int(um.n_epochs),
            transform_seed=int(um.transform_seed),
            disconnection_distance=float(um._disconnection_distance),
        )
        m.measure_extent()
        return m

    def measure_extent(self) -> None:
        """Record the map's neighbour spacing and neighbourhood reach (for warnings and error units)."""
        from scipy.spatial import cKDTree

        n = self.embedding.shape[0]
        k = min(n - 1, self.n_neighbors)
        if k < 1:
            return
        dd, _ = cKDTree(self.embedding).query(self.embedding, k + 1)
        self.spacing = float(np.median(dd[:, 1]))
        self.reach = float(np.quantile(dd[:, k], 0.99))

    def numbers(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.NUMBERS}
        if math.isinf(out["disconnection_distance"]):
            out["disconnection_distance"] = "inf"
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], numbers: dict[str, Any]) -> UmapMap:
        kw = {k: v for k, v in numbers.items() if k in cls.NUMBERS}
        kw["disconnection_distance"] = float(kw.get("disconnection_distance", math.inf))
        return cls(
            embedding=np.ascontiguousarray(arrays["embedding"], dtype=np.float32),
            sigmas=np.ascontiguousarray(arrays["sigmas"], dtype=np.float32),
            rhos=np.ascontiguousarray(arrays["rhos"], dtype=np.float32),
            **kw,
        )


@dataclass
class Reducer:
    """The fitted chain: scaler, optional PCA, and the map over the training matrix ``z`` [n, d]."""

    layers: list[str]
    dim: int  # D, the activation vector length
    mean: np.ndarray | None  # [D] scaler mean, or None
    scale: np.ndarray | None  # [D] scaler std (zeros replaced by 1), or None
    pca_mean: np.ndarray | None  # [D]
    components: np.ndarray | None  # [d, D]
    map: UmapMap
    z: np.ndarray  # [n, d] float32
    backend: str = "umap-learn"
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- the chain ------------------------------------------------------------------------------------

    def to_z(self, x: np.ndarray) -> np.ndarray:
        """[n, D] activations -> [n, d] UMAP input (float32)."""
        z = np.asarray(x, dtype=np.float32)
        if self.mean is not None:
            z = (z - self.mean) / self.scale
        if self.components is not None:
            z = (z - self.pca_mean) @ self.components.T  # [n, d]
        return np.ascontiguousarray(z, dtype=np.float32)

    def from_z(self, z: np.ndarray) -> np.ndarray:
        """[n, d] -> [n, D]: undo PCA, then the scaler."""
        x = np.asarray(z, dtype=np.float32)
        if self.components is not None:
            x = x @ self.components + self.pca_mean  # [n, D]
        if self.mean is not None:
            x = x * self.scale + self.mean
        return x.astype(np.float32, copy=False)

    @property
    def embedding(self) -> np.ndarray:
        return self.map.embedding

    @property
    def tree(self):
        """A KD-tree over the training points' map positions (built on first use)."""
        tree = self._cache.get("tree")
        if tree is None:
            from scipy.spatial import cKDTree

            tree = self._cache["tree"] = cKDTree(self.map.embedding)
        return tree

    def nbytes(self) -> int:
        """Memory held by the arrays (z included)."""
        parts = [self.mean, self.scale, self.pca_mean, self.components, self.z]
        parts += [self.map.embedding, self.map.sigmas, self.map.rhos]
        return int(sum(p.nbytes for p in parts if p is not None))

    # -- transform ------------------------------------------------------------------------------------

    def transform(self, x: np.ndarray) -> np.ndarray:
        """[m, D] activations -> [m, 2] points on the existing map (existing points do not move)."""
        return self.transform_z(self.to_z(x))

    def transform_z(self, zq: np.ndarray) -> np.ndarray:
        """[m, d] -> [m, 2]: umap-learn's transform with exact neighbours."""
        from scipy.sparse import coo_matrix

        from common import umap_kernels as kern

        mp = self.map
        zq = np.ascontiguousarray(np.atleast_2d(zq), dtype=np.float32)
        m, n = zq.shape[0], self.z.shape[0]
        if m == 0:
            return np.zeros((0, 2), dtype=np.float32)
        k = min(mp.n_neighbors, n)
        idx, dists = self.neighbors(zq, k)
        idx[dists >= mp.disconnection_distance] = -1
        sigmas, rhos = kern.smooth_knn_dist(
            dists, float(k), 64, float(max(0.0, mp.local_connectivity - 1.0)), 1.0
        )
        rows, cols, vals = kern.membership_strengths(idx, dists, sigmas, rhos)
        graph = coo_matrix((vals, (rows, cols)), shape=(m, n))
        csr = graph.tocsr()
        csr.eliminate_zeros()
        data = csr.data.astype(np.float32)
        row_sums = np.array(
            [data[a:b].sum() for a, b in zip(csr.indptr[:-1], csr.indptr[1:], strict=True)], np.float32
        )
        xy = kern.init_from_graph(
            csr.indptr.astype(np.int64), csr.indices.astype(np.int64), data, row_sums, mp.embedding
        )
        if mp.n_epochs is None:
            n_epochs = 100 if m <= 10000 else 30
        else:
            n_epochs = int(mp.n_epochs // 3.0)
        graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0
        graph.eliminate_zeros()
        epochs_per_sample = kern.make_epochs_per_sample(graph.data, n_epochs)
        rng_state = np.random.RandomState(mp.transform_seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
        rng_per_sample = np.full((m, 3), rng_state, dtype=np.int64) + xy[:, 0].astype(np.float64).view(
            np.int64
        ).reshape(-1, 1)
        xy = kern.optimize_transform(
            xy,
            mp.embedding.copy(),
            graph.row.astype(np.int32),
            graph.col.astype(np.int32),
            n,
            epochs_per_sample,
            float(mp.a),
            float(mp.b),
            rng_per_sample,
            float(mp.repulsion_strength),
            float(mp.initial_alpha) / 4.0,
            float(mp.negative_sample_rate),
            int(n_epochs),
        )
        return np.asarray(xy, dtype=np.float32)

    def neighbors(self, zq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest training rows of each query row under the map's metric: ([m, k] int64,
        [m, k] float32 distances, nearest first). Candidates from a float32 matrix product, their
        distances then computed as umap-learn's metric functions compute them."""
        from common import umap_kernels as kern

        metric = self.map.metric
        z = self.z
        m, n = zq.shape[0], z.shape[0]
        kc = min(n, k + 8)
        out_i = np.empty((m, k), dtype=np.int64)
        out_d = np.empty((m, k), dtype=np.float32)
        step = max(1, (64 * 2**20) // (8 * n))
        for a in range(0, m, step):
            q = np.ascontiguousarray(zq[a : a + step], dtype=np.float32)
            if kc < n:
                if metric == "manhattan":
                    from scipy.spatial.distance import cdist

                    score = cdist(q, z, "cityblock")
                else:
                    train, sq = self._prepared_train(metric)
                    s = _prepare(q, metric) @ train.T  # [c, n]
                    score = sq[None, :] - 2.0 * s if metric == "euclidean" else -s
                cand = np.argpartition(score, kc - 1, axis=1)[:, :kc].astype(np.int64)
            else:
                cand = np.tile(np.arange(n, dtype=np.int64), (len(q), 1))
            exact = kern.candidate_distances(q, z, np.ascontiguousarray(cand), kern.METRICS[metric])
            order = np.argsort(exact, axis=1, kind="stable")[:, :k]
            out_i[a : a + len(q)] = np.take_along_axis(cand, order, axis=1)
            out_d[a : a + len(q)] = np.take_along_axis(exact, order, axis=1)
        return out_i, np.ascontiguousarray(out_d)

    def _prepared_train(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        key = f"train:{metric}"
        got = self._cache.get(key)
        if got is None:
            train = _prepare(self.z, metric)
            sq = np.einsum("ij,ij->i", train, train) if metric == "euclidean" else np.zeros(0, np.float32)
            got = self._cache[key] = (train, sq)
        return got

    # -- inverse --------------------------------------------------------------------------------------

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """[m, 2] map points -> [m, D] activations (the map's inverse in z, then PCA and scaler undone)."""
        return self.inverse_with_diagnostics(points)[0]

    def inverse_with_diagnostics(self, points: np.ndarray, **kw) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """As ``inverse``, plus per point: ``nearest_sample_distance`` (map units, to the nearest training
        point), ``nearest_sample_input_distance`` (in z, to the nearest of the k points it was built from)
        and ``inverse_warning`` (a sentence when the point lies outside the map's extent, else None)."""
        zhat, diag = self.inverse_z(points, **kw)
        notes = []
        for near, near_in in zip(
            diag["nearest_sample_distance"], diag["nearest_sample_input_distance"], strict=True
        ):
            warning = None
            if self.map.reach > 0 and near > self.map.reach:
                warning = (
                    f"the point is {near:.3g} map units from the nearest sample, outside the map's extent "
                    f"(neighbourhoods reach {self.map.reach:.3g}); the inverse extrapolates from the nearest "
                    "samples and may not resemble any of them"
                )
            notes.append(
                {
                    "nearest_sample_distance": float(near),
                    "nearest_sample_input_distance": float(near_in),
                    "inverse_warning": warning,
                }
            )
        return self.from_z(zhat), notes

    def inverse_z(
        self, points: np.ndarray, *, k: int | None = None, method: str = "fuzzy", iters: int = 100
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """[m, 2] -> ([m, d] float32, diagnostics). ``method``:

        * ``fuzzy`` (the product's): the k nearest training points on the map, weighted by the map's
          membership 1/(1 + a·r^2b) of the point to each (umap-learn's inverse initialisation, restricted
          to k; umap-learn uses min(n, d) points), then refined by gradient steps on UMAP's fuzzy-set cross
          entropy over those k points;
        * ``weighted``: that start alone;
        * ``idw``: inverse-distance weights in 2-D, the cheap baseline.

        bench/embedding.py measures all three against umap-learn's inverse.
        The result for a point does not depend on the other points of the call."""
        mp = self.map
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if pts.ndim != 2 or pts.shape[1] != 2 or not np.all(np.isfinite(pts)):
            raise ValueError("map points must be finite (x, y) pairs")
        m, n, d = len(pts), self.z.shape[0], self.z.shape[1]
        k = int(min(n, k or mp.n_neighbors))
        dd, ii = self.tree.query(pts, k)
        dd, ii = dd.reshape(m, k), ii.reshape(m, k)
        if method == "idw":
            weights = 1.0 / np.maximum(dd, 1e-12)
        elif method in ("weighted", "fuzzy"):
            weights = 1.0 / (1.0 + mp.a * dd ** (2 * mp.b))
        else:
            raise ValueError(f"unknown inverse method {method!r}")
        beta = weights / weights.sum(axis=1, keepdims=True)  # [m, k]
        out = np.empty((m, d), dtype=np.float32)
        near_in = np.empty(m)
        for p in range(m):  # one point at a time: the same arithmetic whatever else is in the call
            zs = self.z[ii[p]].astype(np.float64)  # [k, d]
            bp = beta[p]
            if method == "fuzzy" and k > 1:
                cen = zs - bp @ zs  # centred: an accurate Gram matrix
                gram = cen @ cen.T  # [k, k]
                sel = ii[p]
                bp = _fuzzy_weights(
                    gram[None], weights[p][None], mp.sigmas[sel][None], mp.rhos[sel][None], bp[None], iters
                )[0]
            x = bp @ zs  # [d]
            out[p] = x
            near_in[p] = np.sqrt(np.square(zs - x).sum(axis=1).min())
        return out, {"nearest_sample_distance": dd[:, 0], "nearest_sample_input_distance": near_in}


def _prepare(a: np.ndarray, metric: str) -> np.ndarray:
    """Rows ready for a matrix-product neighbour search (float32)."""
    a = np.asarray(a, dtype=np.float32)
    if metric == "correlation":
        a = a - a.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        a = a / np.where(norm > 0, norm, 1.0)
    return np.ascontiguousarray(a, dtype=np.float32)


def _fuzzy_weights(
    gram: np.ndarray, w: np.ndarray, sigma: np.ndarray, rho: np.ndarray, beta0: np.ndarray, iters: int
) -> np.ndarray:
    """Convex weights β [c, k] over each point's k samples, refined to lower UMAP's fuzzy-set cross
    entropy between the map's memberships ``w`` and the input-space memberships exp(-(d_j - rho_j)/sigma_j),
    d_j = |Σ β z - z_j|, with umap's decaying step size. Works in the k×k Gram matrices, so the cost does not
    depend on the dimension."""
    from scipy.special import expit

    diag = np.einsum("ckk->ck", gram)
    sigma = np.maximum(sigma.astype(np.float64), 1e-12)
    rho = rho.astype(np.float64)
    tau = 0.1 * sigma  # smooths max(d - rho, 0) so the gradient never vanishes
    eps = 1e-4
    theta = np.log(np.maximum(beta0, 1e-300))
    for it in range(iters):
        e = np.exp(theta - theta.max(axis=1, keepdims=True))
        beta = e / e.sum(axis=1, keepdims=True)
        g = np.einsum("ckj,cj->ck", gram, beta)
        q = np.einsum("ck,ck->c", beta, g)[:, None]
        dist = np.sqrt(np.maximum(diag - 2.0 * g + q, 1e-24))
        u = (dist - rho) / tau
        mu = np.exp(-tau * np.logaddexp(0.0, u) / sigma)
        coef = (w - (1.0 - w) * mu / (1.0 - mu + eps)) * expit(u) / sigma / dist  # dL/dd_j / d_j
        grad_beta = coef.sum(axis=1, keepdims=True) * g - np.einsum("ckj,cj->ck", gram, coef)
        grad = beta * (grad_beta - np.einsum("ck,ck->c", beta, grad_beta)[:, None])
        scale = np.maximum(np.abs(grad).max(axis=1, keepdims=True), 1e-12)
        theta -= 0.5 * (1.0 - it / iters) * grad / scale
    e = np.exp(theta - theta.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


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
) -> tuple[Reducer, np.ndarray]:
    """Fit scaler → PCA → UMAP over ``n`` rows of width ``dim`` read by ``batches()`` (an iterable
    of [m, D] float arrays, re-readable: it is called once per pass; at most two passes, in batches).

    PCA is fitted on a seeded random sample of at most 20,000 rows (and 2 GiB), then every row is
    projected; memory stays O(sample + n·d) whatever n·D is. Returns the reducer and the [n, 2] map.

    ``check`` (no arguments) is called between phases and between UMAP's optimisation epochs; raising
    from it stops the fit there (a job's cancel check). It never changes the result."""
    report = _Throttled(progress or (lambda f, m: None))
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
        pca.fit(sample)
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
    report(0.35, f"UMAP on {z.shape[0]:,} × {z.shape[1]:,}", force=True)
    between_epochs = None
    if check is not None:
        check()
        said = []

        def between_epochs() -> None:
            if not said:  # the neighbour graph is built: the epochs have begun
                said.append(True)
                report(0.6, "UMAP: optimising the layout", force=True)
            check()

    mp, xy, backend, note = fit_map(z, params, between_epochs)
    if note:
        info["backend_note"] = note
    info["fit_seconds"] = time.perf_counter() - t0
    red = Reducer(list(params.layers), dim, mean, scale, pca_mean, components, mp, z, backend, info)
    return red, xy


def cuml_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("cuml") is not None


class _EpochCheck:
    """A file for the tqdm bar of umap-learn's epoch loop that calls ``check`` on every write: umap-learn
    has no epoch callback, but with ``mininterval`` its bar writes every few epochs, between two of them."""

    def __init__(self, check: Callable[[], None]):
        self.check = check

    def write(self, _text: str) -> int:
        self.check()
        return 0

    def flush(self) -> None:
        pass


def fit_map(
    z: np.ndarray, params: FitParams, check: Callable[[], None] | None = None
) -> tuple[UmapMap, np.ndarray, str, str | None]:
    """Fit the 2-D map over z with the chosen backend: (map, [n, 2], backend, note on a fallback).
    ``check`` is called between the epochs of the CPU fit (see ``fit_reducer``)."""
    note = None
    if params.backend == "cuml" or (params.backend == "auto" and cuml_available()):
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
        tqdm_kwds=None
        if check is None
        else {"disable": False, "file": _EpochCheck(check), "mininterval": 0.1, "miniters": 1},
    )
    xy = np.asarray(um.fit_transform(z), dtype=np.float32)
    mp = UmapMap.from_umap(um)
    return mp, xy, "umap-learn", note


def _fit_map_cuml(z: np.ndarray, params: FitParams) -> tuple[UmapMap, np.ndarray]:
    """cuML's UMAP on the GPU, converted to the same arrays (sigma and rho from cuML's exact kNN).
    Untested here: cuML is not installable on the development machines."""
    from cuml.manifold import UMAP as CumlUMAP
    from cuml.neighbors import NearestNeighbors

    from common import umap_kernels as kern

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


# -- saving and loading ----------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"numpy": np.__version__}
    for name in ("umap-learn", "pynndescent", "scikit-learn", "numba", "cuml"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _sign(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def z_digest(z: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(z, dtype=np.float32).data).hexdigest()


def save_reducer(reducer: Reducer, folder: Path, key: bytes, train_ids: np.ndarray) -> str:
    """Write the reducer's files and signed manifest into ``folder``; returns the manifest's sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    chain = {"dim": np.array(reducer.dim)}
    for name in ("mean", "scale", "pca_mean", "components"):
        value = getattr(reducer, name)
        if value is not None:
            chain[name] = value
    atomic_write_bytes(folder / "chain.npz", _npz_bytes(chain))
    mp = reducer.map
    z = np.ascontiguousarray(reducer.z, dtype=np.float32)
    arrays = {"embedding": mp.embedding, "sigmas": mp.sigmas, "rhos": mp.rhos}
    # z is kept when PCA made it small enough that basis + z stay within 10 % of the activation data;
    # otherwise it is rebuilt from the shards at load (one pass) and checked against the fit's z
    budget = SAVED_FRACTION * z.shape[0] * reducer.dim * 4
    keep_z = reducer.components is not None and reducer.components.nbytes + z.nbytes <= budget
    if not keep_z:
        arrays["z_row_norms"] = np.linalg.norm(z.astype(np.float64), axis=1)
    atomic_write_bytes(folder / "map.npz", _npz_bytes(arrays))
    atomic_save_npy(folder / "train_ids.npy", np.asarray(train_ids, dtype=np.int64))
    files = ["chain.npz", "map.npz", "train_ids.npy"]
    z_source = "shards"
    if keep_z:
        atomic_save_npy(folder / "z.npy", z)
        files.append("z.npy")
        z_source = "file"
    body = {
        "format": FORMAT,
        "layers": reducer.layers,
        "dim": reducer.dim,
        "backend": reducer.backend,
        "z_source": z_source,
        "z_shape": list(reducer.z.shape),
        "z_sha256": z_digest(z),
        "z_exact": reducer.components is None,  # rebuilt bit for bit (elementwise scaling only)
        "map": mp.numbers(),
        "files": {name: sha256_file(folder / name) for name in files},
        "info": reducer.info,
    }
    manifest = dict(body, hmac=_sign(key, body))
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    atomic_write_bytes(folder / "manifest.json", data)
    return hashlib.sha256(data).hexdigest()


def saved_bytes(folder: Path) -> int:
    """Bytes on disk of a saved reducer (every file its manifest lists, and the manifest)."""
    manifest = json.loads((folder / "manifest.json").read_bytes())
    return (
        sum((folder / name).stat().st_size for name in manifest["files"])
        + (folder / "manifest.json").stat().st_size
    )


def verify_manifest(folder: Path, expected_sha256: str, key: bytes) -> dict[str, Any]:
    """Check the manifest's hash (vs the database row), its HMAC and every file's hash; return it."""
    path = folder / "manifest.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReducerIntegrityError(f"the reducer of this embedding is missing ({path})") from None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ReducerIntegrityError("the reducer's manifest does not match the embedding's recorded sha256")
    manifest = json.loads(data)
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    if not hmac.compare_digest(str(manifest.get("hmac", "")), _sign(key, body)):
        raise ReducerIntegrityError(
            "the reducer's signature is not valid (signed with another key or tampered)"
        )
    for name, digest in body["files"].items():
        if "/" in name or name.startswith("."):
            raise ReducerIntegrityError(f"the manifest names an unexpected file {name!r}")
        try:
            actual = sha256_file(folder / name)
        except FileNotFoundError:
            raise ReducerIntegrityError(f"{name} of the reducer is missing") from None
        if actual != digest:
            raise ReducerIntegrityError(f"{name} does not match its signed sha256; refusing to load it")
    return manifest


def load_reducer(
    folder: Path, expected_sha256: str, key: bytes, z_loader: Callable[[np.ndarray, Reducer], np.ndarray]
) -> Reducer:
    """Verify, then load. ``z_loader(train_ids, partial_reducer)`` rebuilds the training matrix from the
    shards when it was not saved; the rebuilt matrix must hash to the recorded sha256."""
    manifest = verify_manifest(folder, expected_sha256, key)
    with np.load(folder / "chain.npz", allow_pickle=False) as npz:
        chain = {k: npz[k] for k in npz.files}
    if manifest.get("format") == FORMAT:
        with np.load(folder / "map.npz", allow_pickle=False) as npz:
            mp = UmapMap.from_arrays({k: npz[k] for k in npz.files}, manifest["map"])
    else:  # latentlab-reducer-1: a pickled umap.UMAP (verified above: signed by this installation's key)
        with open(folder / "umap.pkl", "rb") as fh:
            um = pickle.load(fh)
        mp = UmapMap.from_umap(um)
    placeholder = np.zeros((0, 0), dtype=np.float32)
    reducer = Reducer(
        layers=list(manifest["layers"]),
        dim=int(chain["dim"]),
        mean=chain.get("mean"),
        scale=chain.get("scale"),
        pca_mean=chain.get("pca_mean"),
        components=chain.get("components"),
        map=mp,
        z=placeholder,
        backend=manifest.get("backend", "umap-learn"),
        info=manifest.get("info", {}),
    )
    if manifest["z_source"] == "file":
        z = np.load(folder / "z.npy", allow_pickle=False)
    else:
        train_ids = np.load(folder / "train_ids.npy", allow_pickle=False)
        z = np.ascontiguousarray(z_loader(train_ids, reducer), dtype=np.float32)
        if manifest.get("z_exact", True):
            changed = "z_sha256" in manifest and z_digest(z) != manifest["z_sha256"]
        else:  # through the PCA's matrix product: equal up to BLAS rounding, so compare row norms
            with np.load(folder / "map.npz", allow_pickle=False) as npz:
                norms = npz["z_row_norms"]
            now = np.linalg.norm(z.astype(np.float64), axis=1)
            changed = now.shape != norms.shape or not np.allclose(now, norms, rtol=1e-4, atol=1e-6)
        if changed:
            raise ReducerIntegrityError(
                "the activations this map was fitted on have changed on disk since the fit (they no longer "
                "match what was recorded)"
            )
    reducer.z = np.ascontiguousarray(z, dtype=np.float32)
    if reducer.z.shape[0] != mp.embedding.shape[0]:
        raise ReducerIntegrityError(
            f"the training matrix has {reducer.z.shape[0]} rows; the map has {mp.embedding.shape[0]} points"
        )
    reducer.tree  # noqa: B018 - build the map's KD-tree now, not on the first click
    return reducer
