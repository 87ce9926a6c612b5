"""Original-layout single-file checkpoints (LDM / CompVis of SD 1.x, SGM of SDXL) with a config folder: the
tiny SD-1.5- and SDXL-shaped pipelines (tests/support/diffusers_models.py) written as one ``.safetensors``
by tests/support/ldm_checkpoints.py load back bit-identically, next to a configs-only folder; the layout is
told from the keys; the digest covers the file (and the folder weights it uses); bad files and folders are
refused naming the field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.ml.families import get_family
from common.ml.families.diffusers_single_file import checkpoint_layout
from common.platform.errors import UserError
from tests.support.ldm_checkpoints import write_original_checkpoint

PROMPTS = ["a handwritten digit seven", "a red photo of a digit one"]
fam = get_family("diffusers")


def _configs_only(folder, dest):
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


@pytest.fixture(scope="module")
def files(tiny_pipelines, tmp_path_factory):
    """{"sd": (folder, configs-only folder, LDM file), "sdxl": (..., SGM file)} and the folder models."""
    from diffusers import DiffusionPipeline

    root = tmp_path_factory.mktemp("single-file")
    out = {}
    for kind, layout in (("sd", "ldm"), ("sdxl", "sgm")):
        folder = tiny_pipelines[kind]
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        ckpt = write_original_checkpoint(pipe, root / f"{kind}.safetensors", layout=layout)
        out[kind] = (folder, _configs_only(folder, root / f"{kind}-configs"), ckpt)
    return out


def _pair(files, kind, **kw):
    folder, configs, ckpt = files[kind]
    kw = {"prompts": PROMPTS, "steps": 2, "dtype": "float32", **kw}
    ref_cfg, ref_sha = fam.inspect(folder, **kw)
    cfg, sha = fam.inspect(configs, weights_file=ckpt, **kw)
    ref, _ = fam.load(folder, ref_cfg, "cpu")
    model, sha2 = fam.load(configs, cfg, "cpu")
    assert sha2 == sha != ref_sha
    return ref, model, cfg


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_ldm_checkpoint_loads_bit_identically_to_its_pipeline_folder(files):
    from common.ml.families.diffusers_sampling import encode_prompts, unet_call

    ref, model, cfg = _pair(files, "sd")
    assert (
        cfg["source"] == "ldm" and cfg["folder_parts"] == [] and cfg["pipeline"] == "StableDiffusionPipeline"
    )
    assert cfg["single_file"] == str(files["sd"][2].resolve())
    ids = ref.tokenizer(PROMPTS, padding="max_length", return_tensors="pt").input_ids
    assert torch.equal(ref.text_encoder(ids)[0], model.text_encoder(ids)[0])
    ctx, _ = encode_prompts(ref, PROMPTS[:1])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        unet_call(ref, x, torch.tensor(500), ctx, None, 32, 32),
        unet_call(model, x, torch.tensor(500), ctx, None, 32, 32),
    )
    assert torch.equal(ref.vae.decode(x).sample, model.vae.decode(x).sample)
    a = fam.generate(ref, [0, 1], [3, 4], steps=2, prompts=PROMPTS, guidance_scale=3.0, capture=["mid_block"])
    b = fam.generate(
        model, [0, 1], [3, 4], steps=2, prompts=PROMPTS, guidance_scale=3.0, capture=["mid_block"]
    )
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images[0], a.images[1])
    assert np.array_equal(a.activations["mid_block"], b.activations["mid_block"])


def test_the_test_converter_inverts_diffusers_own_from_single_file(files):
    """diffusers' ``StableDiffusionPipeline.from_single_file(file, config=FOLDER)`` reads the file written by
    tests/support/ldm_checkpoints.py into the very weights of the folder, as our strict loader does."""
    from diffusers import StableDiffusionPipeline

    folder, configs, ckpt = files["sd"]
    theirs = StableDiffusionPipeline.from_single_file(
        str(ckpt), config=str(configs), local_files_only=True, safety_checker=None
    )
    ref, model, _ = _pair(files, "sd")
    for part in ("unet", "vae", "text_encoder"):
        assert _same_state(getattr(theirs, part), getattr(ref, part)), part
        assert _same_state(getattr(model, part), getattr(ref, part)), part


def test_an_sgm_sdxl_checkpoint_with_both_text_encoders_loads_bit_identically(files):
    ref, model, cfg = _pair(files, "sdxl", timesteps=[999, 499], guidance_scale=0)
    assert cfg["source"] == "sgm" and cfg["sdxl"] and cfg["pipeline"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_state(getattr(model, part), getattr(ref, part)), part
    a = fam.generate(ref, [0, 1], [5, 6], prompts=PROMPTS, timesteps=[999, 499])
    b = fam.generate(model, [0, 1], [5, 6], prompts=PROMPTS, timesteps=[999, 499])
    assert np.array_equal(a.images, b.images)


def test_layouts_are_told_apart_by_their_keys(files, tmp_path):
    from safetensors.torch import save_file

    assert checkpoint_layout(files["sd"][2]) == "ldm" and checkpoint_layout(files["sdxl"][2]) == "sgm"
    save_file(
        {"conv_in.weight": torch.zeros(1), "down_blocks.0.x": torch.zeros(1)}, str(tmp_path / "u.safetensors")
    )
    assert checkpoint_layout(tmp_path / "u.safetensors") == "diffusers-unet"
    # a diffusers-layout UNet file given as the weights file takes the UNet-weights path, unchanged
    folder = files["sd"][0]
    ref, _ = fam.load(folder, fam.inspect(folder, prompts=PROMPTS, dtype="float32")[0], "cpu")
    save_file({k: v.clone() for k, v in ref.unet.state_dict().items()}, str(tmp_path / "unet.safetensors"))
    by_file = fam.inspect(
        folder, weights_file=tmp_path / "unet.safetensors", prompts=PROMPTS, dtype="float32"
    )
    by_option = fam.inspect(
        folder, unet_weights=tmp_path / "unet.safetensors", prompts=PROMPTS, dtype="float32"
    )
    assert by_file[0]["source"] == "diffusers-unet" and "single_file" not in by_file[0]
    assert by_file[1] == by_option[1] and by_file[0]["unet_weights"] == str(
        (tmp_path / "unet.safetensors").resolve()
    )


def test_the_digest_covers_the_file_and_only_the_folder_weights_it_uses(files, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, configs, ckpt = files["sd"]
    kw = {"prompts": PROMPTS, "steps": 2, "dtype": "float32"}
    cfg, sha = fam.inspect(configs, weights_file=ckpt, **kw)
    cfg_full, sha_full = fam.inspect(folder, weights_file=ckpt, **kw)  # the folder's own weights are unused
    assert sha_full == sha
    state = load_file(str(ckpt))
    key = "model.diffusion_model.out.2.bias"
    state[key] = state[key] + 1
    save_file(state, str(tmp_path / "changed.safetensors"))
    assert fam.inspect(configs, weights_file=tmp_path / "changed.safetensors", **kw)[1] != sha
    # a file without its text encoder takes the folder's, which then counts in the digest
    bare = {k: v for k, v in load_file(str(ckpt)).items() if not k.startswith("cond_stage_model.")}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    cfg_bare, sha_bare = fam.inspect(folder, weights_file=tmp_path / "bare.safetensors", **kw)
    assert cfg_bare["folder_parts"] == ["text_encoder"] and sha_bare not in (sha, sha_full)
    model, sha_loaded = fam.load(folder, cfg_bare, "cpu")
    assert sha_loaded == sha_bare
    ref, _ = fam.load(folder, fam.inspect(folder, **kw)[0], "cpu")
    assert _same_state(model.text_encoder, ref.text_encoder)


def test_bad_single_files_and_config_folders_are_refused_naming_the_field(files, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, configs, ckpt = files["sd"]
    state = load_file(str(ckpt))
    key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
    shaped = {**state, key: torch.zeros(3, 3)}
    missing = {k: v for k, v in state.items() if k != key}
    sgm_like = {
        k.replace("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."): v
        for k, v in state.items()
    }
    bare = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
    for name, tensors in (("shaped", shaped), ("missing", missing), ("sgm", sgm_like), ("bare", bare)):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04not a safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    sdxl_configs = files["sdxl"][1]
    cases = [
        (configs, tmp_path / "model.ckpt", "diffusers", "not a .safetensors file"),
        (configs, tmp_path / "junk.safetensors", "diffusers", "not a readable safetensors"),
        (configs, tmp_path / "foreign.safetensors", "diffusers", "Unknown key layout"),
        (configs, tmp_path / "shaped.safetensors", "config", "wrong shape"),
        (configs, tmp_path / "missing.safetensors", "config", "missing"),
        (configs, tmp_path / "sgm.safetensors", "config", "SDXL config folder"),
        (configs, tmp_path / "bare.safetensors", "config", "no text_encoder weights"),
        (configs, files["sdxl"][2], "config", "SDXL config folder"),  # an SDXL file with an SD config
        (sdxl_configs, ckpt, "config", "SD 1.x / 2.x config folder"),  # an SD 1.5 file with an SDXL config
        (tmp_path / "nowhere", ckpt, "config", "no model_index.json"),
    ]
    for cfg_dir, file, field, words in cases:
        with pytest.raises(UserError) as err:
            fam.inspect(cfg_dir, weights_file=file, prompts=PROMPTS, dtype="float32")
        assert err.value.field == field and words in err.value.message, (file.name, err.value.message)
    assert json.loads((configs / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
