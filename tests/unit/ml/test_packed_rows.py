"""Per-row interventions: every row of one model call with its own layers, strength, mode, alpha,
normalisation and step window (a sweep's cells packed into shared micro-batches). At the same micro-batch
a packed row is bit-for-bit the row rendered alone with its own settings, an untouched row is the unmasked
image, and strength 1 is the clamp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.generation import generate
from common.ml.hooks import ActivationMask, RowIntervention, active_hook_count, apply_rows

CAPTURE = ["encoder_bottleneck", "midblock", "decoder_block_1"]


def _masks(ref):
    return {"midblock": ref["mask/midblock"], "encoder_bottleneck": ref["mask/encoder_bottleneck"]}


def test_apply_rows_gives_each_row_its_own_setting_and_leaves_others_untouched():
    g = torch.Generator().manual_seed(0)
    natural, target = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    specs = [
        None,
        RowIntervention(1.0),
        RowIntervention(0.25, window=(1, 2)),
        RowIntervention(0.5, mode="add", alpha=-2.0, normalize=True),
    ]
    out, active = apply_rows(natural, target, specs, step=0)
    assert active == [1, 3]
    assert torch.equal(out[0], natural[0]) and torch.equal(out[2], natural[2])  # none, outside its window
    assert torch.equal(out[1], target[1])  # strength 1: the target itself
    d = target[3] * (natural[3].norm() / target[3].norm())
    assert torch.allclose(out[3], natural[3] - 1.0 * d, atol=1e-6)
    out, active = apply_rows(natural, target, specs, step=1)
    assert active == [1, 2, 3] and torch.equal(out[2], 0.75 * natural[2] + 0.25 * target[2])


@pytest.mark.parametrize("steps", [1, 2])
def test_a_packed_row_is_the_row_rendered_alone_with_its_settings(tiny, ref, steps):
    # five cells of a sweep and their natural twin in one micro-batch of 8
    cells = [
        {"midblock": RowIntervention(0.0), "encoder_bottleneck": RowIntervention(0.0)},
        {"midblock": RowIntervention(1.0)},
        {"encoder_bottleneck": RowIntervention(0.5, window=(steps - 1, steps))},
        {"midblock": RowIntervention(0.7, mode="add", alpha=-0.5, normalize=True)},
        {
            "midblock": RowIntervention(1.0, window=(0, 1)),
            "encoder_bottleneck": RowIntervention(0.3, window=(0, 1)),
        },
        {},  # the natural twin
    ]
    seeds, labels = [5, 6, 5, 7, 8, 5], [3, 1, 3, 2, 0, 3]
    kw = dict(steps=steps, return_float=True, capture=CAPTURE, micro_batch=8, record_intervention=True)
    packed = generate(tiny, labels, seeds, masks=_masks(ref), row_interventions=cells, **kw)
    assert active_hook_count(tiny) == 0
    for r, cell in enumerate(cells):
        if not cell:
            alone = generate(tiny, labels[r : r + 1], seeds[r : r + 1], **kw)
        else:
            spec = next(iter(cell.values()))  # a cell has one mode and window for all its layers
            alone = generate(
                tiny,
                labels[r : r + 1],
                seeds[r : r + 1],
                masks={n: _masks(ref)[n] for n in cell},
                layer_strength={n: s.strength for n, s in cell.items()},
                mask_mode="add" if spec.mode == "add" else "replace",
                alpha=spec.alpha,
                normalize=spec.normalize,
                mask_window=spec.window,
                **kw,
            )
            for name in cell:
                assert packed.intervention[name][r] == pytest.approx(alone.intervention[name][0], rel=1e-12)
        assert np.array_equal(packed.images_float[r], alone.images_float[0]), r
        for name in CAPTURE:
            assert np.array_equal(packed.activations[name][r], alone.activations[name][0]), (r, name)
    # strength 0 is exactly the twin (the unmasked image of the same seed), strength 1 changes it
    assert np.array_equal(packed.images_float[0], packed.images_float[5])
    assert not np.array_equal(packed.images_float[1], packed.images_float[5])
    assert np.isnan(packed.intervention["encoder_bottleneck"][1])  # not masked there
    assert packed.intervention["midblock"][0] == 0.0


def test_row_interventions_are_checked(tiny, ref):
    with pytest.raises(ValueError, match="no mask_steps/mask_window"):
        generate(tiny, [1], [1], masks=_masks(ref), row_interventions=[{}], mask_steps=1)
    with pytest.raises(ValueError, match="without a mask"):
        generate(tiny, [1], [1], masks={"midblock": ref["mask/midblock"]},
                 row_interventions=[{"encoder_bottleneck": RowIntervention()}])  # fmt: skip
    with pytest.raises(ValueError, match="within"):
        generate(tiny, [1], [1], masks=_masks(ref), row_interventions=[{"midblock": RowIntervention(2.0)}])
    with pytest.raises(ValueError, match="one mask row per batch row"):
        ActivationMask(tiny, {"midblock": ref["mask/midblock"]}, rows={"midblock": [None, None]})
    assert active_hook_count(tiny) == 0


def test_a_packed_sweep_cell_is_its_generation_rendered_at_the_recorded_micro_batch(tiny, ref):
    from common.research.interventions import render_options
    from common.research.packing import make_packed
    from common.research.recipe import Recipe
    from common.research.variations import render

    masks = {n: m[None] if m.ndim == 3 else m for n, m in _masks(ref).items()}
    recipe = Recipe(masks, np.zeros(2), np.ones(1), [3], "onehot", 3, None, None, {})
    base = {"seed": 9, "variations": 2, "steps": 2, "mode": "activation_mean"}
    cells = [
        {**base, "strength": 0.5, "mask_window": [1, 2]},
        {**base, "strength": 0.0},  # natural at every layer: it is the twin, no extra rows
        {**base, "strength": 1.0, "layer_strength": {"midblock": 0.25}},
        {**base, "strength": 1.0, "seed": 10},  # other seeds: a twin of its own
    ]
    made = make_packed(tiny, cells, [recipe] * 4, 80.0, CAPTURE)
    assert [m.micro_batch for m in made] == [16] * 4  # 8 cell rows + 2 twin rows: one call of 16
    assert made[0].twin is made[1].twin is made[2].twin and made[3].twin is not made[0].twin
    assert np.array_equal(made[1].res.images, made[1].twin.images)
    for cell, m in zip(cells, made, strict=True):
        seeds = m.seeds
        alone = render(tiny, recipe, seeds, 2, 80.0, render_options(cell), CAPTURE, m.micro_batch)
        assert np.array_equal(alone.images, m.res.images)
        for name in CAPTURE:
            assert np.array_equal(alone.activations[name], m.res.activations[name])
        natural = render(tiny, recipe, seeds, 2, 80.0, None, CAPTURE, m.micro_batch, natural=True)
        assert np.array_equal(natural.images, m.twin.images)
        assert m.readouts[0]["intervention_size"].keys() == set(masks)
    assert made[1].readouts[0]["image_change"] == 0 and made[2].readouts[0]["image_change"] > 0
    assert [p["row"] for m in made for p in m.packing] == list(range(8))  # twin of seed 10: rows 8, 9
