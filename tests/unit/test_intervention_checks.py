"""The intervention's checks, options and readout math, and a sweep grid's cells (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from common.platform.errors import UserError
from common.research.interventions import check_intervention, readout, relative_change, render_options
from common.research.sweeps import grid_cells

LAYERS = ["encoder_bottleneck", "midblock"]


@pytest.mark.parametrize(
    ("p", "field", "words"),
    [
        ({"mask_window": [0, 4]}, "mask_window", "0 <= start < stop <= 3"),
        ({"mask_window": [2, 2]}, "mask_window", "outside the model's steps"),
        ({"mask_window": [0, 1], "mask_steps": 1}, "mask_window", "not both"),
        ({"strength": 1.01}, "strength", "outside [0, 1]"),
        (
            {"layer_strength": {"decoder_block_1": 0.5}},
            "layer_strength",
            "decoder_block_1, which is not masked",
        ),
        ({"mode": "direction", "neighbors": [1, 2]}, "negative", "needs 'negative'"),
        (
            {"mode": "direction", "neighbors": [1, 2], "negative": [2, 3]},
            "negative",
            "Sample(s) 2 are in both",
        ),
        ({"alpha": 2.0}, "alpha", "only used with mode 'direction'"),
        ({"normalize": True}, "normalize", "only used with mode 'direction'"),
    ],
)
def test_bad_interventions_name_their_field(p, field, words):
    with pytest.raises(UserError) as exc:
        check_intervention(p, steps=3, layers=LAYERS)
    assert exc.value.field == f"params.{field}" and words in str(exc.value)


def test_defaults_are_todays_clamp_and_mask_steps_is_a_window():
    assert render_options({}) == {
        "mask_window": None,
        "strength": 1.0,
        "layer_strength": None,
        "mask_mode": "replace",
        "alpha": 1.0,
        "normalize": False,
    }
    assert render_options({"mask_steps": 2})["mask_window"] == [0, 2]
    direction = render_options({"mode": "direction", "alpha": -0.5, "normalize": True})
    assert direction["mask_mode"] == "add" and direction["alpha"] == -0.5 and direction["normalize"]
    check_intervention(
        {"mode": "direction", "neighbors": [1], "negative": [2], "mask_window": [1, 3]},
        steps=3,
        layers=LAYERS,
    )


def test_readout_sizes_effects_and_image_change():
    rng = np.random.default_rng(0)
    twin = {"midblock": rng.normal(size=(2, 4, 2, 2))}
    acts = {"midblock": twin["midblock"] * np.array([1.0, 1.5])[:, None, None, None]}
    np.testing.assert_allclose(relative_change(acts["midblock"], twin["midblock"]), [0.0, 0.5])
    images = np.zeros((2, 2, 2, 3), np.uint8)
    twins = images.copy()
    twins[1] = 255
    reads = readout({"midblock": np.array([0.1, 0.2])}, acts, twin, images, twins)
    assert reads[0] == {
        "intervention_size": {"midblock": 0.1},
        "effect": {"midblock": 0.0},
        "image_change": 0.0,
    }
    assert reads[1]["effect"]["midblock"] == pytest.approx(0.5) and reads[1]["image_change"] == 255.0
    alone = readout(None, acts, None, images, None)
    assert alone[1] == {"intervention_size": {}, "effect": None, "image_change": None}


def test_grid_cells_are_row_major_in_axis_order():
    cells = grid_cells({"layers": [["a"], ["b"]], "strength": [0.0, 1.0], "seed": [7]})
    assert cells == [
        {"strength": 0.0, "layers": ["a"], "seed": 7},
        {"strength": 0.0, "layers": ["b"], "seed": 7},
        {"strength": 1.0, "layers": ["a"], "seed": 7},
        {"strength": 1.0, "layers": ["b"], "seed": 7},
    ]


def test_contact_sheet_labels_wrap_and_keep_every_layer_name():
    from common.research.sweeps import _wrap

    labels = ("encoder_bottleneck+midblock", "layers=down_blocks.2.attentions.1+mid_block", "strength=0.5")
    for text in labels:
        lines = _wrap(text, 16)
        assert "".join(lines) == text.replace(" ", "")  # nothing cut short (the old label kept 18 characters)
        assert all(len(line) <= 16 for line in lines)
    assert _wrap("midblock", 16) == ["midblock"]
