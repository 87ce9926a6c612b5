"""The ImageNet-64 configuration matches DMD2's released generator key for key, and loads its file format."""

from __future__ import annotations

import pytest
import torch

from common.ml.checkpoints import load_generator
from common.ml.hooks import layer_names, layer_shapes, layer_table, layer_table_for_config
from common.ml.networks import EDMPrecond
from common.ml.presets import get_preset


@pytest.fixture(scope="module")
def meta_model(manifest) -> EDMPrecond:
    with torch.device("meta"):  # shapes only: no 1.2 GB allocation
        return EDMPrecond(**manifest["config"])


def test_preset_config_is_the_manifest_config(manifest):
    assert get_preset("dmd2-imagenet64").config == manifest["config"]


def test_state_dict_equals_manifest_key_for_key(meta_model, manifest):
    sd = meta_model.state_dict()
    ref = manifest["state_dict"]
    assert list(sd) == list(ref), "same keys in the same order"
    for key, entry in ref.items():
        assert list(sd[key].shape) == entry["shape"], key
        assert str(sd[key].dtype).removeprefix("torch.") == entry["dtype"], key
    params = dict(meta_model.named_parameters())
    buffers = dict(meta_model.named_buffers())
    assert {k for k, e in ref.items() if e["kind"] == "parameter"} == set(params)
    assert {k for k, e in ref.items() if e["kind"] == "buffer"} == set(buffers)
    assert len(sd) == manifest["num_state_dict_keys"] == 553
    assert sum(p.numel() for p in params.values()) == manifest["total_parameter_count"] == 295_899_267


def test_block_structure_matches_manifest(meta_model, manifest):
    unet = meta_model.model
    for kind, blocks in (("enc", manifest["enc_blocks"]), ("dec", manifest["dec_blocks"])):
        modules = getattr(unet, kind)
        assert list(modules) == [b["name"] for b in blocks]
        for b in blocks:
            m = modules[b["name"]]
            assert (m.in_channels, m.out_channels) == (b["in_channels"], b["out_channels"]), b["name"]
            assert getattr(m, "num_heads", None) == b.get("num_heads", None), b["name"]
            assert sum(p.numel() for p in m.parameters()) == b["params"], b["name"]


def test_layer_names_follow_the_visualizer_table(meta_model, manifest):
    vis = manifest["visualizer_layers"]
    assert layer_names(meta_model) == list(vis)
    table = layer_table(meta_model)
    assert {n: p.removeprefix("model.") for n, p in table.items()} == {n: v["block"] for n, v in vis.items()}
    assert table["encoder_bottleneck"] == "model.enc.8x8_block2" == "model." + manifest["encoder_bottleneck"]
    assert table["midblock"] == "model.dec.8x8_in0" == "model." + manifest["midblock"]
    assert layer_table_for_config(manifest["config"]) == table
    assert "encoder_block_15" not in table and "decoder_block_0" not in table


@pytest.mark.slow
def test_dmd2_format_file_loads_strictly_and_gives_the_manifest_shapes(manifest, tmp_path):
    # DMD2's pytorch_model.bin: a flat dict key -> float32 tensor, keys prefixed "model.", torch.save.
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, entry in manifest["state_dict"].items():
        if entry["kind"] == "buffer":
            sd[key] = torch.full(entry["shape"], 0.25)
        else:
            sd[key] = torch.randn(entry["shape"], generator=gen) * 0.02
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)

    model, sha = load_generator(path, get_preset("dmd2-imagenet64"))
    assert len(sha) == 64
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(
        model.state_dict()["model.dec.64x64_block3.conv1.weight"], sd["model.dec.64x64_block3.conv1.weight"]
    )
    del sd
    shapes = layer_shapes(model)  # one batch-1 forward pass on the CPU
    assert shapes == {n: tuple(v["shape_chw"]) for n, v in manifest["visualizer_layers"].items()}
    assert shapes["encoder_bottleneck"] == (768, 8, 8)
