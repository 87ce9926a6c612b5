"""Large maps (common/maps/landmarks.py): above the landmark threshold UMAP is fitted on a seeded subsample
and the rest is placed by the map's transform, deterministically and recorded; the layout epochs report
their count; at or below the threshold the fit is the plain one, bit for bit."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from common.maps import landmarks as lm
from common.maps.reducer import FitParams, fit_reducer
from tests.unit.test_reducer import batches_of, clustered

N, DIM, LANDMARKS = 900, 40, 400
PARAMS = FitParams(["a"], n_neighbors=8, seed=5)


def fit(x, landmarks, progress=None, check=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_reducer(
            batches_of(x),
            len(x),
            x.shape[1],
            PARAMS,
            progress=progress,
            check=check,
            landmarks=landmarks,
            progress_every=0.0,  # every report reaches ``progress`` (the product writes one every 2 s)
        )


@pytest.fixture(scope="module")
def data():
    return clustered(N, DIM, seed=2)


@pytest.fixture(scope="module")
def large(data):
    """The landmark fit with its progress reports: (reducer, xy, [(fraction, message)])."""
    said = []
    red, xy = fit(data, LANDMARKS, progress=lambda f, m: said.append((f, m)), check=lambda: None)
    return red, xy, said


def test_above_the_threshold_the_map_is_fitted_on_seeded_landmarks_and_records_them(data, large):
    red, xy, _ = large
    rows = red.info["landmark_rows"]
    np.testing.assert_array_equal(rows, lm.landmark_rows(N, LANDMARKS, PARAMS.seed))
    assert len(np.unique(rows)) == LANDMARKS and red.info["landmarks"] == LANDMARKS
    assert red.info["placed"] == N - LANDMARKS
    assert red.z.shape == (LANDMARKS, DIM) and red.map.embedding.shape == (LANDMARKS, 2)
    np.testing.assert_array_equal(red.map.embedding, xy[rows])  # the landmarks keep their fitted points
    assert xy.shape == (N, 2) and np.all(np.isfinite(xy))
    # the placed rows land among the landmarks (transform's own placement, not a constant or a shortcut)
    rest = np.setdiff1d(np.arange(N), rows)
    span = np.ptp(xy[rows], axis=0)
    assert np.all(xy[rest].min(axis=0) >= xy[rows].min(axis=0) - span)
    assert np.all(xy[rest].max(axis=0) <= xy[rows].max(axis=0) + span)
    assert np.std(xy[rest], axis=0).min() > 0.05 * span.min()
    # a placed row sits near the landmarks nearest to it in z
    idx, _ = red.neighbors(red.to_z(data[rest[:50]]), 3)
    near = np.linalg.norm(xy[rest[:50]] - red.map.embedding[idx[:, 0]], axis=1)
    assert np.median(near) < 0.2 * span.max()


def test_the_landmark_fit_is_deterministic(data, large):
    red, xy, _ = large
    again, xy2 = fit(data, LANDMARKS)  # no progress, no check: the same map
    np.testing.assert_array_equal(xy, xy2)
    np.testing.assert_array_equal(red.z, again.z)


def test_progress_moves_through_the_neighbours_the_layout_epochs_and_the_placement(large):
    _, _, said = large
    epochs = [(f, m) for f, m in said if "epoch" in m]
    counts = [tuple(map(int, re.search(r"epoch (\d+) of (\d+)", m).groups())) for _, m in epochs]
    assert counts[0][0] < counts[-1][0] == counts[-1][1], said  # from the first epochs to the last
    assert counts == sorted(counts) and [f for f, _ in epochs] == sorted(f for f, _ in epochs)
    assert any("neighbours of" in m for _, m in said)
    assert any("placing the other rows" in m for _, m in said)
    fractions = [f for f, _ in said]
    assert fractions == sorted(fractions), said  # never goes back


def test_at_or_below_the_threshold_nothing_changes(data):
    plain, xy = fit(data[:300], None)
    said = []
    same, xy_same = fit(data[:300], 300, progress=lambda f, m: said.append(m), check=lambda: None)
    np.testing.assert_array_equal(xy, xy_same)
    np.testing.assert_array_equal(plain.map.embedding, same.map.embedding)
    assert "landmarks" not in same.info and "landmark_rows" not in same.info
    assert any(re.search(r"epoch \d+ of \d+", m) for m in said), said  # the plain fit reports epochs too


@pytest.mark.parametrize("phase", ["neighbours of", "placing the other rows"])
def test_a_check_stops_the_landmark_fit_in_its_own_phases(data, phase, monkeypatch):
    monkeypatch.setattr(lm, "PLACE_BATCH", 128)  # several placement batches, a check between them

    class Stop(Exception):
        pass

    seen = []

    def progress(_f, message):
        seen.append(message)

    def check():
        if any(phase in m for m in seen):
            raise Stop

    with pytest.raises(Stop):
        fit(data, LANDMARKS, progress=progress, check=check)
    assert any(phase in m for m in seen)
