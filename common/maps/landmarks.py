"""Large maps: UMAP fitted on a seeded subsample of landmark rows, every other row placed by the map's
transform, with progress and cancel checks all the way.

Why: umap-learn's fit grows faster than its input (its neighbour search, the spectral initialisation of
the whole graph, 200 epochs over every edge, on one core because the fit is seeded). Over a million rows
of 256 PCA dims it would run for hours on a 2-core machine with no progress inside its phases. Above
``landmarks`` rows (``LATENTLAB_MAP_LANDMARKS``, default 100,000) the fit instead:

1. picks ``landmarks`` rows: ``sorted(default_rng(seed).choice(n, landmarks, replace=False))``;
2. finds their k nearest landmarks in chunks (``landmark_graph``; progress and a cancel check between
   chunks) and hands that graph to umap-learn (``precomputed_knn``), which fits the layout of the
   landmarks (its epochs report progress). Above ``common.maps.neighbors.INDEX_ROWS`` landmarks (50,000) the
   search goes through a seeded IVF index of the landmarks (``common.maps.neighbors``: recall@15 about 0.99,
   exact distances); at or below it, the exact search by matrix products that transform used to use;
3. places every other row with the fitted map's own ``transform`` (the same search among the landmarks,
   through the same index, then umap-learn's transform epochs), in batches of ``PLACE_BATCH`` with
   progress and a check between batches.

The saved map is the landmarks' map (its training rows are the landmarks; the map records ``landmarks``
and ``placed`` in its info): transforming a new sample into a map of a million points costs what it costs
in a map of ``landmarks`` points, and the loaded map rebuilds the same index from its training rows. At or
below ``landmarks`` rows nothing of this runs and the fit is the plain umap-learn fit, bit for bit.

Usage (``common.maps.reducer.fit_reducer`` calls it)::

    rows = landmark_rows(n, landmarks, seed)
    mp, xy_rows, backend, note, index = fit_landmark_map(z[rows], params, report, check, fit_map)
    xy_rest = place_rows(reducer_of_landmarks, z_rest, report, check)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common.maps import neighbors as nb
from common.maps.neighbors import exact_neighbors, prepare_train
from common.maps.transform import Reducer, UmapMap

LANDMARKS = 100_000  # the default: maps of more rows fit UMAP on this many landmark rows
KNN_CHUNK = 1024  # landmark rows per chunk of the exact neighbour search
INDEX_CHUNK = 8192  # landmark rows per chunk of the indexed search (``common.maps.neighbors``)
PLACE_BATCH = 4096  # rows per transform batch when placing the rest (≤ 10,000: the same epochs as a click)

Report = Callable[..., None]  # (fraction, message, force=False)


def landmark_rows(n: int, landmarks: int, seed: int) -> np.ndarray:
    """The positions (sorted, int64) of the ``landmarks`` rows of ``n`` the map is fitted on."""
    return np.sort(np.random.default_rng(seed).choice(n, landmarks, replace=False)).astype(np.int64)


def landmark_graph(
    z: np.ndarray, k: int, metric: str, report: Report, check: Callable[[], None] | None, span=(0.35, 0.45)
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of ``z`` to each of its rows (itself first, at distance 0), in chunks:
    ([n, k] int64, [n, k] float32), and the IVF index it searched (None: the exact search, at or below
    ``nb.INDEX_ROWS`` rows). The map's transform searches the same way (``Reducer.neighbors``)."""
    n = z.shape[0]
    prepared = None if metric == "manhattan" else prepare_train(z, metric)
    index = None
    chunk = KNN_CHUNK
    if nb.use_index(n, metric):
        report(span[0], f"UMAP: neighbour index of {n:,} landmarks", force=True)
        index = nb.IvfIndex.build(z, metric, check=check)
        chunk = INDEX_CHUNK
    idx = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float32)
    for a in range(0, n, chunk):
        if check is not None:
            check()
        b = min(n, a + chunk)
        if index is None:
            idx[a:b], dists[a:b] = exact_neighbors(z[a:b], z, k, metric, prepared)
        else:
            idx[a:b], dists[a:b] = index.search(z[a:b], z, k, prepared)
        report(span[0] + (span[1] - span[0]) * b / n, f"UMAP: neighbours of {b:,} of {n:,} landmarks")
    return idx, dists, index


def fit_landmark_map(
    z: np.ndarray,
    params: Any,
    report: Report,
    check: Callable[[], None] | None,
    fit_map: Callable[..., tuple[UmapMap, np.ndarray, str, str | None]],
) -> tuple[UmapMap, np.ndarray, str, str | None, nb.IvfIndex | None]:
    """UMAP over the landmark rows ``z`` with a neighbour graph found here (with progress); the last
    item is the index the graph was searched with (for the placement), or None."""
    k = min(params.n_neighbors, z.shape[0] - 1)
    *knn, index = landmark_graph(z, k, params.metric, report, check)
    report(0.45, f"UMAP: fuzzy graph and spectral layout of {z.shape[0]:,} landmarks", force=True)
    return (*fit_map(z, params, check, precomputed_knn=tuple(knn)), index)


def place_rows(
    reducer: Reducer, z: np.ndarray, report: Report, check: Callable[[], None] | None, span=(0.75, 0.9)
) -> np.ndarray:
    """[m, d] rows -> [m, 2] with the landmark map's transform, in batches of ``PLACE_BATCH``."""
    m = z.shape[0]
    out = np.empty((m, 2), dtype=np.float32)
    for a in range(0, m, PLACE_BATCH):
        if check is not None:
            check()
        b = min(m, a + PLACE_BATCH)
        out[a:b] = reducer.transform_z(z[a:b])
        report(span[0] + (span[1] - span[0]) * b / m, f"placing the other rows: {b:,} of {m:,}")
    return out
