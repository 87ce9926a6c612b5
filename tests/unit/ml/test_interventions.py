"""Interventions: step windows, strength (per layer), steering directions and their recorded size; the
ends of every scale are exact (strength 0 is the unmasked run, strength 1 today's clamp, bit-for-bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.generation import generate
from common.ml.hooks import ActivationCapture, ActivationMask, active_hook_count, apply_intervention

KW = dict(steps=2, return_float=True, capture=["midblock", "decoder_block_1"])


def _masks(ref):
    return {"midblock": ref["mask/midblock"], "encoder_bottleneck": ref["mask/encoder_bottleneck"]}


def test_strength_zero_is_the_unmasked_run_and_one_is_the_clamp_bit_for_bit(tiny, ref):
    plain = generate(tiny, [3, 7], [1, 2], **KW)
    clamp = generate(tiny, [3, 7], [1, 2], masks=_masks(ref), **KW)
    zero = generate(tiny, [3, 7], [1, 2], masks=_masks(ref), strength=0.0, **KW)
    one = generate(tiny, [3, 7], [1, 2], masks=_masks(ref), strength=1.0, **KW)
    assert np.array_equal(zero.images_float, plain.images_float)
    assert np.array_equal(zero.images, plain.images)
    assert np.array_equal(one.images_float, clamp.images_float)
    assert np.array_equal(one.activations["midblock"], clamp.activations["midblock"])
    half = generate(tiny, [3, 7], [1, 2], masks=_masks(ref), strength=0.5, **KW)
    assert not np.array_equal(half.images_float, plain.images_float)
    assert not np.array_equal(half.images_float, clamp.images_float)
    assert active_hook_count(tiny) == 0


def test_half_strength_is_the_midpoint_of_natural_and_target_at_the_layer(tiny, ref):
    mask = torch.from_numpy(ref["mask/midblock"])
    x, sigma = torch.randn(2, 3, 16, 16), torch.full((2,), 5.0)
    y = torch.eye(10)[[1, 2]]
    with torch.no_grad(), ActivationCapture(tiny, ["midblock"]) as cap:
        tiny(x, sigma, y)
        natural = cap.activations["midblock"]
        with ActivationMask(tiny, {"midblock": mask}, strength=0.25, record=True) as m:
            tiny(x, sigma, y)
    expected = 0.75 * natural + 0.25 * mask
    torch.testing.assert_close(cap.activations["midblock"], expected, rtol=0, atol=1e-6)
    size = (0.25 * (mask - natural)).flatten(1).norm(dim=1) / natural.flatten(1).norm(dim=1)
    np.testing.assert_allclose(m.sizes["midblock"], size.double().numpy(), rtol=1e-5)


def test_layer_strength_overrides_per_layer_and_must_name_a_masked_layer(tiny, ref):
    masks = _masks(ref)
    only_mid = generate(tiny, [3], [1], masks={"midblock": masks["midblock"]}, **KW)
    off_bottleneck = generate(tiny, [3], [1], masks=masks, layer_strength={"encoder_bottleneck": 0.0}, **KW)
    assert np.array_equal(off_bottleneck.images_float, only_mid.images_float)
    with pytest.raises(ValueError, match="layer_strength names 'decoder_block_1', which is not masked"):
        generate(tiny, [3], [1], masks=masks, layer_strength={"decoder_block_1": 0.5})
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        generate(tiny, [3], [1], masks=masks, strength=1.5)
    assert active_hook_count(tiny) == 0


def test_mask_window_masks_only_its_steps_and_mask_steps_is_its_shorthand(tiny, ref):
    masks = {"midblock": ref["mask/midblock"]}

    def run(**kw):
        return generate(tiny, [3], [1], steps=3, return_float=True, masks=masks, **kw).images_float

    plain = generate(tiny, [3], [1], steps=3, return_float=True).images_float
    assert np.array_equal(run(mask_window=[0, 2]), run(mask_steps=2))
    assert np.array_equal(run(mask_window=[0, 3]), run())
    assert np.array_equal(run(mask_window=[1, 1]), plain)
    late = run(mask_window=[2, 3])
    assert not np.array_equal(late, plain) and not np.array_equal(late, run(mask_steps=1))
    with pytest.raises(ValueError, match="not both"):
        run(mask_steps=1, mask_window=[0, 1])
    with pytest.raises(ValueError, match="start <= stop"):
        run(mask_window=[2, 1])


def test_direction_adds_to_the_natural_activation_and_alpha_zero_is_unmasked(tiny, ref):
    d = torch.from_numpy(ref["mask/midblock"]) * 0.1
    plain = generate(tiny, [3, 7], [1, 2], **KW)
    zero = generate(tiny, [3, 7], [1, 2], masks={"midblock": d}, mask_mode="add", strength=0.0, **KW)
    assert np.array_equal(zero.images_float, plain.images_float)
    steered = generate(tiny, [3, 7], [1, 2], masks={"midblock": d}, mask_mode="add", **KW)
    assert not np.array_equal(steered.images_float, plain.images_float)
    # one step: the captured midblock is the natural one plus the direction
    one = generate(tiny, [3], [1], capture=["midblock"], return_float=True)
    added = generate(tiny, [3], [1], masks={"midblock": d}, mask_mode="add", capture=["midblock"])
    np.testing.assert_allclose(
        added.activations["midblock"], one.activations["midblock"] + d.numpy(), atol=1e-5
    )


def test_normalised_direction_has_the_natural_activations_norm():
    natural = torch.randn(2, 4, 3, 3)
    d = torch.randn(1, 4, 3, 3).expand(2, -1, -1, -1) * 7
    out = apply_intervention(natural, d, 0.5, "add", normalize=True)
    change = (out - natural).flatten(1).norm(dim=1)
    torch.testing.assert_close(change, 0.5 * natural.flatten(1).norm(dim=1))
    assert apply_intervention(natural, d, 0.0, "add") is natural
    assert apply_intervention(natural, d, 1.0, "replace") is d


def test_recorded_intervention_size_is_zero_at_strength_zero_and_grows_with_it(tiny, ref):
    sizes = [
        generate(tiny, [3], [1], masks=_masks(ref), strength=s, record_intervention=True).intervention
        for s in (0.0, 0.5, 1.0)
    ]
    for name in ("midblock", "encoder_bottleneck"):
        assert sizes[0][name][0] == 0.0
        assert 0 < sizes[1][name][0]
    # the first masked layer sees the same natural activation at every strength: its size is linear
    first = "encoder_bottleneck"
    assert sizes[1][first][0] == pytest.approx(sizes[2][first][0] / 2, rel=1e-4)


def test_window_gate_lets_a_sampler_keep_the_mask_entered(tiny, ref):
    mask = torch.from_numpy(ref["mask/midblock"])
    x, sigma = torch.randn(1, 3, 16, 16), torch.full((1,), 5.0)
    y = torch.eye(10)[[1]]
    with torch.no_grad():
        plain = tiny(x, sigma, y)
        with ActivationMask(tiny, {"midblock": mask}, window=(1, 2)) as m:
            m.step = 0
            before = tiny(x, sigma, y)
            m.step = 1
            during = tiny(x, sigma, y)
    assert torch.equal(before, plain) and not torch.equal(during, plain)


def test_alpha_scales_a_normalised_direction_and_its_sign_steers_back():
    natural = torch.randn(2, 4, 3, 3)
    d = torch.randn(1, 4, 3, 3).expand(2, -1, -1, -1)
    up = apply_intervention(natural, d, 1.0, "add", normalize=True, alpha=0.3)
    down = apply_intervention(natural, d, 1.0, "add", normalize=True, alpha=-0.3)
    torch.testing.assert_close(up - natural, natural - down)
    torch.testing.assert_close((up - natural).flatten(1).norm(dim=1), 0.3 * natural.flatten(1).norm(dim=1))
    assert apply_intervention(natural, d, 1.0, "add", alpha=0.0) is natural
