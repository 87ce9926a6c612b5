"""Sampling: DMD2's one-step recipe, the EDM Heun sampler, per-seed determinism, masks, capture, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.checkpoints import build_generator
from common.ml.generation import generate, karras_sigmas, make_class_labels, make_noise, to_uint8
from common.ml.hooks import ActivationCapture, ActivationMask, active_hook_count, layer_module


def test_one_step_is_dmd2s_recipe(tiny):
    res = generate(tiny, [3, 7], [11, 12], return_float=True)
    noise = torch.stack(
        [torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (11, 12)]
    )
    with torch.no_grad():  # one sample per call, as generate does on the CPU
        img = torch.cat(
            [
                tiny(noise[i : i + 1] * 80, torch.full((1,), 80.0), torch.eye(10)[[c]])
                for i, c in enumerate([3, 7])
            ]
        )
    expected = ((img + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert res.images.dtype == np.uint8 and res.images.shape == (2, 16, 16, 3)
    assert np.array_equal(res.images, expected)
    assert np.array_equal(res.images_float, img.numpy())
    assert res.sigmas == [80.0, 0.0] and res.activations is None


@pytest.mark.parametrize("steps", [1, 3])
def test_a_sample_is_identical_whatever_batch_it_is_generated_in(tiny, steps):
    batch = generate(tiny, [1, 2, 3], [1, 2, 3], steps=steps, return_float=True)
    for i, seed in enumerate([1, 2, 3]):
        alone = generate(tiny, [i + 1], [seed], steps=steps, return_float=True)
        assert np.array_equal(alone.images[0], batch.images[i]), "uint8 images are byte-identical"
        assert np.array_equal(alone.images_float[0], batch.images_float[i]), "and so are the floats"
    shuffled = generate(tiny, [3, 1, 2], [3, 1, 2], steps=steps)
    assert np.array_equal(shuffled.images, batch.images[[2, 0, 1]])
    assert np.array_equal(generate(tiny, [1, 2, 3], [1, 2, 3], steps=steps).images, batch.images), "rerun"


def test_padded_micro_batches_do_not_depend_on_their_neighbours(tiny):
    batch = generate(tiny, [1, 2, 3], [1, 2, 3], micro_batch=2, return_float=True)
    alone = generate(tiny, [3], [3], micro_batch=2, return_float=True)  # padded with a zero sample
    assert np.array_equal(alone.images_float[0], batch.images_float[2])


def test_different_seeds_and_labels_give_different_images(tiny):
    res = generate(tiny, [1, 1, 2], [5, 6, 5])
    assert not np.array_equal(res.images[0], res.images[1])
    assert not np.array_equal(res.images[0], res.images[2])


def test_karras_schedule():
    assert karras_sigmas(1) == [80.0, 0.0]
    assert karras_sigmas(2) == pytest.approx([80.0, 0.002, 0.0], rel=1e-12)
    s = karras_sigmas(18)
    assert len(s) == 19 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0.0
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert karras_sigmas(3)[1] == pytest.approx(mid, rel=1e-12)


def _edm_heun_reference(model, noise, labels, steps, sigma_max=80.0, sigma_min=0.002, rho=7.0):
    """EDM's Algorithm 1 (deterministic Heun, last step Euler), straight from the paper, float64."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    x = noise.to(torch.float64) * t[0]
    with torch.no_grad():
        for k in range(steps):
            d = (x - model(x, t[k], labels).to(torch.float64)) / t[k]
            x_next = x + (t[k + 1] - t[k]) * d
            if k < steps - 1:
                d2 = (x_next - model(x_next, t[k + 1], labels).to(torch.float64)) / t[k + 1]
                x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d2)
            x = x_next
    return x.to(torch.float32)


def test_multi_step_sampler_is_edms_heun_sampler(tiny):
    res = generate(tiny, [4, 8], [21, 22], steps=4, return_float=True)
    noise = make_noise([21, 22], (3, 16, 16))
    expected = torch.cat(
        [_edm_heun_reference(tiny, noise[i : i + 1], torch.eye(10)[[c]], 4) for i, c in enumerate([4, 8])]
    ).numpy()
    # Both keep a float64 state; they differ only in the last step (x + (0 - t) d there, D exactly here).
    np.testing.assert_allclose(res.images_float, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert len(res.sigmas) == 5


def test_masks_change_the_output_and_match_a_masked_model_call(tiny, ref):
    masks = {"encoder_bottleneck": ref["mask/encoder_bottleneck"]}
    plain = generate(tiny, [3, 7], [1, 2], return_float=True)
    masked = generate(tiny, [3, 7], [1, 2], masks=masks, return_float=True)
    assert not np.array_equal(plain.images, masked.images)
    noise = make_noise([1, 2], (3, 16, 16))
    with torch.no_grad(), ActivationMask(tiny, masks):
        direct = tiny(noise * 80, torch.full((2,), 80.0), torch.eye(10)[[3, 7]])
    np.testing.assert_allclose(masked.images_float, direct.numpy(), rtol=0, atol=1e-6)


def test_per_sample_masks_follow_their_sample(tiny):
    masks = {"midblock": torch.randn(3, 64, 8, 8)}
    batch = generate(tiny, [1, 2, 3], [1, 2, 3], masks=masks, return_float=True, capture=["midblock"])
    assert np.array_equal(batch.activations["midblock"], masks["midblock"].numpy())
    alone = generate(tiny, [3], [3], masks={"midblock": masks["midblock"][2:]}, return_float=True)
    assert np.array_equal(alone.images_float[0], batch.images_float[2])
    with pytest.raises(ValueError, match=r"'midblock' has shape \(2, 64, 8, 8\)"):
        generate(tiny, [1, 2, 3], [1, 2, 3], masks={"midblock": torch.zeros(2, 64, 8, 8)})


def test_mask_steps_limit_masking_to_the_first_steps(tiny, ref):
    masks = {"midblock": ref["mask/midblock"]}

    def run(**kw):
        return generate(tiny, [3], [1], steps=3, return_float=True, **kw).images_float

    unmasked, all_steps = run(), run(masks=masks)
    first = run(masks=masks, mask_steps=1)
    assert not np.array_equal(first, all_steps) and not np.array_equal(first, unmasked)
    assert not np.array_equal(run(masks=masks, mask_steps=2), first)
    assert np.array_equal(run(masks=masks, mask_steps=3), all_steps)
    assert np.array_equal(run(masks=masks, mask_steps=0), unmasked)


def test_capture_comes_from_the_last_model_evaluation(tiny):
    module = layer_module(tiny, "decoder_block_2")
    seen = []
    spy = module.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        res = generate(tiny, [3, 7], [1, 2], steps=3, capture=["decoder_block_2", "midblock"])
    finally:
        spy.remove()
    assert len(seen) == 2 * (2 * 3 - 1), "one call per sample (CPU micro-batch 1) per evaluation"
    last = torch.cat(seen[-2:]).numpy()
    assert res.activations["decoder_block_2"].dtype == np.float32
    assert np.array_equal(res.activations["decoder_block_2"], last)
    assert res.activations["midblock"].shape == (2, 64, 8, 8)


def test_one_step_capture_equals_capture_around_the_model(tiny):
    res = generate(tiny, [5], [9], capture=["encoder_bottleneck"])
    with torch.no_grad(), ActivationCapture(tiny, ["encoder_bottleneck"]) as cap:
        tiny(make_noise([9], (3, 16, 16)) * 80, torch.full((1,), 80.0), torch.eye(10)[[5]])
    assert np.array_equal(
        res.activations["encoder_bottleneck"], cap.activations["encoder_bottleneck"].numpy()
    )


def test_capturing_a_masked_layer_returns_the_mask_only_while_masked(tiny, ref):
    mask = ref["mask/midblock"]
    kw = dict(steps=2, masks={"midblock": mask}, capture=["midblock"])
    on = generate(tiny, [3, 7], [1, 2], **kw).activations["midblock"]
    assert np.array_equal(on, np.broadcast_to(mask, (2, 64, 8, 8)))
    off = generate(tiny, [3, 7], [1, 2], mask_steps=1, **kw).activations["midblock"]
    assert not np.array_equal(off, np.broadcast_to(mask, (2, 64, 8, 8)))


def test_no_hook_is_left_after_generate_even_when_it_fails(tiny, ref):
    generate(tiny, [3, 7], [1, 2], steps=2, masks={"midblock": ref["mask/midblock"]}, capture=["midblock"])
    assert active_hook_count(tiny) == 0
    with pytest.raises(ValueError, match="'midblock'"):
        generate(
            tiny, [3], [1], masks={"midblock": np.zeros((1, 64, 4, 4), np.float32)}, capture=["midblock"]
        )
    assert active_hook_count(tiny) == 0


def test_label_modes(tiny):
    x = make_noise([4], (3, 16, 16)) * 80

    def out(labels):
        with torch.no_grad():
            return tiny(x, torch.full((1,), 80.0), labels).numpy()

    def gen(labels, mode):
        return generate(tiny, labels, [4], label_mode=mode, return_float=True).images_float

    assert np.array_equal(gen([{3: 5.0}], "blend"), gen([3], "onehot"))
    two = np.zeros(10)
    two[[3, 7]] = 2.0
    assert np.array_equal(gen([two], "blend"), gen([{3: 0.5, 7: 0.5}], "blend"))
    assert np.array_equal(gen([two], "blend"), out(torch.tensor([[0, 0, 0, 0.5, 0, 0, 0, 0.5, 0, 0]])))
    assert np.array_equal(gen(None, "uniform"), gen([np.ones(10)], "blend"))
    assert np.array_equal(gen(None, "null"), out(None))
    assert not np.array_equal(gen(None, "null"), gen([3], "onehot"))


def test_label_errors():
    with pytest.raises(ValueError, match="outside"):
        make_class_labels([10], 1, 10)
    with pytest.raises(ValueError, match="2 class labels for 3 seeds"):
        make_class_labels([1, 2], 3, 10)
    with pytest.raises(ValueError, match="unknown label_mode"):
        make_class_labels([1], 1, 10, "softmax")
    with pytest.raises(ValueError, match="sum to zero"):
        make_class_labels([{1: 0.0}], 1, 10, "blend")
    with pytest.raises(ValueError, match="non-negative"):
        make_class_labels([{1: -1.0, 2: 2.0}], 1, 10, "blend")
    with pytest.raises(ValueError, match="needs 10 entries"):
        make_class_labels([[1.0, 2.0]], 1, 10, "blend")
    assert make_class_labels(None, 2, 0, "onehot") is None
    assert torch.equal(make_class_labels(2, 2, 4), torch.eye(4)[[2, 2]])


def test_uint8_conversion_truncates():
    img = torch.tensor([-2.0, -1.0, 0.0, 0.0078, 0.99, 1.0, 3.0]).reshape(1, 1, 1, 7)
    assert to_uint8(img).reshape(-1).tolist() == [0, 0, 127, 128, 253, 255, 255]


def test_device_mismatch_and_empty_seeds_are_refused(tiny):
    with pytest.raises(ValueError, match="model is on cpu"):
        generate(tiny, [1], [1], device="meta")
    with pytest.raises(ValueError, match="no seeds"):
        generate(tiny, [], [])


def test_single_channel_model_generates_grey_images():
    torch.manual_seed(0)
    model = build_generator("digits16")
    res = generate(model, [0, 9], [1, 2], steps=2)
    assert res.images.shape == (2, 16, 16, 1) and res.images.dtype == np.uint8


def test_variation_micro_batches_grow_with_the_request_on_the_cpu_only():
    from common.ml.generation import micro_batch_for

    cpu = torch.device("cpu")
    assert [micro_batch_for(cpu, n) for n in (1, 2, 3, 4, 5, 9, 16, 17, 64)] == [
        1,
        2,
        4,
        4,
        8,
        16,
        16,
        16,
        16,
    ]
    assert micro_batch_for(torch.device("cuda"), 1) == 16  # accelerators keep their fixed batch


def test_a_variation_is_reproduced_by_rerunning_its_micro_batch(tiny):
    # what common.research.generations.replay does: the same seeds in the same micro-batch give the same bits
    seeds = [21, 22, 23, 24, 25]
    whole = generate(tiny, [4] * 5, seeds, micro_batch=4, return_float=True)
    again = generate(tiny, [4], seeds[4:], micro_batch=4, return_float=True)
    assert np.array_equal(again.images_float[0], whole.images_float[4])
    first = generate(tiny, [4] * 4, seeds[:4], micro_batch=4, return_float=True)
    assert np.array_equal(first.images_float, whole.images_float[:4])
