"""Text conditioning of a diffusers model's datasets: checking a dataset's prompts, guidance and size against
the model's card, and the layer table at that size (no torch).

A diffusers dataset's prompts play the role of an EDM dataset's classes: sample i uses prompt
``classes[i mod len(classes)]`` (``classes`` indexes the prompts, all of them by default), the dataset's
label names are its prompts, so colouring, class filters, neighbours and history work unchanged.

Usage::

    cond = text_conditioning(model_row, prompts=["a cat"], negative_prompt=None, guidance_scale=None,
                             height=None, width=None)      # {"prompts": [...], "guidance_scale": 7.5, ...}
    table = conditioned_layer_map(model_row, cond)        # {name: LayerInfo at the dataset's size}
    family, options = sampler_setup(model_row, ds, params)  # what a generation samples with
"""

from __future__ import annotations

from typing import Any

from common.ml.activations import LayerInfo, layer_map
from common.models import Dataset, GeneratorModel
from common.platform.errors import UserError

TEXT_FIELDS = ("prompts", "negative_prompt", "guidance_scale", "height", "width")
MAX_PROMPT_CHARS = 2000


def is_text_model(model: GeneratorModel) -> bool:
    return (model.family or "edm") == "diffusers"


def refuse_text_fields(model: GeneratorModel, given: dict[str, Any], prefix: str = "params.") -> None:
    """A class-conditional model takes no text conditioning: refuse any of ``given`` that is set."""
    used = [k for k, v in given.items() if v is not None]
    if used:
        raise UserError(
            f"Model '{model.name}' is a class-conditional {model.family or 'edm'} model; "
            f"{', '.join(used)} apply only to text-to-image (diffusers) models. Use 'classes' instead.",
            field=prefix + used[0],
        )


def check_prompts(prompts: list[str], field: str) -> list[str]:
    if not prompts:
        raise UserError("Give at least one prompt; an empty prompt list conditions nothing.", field=field)
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"Prompt {i} is empty; every prompt needs some text.", field=field)
        if len(p) > MAX_PROMPT_CHARS:
            raise UserError(
                f"Prompt {i} has {len(p)} characters (at most {MAX_PROMPT_CHARS}); the text encoder reads "
                "only its first tokens anyway (longer prompts are truncated to the tokenizer's limit).",
                field=field,
            )
    return list(prompts)


def check_guidance(model: GeneratorModel, guidance_scale: float, field: str) -> float:
    if guidance_scale > 1 and not model.config.get("allow_guidance", True):
        raise UserError(
            f"Model '{model.name}' is registered without guidance (a one- or few-step recipe); "
            f"guidance_scale {guidance_scale} would turn classifier-free guidance on. Use 0.",
            field=field,
        )
    return float(guidance_scale)


def text_conditioning(
    model: GeneratorModel,
    *,
    prompts: list[str] | None,
    negative_prompt: str | None,
    guidance_scale: float | None,
    height: int | None,
    width: int | None,
    prefix: str = "params.",
) -> dict[str, Any]:
    """The dataset's conditioning over the model's defaults; raises UserError naming the field."""
    cfg = model.config
    prompts = check_prompts(
        list(prompts) if prompts is not None else list(model.label_names), prefix + "prompts"
    )
    multiple = int(cfg.get("size_multiple", cfg.get("vae_scale_factor", 8)))
    size = {}
    for name, value in (("height", height), ("width", width)):
        v = int(value if value is not None else cfg[name])
        if v <= 0 or v % multiple or v > 4096:
            raise UserError(
                f"{name} {v} must be a positive multiple of {multiple} up to 4096 (the VAE factor "
                f"{cfg.get('vae_scale_factor')} times the UNet's downsampling).",
                field=prefix + name,
            )
        size[name] = v
    g = guidance_scale if guidance_scale is not None else float(cfg.get("guidance_scale", 0.0))
    return {
        "prompts": prompts,
        "negative_prompt": negative_prompt if negative_prompt is not None else cfg.get("negative_prompt", ""),
        "guidance_scale": check_guidance(model, g, prefix + "guidance_scale"),
        **size,
    }


def conditioned_layer_map(model: GeneratorModel, conditioning: dict[str, Any] | None) -> dict[str, LayerInfo]:
    """The model's layer table at the dataset's size: the registered shapes scaled by height and width
    (every UNet level halves exactly, as the size is a multiple of ``size_multiple``)."""
    table = layer_map(model.config, model.architecture)
    if not conditioning or not is_text_model(model):
        return table
    h0, w0 = int(model.config["height"]), int(model.config["width"])
    h, w = int(conditioning["height"]), int(conditioning["width"])
    if (h, w) == (h0, w0):
        return table
    return {
        name: LayerInfo(
            info.name, info.module, (info.shape[0], info.shape[1] * h // h0, info.shape[2] * w // w0)
        )
        for name, info in table.items()
    }


def sampler_setup(model_row: GeneratorModel, ds: Dataset, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(family name, the family's sampler options) for a generation from dataset ``ds``: the dataset's
    text conditioning, a free-text ``prompt`` and ``mask_passes`` when given (diffusers), else the
    EDM sampler's ``sigma_max``."""
    from common.ml.families import get_family

    name = model_row.family or "edm"
    options = get_family(name).sampler_options(
        model_row.config,
        {"sigma_max": model_row.default_sigma_max, "prompts": model_row.label_names},
        ds.conditioning,
    )
    if p.get("prompt"):
        options["prompts"] = [p["prompt"]]
        options["free_prompt"] = True
    if p.get("mask_passes"):
        options["mask_passes"] = p["mask_passes"]
    return name, options


def text_diagnostics(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a diffusers generation ran with beyond the recipe (recorded, so a replay matches)."""
    if family != "diffusers":
        return {}
    keys = ("guidance_scale", "negative_prompt", "height", "width", "mask_passes")
    return {"family": family, **{k: options.get(k) for k in keys}}
