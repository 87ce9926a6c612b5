"""SD 2.x through the diffusers family, on a tiny random-weight SD-2.x-shaped pipeline
(tests/support/diffusers_models.py, kind "sd2": OpenCLIP-style 23-layer GELU text encoder, linear
transformer projections, a per-block ``attention_head_dim`` list, DDIM with ``v_prediction``): it registers,
generates with capture and masks, honours v-prediction and matches diffusers' own ``StableDiffusionPipeline``
for the same noise; written as an LDM single file with an OpenCLIP ``cond_stage_model.model.*`` text
encoder (tests/support/ldm_checkpoints.py) it loads back with bit-identical weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from common.ml.families import get_family
from common.ml.families.diffusers_single_file import checkpoint_layout
from common.ml.generation import make_noise
from common.ml.hooks import active_hook_count
from common.platform.errors import UserError
from tests.support.diffusers_models import make_tiny_pipeline
from tests.support.ldm_checkpoints import write_original_checkpoint

PROMPTS = ["a handwritten digit seven", "a red photo of a digit one"]
fam = get_family("diffusers")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """{"folder": SD 2.x pipeline folder, "eps": the same with an epsilon scheduler, "configs": its
    configs only, "file": its LDM single file with OpenCLIP}."""
    from diffusers import DiffusionPipeline

    root = tmp_path_factory.mktemp("sd2")
    folder = make_tiny_pipeline(root / "sd2", kind="sd2")
    eps = shutil.copytree(folder, root / "sd2-eps")
    sched = eps / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "epsilon"}))
    configs = shutil.copytree(folder, root / "configs", ignore=shutil.ignore_patterns("*.safetensors"))
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    file = write_original_checkpoint(pipe, root / "sd2.safetensors", layout="ldm-open-clip")
    return {"folder": folder, "eps": eps, "configs": configs, "file": file}


def _load(folder, **kw):
    kw = {"prompts": PROMPTS, "steps": 2, "guidance_scale": 4.0, "dtype": "float32", **kw}
    config, sha = fam.inspect(folder, **kw)
    model, sha2 = fam.load(folder, config, "cpu")
    assert sha2 == sha
    return model, config


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_sd2_pipeline_registers_and_generates_with_capture_and_masks(sd2):
    model, config = _load(sd2["folder"])
    assert config["prediction_type"] == "v_prediction" and config["scheduler"] == "DDIMScheduler"
    assert config["pipeline"] == "StableDiffusionPipeline" and not config["sdxl"]
    assert model.unet.config.use_linear_projection and list(model.unet.config.attention_head_dim) == [2, 4]
    names = [n for n, _, _ in config["layers"]]
    assert {"down_blocks.1.attentions.0", "mid_block.attentions.0", "mid_block", "up_block_1"} <= set(names)
    kw = dict(steps=2, prompts=PROMPTS, guidance_scale=4.0, capture=["mid_block", "down_block_0"])
    plain = fam.generate(model, [0, 1], [3, 4], **kw)
    assert plain.images.shape == (2, 32, 32, 3) and plain.activations["mid_block"].shape == (2, 32, 4, 4)
    assert not np.array_equal(plain.images[0], plain.images[1])
    mask = np.full((1, 32, 4, 4), 0.25, dtype=np.float32)
    masked = fam.generate(model, [0, 1], [3, 4], masks={"mid_block": mask}, **kw)
    assert np.allclose(masked.activations["mid_block"], 0.25)  # the last step's conditional pass, clamped
    assert not np.array_equal(masked.images, plain.images)
    alone = fam.generate(model, [1], [4], **kw)  # a sample is the same alone as in a batch
    assert np.array_equal(alone.images[0], plain.images[1])
    assert active_hook_count(model) == 0


@pytest.mark.parametrize("scheduler", [None, "EulerDiscreteScheduler"])
def test_v_prediction_matches_diffusers_own_pipeline_and_differs_from_epsilon(sd2, scheduler):
    """The same latents through diffusers' ``StableDiffusionPipeline`` (its CFG batches both passes into one
    UNet call, hence a float tolerance) give our images; reading the UNet's output as epsilon (the same
    folder with ``prediction_type: epsilon``) gives other images, far beyond that tolerance."""
    from diffusers import StableDiffusionPipeline

    model, config = _load(sd2["folder"], scheduler=scheduler)
    eps_model, eps_config = _load(sd2["eps"], scheduler=scheduler)
    assert model.scheduler.config.prediction_type == "v_prediction"  # kept when the scheduler is swapped
    assert eps_config["prediction_type"] == "epsilon"
    seeds, kw = [3, 4], dict(steps=3, prompts=PROMPTS, guidance_scale=4.0, return_float=True)
    ours = fam.generate(model, [0, 1], seeds, **kw)
    pipe = StableDiffusionPipeline.from_pretrained(sd2["folder"], local_files_only=True)
    pipe.scheduler = model.scheduler
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        prompt=PROMPTS,
        negative_prompt=["", ""],
        num_inference_steps=3,
        guidance_scale=4.0,
        latents=make_noise(seeds, (4, 8, 8)),
        height=32,
        width=32,
        output_type="np",
    ).images  # [B, H, W, 3] in [0, 1]
    mine = np.clip(ours.images_float / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)  # [B, H, W, 3]
    assert np.abs(mine - theirs).max() < 1e-4
    other = fam.generate(eps_model, [0, 1], seeds, **kw)
    assert np.abs(other.images_float - ours.images_float).max() > 1e-2


def test_a_scheduler_config_changed_after_registration_is_refused(sd2):
    """The weights' digest does not cover the scheduler config, so loading checks the prediction type."""
    config, sha = fam.inspect(sd2["folder"], prompts=PROMPTS, dtype="float32")
    assert fam.weights_sha256(sd2["eps"]) == sha  # the epsilon copy has the very same weight files
    with pytest.raises(UserError) as err:
        fam.load(sd2["eps"], config, "cpu")
    assert err.value.field == "scheduler" and "'epsilon'" in err.value.message
    assert "'v_prediction'" in err.value.message


def test_an_ldm_single_file_with_open_clip_loads_the_folder_models_weights(sd2):
    """An SD 2.x original checkpoint: LDM UNet and VAE, the OpenCLIP text tower under
    ``cond_stage_model.model.*`` (fused q/k/v, one more layer than the encoder runs, text projection)."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    keys = load_file(str(sd2["file"]))
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    assert checkpoint_layout(sd2["file"]) == "ldm"
    ref, ref_cfg = _load(sd2["folder"])
    model, cfg = _load(sd2["configs"], weights_file=sd2["file"])
    assert cfg["source"] == "ldm" and cfg["folder_parts"] == [] and cfg["prediction_type"] == "v_prediction"
    for part in ("unet", "vae", "text_encoder"):
        assert _same_state(getattr(model, part), getattr(ref, part)), part
    # Same weights, but the folder model's CPU tensors are views into the safetensors mmap (not 64-byte
    # aligned) while the converted ones are fresh allocations; CPU matmul kernels round differently on
    # them, so outputs agree to float precision rather than bit for bit.
    kw = dict(steps=2, prompts=PROMPTS, guidance_scale=4.0, capture=["mid_block"], return_float=True)
    a, b = fam.generate(ref, [0, 1], [5, 6], **kw), fam.generate(model, [0, 1], [5, 6], **kw)
    assert np.abs(a.images_float - b.images_float).max() < 1e-5
    assert np.abs(a.activations["mid_block"] - b.activations["mid_block"]).max() < 1e-5
    theirs = StableDiffusionPipeline.from_single_file(
        str(sd2["file"]), config=str(sd2["configs"]), local_files_only=True, safety_checker=None
    )
    for part in ("unet", "vae", "text_encoder"):  # diffusers' own single-file loader agrees
        assert _same_state(getattr(theirs, part), getattr(ref, part)), part
