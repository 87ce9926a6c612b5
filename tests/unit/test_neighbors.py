"""The IVF neighbour index of large maps (common/maps/nb.py): deterministic, close to the exact search on
clustered data with exact distances, a query's neighbours independent of the other queries; maps above
``INDEX_ROWS`` training rows search through it (the landmark graph, the placement, a loaded map's
transform), with the landmark fit's progress and cancel checks kept."""

from __future__ import annotations

import numpy as np
import pytest

from common.maps import neighbors as nb
from common.maps.neighbors import exact_neighbors, prepare_train
from common.maps.reducer import load_reducer, save_reducer
from tests.unit.test_landmarks import fit as fit_landmark_map
from tests.unit.test_reducer import clustered

K = 15


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(got, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def rows():
    """(training rows [6000, 32], new queries [500, 32]): clustered, like a map's PCA rows."""
    x = clustered(6500, 32, seed=4)
    return np.ascontiguousarray(x[:6000]), np.ascontiguousarray(x[6000:])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_the_index_finds_nearly_all_exact_neighbours_with_exact_distances(rows, metric):
    z, q = rows
    prepared = prepare_train(z, metric)
    truth, truth_d = exact_neighbors(q, z, K, metric, prepared)
    index = nb.IvfIndex.build(z, metric)
    got, got_d = index.search(q, z, K, prepared)
    assert len(index.starts) - 1 == round(np.sqrt(len(z)))  # √n cells, every row in one of them
    assert np.array_equal(np.sort(index.order), np.arange(len(z)))
    assert recall(got, truth) >= 0.95
    # the distances are the exact search's for the rows found, nearest first
    assert np.all(np.diff(got_d, axis=1) >= 0)
    assert np.all(got_d >= truth_d - 1e-6)
    found = got[:, 0] == truth[:, 0]
    np.testing.assert_allclose(got_d[found, 0], truth_d[found, 0], rtol=1e-6)
    assert found.mean() > 0.95


def test_the_index_and_its_answers_are_deterministic_and_independent_of_the_other_queries(rows):
    z, q = rows
    prepared = prepare_train(z, "euclidean")
    a, b = nb.IvfIndex.build(z, "euclidean"), nb.IvfIndex.build(z.copy(), "euclidean")
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.order, b.order)
    i1, d1 = a.search(q, z, K, prepared)
    i2, d2 = b.search(q, z, K, prepared)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
    some = [3, 77, 400]
    i3, d3 = a.search(q[some], z, K, prepared)
    assert np.array_equal(i3, i1[some]) and np.array_equal(d3, d1[some])
    # a training row's own neighbours start with itself at distance 0 (the landmark graph's shape)
    own, own_d = a.search(z[:50], z, K, prepared)
    assert np.array_equal(own[:, 0], np.arange(50)) and np.all(own_d[:, 0] == 0)


def test_queries_whose_probed_cells_are_too_small_get_the_exact_search(rows):
    z, q = rows
    prepared = prepare_train(z, "euclidean")
    index = nb.IvfIndex.build(z, "euclidean", cells=2000, probe=1)  # about 3 rows a cell, 23 needed
    got, got_d = index.search(q[:40], z, K, prepared)
    truth, truth_d = exact_neighbors(q[:40], z, K, "euclidean", prepared)
    assert np.array_equal(got, truth) and np.array_equal(got_d, truth_d)


N, DIM, LANDMARKS = 1200, 40, 600


def fit(x, progress=None, check=None):
    return fit_landmark_map(x, LANDMARKS, progress=progress, check=check)


@pytest.fixture(scope="module")
def indexed():
    """A landmark map whose 600 landmarks are searched through the index (INDEX_ROWS lowered to 300):
    (data, reducer, xy, progress messages)."""
    x = clustered(N, DIM, seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb, "INDEX_ROWS", 300)
        said = []
        red, xy = fit(x, progress=lambda f, m: said.append(m), check=lambda: None)
        again, xy2 = fit(x)
    return x, red, xy, said, (again, xy2)


def test_a_large_map_uses_the_index_for_its_graph_its_placement_and_stays_deterministic(indexed):
    x, red, xy, said, (again, xy2) = indexed
    assert any("neighbour index of 600 landmarks" in m for m in said)
    assert any("neighbours of 600 of 600 landmarks" in m for m in said)
    assert any("placing the other rows" in m for m in said)
    assert "ivf:euclidean" in red._cache  # the placement searched the graph's index
    np.testing.assert_array_equal(xy, xy2)  # the same data and seed: the same map, bit for bit
    rows = red.info["landmark_rows"]
    rest = np.setdiff1d(np.arange(N), rows)
    idx, _ = red.neighbors(red.to_z(x[rest[:50]]), 3)  # a placed row sits near its nearest landmarks
    near = np.linalg.norm(xy[rest[:50]] - red.map.embedding[idx[:, 0]], axis=1)
    assert np.median(near) < 0.2 * np.ptp(xy[rows], axis=0).max()


def test_a_loaded_large_map_rebuilds_the_same_index_and_transforms_like_the_fit(
    indexed, tmp_path, monkeypatch
):
    x, red, xy, _, _ = indexed
    monkeypatch.setattr(nb, "INDEX_ROWS", 300)
    rows = red.info["landmark_rows"]
    saved = red.info.pop("landmark_rows")  # the caller pops it before saving (common/research/embeddings.py)
    try:
        sha = save_reducer(red, tmp_path, b"k" * 32, rows)
    finally:
        red.info["landmark_rows"] = saved
    names = {p.name for p in tmp_path.iterdir()}
    assert names <= {"chain.npz", "manifest.json", "map.npz", "train_ids.npy", "z.npy"}  # no index on disk
    loaded = load_reducer(tmp_path, sha, b"k" * 32, lambda ids, partial: partial.to_z(x[ids]))
    assert "ivf:euclidean" not in loaded._cache
    new = x[:64] + np.float32(0.01)
    assert np.array_equal(loaded.transform(new), red.transform(new))
    assert np.array_equal(loaded.index().order, red.index().order)


def test_a_check_stops_the_indexed_graph_between_chunks(monkeypatch):
    x = clustered(N, DIM, seed=2)
    monkeypatch.setattr(nb, "INDEX_ROWS", 300)
    from common.maps import landmarks as lm

    monkeypatch.setattr(lm, "INDEX_CHUNK", 128)  # several chunks, a check between them

    class Stop(Exception):
        pass

    seen = []

    def check():
        if any("neighbours of" in m for m in seen):
            raise Stop

    with pytest.raises(Stop):
        fit(x, progress=lambda f, m: seen.append(m), check=check)
    assert [m for m in seen if "neighbours of" in m] == ["UMAP: neighbours of 128 of 600 landmarks"]
