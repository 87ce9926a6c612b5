"""Write a diffusers pipeline's weights as ONE original-layout ``.safetensors``: the CompVis / LDM layout of
SD 1.x (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``) or the SGM
layout of SDXL (``conditioner.embedders.0.transformer.*`` CLIP, ``conditioner.embedders.1.model.*`` OpenCLIP);
SD 2.x files are LDM with an OpenCLIP ``cond_stage_model.model.*``. diffusers' own diffusers->original scripts
are not in its wheel, so this is the inverse of the single-file conversion in
``diffusers.loaders.single_file_utils`` (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``), for the block shapes of the tiny test
pipelines (tests/support/diffusers_models.py) and of SD / SDXL alike: cross-attention or plain down / up
blocks, ``layers_per_block`` resnets, a downsampler on every down block but the last. Tests prove the round
trip: the pipeline loaded back from the file gives bit-identical outputs.

Usage::

    write_original_checkpoint(pipe, tmp_path / "sd15.safetensors", layout="ldm")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# diffusers ResnetBlock2D names -> LDM ResBlock names (inverse of update_unet_resnet_ldm_to_diffusers)
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{UNET_RESNET.get(head, head)}.{tail}"


def unet_to_ldm(unet: Any) -> dict[str, Any]:
    """``UNet2DConditionModel`` state -> ``model.diffusion_model.*`` keys."""
    per = int(unet.config.layers_per_block)
    out: dict[str, Any] = {}
    for key, v in unet.state_dict().items():
        parts = key.split(".")
        new = None
        for d, o in UNET_TOP.items():
            if key.startswith(d + "."):
                new = o + key[len(d) :]
        if parts[0] == "down_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
            first = 1 + b * (per + 1)
            if kind == "resnets":
                new = f"input_blocks.{first + int(j)}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{first + int(j)}.1.{rest}"
            elif kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* -> input_blocks.n.0.op.*
                new = f"input_blocks.{first + per}.0.op.{'.'.join(parts[5:])}"
        elif parts[0] == "mid_block":
            j, rest = int(parts[2]), ".".join(parts[3:])
            new = (
                f"middle_block.{2 * j}.{_resnet(rest)}" if parts[1] == "resnets" else f"middle_block.1.{rest}"
            )
        elif parts[0] == "up_blocks":
            b, kind, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
            first = b * (per + 1)
            if kind == "resnets":
                new = f"output_blocks.{first + int(j)}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{first + int(j)}.1.{rest}"
            elif kind == "upsamplers":  # after the attention when the block has one
                slot = 2 if getattr(unet.up_blocks[b], "attentions", None) else 1
                new = f"output_blocks.{first + per}.{slot}.conv.{'.'.join(parts[5:])}"
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = v
    return out


def vae_to_ldm(vae: Any) -> dict[str, Any]:
    """``AutoencoderKL`` state -> ``first_stage_model.*`` keys (attention projections as 1x1 convs)."""
    n_up = len(vae.config.up_block_types)
    out: dict[str, Any] = {}
    for key, v in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]  # encoder | decoder | quant_conv | post_quant_conv
        new = key.replace("conv_norm_out", "norm_out")
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2])
            level = i if parts[1] == "down_blocks" else n_up - 1 - i
            stage = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.{stage}.{level}.block.{parts[4]}.{rest}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{side}.{stage}.{level}.{stage}sample.conv.{'.'.join(parts[6:])}"
        elif len(parts) > 2 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
            else:
                rest = ".".join(parts[4:])
                for d, o in VAE_ATTN.items():
                    if rest.startswith(d + "."):
                        rest = o + rest[len(d) :]
                new = f"{side}.mid.attn_1.{rest}"
                if v.ndim == 2:  # the LDM attention projections are 1x1 convolutions
                    v = v[:, :, None, None]
        out["first_stage_model." + new] = v
    return out


def clip_to_ldm(text_encoder: Any, prefix: str) -> dict[str, Any]:
    """``CLIPTextModel`` state under an LDM prefix (the keys themselves are unchanged)."""
    return {prefix + k: v for k, v in text_encoder.state_dict().items()}


def open_clip_to_ldm(text_encoder: Any, prefix: str, unused_last_layer: bool = False) -> dict[str, Any]:
    """``CLIPTextModel[WithProjection]`` state -> OpenCLIP keys: q/k/v fused into ``in_proj_*``, the
    projection transposed (inverse of ``convert_open_clip_checkpoint``).

    An SD 2.x file (``unused_last_layer``) holds the whole OpenCLIP text tower while the diffusers encoder
    stops one layer short (SD 2.x conditions on the penultimate layer's features): the file gets one more
    resblock (a copy of the last, never read) and a ``text_projection`` (an identity when the encoder has
    none), both of which diffusers' conversion drops, and the ``logit_scale`` OpenCLIP saves."""
    import torch

    state = text_encoder.state_dict()
    proj = state.get("text_projection.weight")
    out: dict[str, Any] = {
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    if proj is not None:
        out[prefix + "text_projection"] = proj.T.contiguous()
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    for i in range(text_encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for what in ("weight", "bias"):
            qkv = [state[f"{src}self_attn.{p}_proj.{what}"] for p in "qkv"]
            out[f"{dst}attn.in_proj_{what}"] = torch.cat(qkv, dim=0)
            for d, o in names.items():
                out[f"{dst}{o}.{what}"] = state[f"{src}{d}.{what}"]
    used = sum(v.numel() for v in out.values())
    if used != sum(v.numel() for k, v in state.items() if not k.endswith("position_ids")):
        raise KeyError("an OpenCLIP weight was not mapped")  # every parameter lands in exactly one key
    if unused_last_layer:
        n = text_encoder.config.num_hidden_layers
        last = f"{prefix}transformer.resblocks.{n - 1}."
        out.update(
            {
                k.replace(last, f"{prefix}transformer.resblocks.{n}."): v.clone()
                for k, v in out.items()
                if k.startswith(last)
            }
        )
        if proj is None:
            out[prefix + "text_projection"] = torch.eye(text_encoder.config.hidden_size)
        out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def write_original_checkpoint(pipe: Any, path: Path, layout: str = "ldm") -> Path:
    """Save ``pipe``'s UNet, VAE and text encoder(s) as one original-layout safetensors (``"ldm"``: SD 1.x
    with CLIP; ``"ldm-open-clip"``: SD 2.x, the LDM layout with an OpenCLIP ``cond_stage_model.model.*``;
    ``"sgm"``: SDXL with CLIP + OpenCLIP); returns ``path``."""
    from safetensors.torch import save_file

    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if layout == "ldm":
        state.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    elif layout == "ldm-open-clip":
        state.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.", unused_last_layer=True))
    elif layout == "sgm":
        state.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        raise ValueError(f"layout is 'ldm', 'ldm-open-clip' or 'sgm', not {layout!r}")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))
    return Path(path)
