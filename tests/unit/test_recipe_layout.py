"""The recipe math and the layout contract give bit-identical results to the hand-written slicing they
replaced (sorted layer names, C·H·W each), and the config-only layer table matches a live model's."""

from __future__ import annotations

import numpy as np

from common.ml.activations import flatten_activations, layer_map, layer_table, split_flat
from common.ml.presets import get_preset
from common.research.recipe import combine_activations, masks_from_targets, neighbour_weights

SHAPES = {"midblock": (4, 2, 2), "encoder_bottleneck": (3, 2, 2), "decoder_block_10": (2, 1, 3)}


def _by_hand(vec: np.ndarray, shapes: dict) -> dict:
    """What common/research/generations.py did before: walk the sorted names, slice C·H·W each."""
    out, at = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name]))
        out[name] = vec[at : at + size]
        at += size
    return out


def test_combining_neighbours_is_bit_identical_to_the_hand_written_split():
    rng = np.random.default_rng(7)
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    x = rng.standard_normal((5, d)).astype(np.float32).astype(np.float64)  # [k, D]
    for mode, weights in [("activation_mean", None), ("weighted", [1.0, 2.0, 0.5, 0.0, 3.0])]:
        w = neighbour_weights(mode, 5, weights)
        combined = (w[:, None] * x).sum(axis=0)
        expected = _by_hand(combined, SHAPES)
        targets = combine_activations(x, w, SHAPES)
        masks = masks_from_targets(targets, SHAPES, sorted(SHAPES))
        for name, shape in SHAPES.items():
            assert targets[name].shape == shape
            old = expected[name].astype(np.float32).reshape(1, *shape)
            assert masks[name].dtype == np.float32 and masks[name].tobytes() == old.tobytes()


def test_flatten_and_split_match_the_concatenation_they_replaced():
    rng = np.random.default_rng(3)
    acts = {name: rng.standard_normal((4, *s)).astype(np.float32) for name, s in SHAPES.items()}
    old = np.concatenate([acts[name].reshape(4, -1) for name in sorted(acts)], axis=1)
    assert flatten_activations(acts).tobytes() == old.tobytes()
    back = split_flat(old[1], SHAPES)
    assert all(np.array_equal(back[n], acts[n][1]) for n in SHAPES)


def test_the_config_layer_table_matches_a_live_model():
    from common.ml.hooks import layer_shapes
    from common.ml.hooks import layer_table as live_table
    from common.ml.networks import EDMPrecond

    preset = get_preset("tiny16")
    model = EDMPrecond(**preset.config).eval()
    table = layer_table(preset.config)
    assert {info.name: info.module for info in table} == live_table(model)
    shapes = layer_shapes(model)
    assert {n: tuple(s) for n, s in shapes.items()} == {
        n: i.shape for n, i in layer_map(preset.config).items()
    }
