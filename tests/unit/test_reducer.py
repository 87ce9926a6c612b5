"""The fitted map: umap-learn's transform reproduced, the fast inverse, lean signed files, the PCA rule and
the backend choice. One small map is fitted per module (the first umap-learn fit compiles for a while)."""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import pytest

from common.maps.reducer import (
    FitParams,
    ReducerIntegrityError,
    default_pca_dims,
    fit_map,
    fit_reducer,
    load_reducer,
    save_reducer,
    saved_bytes,
)

KEY = b"k" * 32


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """[n, dim] float32: 6 clusters on a 10-d curved manifold, with noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 10)) * 4
    t = centers[rng.integers(0, 6, n)] + rng.normal(size=(n, 10))
    w = rng.normal(size=(10, dim))
    return (np.tanh(t @ w / 3) + 0.1 * rng.normal(size=(n, dim))).astype(np.float32)


def batches_of(x: np.ndarray, size: int = 128):
    def batches():
        for a in range(0, len(x), size):
            yield x[a : a + size]

    return batches


@pytest.fixture(scope="module")
def data():
    return clustered(560, 600)


@pytest.fixture(scope="module")
def fitted(data):
    """(reducer with PCA to 16, its [n, 2] map, the held-out rows)."""
    return fit_small(data)


def fit_small(data=None):
    data = clustered(560, 600) if data is None else data
    train, held = data[:500], data[500:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer, xy = fit_reducer(
            batches_of(train),
            len(train),
            train.shape[1],
            FitParams(["a"], pca_dims=16, n_neighbors=10, seed=3),
        )
    return reducer, xy, held


def test_transform_reproduces_umap_learn():
    """Compared bit for bit in a fresh interpreter: the comparison must not depend on what earlier tests
    in this process left behind (thread pools, numba's state)."""
    import subprocess
    from pathlib import Path

    code = "from tests.unit.test_reducer import fit_small, transform_matches_umap_learn as t; t(fit_small())"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


def transform_matches_umap_learn(fitted) -> None:
    import scipy.sparse
    import umap
    import umap.layouts as ul
    import umap.umap_ as uu
    from sklearn.metrics import pairwise_distances

    reducer, xy, held = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        um = umap.UMAP(n_neighbors=10, min_dist=0.1, random_state=3, low_memory=True)
        assert np.array_equal(um.fit_transform(reducer.z), xy), "the map is umap-learn's own fit"
        theirs = um.transform(reducer.to_z(held))  # below 4,096 samples umap-learn's neighbours are exact
    zq = reducer.to_z(held)

    # the same neighbours, distances to float32 rounding
    idx, dists = reducer.neighbors(zq, 10)
    dmat = pairwise_distances(zq.astype(np.float64), reducer.z.astype(np.float64))
    assert np.array_equal(np.sort(idx, axis=1), np.sort(np.argsort(dmat, axis=1)[:, :10], axis=1))
    assert np.allclose(dists, np.sort(dmat, axis=1)[:, :10], rtol=1e-5)

    # umap-learn's own kernels on these neighbours give our result bit for bit
    sigmas, rhos = uu.smooth_knn_dist(dists, 10.0, local_connectivity=0.0)
    rows, cols, vals, _ = uu.compute_membership_strengths(idx, dists, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(zq), len(reducer.z)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    start = uu.init_graph_transform(csr, um.embedding_)
    graph.data[graph.data < graph.data.max() / 100.0] = 0.0
    graph.eliminate_zeros()
    rng_state = np.random.RandomState(42).randint(uu.INT32_MIN, uu.INT32_MAX, 3).astype(np.int64)
    ref = ul.optimize_layout_euclidean(
        start,
        um.embedding_.copy(),
        graph.row,
        graph.col,
        100,
        len(reducer.z),
        uu.make_epochs_per_sample(graph.data, 100),
        um._a,
        um._b,
        rng_state,
        1.0,
        0.25,
        5,
        False,
    )
    mine = reducer.transform(held)
    assert np.array_equal(mine, ref)

    # end to end against umap.UMAP.transform: most points identical; a 1-ulp difference in a distance
    # (numba's fastmath sums) can shift umap's random negative samples for the others
    gap = np.linalg.norm(mine - theirs, axis=1)
    assert np.median(gap) < 1e-6 and np.mean(gap < 1e-3) >= 0.6, np.sort(gap)


def test_inverse_round_trips_near_the_point_and_stays_among_real_samples(fitted):
    reducer, xy, _ = fitted
    centres = xy[:40] * 0.5 + xy[40:80] * 0.5  # midpoints of pairs: mostly inside the map
    _, near = reducer.tree.query(xy[:40], 4)
    centres = xy[near].mean(axis=1)  # the product's centre: the mean of a few neighbours' points
    x = reducer.inverse(centres)
    assert x.shape == (40, reducer.dim) and x.dtype == np.float32
    back = reducer.transform(x)
    err = np.median(np.linalg.norm(back - centres, axis=1))
    floor = np.median(np.linalg.norm(reducer.transform_z(reducer.z[:40]) - xy[:40], axis=1))
    assert err < 3 * floor + 3 * reducer.map.spacing, (err, floor, reducer.map.spacing)


def test_inverse_of_a_point_does_not_depend_on_the_batch(fitted):
    reducer, xy, _ = fitted
    pts = xy[[3, 99, 250]] + 0.01
    together = reducer.inverse(pts)
    for i in range(3):  # bit for bit in z; the PCA inverse is a matrix product (BLAS rounds per shape)
        assert np.allclose(reducer.inverse(pts[i : i + 1])[0], together[i], rtol=1e-5, atol=1e-6)
    for method in ("weighted", "fuzzy", "idw"):
        z, _ = reducer.inverse_z(pts, method=method)
        assert np.array_equal(reducer.inverse_z(pts[1:2], method=method)[0][0], z[1])


def test_inverse_far_outside_the_map_answers_with_a_warning(fitted):
    reducer, xy, _ = fitted
    far = xy.max(axis=0) + 100.0
    x, notes = reducer.inverse_with_diagnostics(np.stack([far, xy[7]]))
    assert np.all(np.isfinite(x))
    assert notes[0]["inverse_warning"] and "outside the map" in notes[0]["inverse_warning"]
    assert notes[0]["nearest_sample_distance"] > 99
    assert notes[1]["inverse_warning"] is None and notes[1]["nearest_sample_distance"] < 1e-6
    with pytest.raises(ValueError, match="finite"):
        reducer.inverse(np.array([[np.nan, 0.0]]))


def test_saved_reducer_is_lean_signed_and_loads_to_the_same_results(fitted, tmp_path):
    reducer, xy, held = fitted
    ids = np.arange(len(xy)) + 1000
    sha = save_reducer(reducer, tmp_path, KEY, ids)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["chain.npz", "manifest.json", "map.npz", "train_ids.npy", "z.npy"]  # no pickle
    assert saved_bytes(tmp_path) <= 0.1 * 500 * reducer.dim * 4  # no second copy of the activations

    loaded = load_reducer(tmp_path, sha, KEY, z_loader=None)
    assert loaded.backend == "umap-learn" and loaded.map.numbers() == reducer.map.numbers()
    assert np.array_equal(loaded.transform(held), reducer.transform(held))
    pts = xy[:5] + 0.02
    assert np.array_equal(loaded.inverse(pts), reducer.inverse(pts))


def test_without_pca_the_training_matrix_is_rebuilt_and_checked(data, tmp_path):
    train = data[:300, :64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer, _ = fit_reducer(batches_of(train), 300, 64, FitParams(["a"], n_neighbors=8, seed=1))
    assert reducer.components is None and reducer.z.shape == (300, 64)
    sha = save_reducer(reducer, tmp_path, KEY, np.arange(300))
    assert not (tmp_path / "z.npy").exists()
    calls = []

    def from_shards(ids, partial):
        calls.append(len(ids))
        return partial.to_z(train)

    loaded = load_reducer(tmp_path, sha, KEY, from_shards)
    assert calls == [300] and np.array_equal(
        loaded.transform(data[300:310, :64]), reducer.transform(data[300:310, :64])
    )

    changed = train.copy()
    changed[5, 3] += 1.0
    with pytest.raises(ReducerIntegrityError, match="changed on disk"):
        load_reducer(tmp_path, sha, KEY, lambda ids, partial: partial.to_z(changed))


def test_z_is_rebuilt_through_the_pca_when_keeping_it_would_exceed_a_tenth_of_the_data(data, tmp_path):
    train = data[:300, :64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer, _ = fit_reducer(batches_of(train), 300, 64, FitParams(["a"], pca_dims=16, n_neighbors=8))
    sha = save_reducer(reducer, tmp_path, KEY, np.arange(300))
    assert not (tmp_path / "z.npy").exists()  # 300 x 16 of 300 x 64 would be a quarter of the data
    assert saved_bytes(tmp_path) <= 0.1 * train.nbytes + 20_000  # + the map's own arrays and manifest
    loaded = load_reducer(tmp_path, sha, KEY, lambda ids, partial: partial.to_z(train[ids]))
    assert np.allclose(loaded.z, reducer.z, rtol=1e-5, atol=1e-5)  # one matrix product, BLAS rounding
    changed = train.copy()
    changed[17] *= 1.5
    with pytest.raises(ReducerIntegrityError, match="changed on disk"):
        load_reducer(tmp_path, sha, KEY, lambda ids, partial: partial.to_z(changed[ids]))


def test_tampered_or_foreign_reducers_are_refused(fitted, tmp_path):
    reducer, xy, _ = fitted
    sha = save_reducer(reducer, tmp_path, KEY, np.arange(len(xy)))
    with pytest.raises(ReducerIntegrityError, match="signature"):
        load_reducer(tmp_path, sha, b"another key" * 3, None)
    with pytest.raises(ReducerIntegrityError, match="recorded sha256"):
        load_reducer(tmp_path, "0" * 64, KEY, None)
    blob = bytearray((tmp_path / "map.npz").read_bytes())
    blob[-20] ^= 0xFF
    (tmp_path / "map.npz").write_bytes(bytes(blob))
    with pytest.raises(ReducerIntegrityError, match="map.npz does not match its signed sha256"):
        load_reducer(tmp_path, sha, KEY, None)
    (tmp_path / "map.npz").unlink()
    with pytest.raises(ReducerIntegrityError, match="missing"):
        load_reducer(tmp_path, sha, KEY, None)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "hmac" in manifest and manifest["format"] == "latentlab-reducer-2"


def test_default_pca_rule():
    assert default_pca_dims(60, 8192) is None  # the basis would be bigger than the data
    assert default_pca_dims(2_559, 98_304) is None
    assert default_pca_dims(2_560, 98_304) == 256
    assert default_pca_dims(5_000, 1_024) is None  # a modest width: UMAP on the full vectors
    assert default_pca_dims(20_000, 1_024) == 256
    assert default_pca_dims(100_000, 200) is None  # nothing to reduce
    assert default_pca_dims(30_000) == 256


def test_pca_fit_reads_the_data_twice_in_batches(data):
    passes = []

    def batches():
        passes.append(0)
        for a in range(0, 500, 100):
            passes[-1] += 1
            yield data[a : a + 100]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer, xy = fit_reducer(batches, 500, 600, FitParams(["a"], pca_dims=8, n_neighbors=6, seed=0))
    assert passes == [5, 5] and reducer.z.shape == (500, 8) and xy.shape == (500, 2)
    assert 0 < reducer.info["pca_explained_variance"] <= 1


def _fake_cuml(monkeypatch, fail: bool):
    """A stand-in for cuML with its API (UMAP, NearestNeighbors) backed by umap-learn and scikit-learn."""
    import umap
    from sklearn.neighbors import NearestNeighbors as SkNN

    class UMAP:
        def __init__(self, output_type=None, **kw):
            self.inner = umap.UMAP(**kw)

        def fit_transform(self, z):
            if fail:
                raise RuntimeError("CUDA error: no device")
            return self.inner.fit_transform(z)

    class NearestNeighbors:
        def __init__(self, n_neighbors, metric, output_type=None):
            self.inner = SkNN(n_neighbors=n_neighbors, metric=metric)

        def fit(self, z):
            self.inner.fit(z)
            return self

        def kneighbors(self, z):
            return self.inner.kneighbors(z)

    root, manifold, neighbors = (types.ModuleType(n) for n in ("cuml", "cuml.manifold", "cuml.neighbors"))
    manifold.UMAP, neighbors.NearestNeighbors = UMAP, NearestNeighbors
    for mod in (root, manifold, neighbors):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr("common.maps.reducer.cuml_available", lambda: True)


@pytest.mark.parametrize("fail", [False, True])
def test_cuml_is_used_when_present_and_the_cpu_takes_over_when_it_fails(fitted, monkeypatch, fail):
    reducer, _, held = fitted
    _fake_cuml(monkeypatch, fail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp, xy, backend, note = fit_map(reducer.z, FitParams(["a"], n_neighbors=10, seed=3))
    assert backend == ("umap-learn" if fail else "cuml")
    assert (note is not None) == fail and (not fail or "CUDA error" in note)
    assert mp.embedding.shape == (len(reducer.z), 2) and np.all(mp.sigmas > 0)
    moved = type(reducer)(
        reducer.layers,
        reducer.dim,
        reducer.mean,
        reducer.scale,
        reducer.pca_mean,
        reducer.components,
        mp,
        reducer.z,
        backend,
    )
    assert np.all(np.isfinite(moved.transform(held)))


def test_warm_up_compiles_the_transform_kernels():
    from common.maps import warmup

    status = warmup.warm_up()
    assert status["warmed"] and status["error"] is None
    assert all(n >= 1 for n in status["kernels"].values()), status


def test_a_check_between_umap_epochs_can_stop_the_fit_and_never_changes_the_map(fitted):
    reducer, _, _ = fitted
    params = FitParams(["a"], n_neighbors=10, seed=3)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, plain, _, _ = fit_map(reducer.z, params)
        _, checked, _, _ = fit_map(reducer.z, params, lambda: calls.append(1))
        assert len(calls) >= 2, "the check was not called between epochs"
        np.testing.assert_array_equal(plain, checked)

        class Stop(Exception):
            pass

        def stop() -> None:
            raise Stop

        with pytest.raises(Stop):
            fit_map(reducer.z, params, stop)
