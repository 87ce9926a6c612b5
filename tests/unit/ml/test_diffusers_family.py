"""The diffusers family on tiny random-weight SD-1.5- and SDXL-shaped pipelines (tests/support): loading and
registration checks, the layer table, tuple outputs and skips under capture and masks, classifier-free
guidance semantics, determinism across batch positions, and the model cache's byte bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.ml.activations import layer_table
from common.ml.families import get_family
from common.ml.hooks import ActivationCapture, ActivationMask, active_hook_count, layer_module, layer_shapes
from common.platform.errors import UserError

PROMPTS = ["a handwritten digit seven", "a red photo of a digit one"]
fam = get_family("diffusers")


@pytest.fixture(scope="module")
def sd(tiny_pipelines):
    config, sha = fam.inspect(
        tiny_pipelines["sd"], prompts=PROMPTS, steps=2, guidance_scale=3.0, dtype="float32"
    )
    model, sha2 = fam.load(tiny_pipelines["sd"], config, "cpu")
    assert sha == sha2
    return model, config


@pytest.fixture(scope="module")
def sdxl(tiny_pipelines):
    config, _ = fam.inspect(tiny_pipelines["sdxl"], prompts=PROMPTS, timesteps=[999, 499], guidance_scale=0)
    model, _ = fam.load(tiny_pipelines["sdxl"], config, "cpu")
    return model, config


def run(model, labels, seeds, **kw):
    kw.setdefault("steps", 2)
    kw.setdefault("prompts", PROMPTS)
    return fam.generate(model, labels, seeds, **kw)


# -- the layer table ------------------------------------------------------------------------------------


def test_layer_table_is_in_forward_order_with_shapes_and_agrees_with_the_live_model(sd):
    model, config = sd
    table = layer_table(config, "diffusers-unet")
    names = [i.name for i in table]
    assert names[:3] == ["down_blocks.0.attentions.0", "down_block_0_skip_0", "down_block_0"]
    assert (
        names.index("down_block_1")
        < names.index("mid_block")
        < names.index("up_block_0")
        < names.index("up_block_1")
    )
    assert {"mid_block.attentions.0", "up_blocks.0.attentions.1"} <= set(names)
    live = layer_shapes(model)
    assert {i.name: i.shape for i in table} == live
    # latents are 8x8 for 32x32 images (VAE factor 4); the first down block halves them
    assert live["down_block_0_skip_0"] == (16, 8, 8) and live["down_block_0"] == (16, 4, 4)
    assert config["height"] == 32 and config["vae_scale_factor"] == 4 and config["label_dim"] == 2


# -- tuple outputs: what capture stores and what a mask replaces -----------------------------------------


def _down_block_output(model, masks=None):
    """The down block 0 output tuple as the UNet sees it (after any mask), and the UNet's output."""
    seen = {}
    block = layer_module(model, "down_block_0")
    handle = block.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    try:
        with ActivationCapture(model, ["down_block_0", "down_block_0_skip_0"]) as cap:
            if masks:
                with ActivationMask(model, masks):
                    eps = _unet_once(model)
            else:
                eps = _unet_once(model)
    finally:
        handle.remove()
    return seen["out"], cap.activations, eps


def _unet_once(model):
    from common.ml.families.diffusers_sampling import encode_prompts, unet_call

    ctx, _ = encode_prompts(model, PROMPTS[:1])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return unet_call(model, x, torch.tensor(500), ctx, None, 32, 32)


def test_down_block_capture_stores_item_0_and_skips_are_their_own_layers(sd):
    model, _ = sd
    out, acts, _ = _down_block_output(model)
    hidden, skips = out
    assert len(skips) == 2 and skips[-1] is hidden  # the last skip is the block's output itself
    assert torch.equal(acts["down_block_0"], hidden.float())
    assert torch.equal(acts["down_block_0_skip_0"], skips[0].float())


def test_a_down_block_mask_clamps_its_last_skip_too_and_a_skip_mask_only_that_skip(sd):
    model, _ = sd
    _, before, eps0 = _down_block_output(model)
    m = torch.full((1, 16, 4, 4), 0.25)
    out, acts, eps1 = _down_block_output(model, {"down_block_0": m})
    hidden, skips = out
    assert torch.equal(hidden, m) and torch.equal(skips[-1], m)  # nothing of the clamped layer flows free
    assert torch.equal(skips[0], before["down_block_0_skip_0"])  # the earlier skip is untouched
    assert torch.equal(acts["down_block_0"], m)  # capturing a masked layer returns the mask
    assert not torch.equal(eps0, eps1)
    s = torch.full((1, 16, 8, 8), -0.5)
    out, acts, eps2 = _down_block_output(model, {"down_block_0_skip_0": s, "down_block_0": m})
    assert torch.equal(out[1][0], s) and torch.equal(out[0], m) and torch.equal(out[1][-1], m)
    assert not torch.equal(eps1, eps2)  # the skip reaches the up path
    assert active_hook_count(model) == 0


def test_attention_block_tuple_capture_and_mask(sd):
    model, _ = sd
    name = "down_blocks.0.attentions.0"
    m = torch.zeros(1, 16, 8, 8)
    _, plain, _ = _down_block_output(model)
    with ActivationCapture(model, [name, "down_block_0_skip_0"]) as cap, ActivationMask(model, {name: m}):
        _unet_once(model)
    assert torch.equal(cap.activations[name], m)
    assert torch.equal(cap.activations["down_block_0_skip_0"], m)  # the attention's output is skip 0
    assert not torch.equal(plain["down_block_0_skip_0"], m)


# -- classifier-free guidance ------------------------------------------------------------------------------


def test_capture_under_guidance_stores_the_conditional_pass(sd):
    model, _ = sd
    # one step: the conditional pass sees the same latents with or without guidance
    guided = run(model, [0, 1], [3, 4], steps=1, guidance_scale=4.0, capture=["mid_block"])
    plain = run(model, [0, 1], [3, 4], steps=1, guidance_scale=0.0, capture=["mid_block"])
    assert np.array_equal(guided.activations["mid_block"], plain.activations["mid_block"])
    assert not np.array_equal(guided.images, plain.images)  # guidance did act on the output
    uncond = run(model, None, [3, 4], steps=1, label_mode="null", capture=["mid_block"])
    assert not np.array_equal(uncond.activations["mid_block"], guided.activations["mid_block"])


def _seen_outputs(model, layer, **kw):
    seen = []
    module = layer_module(model, layer)
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        run(model, [0], [7], steps=1, guidance_scale=3.0, **kw)
    finally:
        handle.remove()
    return seen


def test_masks_apply_to_both_guidance_passes_by_default_and_to_the_conditional_one_on_request(sd):
    model, _ = sd
    mask = np.full((1, 32, 4, 4), 0.125, dtype=np.float32)
    both = _seen_outputs(model, "mid_block", masks={"mid_block": mask})
    assert len(both) == 2 and all(np.allclose(o.numpy(), 0.125) for o in both)
    cond = _seen_outputs(model, "mid_block", masks={"mid_block": mask}, mask_passes="cond")
    assert np.allclose(cond[0].numpy(), 0.125) and not np.allclose(cond[1].numpy(), 0.125)
    assert active_hook_count(model) == 0


def test_interventions_work_on_a_diffusers_unet_as_on_edm(sd):
    """Strength 0 is the unmasked image and strength 1 the clamp, bit for bit; a window outside every step
    and a direction at alpha 0 change nothing; the recorded size is read on the conditional pass."""
    model, _ = sd
    mask = np.full((1, 32, 4, 4), 0.125, dtype=np.float32)
    kw = dict(steps=2, guidance_scale=3.0, capture=["mid_block"])
    natural = run(model, [0, 1], [5, 6], **kw)
    clamp = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, **kw)
    assert not np.array_equal(natural.images, clamp.images)
    zero = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, strength=0.0, record_intervention=True, **kw)
    one = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, strength=1.0, record_intervention=True, **kw)
    assert np.array_equal(zero.images, natural.images) and np.array_equal(one.images, clamp.images)
    assert np.all(zero.intervention["mid_block"] == 0) and np.all(one.intervention["mid_block"] > 0)
    half = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, strength=0.5, record_intervention=True, **kw)
    assert np.all(half.intervention["mid_block"] < one.intervention["mid_block"])
    outside = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, mask_window=(2, 2), **kw)
    assert np.array_equal(outside.images, natural.images)
    late = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, mask_window=(1, 2), **kw)
    assert not np.array_equal(late.images, natural.images) and not np.array_equal(late.images, clamp.images)
    still = run(model, [0, 1], [5, 6], masks={"mid_block": mask}, mask_mode="add", alpha=0.0, **kw)
    assert np.array_equal(still.images, natural.images)
    with pytest.raises(ValueError, match="not both"):
        run(model, [0], [5], masks={"mid_block": mask}, mask_steps=1, mask_window=(0, 1), **kw)
    assert active_hook_count(model) == 0


# -- determinism and conditioning ---------------------------------------------------------------------------


def test_a_sample_is_identical_in_any_batch_position(sd):
    model, _ = sd
    a = run(model, [0, 1, 0], [11, 12, 13], micro_batch=4, guidance_scale=3.0, capture=["mid_block"])
    b = run(model, [0], [13], micro_batch=4, guidance_scale=3.0, capture=["mid_block"])
    c = run(model, [0, 0], [13, 11], micro_batch=4, guidance_scale=3.0, capture=["mid_block"])
    assert np.array_equal(a.images[2], b.images[0]) and np.array_equal(c.images[0], b.images[0])
    assert np.array_equal(a.images[0], c.images[1])
    assert np.array_equal(a.activations["mid_block"][2], b.activations["mid_block"][0])
    assert a.images.shape == (3, 32, 32, 3) and not np.array_equal(a.images[0], a.images[2])


@pytest.mark.parametrize("scheduler", ["EulerAncestralDiscreteScheduler", "LCMScheduler"])
def test_stochastic_scheduler_step_noise_is_per_sample(tiny_pipelines, scheduler):
    config, _ = fam.inspect(
        tiny_pipelines["sd"],
        prompts=PROMPTS,
        steps=3,
        scheduler=scheduler,
        guidance_scale=3.0,
        dtype="float32",
    )
    model, _ = fam.load(tiny_pipelines["sd"], config, "cpu")
    assert type(model.scheduler).__name__ == scheduler
    kw = dict(steps=3, micro_batch=4, guidance_scale=3.0)
    batch = run(model, [1, 0, 0], [21, 22, 23], **kw)
    alone = run(model, [0], [23], **kw)
    assert batch.images.tobytes()[2 * alone.images[0].nbytes :] == alone.images.tobytes()
    # the scheduler does draw step noise: the same sample under deterministic Euler differs
    euler = run(fam.load(tiny_pipelines["sd"], {**config, "scheduler": None}, "cpu")[0], [0], [23], **kw)
    assert not np.array_equal(euler.images, alone.images)


def test_prompt_modes_pick_blend_and_drop_the_text(sd):
    model, _ = sd
    one = run(model, [0], [1], capture=["mid_block"])
    two = run(model, [1], [1], capture=["mid_block"])
    assert not np.array_equal(one.images, two.images)  # the prompt conditions the image
    pure = run(model, [{0: 1.0}], [1], label_mode="blend")
    assert np.array_equal(pure.images, one.images)  # a blend of one prompt is that prompt
    mixed = run(model, [{0: 0.5, 1: 0.5}], [1], label_mode="blend")
    uniform = run(model, None, [1], label_mode="uniform")
    assert np.array_equal(mixed.images, uniform.images)
    assert not np.array_equal(mixed.images, one.images)


def test_sdxl_shaped_pipeline_uses_pooled_embeddings_and_explicit_timesteps(sdxl):
    model, config = sdxl
    assert config["sdxl"] and config["timesteps"] == [999, 499] and config["default_steps"] == 2
    a = fam.generate(model, [0, 1], [5, 5], prompts=PROMPTS, timesteps=[999, 499], capture=["mid_block"])
    assert a.sigmas == [999.0, 499.0] and a.images.shape == (2, 32, 32, 3)
    assert not np.array_equal(a.images[0], a.images[1])
    b = fam.generate(model, [1], [5], prompts=PROMPTS, timesteps=[999, 499])
    assert np.array_equal(a.images[1], b.images[0])
    assert active_hook_count(model) == 0


# -- registration checks ------------------------------------------------------------------------------------


def test_registration_refuses_bad_input_naming_the_field(tiny_pipelines, tmp_path):
    sd_dir = tiny_pipelines["sd"]
    cases = [
        (dict(path=tmp_path), "diffusers", "model_index.json"),
        (dict(scheduler="WarpScheduler"), "scheduler", "Unknown scheduler"),
        (dict(height=30), "height", "multiple of 8"),
        (dict(prompts=[]), "prompts", "at least one"),
        (dict(prompts=["  "]), "prompts", "non-empty"),
        (dict(dtype="int8"), "dtype", "float16"),
        (dict(timesteps=[499, 999]), "timesteps", "decreasing"),
        (dict(guidance_scale=5.0, allow_guidance=False), "guidance_scale", "forbids"),
    ]
    for override, field, words in cases:
        kw = {"path": sd_dir, "prompts": PROMPTS, **override}
        with pytest.raises(UserError) as err:
            fam.inspect(kw.pop("path"), **kw)
        assert err.value.field == field and words in err.value.message, (override, err.value.message)


def test_separate_unet_weights_load_strictly(tiny_pipelines, tmp_path, sd):
    from safetensors.torch import save_file

    model, _ = sd
    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    good = tmp_path / "unet.safetensors"
    save_file(state, str(good))
    config, sha = fam.inspect(tiny_pipelines["sd"], prompts=PROMPTS, unet_weights=good)
    assert config["unet_weights"] == str(good.resolve()) and len(sha) == 64
    bad = dict(state)
    key = next(iter(bad))
    bad[key] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    missing = dict(state)
    missing.pop(key)
    save_file(missing, str(tmp_path / "missing.safetensors"))
    for name, words in (("bad.safetensors", "wrong shape"), ("missing.safetensors", "missing")):
        with pytest.raises(UserError) as err:
            fam.inspect(tiny_pipelines["sd"], prompts=PROMPTS, unet_weights=tmp_path / name)
        assert err.value.field == "diffusers" and words in err.value.message


def test_model_cache_is_bounded_by_bytes(tiny_pipelines, sd, tmp_path):
    from common.models import GeneratorModel
    from common.research.modelcache import ModelCache, model_nbytes
    from tests.support.settings import make_settings

    model, config = sd
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", "redis://127.0.0.1:1/0")
    sha = fam.weights_sha256(tiny_pipelines["sd"])
    rows = [
        GeneratorModel(
            id=i,
            name=f"m{i}",
            family="diffusers",
            config=config,
            checkpoint_path=str(tiny_pipelines["sd"]),
            checkpoint_sha256=sha,
        )
        for i in (1, 2, 3)
    ]
    size = model_nbytes(model)
    cache = ModelCache(capacity=10, device="cpu", max_bytes=int(size * 2.5))
    for row in rows:
        cache.get(settings, row)
    assert len(cache) == 2 and cache.loads == 3 and cache.nbytes() <= 2.5 * size
    cache.get(settings, rows[2])
    assert cache.hits == 1 and cache.stats()["max_bytes"] == int(size * 2.5)
    tiny = ModelCache(capacity=10, device="cpu", max_bytes=1)
    tiny.get(settings, rows[0])
    assert len(tiny) == 1  # the model just asked for is always kept


def test_prompts_over_the_tokenizer_limit_are_truncated(sd):
    from common.ml.families.diffusers_sampling import encode_prompts

    model, config = sd
    limit = config["max_prompt_tokens"]  # 16 in the tiny tokenizer: start, 14 words, end
    long, _ = encode_prompts(model, [" ".join(["digit"] * (limit + 10))])
    cut, _ = encode_prompts(model, [" ".join(["digit"] * (limit - 2))])
    shorter, _ = encode_prompts(model, [" ".join(["digit"] * (limit - 3))])
    assert torch.equal(long, cut) and not torch.equal(cut, shorter)


def test_a_pipeline_folder_with_missing_or_mis_shaped_weights_is_refused(tiny_pipelines, tmp_path):
    """diffusers alone would leave a tensor its file lacks at random init; registration refuses it."""
    import shutil

    from safetensors.torch import load_file, save_file

    for part, change, words in (
        ("unet", "drop", "lack 1 of the model's tensors (conv_in.bias)"),
        ("vae", "drop", "lack 1 of the model's tensors"),
        ("text_encoder", "drop", "lack 1 of the model's tensors"),
        ("unet", "shape", "Could not load the diffusers pipeline"),
    ):
        folder = tmp_path / f"{part}-{change}"
        shutil.copytree(tiny_pipelines["sd"], folder)
        (file,) = (folder / part).glob("*.safetensors")
        state = load_file(str(file))
        key = "conv_in.bias" if part == "unet" else sorted(state)[0]
        if change == "drop":
            state.pop(key)
        else:
            state[key] = torch.zeros(3, 3)
        save_file(state, str(file))
        with pytest.raises(UserError) as err:
            fam.inspect(folder, prompts=PROMPTS)
        assert err.value.field == "diffusers" and words in err.value.message, (part, err.value.message)
