"""Tiny random-weight diffusers pipelines for tests, built from configs (no download) and saved with
``save_pretrained``: an SD-1.5-shaped one (one CLIP text encoder), an SD-2.x-shaped one (the 768-v recipe: an
OpenCLIP-style encoder with GELU and 23 layers -- the penultimate-layer features of a 24-layer OpenCLIP model
--, linear projections in the transformers, a per-block ``attention_head_dim`` list, a DDIM scheduler with
``prediction_type: v_prediction``) and an SDXL-shaped one (two encoders, pooled embeddings, time ids). The
tokenizer's vocabulary is made here: every lowercase letter and a few words, so any prompt tokenizes (unknown
words fall back to letters).

Usage::

    path = make_tiny_pipeline(tmp_path / "sd", kind="sd")        # a pipeline folder with model_index.json
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

WORDS = ["a", "handwritten", "digit", "zero", "one", "two", "three", "seven", "red", "blue", "photo", "of"]


def _tokenizer(folder: Path, max_length: int = 16):
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for tok in letters + [w + "</w>" for w in letters] + [w + "</w>" for w in WORDS if len(w) > 1]:
        vocab.setdefault(tok, len(vocab))
    merges = ["#version: 0.2"]
    # merges that build each word letter by letter, so the known words are single tokens
    for word in WORDS:
        if len(word) < 2:
            continue
        cur = word[0]
        for i, ch in enumerate(word[1:], start=1):
            last = i == len(word) - 1
            piece = ch + "</w>" if last else ch
            merges.append(f"{cur} {piece}")
            cur = cur + piece
            vocab.setdefault(cur, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    return tok, len(vocab)


def make_tiny_pipeline(folder: Path, kind: str = "sd", seed: int = 0, resolution: int = 32) -> Path:
    """Save a tiny random-weight ``kind`` ("sd", "sd2", "sdxl") pipeline under ``folder``; returns it.

    UNet: 2 levels (16, 32 channels), cross-attention in both, latents [4, R/4, R/4] (a 2-level VAE,
    scale factor 4). A few hundred kB of float32 weights; a 32x32 image takes milliseconds on a CPU.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    folder = Path(folder)
    tmp_tok = folder.parent / f".{folder.name}-tokenizer"
    tokenizer, vocab_size = _tokenizer(tmp_tok)
    text_cfg = dict(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=16,
    )
    unet_cfg = dict(
        sample_size=resolution // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8, 8),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    if kind in ("sd", "sd2"):
        if kind == "sd2":  # SD 2.x: linear projections, a head count per block, GELU, penultimate layer, v
            unet_cfg.update(attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True)
            text_cfg.update(hidden_act="gelu", num_hidden_layers=23)
            scheduler = DDIMScheduler.from_config(  # stable-diffusion-2-1's scheduler config
                scheduler.config,
                clip_sample=False,
                set_alpha_to_one=False,
                timestep_spacing="leading",
                prediction_type="v_prediction",
            )
        unet = UNet2DConditionModel(**unet_cfg, cross_attention_dim=16)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif kind == "sdxl":
        unet = UNet2DConditionModel(
            **unet_cfg,
            cross_attention_dim=32,  # the two encoders' hidden states concatenated (16 + 16)
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,  # pooled (16) + 6 time ids x 8
            transformer_layers_per_block=1,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg))
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        raise ValueError(f"kind is 'sd', 'sd2' or 'sdxl', not {kind!r}")
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(tmp_tok)
    return folder
