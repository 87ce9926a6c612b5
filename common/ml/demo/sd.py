"""The text-to-image demo ``digits-sd``: a tiny Stable-Diffusion-shaped pipeline trained on the digits.

Usage::

    summary = train_sd_demo("data/models")      # writes data/models/digits-sd/ (a pipeline folder) + card

Recipe (CPU, deterministic for given seeds, threads and machine):

1. data: the digits of ``common.ml.training.load_digits_images`` (16x16, [-1, 1]) repeated to 3 channels
   (the pipeline decodes RGB); prompts ``"a handwritten digit zero"`` ... ``"nine"``;
2. a tiny ``AutoencoderKL`` (2 levels, factor 2: [3, 16, 16] -> latents [4, 8, 8]) trained as an
   autoencoder (L1 + L2 reconstruction of the posterior sample, a small KL term); ``scaling_factor`` set
   to 1 / std of the training latents, as Stable Diffusion's 0.18215 does;
3. a tiny ``CLIPTextModel`` with **fixed random weights** (seeded) and a ``CLIPTokenizer`` whose vocabulary
   is made here from the prompt words (plus letters, so any prompt tokenizes);
4. a tiny ``UNet2DConditionModel`` on the latents, epsilon prediction under a ``DDIMScheduler`` (scaled-
   linear betas, 1000 training steps), cross-attending to the text encoder's last hidden state, with
   10 % prompt dropout to the empty prompt so classifier-free guidance works; EMA weights shipped;
5. ``StableDiffusionPipeline.save_pretrained`` into ``<out>/digits-sd/`` and the card
   ``<out>/digits-sd.json`` (family, prompts, defaults, sha256 over the weight files, training, quality).
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.ml.demo.spec import RESOLUTION, RESOLUTION_NOTE, UPSAMPLE
from common.ml.training import config_dict, deterministic, load_digits_images

SD_NAME = "digits-sd"
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPTS = [f"a handwritten digit {w}" for w in DIGIT_WORDS]
SD_STEPS = 20
SD_GUIDANCE = 3.0
SD_SCHEDULER = "DDIMScheduler"
MAX_TOKENS = 8  # <start> a handwritten digit seven <end> + padding


@dataclass(frozen=True)
class SDTrainConfig:
    """Hyperparameters of the ``digits-sd`` recipe (stored in the card)."""

    vae_steps: int = 300
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 2e-3
    lr_warmup_steps: int = 50
    prompt_dropout: float = 0.1
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------
# Components.


def make_tokenizer(folder: Path, words: Sequence[str] = ()) -> Any:
    """Usage: ``tok = make_tokenizer(tmp, ["handwritten", "digit"])`` -> a ``CLIPTokenizer`` whose BPE
    merges make each of ``words`` one token (letters cover any other word), max length ``MAX_TOKENS``."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for tok in letters + [w + "</w>" for w in letters]:
        vocab.setdefault(tok, len(vocab))
    merges = ["#version: 0.2"]
    for word in words:
        cur = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + "</w>" if i == len(word) - 1 else ch
            merges.append(f"{cur} {piece}")
            cur = cur + piece
            vocab.setdefault(cur, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def make_components(tokenizer_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Usage: ``parts = make_components(tmp)`` -> untrained vae, text_encoder, tokenizer, unet, scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    words = sorted({w for p in PROMPTS for w in p.split() if len(w) > 1})
    tokenizer = make_tokenizer(tokenizer_dir, words)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            projection_dim=32,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,
        sample_size=RESOLUTION,
    )
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",  # the text enters at the 4x4 bottleneck
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


# ----------------------------------------------------------------------------------------------------------
# Training.


def _lr(step: int, cfg: SDTrainConfig, total: int, base: float) -> float:
    if step < cfg.lr_warmup_steps:
        return base * (step + 1) / cfg.lr_warmup_steps
    frac = (step - cfg.lr_warmup_steps) / max(1, total - cfg.lr_warmup_steps)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * frac)))


def train_vae(vae, x: torch.Tensor, cfg: SDTrainConfig, log: Callable = print) -> list[float]:
    """Train ``vae`` in place on images x [N, 3, 16, 16] in [-1, 1]; returns the reconstruction losses."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    losses = []
    vae.train()
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, cfg.vae_steps, cfg.vae_lr)
        idx = torch.randint(0, len(x), (cfg.vae_batch,), generator=gen)
        batch = x[idx]  # [b, 3, 16, 16]
        post = vae.encode(batch).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)  # [b, 4, 8, 8]
        rec = vae.decode(z).sample
        recon = F.mse_loss(rec, batch) + F.l1_loss(rec, batch)
        loss = recon + cfg.vae_kl_weight * post.kl().mean() / z[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(recon.detach()))
        if step % 50 == 0:
            log(f"vae step {step}: recon {np.mean(losses[-50:]):.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def encode_latents(vae, x: torch.Tensor) -> torch.Tensor:
    """Posterior means [N, 4, 8, 8] of images x [N, 3, 16, 16] (unscaled)."""
    return torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])


def train_unet(
    unet, text_encoder, tokenizer, scheduler, z: torch.Tensor, y: torch.Tensor, cfg: SDTrainConfig, log=print
) -> tuple[Any, list[float]]:
    """Train ``unet`` (epsilon prediction) on scaled latents z [N, 4, 8, 8] with prompt labels y [N]; returns
    (EMA copy, losses). Prompt index 10 is the empty prompt (dropout)."""
    ids = tokenizer(
        PROMPTS + [""], padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids  # [11, T]
    with torch.no_grad():
        ctx_all = text_encoder(ids)[0]  # [11, T, 32]
    acp = scheduler.alphas_cumprod  # [1000]
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.unet_lr)
    losses = []
    unet.train()
    for step in range(cfg.unet_steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg, cfg.unet_steps, cfg.unet_lr)
        idx = torch.randint(0, len(z), (cfg.unet_batch,), generator=gen)
        x0, labels = z[idx], y[idx].clone()  # [b, 4, 8, 8], [b]
        drop = torch.rand(len(idx), generator=gen) < cfg.prompt_dropout
        labels[drop] = len(PROMPTS)
        t = torch.randint(0, len(acp), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # [b, 4, 8, 8]
        eps = unet(xt, t, encoder_hidden_states=ctx_all[labels]).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - cfg.ema_decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            log(f"unet step {step}: loss {np.mean(losses[-50:]):.4f}")
    unet.eval()
    return ema, losses


# ----------------------------------------------------------------------------------------------------------
# The recipe.


def digits_rgb() -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32 [1797, 3, 16, 16] in [-1, 1], y int64 [1797]): the demo digits repeated to RGB."""
    x, y = load_digits_images(RESOLUTION, UPSAMPLE)  # [N, 1, 16, 16]
    return x.expand(-1, 3, -1, -1).contiguous(), y


def train_sd_demo(
    out_dir: str | Path = "data/models",
    *,
    config: SDTrainConfig | None = None,
    threads: int = 1,
    log: Callable = print,
) -> dict[str, Any]:
    """Usage: ``summary = train_sd_demo("data/models")`` -- train the VAE and UNet, save the pipeline folder
    ``<out>/digits-sd`` and its card ``<out>/digits-sd.json`` (``quality`` empty: ``bench/demo_sd.py``
    measures and stores it). Returns ``{"timings": ..., "card": ...}``."""
    import shutil
    import tempfile

    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from common.ml.demo.cards import _write_json

    diffusers_logging.set_verbosity_error()
    cfg = config or SDTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all, c_all = time.perf_counter(), time.process_time()
    with deterministic(threads), tempfile.TemporaryDirectory() as tmp:
        x, y = digits_rgb()
        parts = make_components(Path(tmp) / "tokenizer", cfg.seed)
        t0 = time.perf_counter()
        vae_losses = train_vae(parts["vae"], x, cfg, log)
        timings["vae_training_s"] = round(time.perf_counter() - t0, 1)
        z = encode_latents(parts["vae"], x)  # [N, 4, 8, 8]
        scaling = float(1.0 / z.std())
        parts["vae"].register_to_config(scaling_factor=scaling)
        log(f"vae: {cfg.vae_steps} steps in {timings['vae_training_s']:.0f} s; latent scale {scaling:.4f}")
        t0 = time.perf_counter()
        ema, unet_losses = train_unet(
            parts["unet"],
            parts["text_encoder"],
            parts["tokenizer"],
            parts["scheduler"],
            z * scaling,
            y,
            cfg,
            log,
        )
        timings["unet_training_s"] = round(time.perf_counter() - t0, 1)
        log(f"unet: {cfg.unet_steps} steps in {timings['unet_training_s']:.0f} s")
        parts["unet"] = ema
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        staging = out / f".{SD_NAME}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        pipe.save_pretrained(staging, safe_serialization=True)
        final = out / SD_NAME
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)

    from common.ml.families.diffusers import weights_sha256

    with torch.no_grad():
        rec = parts["vae"].decode(z[:512]).sample
    card = {
        "name": SD_NAME,
        "family": "diffusers",
        "description": (
            "text-to-image digits: a tiny Stable-Diffusion-shaped pipeline (AutoencoderKL, CLIP text "
            "encoder, UNet2DConditionModel, DDIM) trained by latentlab; prompts 'a handwritten digit zero' "
            "... 'nine'"
        ),
        "architecture": "diffusers-unet",
        "checkpoint": SD_NAME,
        "sha256": weights_sha256(final),
        "weights_sha256": "sha256 over (relative path, sha256) of every weight file",
        "prompts": list(PROMPTS),
        "label_names": list(PROMPTS),
        "default_steps": SD_STEPS,
        "defaults": {
            "steps": SD_STEPS,
            "guidance_scale": SD_GUIDANCE,
            "scheduler": SD_SCHEDULER,
            "height": RESOLUTION,
            "width": RESOLUTION,
            "dtype": "float32",
        },
        "resolution_note": RESOLUTION_NOTE + "; repeated to 3 channels",
        "training": {
            "data": {"source": "sklearn.datasets.load_digits", "images": len(x), "resolution": RESOLUTION},
            "text_encoder": f"fixed random weights (seed {cfg.seed}), not trained; the UNet learns "
            "from its embeddings",
            "tokenizer": "CLIP BPE, vocabulary made from the prompt words plus single letters",
            "vae": "AutoencoderKL trained as an autoencoder: L1 + L2 reconstruction, KL weight "
            f"{cfg.vae_kl_weight}; scaling_factor 1/std of the latents = {scaling:.5f}",
            "unet": "epsilon prediction, DDPM scaled-linear betas (1000 steps), prompt dropout "
            f"{cfg.prompt_dropout} to the empty prompt, EMA {cfg.ema_decay} weights shipped",
            "hyperparameters": config_dict(cfg),
            "vae_recon_mse_last100": round(float(np.mean(vae_losses[-100:])), 5),
            "vae_recon_mse_train_512": round(float(F.mse_loss(rec, x[:512])), 5),
            "unet_loss_last100": round(float(np.mean(unet_losses[-100:])), 5),
            "threads": threads,
            "reproduce": f"latentlab train-demo --sd --threads {threads}",
            "versions": {
                "torch": torch.__version__,
                "diffusers": __import__("diffusers").__version__,
                "transformers": __import__("transformers").__version__,
                "python": platform.python_version(),
            },
        },
        "quality": {},
    }
    timings["total_s"] = round(time.perf_counter() - t_all, 1)
    timings["total_cpu_s"] = round(time.process_time() - c_all, 1)
    card["training"]["timings"] = timings
    _write_json(out / f"{SD_NAME}.json", card)
    log("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {"timings": timings, "card": card}
