"""Sampling a diffusers text-to-image UNet with masks and capture: encode the prompts, denoise latents with
the pipeline's scheduler (classifier-free guidance when ``guidance_scale > 1``), decode with the VAE.

Conditioning plays the role of the EDM family's class: ``prompts`` is the list of prompts (a dataset's
label names) and ``class_labels``/``label_mode`` pick from it as ``common.ml.generation.make_class_labels``
does -- ``onehot`` (prompt i: its embeddings exactly), ``blend``/``uniform`` (a weighted mean of the
prompts' embeddings, pooled embeddings too), ``null`` (the unconditional embedding: the negative prompt).
Prompts longer than the tokenizer's limit (77 tokens for CLIP) are **truncated** to it, as diffusers does.

Classifier-free guidance runs the conditional and the unconditional pass as two UNet calls per step:
``eps = eps_u + g (eps_c - eps_u)``; "eps" is whatever the UNet predicts (the scheduler config's
``prediction_type``: v for SD 2.x 768 models), which only ``scheduler.step`` interprets. Capture stores
the **conditional** pass of the last step. Masks apply to **both** passes (``mask_passes="both"``, the
default) or to the conditional pass only (``mask_passes="cond"``).

Determinism: each sample's latent noise is drawn on the CPU from its own seed at the latent shape
[C_lat, H/f, W/f] and the UNet runs on fixed-size, zero-padded micro-batches (as in
``common.ml.generation``), so a sample is identical in any batch position. A stochastic scheduler's step
noise (Euler ancestral, LCM, DDIM with eta > 0) is per sample too: ``step_generators`` gives the scheduler
one CPU generator per row (diffusers' ``randn_tensor`` draws row i from generator i), the sample's seed
stream continued after its initial noise, as a diffusers pipeline called with ``generator=[...]`` does.
"""

from __future__ import annotations

import copy
import inspect as _inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from common.ml.generation import (
    GenerationResult,
    _pad_rows,
    chunk_masks,
    default_micro_batch,
    joined_sizes,
    make_class_labels,
    make_noise,
    step_window,
    to_uint8,
)
from common.ml.generation import (
    micro_batch_for as _micro_batch_for_device,
)
from common.ml.hooks import ActivationCapture

MASK_PASSES = ("both", "cond")


def micro_batch_for(model, n: int) -> int:
    """Usage: ``micro_batch_for(model, 4)`` -> samples per UNet call for n variations of one recipe."""
    return _micro_batch_for_device(model.unet.device, n)


def set_timesteps(scheduler: Any, steps: int, timesteps: Sequence[int] | None, device) -> None:
    """``scheduler.set_timesteps`` with explicit ``timesteps`` (e.g. 999,749,499,249) or a step count."""
    if timesteps:
        if "timesteps" not in _inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"{type(scheduler).__name__} does not take explicit timesteps")
        scheduler.set_timesteps(timesteps=[int(t) for t in timesteps], device=device)
    else:
        scheduler.set_timesteps(int(steps), device=device)


def step_generators(seeds: Sequence[int], shape: Sequence[int], rows: int) -> list[torch.Generator]:
    """Usage: ``step_generators([5, 6], (4, 8, 8), 4)`` -> ``rows`` CPU generators for a scheduler's step
    noise: generator i is seeded with ``seeds[i]`` and advanced past the sample's initial noise of ``shape``
    (``make_noise``'s draw), so step noise continues the sample's own stream instead of repeating its
    initial noise; padding rows get generators seeded 0 (their output is dropped)."""
    gens = []
    for seed in seeds:
        g = torch.Generator(device="cpu").manual_seed(int(seed))
        torch.randn(tuple(shape), generator=g, dtype=torch.float32)  # the initial noise, already used
        gens.append(g)
    gens += [torch.Generator(device="cpu").manual_seed(0) for _ in range(rows - len(seeds))]
    return gens


def unet_call(model, x, t, ctx, pooled, height: int, width: int) -> torch.Tensor:
    """One UNet evaluation: x [B, C, h, w], ctx [B, T, D], pooled [B, P] (SDXL) -> eps [B, C, h, w]."""
    B = x.shape[0]
    added = None
    if model.sdxl:
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=x.dtype, device=x.device)
        added = {"text_embeds": pooled, "time_ids": ids.expand(B, -1)}  # [B, 6]
    return model.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added, return_dict=False)[0]


# ----------------------------------------------------------------------------------------------------------
# Conditioning.


@torch.no_grad()
def encode_prompts(model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Usage: ``ctx, pooled = encode_prompts(model, ["a cat", ""])`` -> ctx [P, T, D] and pooled [P, D_p]
    (SDXL; else None), float32 on the model's device; cached per prompt list on the model.

    SD: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states concatenated,
    the pooled projection of the second; an empty prompt gives zeros where the pipeline asks for it
    (``force_zeros_for_empty_prompt``), as diffusers' SDXL pipeline does for its negative prompt.
    """
    key = tuple(prompts)
    if key in model.embedding_cache:
        return model.embedding_cache[key]
    dev = model.unet.device

    def tokens(tok):
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True)
        return torch.tensor(ids["input_ids"], device=dev)  # [P, T]

    if not model.sdxl:
        ctx = model.text_encoder(tokens(model.tokenizer), return_dict=False)[0].float()  # [P, T, D]
        pooled = None
    else:
        out1 = model.text_encoder(tokens(model.tokenizer), output_hidden_states=True)
        out2 = model.text_encoder_2(tokens(model.tokenizer_2), output_hidden_states=True)
        ctx = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1).float()  # [P, T, D1 + D2]
        pooled = out2.text_embeds.float()  # [P, D_p]
        if model.force_zeros_for_empty_prompt:
            empty = torch.tensor([not p for p in prompts], device=dev)
            ctx = torch.where(empty[:, None, None], torch.zeros_like(ctx), ctx)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    if len(model.embedding_cache) > 64:
        model.embedding_cache.clear()
    model.embedding_cache[key] = (ctx, pooled)
    return ctx, pooled


def conditioning(
    model, prompts: Sequence[str], class_labels: Any, label_mode: str, negative_prompt: str, batch: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(ctx [B, T, D], pooled [B, D_p] | None, uncond ctx [1, T, D], uncond pooled [1, D_p] | None)."""
    ctx_all, pooled_all = encode_prompts(model, list(prompts))  # [P, T, D]
    u_ctx, u_pooled = encode_prompts(model, [negative_prompt])  # [1, T, D]
    if label_mode == "null":
        return (
            u_ctx.expand(batch, -1, -1),
            (u_pooled.expand(batch, -1) if u_pooled is not None else None),
            u_ctx,
            u_pooled,
        )
    weights = make_class_labels(class_labels, batch, len(prompts), label_mode)  # [B, P]
    if label_mode == "onehot":
        idx = weights.argmax(dim=1).to(ctx_all.device)  # exact rows, no arithmetic on the embeddings
        return ctx_all[idx], (pooled_all[idx] if pooled_all is not None else None), u_ctx, u_pooled
    w = weights.to(ctx_all.device)
    ctx = torch.einsum("bp,ptd->btd", w, ctx_all)  # [B, T, D]
    pooled = w @ pooled_all if pooled_all is not None else None  # [B, D_p]
    return ctx, pooled, u_ctx, u_pooled


# ----------------------------------------------------------------------------------------------------------
# The sampler.


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> torch.Tensor:
    """Usage: ``img = decode(model, latents)``: latents [B, C_lat, h, w] -> float32 images [B, 3, H, W]
    (about [-1, 1]), through the VAE with its scaling (and shift) factor."""
    vae = model.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    return vae.decode(z, return_dict=False)[0].float()


@torch.no_grad()
def generate(
    model,
    class_labels: Any,
    seeds: Sequence[int],
    *,
    steps: int = 25,
    prompts: Sequence[str] = (),
    negative_prompt: str = "",
    guidance_scale: float = 0.0,
    height: int | None = None,
    width: int | None = None,
    timesteps: Sequence[int] | None = None,
    masks: Mapping[str, Any] | None = None,
    mask_steps: int | None = None,
    mask_window: Sequence[int] | None = None,
    strength: float = 1.0,
    layer_strength: Mapping[str, float] | None = None,
    mask_mode: str = "replace",
    normalize: bool = False,
    alpha: float = 1.0,
    record_intervention: bool = False,
    mask_passes: str = "both",
    capture: Sequence[str] | None = None,
    label_mode: str = "onehot",
    return_float: bool = False,
    micro_batch: int | None = None,
    check: Callable[[], None] | None = None,
    sigma_max: float | None = None,
) -> GenerationResult:
    """Usage: ``res = generate(model, [0, 1], seeds=[5, 6], prompts=["a cat", "a dog"], steps=4)``.

    ``model`` is a ``DiffusersGenerator``; ``class_labels``/``label_mode`` index ``prompts`` (see the module
    docstring). ``masks`` (``{layer: [1|B, C, H, W]}``) replace layer outputs on every UNet call of the first
    ``mask_steps`` steps (all when None), in both guidance passes or the conditional one (``mask_passes``).
    ``capture`` layers come back as float32 [B, C, H, W] from the conditional pass of the last step.
    ``mask_window``, ``strength``, ``layer_strength``, ``mask_mode``, ``normalize``, ``alpha`` and
    ``record_intervention`` mean what they mean for ``common.ml.generation.generate`` (the intervention's
    size is read on the conditional pass). ``steps`` is ignored when explicit ``timesteps`` are given.
    ``sigma_max`` is accepted for signature compatibility with the EDM family and unused. Returns images
    uint8 [B, H, W, 3] (VAE-decoded).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    if not prompts:
        raise ValueError("a diffusers model needs at least one prompt")
    if mask_passes not in MASK_PASSES:
        raise ValueError(f"mask_passes must be one of {', '.join(MASK_PASSES)}, not {mask_passes!r}")
    window = step_window(mask_steps, mask_window)
    cfg = model.config
    H, W = int(height or cfg["height"]), int(width or cfg["width"])
    f = int(cfg["vae_scale_factor"])
    if H % f or W % f:
        raise ValueError(f"height and width must be multiples of the VAE factor {f}; got {H}x{W}")
    dev, dt = model.unet.device, model.unet.dtype
    K = int(micro_batch) if micro_batch is not None else default_micro_batch(dev)
    B = len(seeds)
    chunks = [(a, min(a + K, B)) for a in range(0, B, K)]
    guided = float(guidance_scale) > 1.0
    ctx, pooled, u_ctx, u_pooled = conditioning(model, prompts, class_labels, label_mode, negative_prompt, B)

    how = dict(strength=strength, layer_strength=layer_strength, mode=mask_mode, normalize=normalize)
    mask_ctxs = chunk_masks(model, masks, chunks, K, alpha=alpha, record=record_intervention, **how)
    sizes: list[dict[str, np.ndarray]] = [{} for _ in chunks]  # per chunk: the last masked call's sizes
    captured: dict[str, list[np.ndarray]] = {n: [] for n in capture or []}
    lat_shape = (int(model.unet.config.in_channels), H // f, W // f)
    noise = make_noise(seeds, lat_shape)  # [B, C_lat, h, w] CPU
    images = []
    used_timesteps: list[float] = []
    for c, (a, b) in enumerate(chunks):
        n = b - a
        sched = copy.deepcopy(model.scheduler)
        set_timesteps(sched, steps, timesteps, dev)
        used_timesteps = [float(t) for t in sched.timesteps]
        step_kwargs = {}
        if "generator" in _inspect.signature(sched.step).parameters:
            step_kwargs["generator"] = step_generators(seeds[a:b], lat_shape, K)  # one per row, CPU
        latents = _pad_rows(noise[a:b], K).to(dev) * sched.init_noise_sigma  # [K, C_lat, h, w] float32
        c_ctx = _pad_rows(ctx[a:b], K).to(dt)  # [K, T, D]
        c_pooled = _pad_rows(pooled[a:b], K).to(dt) if pooled is not None else None
        uc_ctx = u_ctx.expand(K, -1, -1).to(dt)
        uc_pooled = u_pooled.expand(K, -1).to(dt) if u_pooled is not None else None
        for i, t in enumerate(sched.timesteps):
            if check is not None:
                check()
            last = i == len(sched.timesteps) - 1
            x = sched.scale_model_input(latents, t).to(dt)
            masked = mask_ctxs is not None and (window is None or window[0] <= i < window[1])
            with ExitStack() as stack:
                if masked:
                    stack.enter_context(mask_ctxs[c])
                cap = stack.enter_context(ActivationCapture(model, capture)) if last and capture else None
                eps = unet_call(model, x, t, c_ctx, c_pooled, H, W).float()  # [K, C_lat, h, w]
            if masked and record_intervention:  # the conditional pass's sizes, before a guided pass
                sizes[c] = {name: v[:n].copy() for name, v in mask_ctxs[c].sizes.items()}
            if cap is not None:
                for name in capture:
                    captured[name].append(cap.activations[name][:n].numpy())
            if guided:
                with ExitStack() as stack:
                    if masked and mask_passes == "both":
                        stack.enter_context(mask_ctxs[c])
                    eps_u = unet_call(model, x, t, uc_ctx, uc_pooled, H, W).float()
                eps = eps_u + float(guidance_scale) * (eps - eps_u)
            latents = sched.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
        images.append(decode(model, latents)[:n])  # [n, 3, H, W]
    img = torch.cat(images)
    return GenerationResult(
        images=to_uint8(img),
        activations={k: np.concatenate(v) for k, v in captured.items()} if capture else None,
        images_float=img.cpu().numpy() if return_float else None,
        sigmas=used_timesteps,
        intervention=joined_sizes(sizes) if record_intervention else None,
    )
