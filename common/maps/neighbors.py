"""Neighbour search among a map's training rows: exact (``exact_neighbors``) and, for maps of many
training rows, a seeded inverted-file (IVF) index (``IvfIndex``): the training rows are split into cells
by k-means, a query is compared only with the rows of its ``probe`` nearest cells.

Why: the exact search compares every query with every training row. With 100,000 landmark rows that is
100,000 × 256 multiply-adds and a partition of 100,000 scores per query: the landmark graph of a
million-row map took 25 min at load 13 and placing the other 900,000 rows would have taken hours; one new
sample read the whole 100 MB training matrix (315 ms). Through the index a query sees ``probe`` cells of
about √n rows each (about 5 % of the rows at 100,000), and the work stays matrix-shaped: cell by cell,
the rows of the cell (contiguous: the index keeps the rows in cell order) against every query that probes
it, in one matrix product; each query keeps its k + 8 best candidates over its cells, whose exact
distances are then computed as ``exact_neighbors`` computes them (umap-learn's metric functions). So the
distances are exact and only a missed neighbour can differ (bench/map_scale.py reports recall@15 against
the exact search), and a query's neighbours do not depend on the other queries of the call.

Deterministic: the cells come from a fixed-seed k-means over a fixed sample of the rows, so the same
training rows give the same index, at fit time and whenever a saved map is loaded (nothing is saved).

Usage::

    index = IvfIndex.build(z, "euclidean")                          # z: [n, d] float32
    idx, dists = index.search(zq, z, 15, prepare_train(z, "euclidean"))
    # [m, 15] int64, [m, 15] float32, nearest first
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

INDEX_ROWS = 50_000  # maps with more training rows than this search through an index (``use_index``)
CELLS_PER_ROOT = 1.0  # cells = CELLS_PER_ROOT·√n
PROBE = 16  # cells probed per query
KMEANS_SAMPLE = 64  # k-means is fitted on at most this many rows per cell ...
KMEANS_ITERS = 12  # ... in this many Lloyd iterations
SEED = 20240601  # fixed: the index is a function of the training rows alone
BLOCK_BYTES = 64 * 2**20  # score matrix bytes per matrix product


def use_index(n_train: int, metric: str) -> bool:
    """Whether a search over ``n_train`` training rows goes through the index (manhattan never does:
    its candidates come from ``cdist``, not a matrix product)."""
    return n_train > INDEX_ROWS and metric != "manhattan"


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """[m, c] squared euclidean distances up to each row's constant: |b|² - 2 a·b."""
    return b_sq[None, :] - 2.0 * (a @ b.T)


@dataclass
class IvfIndex:
    metric: str
    centroids: np.ndarray  # [c, d] float32, in the prepared space (normalised rows for cosine/correlation)
    centroid_sq: np.ndarray  # [c] float32
    order: np.ndarray  # [n] int64, the training rows sorted by cell (a copy of the rows in this order is
    # kept after the first search: one more training matrix in memory, 100 MB at 100,000 × 256)
    starts: np.ndarray  # [c + 1] int64, cell j holds order[starts[j]:starts[j + 1]]
    probe: int
    _rows: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        z: np.ndarray,
        metric: str,
        cells: int | None = None,
        probe: int = PROBE,
        check: Callable[[], None] | None = None,
    ) -> IvfIndex:
        """k-means cells over the rows of ``z`` [n, d] (a seeded sample, Lloyd iterations in float32)."""
        with threadpool_limits(1):
            return cls._build(z, metric, cells, probe, check)

    @classmethod
    def _build(cls, z, metric, cells, probe, check) -> IvfIndex:
        train, _ = prepare_train(z, metric)
        n = train.shape[0]
        cells = int(cells or max(1, round(CELLS_PER_ROOT * math.sqrt(n))))
        cells = min(cells, n)
        rng = np.random.default_rng(SEED)
        sample = np.sort(rng.choice(n, min(n, KMEANS_SAMPLE * cells), replace=False))
        xs = train[sample]
        cent = xs[np.sort(rng.choice(len(xs), cells, replace=False))].copy()
        for _ in range(KMEANS_ITERS):
            if check is not None:
                check()
            lab = _nearest(xs, cent)
            by = np.argsort(lab, kind="stable")
            counts = np.bincount(lab, minlength=cells)
            full = counts > 0  # an empty cell keeps its centroid
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])[full]
            sums = np.add.reduceat(xs[by].astype(np.float64), first, axis=0)  # [cells with rows, d]
            cent[full] = (sums / counts[full, None]).astype(np.float32)
        lab = _nearest(train, cent, check)
        order = np.argsort(lab, kind="stable").astype(np.int64)
        starts = np.zeros(cells + 1, dtype=np.int64)
        starts[1:] = np.cumsum(np.bincount(lab, minlength=cells))
        cent = np.ascontiguousarray(cent, dtype=np.float32)
        return cls(metric, cent, np.einsum("ij,ij->i", cent, cent), order, starts, min(probe, cells))

    def search(
        self,
        zq: np.ndarray,
        z: np.ndarray,
        k: int,
        prepared: tuple[np.ndarray, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of ``z`` (the rows the index was built on) among each query's probed cells:
        ([m, k] int64, [m, k] float32 distances under the metric, nearest first). ``prepared`` is
        ``prepare_train(z, metric)``. A query whose probed cells hold fewer than k + 8 rows gets the exact
        search. BLAS runs on one thread here: the products are small, and several threads on a shared
        machine spend their time waiting for each other (7-40x slower measured at load 5 on 2 cores)."""
        with threadpool_limits(1):
            return self._search(zq, z, k, prepared)

    def _search(self, zq, z, k, prepared) -> tuple[np.ndarray, np.ndarray]:
        from common.maps import umap_kernels as kern

        metric = self.metric
        train, sq = self._sorted(prepared)
        m, p = zq.shape[0], self.probe
        kc = min(z.shape[0], k + 8)
        zq = np.ascontiguousarray(zq, dtype=np.float32)
        qp = _prepare(zq, metric)
        probes = _nearest_cells(qp, self.centroids, self.centroid_sq, p)  # [m, p]
        # cell-major: each cell's rows are one contiguous block, compared with every query that probes it
        cand_pos = np.full((m, p, kc), -1, dtype=np.int64)  # positions in ``order``
        cand_score = np.full((m, p, kc), np.inf, dtype=np.float32)
        flat = np.argsort(probes.ravel(), kind="stable")
        cells = probes.ravel()[flat]
        bounds = np.flatnonzero(np.diff(cells)) + 1
        for pairs in np.split(flat, bounds):
            c = int(probes.ravel()[pairs[0]])
            lo, hi = int(self.starts[c]), int(self.starts[c + 1])
            if hi == lo:
                continue
            qs, slots = pairs // p, pairs % p
            kk = min(kc, hi - lo)
            step = max(1, BLOCK_BYTES // (4 * (hi - lo)))
            for a in range(0, len(qs), step):
                qa, sa = qs[a : a + step], slots[a : a + step]
                s = qp[qa] @ train[lo:hi].T  # [g, size]
                score = sq[lo:hi][None, :] - 2.0 * s if metric == "euclidean" else -s
                if kk < hi - lo:
                    top = np.argpartition(score, kk - 1, axis=1)[:, :kk]
                else:
                    top = np.tile(np.arange(kk), (len(qa), 1))
                cand_pos[qa, sa, :kk] = lo + top
                cand_score[qa, sa, :kk] = np.take_along_axis(score, top, axis=1)
        cand_pos, cand_score = cand_pos.reshape(m, -1), cand_score.reshape(m, -1)  # [m, p·kc]
        top = np.argpartition(cand_score, kc - 1, axis=1)[:, :kc]
        enough = np.isfinite(np.take_along_axis(cand_score, top, axis=1)).all(axis=1)
        cand = self.order[np.take_along_axis(cand_pos, top, axis=1).clip(0)]  # [m, kc] training rows
        exact = kern.candidate_distances(zq, z, np.ascontiguousarray(cand), kern.METRICS[metric])
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        out_i = np.take_along_axis(cand, order, axis=1)
        out_d = np.take_along_axis(exact, order, axis=1)
        if not enough.all():
            rows = np.flatnonzero(~enough)
            out_i[rows], out_d[rows] = exact_neighbors(zq[rows], z, k, metric, prepared)
        return out_i, np.ascontiguousarray(out_d, dtype=np.float32)

    def _sorted(self, prepared: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The prepared training rows in cell order, and their squared norms (kept after the first call)."""
        if self._rows is None:
            train, sq = prepared
            rows = np.ascontiguousarray(train[self.order])
            self._rows = (rows, sq[self.order] if self.metric == "euclidean" else sq)
        return self._rows


def _prepare(a: np.ndarray, metric: str) -> np.ndarray:
    """Rows ready for a matrix-product neighbour search (float32)."""
    a = np.asarray(a, dtype=np.float32)
    if metric == "correlation":
        a = a - a.mean(axis=1, keepdims=True)
    if metric in ("cosine", "correlation"):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        a = a / np.where(norm > 0, norm, 1.0)
    return np.ascontiguousarray(a, dtype=np.float32)


def exact_neighbors(
    zq: np.ndarray, z: np.ndarray, k: int, metric: str, prepared: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``z`` [n, d] to each row of ``zq`` [m, d] under ``metric``: ([m, k] int64,
    [m, k] float32 distances, nearest first). Candidates from a float32 matrix product, their distances
    then computed as umap-learn's metric functions compute them. ``prepared``: ``prepare_train(z, metric)``
    when the caller keeps it between calls (not used for manhattan)."""
    from common.maps import umap_kernels as kern

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
                train, sq = prepared if prepared is not None else prepare_train(z, metric)
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


def prepare_train(z: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The training rows ready for ``exact_neighbors``: (rows, squared norms for euclidean)."""
    train = _prepare(z, metric)
    sq = np.einsum("ij,ij->i", train, train) if metric == "euclidean" else np.zeros(0, np.float32)
    return train, sq


def _nearest(x: np.ndarray, cent: np.ndarray, check: Callable[[], None] | None = None) -> np.ndarray:
    """[n] index of each row's nearest centroid (float32 products in blocks)."""
    csq = np.einsum("ij,ij->i", cent, cent)
    out = np.empty(x.shape[0], dtype=np.int64)
    step = max(1, BLOCK_BYTES // (4 * len(cent)))
    for a in range(0, x.shape[0], step):
        if check is not None:
            check()
        out[a : a + step] = np.argmin(_sq_dists(x[a : a + step], cent, csq), axis=1)
    return out


def _nearest_cells(q: np.ndarray, cent: np.ndarray, csq: np.ndarray, probe: int) -> np.ndarray:
    """[m, probe] each query's nearest cells, nearest first (ties by cell number)."""
    d = _sq_dists(q, cent, csq)  # [m, c]
    if probe < d.shape[1]:
        part = np.argpartition(d, probe - 1, axis=1)[:, :probe]
        part.sort(axis=1)  # by cell number first: the order below breaks ties the same way every time
    else:
        part = np.tile(np.arange(d.shape[1]), (d.shape[0], 1))
    near = np.take_along_axis(d, part, axis=1)
    return np.take_along_axis(part, np.argsort(near, axis=1, kind="stable"), axis=1).astype(np.int64)
