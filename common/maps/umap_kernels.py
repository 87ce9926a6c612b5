"""UMAP's transform kernels, vendored from umap-learn 0.5.12 (BSD-3-Clause, (c) 2017 Leland McInnes).

Why a copy: serving a click must not import umap-learn (sklearn + pynndescent + umap take 5–10 s to import
on a 2-core machine, and pynndescent's search closures are compiled again for every loaded index). These
are the same algorithms, line for line, with three changes: serial (``parallel=False``: a click projects a
handful of points, and a process that forks children must not have started numba's thread pool),
``cache=True`` (compiled once per machine into ``NUMBA_CACHE_DIR``), and the epoch loop inside numba.

Usage::

    sigmas, rhos = smooth_knn_dist(knn_dists, float(k), local_connectivity=0.0)
    rows, cols, vals = membership_strengths(knn_indices, knn_dists, sigmas, rhos)
    xy0 = init_from_graph(indptr, indices, data, row_sums, embedding)  # [m, 2] float32
    xy = optimize_transform(xy0, embedding, head, tail, n, epochs_per_sample, a, b, rng_state_per_sample,
                            gamma, initial_alpha, negative_sample_rate, n_epochs)
"""

from __future__ import annotations

import numba
import numpy as np

SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
NPY_FLOATMAX = np.finfo(np.float32).max


@numba.njit(
    locals={
        "psum": numba.types.float32,
        "lo": numba.types.float32,
        "mid": numba.types.float32,
        "hi": numba.types.float32,
    },
    cache=True,
)
def smooth_knn_dist(distances, k, n_iter=64, local_connectivity=1.0, bandwidth=1.0):
    """[m, k] sorted neighbour distances -> (sigmas [m], rhos [m]) float32, as ``umap.umap_``."""
    target = np.log2(k) * bandwidth
    rho = np.zeros(distances.shape[0], dtype=np.float32)
    result = np.zeros(distances.shape[0], dtype=np.float32)

    mean_distances = np.mean(distances)

    for i in range(distances.shape[0]):
        lo = 0.0
        hi = NPY_FLOATMAX
        mid = 1.0

        ith_distances = distances[i]
        non_zero_dists = ith_distances[ith_distances > 0.0]
        if non_zero_dists.shape[0] >= local_connectivity:
            index = int(np.floor(local_connectivity))
            interpolation = local_connectivity - index
            if index > 0:
                rho[i] = non_zero_dists[index - 1]
                if interpolation > SMOOTH_K_TOLERANCE:
                    rho[i] += interpolation * (non_zero_dists[index] - non_zero_dists[index - 1])
            else:
                rho[i] = interpolation * non_zero_dists[0]
        elif non_zero_dists.shape[0] > 0:
            rho[i] = np.max(non_zero_dists)

        for _ in range(n_iter):
            psum = 0.0
            for j in range(1, distances.shape[1]):
                d = distances[i, j] - rho[i]
                if d > 0:
                    psum += np.exp(-(d / mid))
                else:
                    psum += 1.0

            if np.fabs(psum - target) < SMOOTH_K_TOLERANCE:
                break

            if psum > target:
                hi = mid
                mid = (lo + hi) / 2.0
            else:
                lo = mid
                if hi >= NPY_FLOATMAX:
                    mid *= 2
                else:
                    mid = (lo + hi) / 2.0

        result[i] = mid

        if rho[i] > 0.0:
            mean_ith_distances = np.mean(ith_distances)
            if result[i] < MIN_K_DIST_SCALE * mean_ith_distances:
                result[i] = MIN_K_DIST_SCALE * mean_ith_distances
        else:
            if result[i] < MIN_K_DIST_SCALE * mean_distances:
                result[i] = MIN_K_DIST_SCALE * mean_distances

    return result, rho


@numba.njit(
    locals={
        "knn_dists": numba.types.float32[:, ::1],
        "sigmas": numba.types.float32[::1],
        "rhos": numba.types.float32[::1],
        "val": numba.types.float32,
    },
    cache=True,
)
def membership_strengths(knn_indices, knn_dists, sigmas, rhos):
    """The bipartite fuzzy 1-skeleton (new points x training points) as COO (rows, cols, vals)."""
    n_samples = knn_indices.shape[0]
    n_neighbors = knn_indices.shape[1]

    rows = np.zeros(knn_indices.size, dtype=np.int32)
    cols = np.zeros(knn_indices.size, dtype=np.int32)
    vals = np.zeros(knn_indices.size, dtype=np.float32)

    for i in range(n_samples):
        for j in range(n_neighbors):
            if knn_indices[i, j] == -1:
                continue
            if knn_dists[i, j] - rhos[i] <= 0.0 or sigmas[i] == 0.0:
                val = 1.0
            else:
                val = np.exp(-((knn_dists[i, j] - rhos[i]) / (sigmas[i])))

            rows[i * n_neighbors + j] = i
            cols[i * n_neighbors + j] = knn_indices[i, j]
            vals[i * n_neighbors + j] = val

    return rows, cols, vals


@numba.njit(cache=True)
def init_from_graph(indptr, indices, data, row_sums, embedding):
    """Each new point at the membership-weighted mean of its neighbours' map points (at a neighbour's
    point when it coincides with it; NaN without neighbours); ``umap.umap_.init_graph_transform``.
    ``row_sums`` are the rows' sums as numpy computes them (its summation order is not sequential)."""
    m = indptr.shape[0] - 1
    result = np.zeros((m, embedding.shape[1]), dtype=np.float32)
    for row in range(m):
        a, b = indptr[row], indptr[row + 1]
        if b == a:
            result[row, :] = np.nan
            continue
        row_sum = row_sums[row]
        for p in range(a, b):
            if data[p] == 1:
                result[row, :] = embedding[indices[p], :]
                break
            for d in range(embedding.shape[1]):
                result[row, d] += data[p] / row_sum * embedding[indices[p], d]
    return result


@numba.njit(cache=True)
def _clip(val):
    if val > 4.0:
        return 4.0
    elif val < -4.0:
        return -4.0
    else:
        return val


@numba.njit(cache=True)
def _tau_rand_int(state):
    state[0] = (((state[0] & 4294967294) << 12) & 0xFFFFFFFF) ^ (
        (((state[0] << 13) & 0xFFFFFFFF) ^ state[0]) >> 19
    )
    state[1] = (((state[1] & 4294967288) << 4) & 0xFFFFFFFF) ^ (
        (((state[1] << 2) & 0xFFFFFFFF) ^ state[1]) >> 25
    )
    state[2] = (((state[2] & 4294967280) << 17) & 0xFFFFFFFF) ^ (
        (((state[2] << 3) & 0xFFFFFFFF) ^ state[2]) >> 11
    )
    return np.int32(state[0] ^ state[1] ^ state[2])


@numba.njit(fastmath=True, cache=True)
def _rdist(x, y):
    result = np.float32(0.0)
    for i in range(x.shape[0]):
        diff = np.float32(x[i] - y[i])
        result += diff * diff
    return result


@numba.njit(fastmath=True, cache=True)
def _transform_epoch(
    head_embedding,
    tail_embedding,
    head,
    tail,
    n_vertices,
    epochs_per_sample,
    a,
    b,
    rng_state_per_sample,
    gamma,
    dim,
    alpha,
    epochs_per_negative_sample,
    epoch_of_next_negative_sample,
    epoch_of_next_sample,
    n,
):
    # umap.layouts._optimize_layout_euclidean_single_epoch without densMAP and move_other
    for i in range(epochs_per_sample.shape[0]):
        if epoch_of_next_sample[i] <= n:
            j = head[i]
            k = tail[i]

            current = head_embedding[j]
            other = tail_embedding[k]

            dist_squared = _rdist(current, other)

            if dist_squared > 0.0:
                grad_coeff = -2.0 * a * b * pow(dist_squared, b - 1.0)
                grad_coeff /= a * pow(dist_squared, b) + 1.0
            else:
                grad_coeff = 0.0

            for d in range(dim):
                grad_d = _clip(grad_coeff * (current[d] - other[d]))
                current[d] += grad_d * alpha

            epoch_of_next_sample[i] += epochs_per_sample[i]

            n_neg_samples = int((n - epoch_of_next_negative_sample[i]) / epochs_per_negative_sample[i])

            for _ in range(n_neg_samples):
                k = _tau_rand_int(rng_state_per_sample[j]) % n_vertices

                other = tail_embedding[k]

                dist_squared = _rdist(current, other)

                if dist_squared > 0.0:
                    grad_coeff = 2.0 * gamma * b
                    grad_coeff /= (0.001 + dist_squared) * (a * pow(dist_squared, b) + 1)
                elif j == k:
                    continue
                else:
                    grad_coeff = 0.0

                for d in range(dim):
                    if grad_coeff > 0.0:
                        grad_d = _clip(grad_coeff * (current[d] - other[d]))
                    else:
                        grad_d = 0
                    current[d] += grad_d * alpha

            epoch_of_next_negative_sample[i] += n_neg_samples * epochs_per_negative_sample[i]


@numba.njit(cache=True)
def optimize_transform(
    head_embedding,
    tail_embedding,
    head,
    tail,
    n_vertices,
    epochs_per_sample,
    a,
    b,
    rng_state_per_sample,
    gamma,
    initial_alpha,
    negative_sample_rate,
    n_epochs,
):
    """Move the new points (``head_embedding``, modified in place and returned) against the fixed map;
    ``umap.layouts.optimize_layout_euclidean`` with ``parallel=False, move_other=False``."""
    dim = head_embedding.shape[1]
    alpha = initial_alpha
    epochs_per_negative_sample = epochs_per_sample / negative_sample_rate
    epoch_of_next_negative_sample = epochs_per_negative_sample.copy()
    epoch_of_next_sample = epochs_per_sample.copy()
    for n in range(n_epochs):
        _transform_epoch(
            head_embedding,
            tail_embedding,
            head,
            tail,
            n_vertices,
            epochs_per_sample,
            a,
            b,
            rng_state_per_sample,
            gamma,
            dim,
            alpha,
            epochs_per_negative_sample,
            epoch_of_next_negative_sample,
            epoch_of_next_sample,
            n,
        )
        alpha = initial_alpha * (1.0 - (float(n) / float(n_epochs)))
    return head_embedding


@numba.njit(fastmath=True, cache=True)
def _euclidean(x, y):
    result = 0.0
    for i in range(x.shape[0]):
        result += (x[i] - y[i]) ** 2
    return np.sqrt(result)


@numba.njit(cache=True)
def _manhattan(x, y):
    result = 0.0
    for i in range(x.shape[0]):
        result += np.abs(x[i] - y[i])
    return result


@numba.njit(cache=True)
def _cosine(x, y):
    result = 0.0
    norm_x = 0.0
    norm_y = 0.0
    for i in range(x.shape[0]):
        result += x[i] * y[i]
        norm_x += x[i] ** 2
        norm_y += y[i] ** 2
    if norm_x == 0.0 and norm_y == 0.0:
        return 0.0
    elif norm_x == 0.0 or norm_y == 0.0:
        return 1.0
    else:
        return 1.0 - (result / np.sqrt(norm_x * norm_y))


@numba.njit(cache=True)
def _correlation(x, y):
    mu_x = 0.0
    mu_y = 0.0
    norm_x = 0.0
    norm_y = 0.0
    dot_product = 0.0
    for i in range(x.shape[0]):
        mu_x += x[i]
        mu_y += y[i]
    mu_x /= x.shape[0]
    mu_y /= x.shape[0]
    for i in range(x.shape[0]):
        shifted_x = x[i] - mu_x
        shifted_y = y[i] - mu_y
        norm_x += shifted_x**2
        norm_y += shifted_y**2
        dot_product += shifted_x * shifted_y
    if norm_x == 0.0 and norm_y == 0.0:
        return 0.0
    elif dot_product == 0.0:
        return 1.0
    else:
        return 1.0 - (dot_product / np.sqrt(norm_x * norm_y))


METRICS = {"euclidean": 0, "manhattan": 1, "cosine": 2, "correlation": 3}


@numba.njit(cache=True)
def candidate_distances(queries, train, cand, metric):
    """[m, c] distances from each query row to its candidate training rows, computed exactly as
    umap.distances does (``metric``: a ``METRICS`` code)."""
    out = np.empty(cand.shape, dtype=np.float64)
    for i in range(cand.shape[0]):
        x = queries[i]
        for j in range(cand.shape[1]):
            y = train[cand[i, j]]
            if metric == 0:
                out[i, j] = _euclidean(x, y)
            elif metric == 1:
                out[i, j] = _manhattan(x, y)
            elif metric == 2:
                out[i, j] = _cosine(x, y)
            else:
                out[i, j] = _correlation(x, y)
    return out


def make_epochs_per_sample(weights: np.ndarray, n_epochs: int) -> np.ndarray:
    """``umap.umap_.make_epochs_per_sample``: sample an edge every max(w)/w epochs."""
    result = -1.0 * np.ones(weights.shape[0], dtype=np.float64)
    n_samples = n_epochs * (weights / weights.max())
    result[n_samples > 0] = float(n_epochs) / np.float64(n_samples[n_samples > 0])
    return result


KERNELS = {
    "candidate_distances": candidate_distances,
    "smooth_knn_dist": smooth_knn_dist,
    "membership_strengths": membership_strengths,
    "init_from_graph": init_from_graph,
    "optimize_transform": optimize_transform,
}


def compiled_signatures() -> dict[str, int]:
    """How many compiled signatures each transform kernel has in this process (0: not compiled yet)."""
    return {name: len(fn.signatures) for name, fn in KERNELS.items()}
