"""A fitted map's runtime: the UMAP layout over training points (``UmapMap``) and the whole chain
scaler → PCA → map (``Reducer``), with ``transform`` (new points onto the map) and ``inverse`` (map points
back to activations). Fitting is ``common/maps/reducer.py``, the saved format ``common/maps/store.py``.

Usage::

    xy_new = reducer.transform(X_new)                                   # [m, 2]
    x_hat, notes = reducer.inverse_with_diagnostics(xy_center)          # [m, D], one dict per point
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.maps.neighbors import exact_neighbors, prepare_train

INT32_MIN = np.iinfo(np.int32).min + 1
INT32_MAX = np.iinfo(np.int32).max - 1


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

        from common.maps import umap_kernels as kern

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
        """The k nearest training rows of each query row under the map's metric: ([m, k] int64,
        [m, k] float32 distances, nearest first). Exact (``exact_neighbors``) up to
        ``common.maps.neighbors.INDEX_ROWS`` training rows; above, through the map's IVF index (built from the
        training rows on first use, the same index whenever the map is loaded)."""
        from common.maps import neighbors as nb

        metric = self.map.metric
        prepared = None if metric == "manhattan" else self._prepared_train(metric)
        if nb.use_index(self.z.shape[0], metric):
            return self.index().search(zq, self.z, k, prepared)
        return exact_neighbors(zq, self.z, k, metric, prepared)

    def index(self):
        """The training rows' ``common.maps.neighbors.IvfIndex`` under its metric (kept after first use)."""
        from common.maps.neighbors import IvfIndex

        key = f"ivf:{self.map.metric}"
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = IvfIndex.build(self.z, self.map.metric)
        return got

    def _prepared_train(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        key = f"train:{metric}"
        got = self._cache.get(key)
        if got is None:
            got = self._cache[key] = prepare_train(self.z, metric)
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
