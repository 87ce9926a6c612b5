"""Layer names, capture and mask context managers: semantics, errors, and that hooks never outlive them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.hooks import (
    ActivationCapture,
    ActivationMask,
    active_hook_count,
    layer_module,
    layer_names,
    layer_shapes,
    module_path,
)


def _run(model, ref, labels=True):
    with torch.no_grad():
        return model(
            torch.from_numpy(ref["x"]),
            torch.from_numpy(ref["sigma"]),
            torch.from_numpy(ref["class_labels"]) if labels else None,
        )


def test_layer_names_are_in_forward_order(tiny):
    assert layer_names(tiny) == [
        *(f"encoder_block_{i}" for i in range(5)),
        "encoder_bottleneck",
        "midblock",
        *(f"decoder_block_{i}" for i in range(1, 9)),
    ]
    order = []
    handles = [
        layer_module(tiny, n).register_forward_hook(lambda m, a, o, n=n: order.append(n))
        for n in layer_names(tiny)
    ]
    try:
        tiny(torch.zeros(1, 3, 16, 16), torch.ones(1))
    finally:
        for h in handles:
            h.remove()
    assert order == layer_names(tiny)


def test_module_paths_and_modules(tiny):
    assert module_path(tiny, "encoder_bottleneck") == "model.enc.8x8_block1"
    assert module_path(tiny, "encoder_block_0") == "model.enc.16x16_conv"
    assert module_path(tiny, "decoder_block_8") == "model.dec.16x16_block2"
    assert layer_module(tiny, "midblock") is tiny.model.dec["8x8_in0"]
    assert layer_module(tiny.model, "midblock") is tiny.model.dec["8x8_in0"], "a bare U-Net works too"
    # spec 6: decoder_block_0 resolves to dec[0] (the midblock) but is not listed
    assert layer_module(tiny, "decoder_block_0") is layer_module(tiny, "midblock")
    assert "decoder_block_0" not in layer_names(tiny)


@pytest.mark.parametrize("bad", ["encoder_block_5", "decoder_block_9", "bottleneck", "enc.8x8_block1"])
def test_unknown_layer_raises_key_error_listing_valid_names(tiny, bad):
    with pytest.raises(KeyError) as info:
        layer_module(tiny, bad)
    assert repr(bad) in str(info.value) and "encoder_bottleneck" in str(info.value)
    assert "decoder_block_8" in str(info.value)
    with pytest.raises(KeyError, match="valid layer names"):
        ActivationCapture(tiny, ["midblock", bad])
    with pytest.raises(KeyError, match="valid layer names"):
        ActivationMask(tiny, {bad: torch.zeros(1, 64, 8, 8)})
    assert active_hook_count(tiny) == 0


def test_layer_shapes_are_computed_once_per_model(tiny):
    calls = []
    handle = tiny.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = layer_shapes(tiny)
        second = layer_shapes(tiny)
    finally:
        handle.remove()
    assert first == second and len(calls) == 1
    assert first["encoder_bottleneck"] == (64, 8, 8) and first["decoder_block_5"] == (64, 16, 16)
    assert active_hook_count(tiny) == 0


def test_capture_gives_detached_cpu_float32_copies(tiny, ref):
    with ActivationCapture(tiny, ["encoder_bottleneck", "decoder_block_8"]) as cap:
        assert active_hook_count(tiny) == 2
        out = _run(tiny, ref)
    assert active_hook_count(tiny) == 0
    a = cap.activations["encoder_bottleneck"]
    assert a.shape == (4, 64, 8, 8) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert not a.requires_grad and a.is_contiguous()
    assert set(cap.numpy()) == {"encoder_bottleneck", "decoder_block_8"}
    a.zero_()  # the copy is ours: mutating it changes nothing in the network
    assert torch.equal(_run(tiny, ref), out)


def test_hooks_are_removed_when_the_body_raises(tiny):
    with pytest.raises(RuntimeError, match="boom"):
        with (
            ActivationCapture(tiny, layer_names(tiny)),
            ActivationMask(tiny, {"midblock": torch.zeros(1, 64, 8, 8)}),
        ):
            assert active_hook_count(tiny) == len(layer_names(tiny)) + 1
            raise RuntimeError("boom")
    assert active_hook_count(tiny) == 0


def test_mask_replaces_the_output_and_broadcasts_over_the_batch(tiny, ref):
    mask = torch.from_numpy(ref["mask/midblock"])  # (1, 64, 8, 8)
    plain = _run(tiny, ref)
    with (
        ActivationMask(tiny, {"midblock": mask}),
        ActivationCapture(tiny, ["midblock", "decoder_block_1"]) as cap,
    ):
        masked = _run(tiny, ref)
    assert not torch.equal(plain, masked)
    assert torch.equal(cap.activations["midblock"], mask.expand(4, -1, -1, -1))
    assert active_hook_count(tiny) == 0


def test_capture_of_a_masked_layer_returns_the_mask_whatever_the_nesting(tiny, ref):
    mask = np.full((1, 64, 8, 8), 0.5, dtype=np.float64)  # numpy float64: cast to the model's dtype
    with (
        ActivationCapture(tiny, ["encoder_bottleneck"]) as cap,
        ActivationMask(tiny, {"encoder_bottleneck": mask}),
    ):
        _run(tiny, ref)  # capture registered first, mask second: the mask still runs first
    assert torch.equal(cap.activations["encoder_bottleneck"], torch.full((4, 64, 8, 8), 0.5))


def test_per_sample_mask_and_three_dimensional_mask(tiny, ref):
    per_sample = torch.randn(4, 64, 8, 8)
    with ActivationMask(tiny, {"midblock": per_sample}), ActivationCapture(tiny, ["midblock"]) as cap:
        _run(tiny, ref)
    assert torch.equal(cap.activations["midblock"], per_sample)
    with ActivationMask(tiny, {"midblock": per_sample[2]}), ActivationCapture(tiny, ["midblock"]) as cap:
        _run(tiny, ref)
    assert torch.equal(cap.activations["midblock"], per_sample[2:3].expand(4, -1, -1, -1))


@pytest.mark.parametrize("shape", [(1, 64, 4, 4), (1, 32, 8, 8), (3, 64, 8, 8)])
def test_wrong_mask_shape_names_the_layer_and_both_shapes(tiny, ref, shape):
    with pytest.raises(ValueError) as info:
        with ActivationMask(tiny, {"encoder_bottleneck": torch.zeros(shape)}):
            _run(tiny, ref)
    msg = str(info.value)
    assert "'encoder_bottleneck'" in msg and str(shape) in msg and "64, 8, 8" in msg
    assert active_hook_count(tiny) == 0


def test_wrong_mask_shape_is_caught_on_construction_once_shapes_are_known(tiny):
    layer_shapes(tiny)
    with pytest.raises(ValueError, match=r"'midblock' has shape \(1, 64, 4, 4\).*\(B, 64, 8, 8\)"):
        ActivationMask(tiny, {"midblock": torch.zeros(1, 64, 4, 4)})


@pytest.mark.parametrize("bad", [torch.zeros(1, 64, 8, 8, dtype=torch.int64), torch.zeros(64, 64)])
def test_integer_or_wrong_rank_mask_is_refused(tiny, bad):
    with pytest.raises(ValueError, match="'midblock'"):
        ActivationMask(tiny, {"midblock": bad})


def test_a_layer_cannot_be_masked_twice_at_once(tiny):
    m = torch.zeros(1, 64, 8, 8)
    with ActivationMask(tiny, {"midblock": m}):
        with pytest.raises(ValueError, match="already masked"):
            with ActivationMask(tiny, {"midblock": m}):
                pass
        assert active_hook_count(tiny) == 1
    with pytest.raises(ValueError, match="same module"):
        ActivationMask(tiny, {"midblock": m, "decoder_block_0": m})
    assert active_hook_count(tiny) == 0


def test_a_context_can_be_reused_but_not_nested(tiny, ref):
    ctx = ActivationCapture(tiny, ["midblock"])
    for _ in range(2):
        with ctx:
            _run(tiny, ref)
        assert active_hook_count(tiny) == 0
    with ctx, pytest.raises(RuntimeError, match="already active"):
        with ctx:
            pass
    assert active_hook_count(tiny) == 0
