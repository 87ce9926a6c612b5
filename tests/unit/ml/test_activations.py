"""Flat per-sample activation vectors: sorted layer order, row-major, exact inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.activations import flat_dim, flat_layout, flatten_activations, split_flat

SHAPES = {
    "midblock": (4, 2, 2),
    "decoder_block_2": (1, 3, 3),
    "decoder_block_10": (2, 1, 1),
    "encoder_bottleneck": (3, 2, 2),
}


def _acts(B=3, lib=np):
    rng = np.random.default_rng(0)
    acts = {n: rng.standard_normal((B, *s)).astype(np.float32) for n, s in SHAPES.items()}
    return {n: torch.from_numpy(a) for n, a in acts.items()} if lib is torch else acts


def test_layout_is_sorted_by_name_with_contiguous_offsets():
    layout = flat_layout(SHAPES)
    assert [n for n, *_ in layout] == [
        "decoder_block_10",
        "decoder_block_2",
        "encoder_bottleneck",
        "midblock",
    ]
    assert [(a, b) for _, a, b, _ in layout] == [(0, 2), (2, 11), (11, 23), (23, 39)]
    assert flat_dim(SHAPES) == 39


@pytest.mark.parametrize("lib", [np, torch])
def test_flatten_then_split_round_trips_exactly(lib):
    acts = _acts(lib=lib)
    flat = flatten_activations(acts)
    assert tuple(flat.shape) == (3, 39) and isinstance(flat, np.ndarray if lib is np else torch.Tensor)
    back = split_flat(flat, SHAPES)
    assert set(back) == set(acts)
    for n in acts:
        assert tuple(back[n].shape) == (3, *SHAPES[n])
        assert np.array_equal(np.asarray(back[n]), np.asarray(acts[n]))
    # flattening is row-major per sample, layers in sorted order
    expected = np.concatenate([np.asarray(acts[n]).reshape(3, -1) for n in sorted(acts)], axis=1)
    assert np.array_equal(np.asarray(flat), expected)


@pytest.mark.parametrize("lib", [np, torch])
def test_a_single_vector_splits_into_chw_arrays(lib):
    acts = _acts(B=1, lib=lib)
    vec = flatten_activations(acts)[0]
    back = split_flat(vec, SHAPES)
    for n in acts:
        assert tuple(back[n].shape) == SHAPES[n]
        assert np.array_equal(np.asarray(back[n]), np.asarray(acts[n][0]))


def test_length_mismatch_and_batch_mismatch_are_errors():
    with pytest.raises(ValueError, match="flat length 38 does not match"):
        split_flat(np.zeros((2, 38)), SHAPES)
    with pytest.raises(ValueError, match="expected a flat vector"):
        split_flat(np.zeros((2, 3, 39)), SHAPES)
    acts = _acts()
    acts["midblock"] = acts["midblock"][:2]
    with pytest.raises(ValueError, match="different batch sizes"):
        flatten_activations(acts)
