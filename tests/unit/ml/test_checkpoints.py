"""Checkpoint loading (DMD2 format, module. prefix, safetensors, accelerate folders) and its refusals."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from common.ml.checkpoints import CheckpointError, file_sha256, load_generator, save_generator
from common.ml.presets import get_preset

from .reference import assert_close_per_sample


@pytest.fixture()
def dmd2_file(tmp_path, ref_state_dict):
    path = tmp_path / "pytorch_model.bin"
    torch.save(dict(ref_state_dict), path)
    return path


def _forward(model, ref):
    with torch.no_grad():
        return model(
            torch.from_numpy(ref["x"]), torch.from_numpy(ref["sigma"]), torch.from_numpy(ref["class_labels"])
        ).numpy()


def test_dmd2_flat_state_dict_loads_strictly_and_reproduces_reference(dmd2_file, ref, ref_meta):
    model, sha = load_generator(dmd2_file, ref_meta["config"])
    assert sha == hashlib.sha256(dmd2_file.read_bytes()).hexdigest()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert_close_per_sample(_forward(model, ref), ref["out"], "out (loaded from DMD2 format)")


def test_module_prefix_is_tolerated(tmp_path, ref_state_dict, ref, ref_meta):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in ref_state_dict.items()}, path)
    model, _ = load_generator(path, get_preset("tiny16"))
    assert np.array_equal(_forward(model, ref), _forward(load_generator(path, ref_meta["config"])[0], ref))
    assert_close_per_sample(_forward(model, ref), ref["out"], "out (module. prefix)")


def test_save_generator_writes_safetensors_that_load_back(tmp_path, tiny, ref):
    path = tmp_path / "models" / "tiny.safetensors"
    sha = save_generator(tiny, path, metadata={"trained_steps": 123, "note": "test"})
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in path.parent.iterdir()] == ["tiny.safetensors"], "no temporary file left"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == sorted(tiny.state_dict())
    assert meta["note"] == "test" and json.loads(meta["trained_steps"]) == 123
    assert json.loads(meta["latentlab.config"]) == tiny.config

    model, sha2 = load_generator(path, "tiny16")
    assert sha2 == sha
    assert np.array_equal(_forward(model, ref), _forward(tiny, ref))


def test_save_generator_replaces_an_existing_file_atomically(tmp_path, tiny):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"old contents")
    save_generator(tiny, path)
    assert path.read_bytes() != b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors"]


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_accelerate_folder_is_accepted(tmp_path, tiny, ref_state_dict, filename):
    run = tmp_path / "run"
    run.mkdir()
    if filename.endswith(".safetensors"):
        save_generator(tiny, run / filename)
    else:
        torch.save(dict(ref_state_dict), run / filename)
    torch.save({"critic": torch.zeros(1)}, run / "pytorch_model_1.bin")  # DMD2's guidance net: ignored
    model, sha = load_generator(run, "tiny16")
    assert sha == file_sha256(run / filename)


def test_folder_without_weights_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_generator(tmp_path, "tiny16")


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, ref_state_dict):
    sd = dict(ref_state_dict)
    del sd["model.map_layer0.weight"]
    sd["model.extra.weight"] = torch.zeros(3)
    sd["model.out_conv.bias"] = torch.zeros(4)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_generator(path, "tiny16")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "1 missing keys: model.map_layer0.weight" in msg
    assert "1 unexpected keys: model.extra.weight" in msg
    assert "model.out_conv.bias (4,) (expected (3,))" in msg
    assert "preset 'tiny16'" in msg and '"model_channels": 8' in msg


def test_checkpoint_of_another_config_lists_at_most_ten_keys_of_each_kind(tmp_path, dmd2_file):
    with pytest.raises(CheckpointError) as info:
        load_generator(dmd2_file, "digits16")
    msg = str(info.value)
    assert "preset 'digits16'" in msg
    assert "mis-shaped keys" in msg and "more)" in msg
    listed = msg.split("mis-shaped keys: ")[1].split(" (and ")[0]
    assert listed.count("(expected") == 10


def test_pickled_whole_model_is_refused_with_conversion_advice(tmp_path, tiny):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny, path)
    with pytest.raises(CheckpointError) as info:
        load_generator(path, "tiny16")
    msg = str(info.value)
    assert "EDMPrecond" in msg, "names the pickled class"
    assert "weights_only=True" in msg and "state_dict()" in msg and "safetensors" in msg
    assert "trust" in msg


def test_non_float32_tensors_are_cast_on_load(tmp_path, ref_state_dict, ref):
    path = tmp_path / "half.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in ref_state_dict.items()}, path)  # weights are bf16-exact
    model, _ = load_generator(path, "tiny16")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert_close_per_sample(_forward(model, ref), ref["out"], "out (bf16 file cast to float32)")


def test_integer_tensor_is_refused(tmp_path, ref_state_dict):
    sd = dict(ref_state_dict)
    sd["model.out_conv.bias"] = torch.zeros(3, dtype=torch.int64)
    path = tmp_path / "int.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="model.out_conv.bias.*int64"):
        load_generator(path, "tiny16")


def test_nested_checkpoint_is_refused_with_a_hint(tmp_path, ref_state_dict):
    path = tmp_path / "nested.pt"
    torch.save({"state_dict": dict(ref_state_dict), "step": 3}, path)
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        load_generator(path, "tiny16")


def test_missing_file_and_garbage_file_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "nope.bin", "tiny16")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not read"):
        load_generator(junk, "tiny16")


def test_reduced_precision_is_refused_on_cpu(dmd2_file):
    with pytest.raises(ValueError, match="only supported on CUDA"):
        load_generator(dmd2_file, "tiny16", device="cpu", dtype="bf16")


def test_file_sha256_streams_large_files(tmp_path):
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
