"""The network reproduces every array of tests/data/reference/dhariwal_tiny16_vectors.npz (float32, CPU).

Check per sample b: max|mine[b] - ref[b]| <= 1e-5 * max|ref[b]| (README section 3); never loosened.
"""

from __future__ import annotations

import pytest
import torch

from common.ml.hooks import ActivationCapture, ActivationMask, layer_shapes, layer_table
from common.ml.networks import EDMPrecond, UNetBlock

from .reference import assert_close_per_sample


def _inputs(ref):
    return torch.from_numpy(ref["x"]), torch.from_numpy(ref["sigma"]), torch.from_numpy(ref["class_labels"])


def _friendly_by_block(model) -> dict[str, str]:
    """``"enc.8x8_block1" -> "encoder_bottleneck"`` etc. (block names as the npz writes them)."""
    return {path.removeprefix("model."): name for name, path in layer_table(model).items()}


def test_state_dict_keys_and_shapes_match_reference(tiny, ref_state_dict, ref_meta):
    sd = EDMPrecond(**ref_meta["config"]).state_dict()
    assert list(sd) == list(ref_state_dict)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in ref_state_dict.items()
    }
    assert sum(p.numel() for p in tiny.parameters()) == ref_meta["weights"]["num_parameters"] == 814_563
    assert len(sd) == ref_meta["weights"]["num_state_dict_keys"] == 205


@torch.no_grad()
def test_output_matches_reference(tiny, ref):
    out = tiny(*_inputs(ref))
    assert out.dtype == torch.float32
    assert_close_per_sample(out.numpy(), ref["out"], "out")


@torch.no_grad()
def test_output_with_null_labels_matches_reference(tiny, ref):
    x, sigma, _ = _inputs(ref)
    assert_close_per_sample(tiny(x, sigma, None).numpy(), ref["out_null_labels"], "out_null_labels")


@torch.no_grad()
def test_unet_inputs_embedding_and_raw_output_match_reference(tiny, ref):
    seen = {}
    unet = tiny.model
    handles = [
        unet.register_forward_pre_hook(lambda m, args: seen.update(unet_in_x=args[0], noise=args[1])),
        unet.register_forward_hook(lambda m, args, out: seen.update(unet_out=out)),
        unet.map_noise.register_forward_hook(lambda m, args, out: seen.update(map_noise_out=out)),
        # emb as every UNetBlock receives it: the second positional argument of the first block
        unet.enc["16x16_block0"].register_forward_pre_hook(lambda m, args: seen.update(emb=args[1])),
    ]
    try:
        tiny(*_inputs(ref))
    finally:
        for h in handles:
            h.remove()
    assert_close_per_sample(seen["unet_in_x"].numpy(), ref["unet_in_x"], "unet_in_x")
    assert_close_per_sample(
        seen["noise"].numpy()[:, None], ref["unet_in_noise_labels"][:, None], "unet_in_noise"
    )
    assert_close_per_sample(seen["map_noise_out"].numpy(), ref["map_noise_out"], "map_noise_out")
    assert_close_per_sample(seen["emb"].numpy(), ref["emb"], "emb")
    assert_close_per_sample(seen["unet_out"].numpy(), ref["unet_out"], "unet_out")


def test_every_block_output_matches_reference_through_layer_names(tiny, ref, ref_meta):
    by_block = _friendly_by_block(tiny)
    blocks = [k.removeprefix("hook/") for k in ref if k.startswith("hook/")]
    assert blocks == ref_meta["block_order"]
    assert set(blocks) == set(by_block), "every enc/dec entry has a friendly layer name"
    with torch.no_grad(), ActivationCapture(tiny, [by_block[b] for b in blocks]) as cap:
        tiny(*_inputs(ref))
    for block in blocks:
        assert_close_per_sample(
            cap.activations[by_block[block]].numpy(), ref[f"hook/{block}"], f"hook/{block}"
        )


def test_layer_table_and_shapes_match_reference_meta(tiny, ref_meta):
    vis = ref_meta["visualizer_layers"]
    table = layer_table(tiny)
    assert list(table) == list(vis), "same names in forward order"
    assert {n: p.removeprefix("model.") for n, p in table.items()} == {n: v["block"] for n, v in vis.items()}
    assert layer_shapes(tiny) == {n: tuple(v["shape_chw"]) for n, v in vis.items()}
    assert table["encoder_bottleneck"] == "model." + ref_meta["encoder_bottleneck"]
    assert table["midblock"] == "model." + ref_meta["midblock"]


@pytest.mark.parametrize(
    "key, layers",
    [
        ("out_masked_bottleneck", ["encoder_bottleneck"]),
        ("out_masked_bottleneck_midblock", ["encoder_bottleneck", "midblock"]),
    ],
)
def test_masked_runs_match_reference(tiny, ref, key, layers):
    masks = {name: ref[f"mask/{name}"] for name in layers}  # (1, 64, 8, 8) each, broadcast over B = 4
    with torch.no_grad(), ActivationMask(tiny, masks):
        out = tiny(*_inputs(ref))
    assert_close_per_sample(out.numpy(), ref[key], key)


@torch.no_grad()
def test_multi_head_unit_block_matches_reference(ref, ref_meta):
    spec = ref_meta["unit_block"]
    block = UNetBlock(
        in_channels=spec["in_channels"],
        out_channels=spec["out_channels"],
        emb_channels=spec["emb_channels"],
        attention=spec["attention"],
        channels_per_head=spec["channels_per_head"],
    ).eval()
    assert block.num_heads == spec["num_heads"] == 4
    sd = {
        k.removeprefix("unit/state_dict/"): torch.from_numpy(v)
        for k, v in ref.items()
        if k.startswith("unit/state_dict/")
    }
    assert list(block.state_dict()) == list(sd)
    block.load_state_dict(sd, strict=True)
    out = block(torch.from_numpy(ref["unit/x"]), torch.from_numpy(ref["unit/emb"]))
    assert_close_per_sample(out.numpy(), ref["unit/out"], "unit/out")
