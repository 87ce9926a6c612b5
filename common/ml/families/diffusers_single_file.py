"""Single-file ``.safetensors`` checkpoints for the diffusers family: the key layout a file is in, and a
strict load of an original-layout checkpoint into the modules of a config folder's pipeline.

Three layouts are told apart by their keys (``checkpoint_layout``):

* ``diffusers-unet`` -- UNet weights alone in the diffusers layout (``conv_in.weight``,
  ``down_blocks.0.…``), as DMD2-SDXL ships; they replace the config folder's UNet
  (``common/ml/families/diffusers.py``);
* ``ldm`` -- the CompVis / LDM layout of SD 1.x and 2.x: ``model.diffusion_model.*`` (UNet),
  ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*`` (CLIP, SD 1.x) or
  ``cond_stage_model.model.*`` (OpenCLIP, SD 2.x);
* ``sgm`` -- the Stability generative-models layout of SDXL: the same UNet and VAE prefixes,
  ``conditioner.embedders.0.transformer.*`` (CLIP) and ``conditioner.embedders.1.model.*`` (OpenCLIP).

An ``ldm`` / ``sgm`` file is converted with diffusers' own single-file conversion functions
(``diffusers.loaders.single_file_utils``, the ones ``StableDiffusionPipeline.from_single_file`` calls) into
modules built from the config folder's component configs (``unet/config.json``, ``vae/config.json``,
``text_encoder[_2]/config.json``); unlike ``from_single_file``, every module is loaded strictly: a key the
module needs and the file lacks, a key the module does not have, or a shape that differs (an SDXL file
with an SD 1.5 config) is refused with a UserError naming the first offenders, before anything is
registered. A text encoder the file does not carry (some SD 1.x files ship UNet and VAE only) is taken
from the config folder's own weights, which then count in the model's digest (``folder_parts``).
Tokenizers and the scheduler always come from the config folder.

Usage::

    layout = checkpoint_layout(path)                    # "diffusers-unet" | "ldm" | "sgm"
    modules, from_folder = load_components(path, folder, index, layout)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.platform.errors import UserError

LAYOUTS = ("diffusers-unet", "ldm", "sgm")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# (component, key prefix, kind) per layout; a component's prefix decides whether the file carries it
ENCODERS: dict[str, list[tuple[str, str, str]]] = {
    "ldm": [
        ("text_encoder", "cond_stage_model.transformer.", "clip"),
        ("text_encoder", "cond_stage_model.model.", "open_clip"),
    ],
    "sgm": [
        ("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
        ("text_encoder_2", "conditioner.embedders.1.model.", "open_clip"),
    ],
}
HEADER_LIMIT = 100 << 20  # a safetensors header over 100 MB is not a checkpoint


def safetensors_keys(path: Path) -> list[str]:
    """Usage: ``safetensors_keys(Path("x.safetensors"))`` -> the tensor names in the file's header, read
    without loading any tensor; a UserError (field ``diffusers``) for anything that is not safetensors."""
    if path.suffix != ".safetensors":
        raise UserError(
            f"{path} is not a .safetensors file; give a single-file checkpoint saved as safetensors "
            "(.ckpt / .bin pickles are not loaded).",
            field="diffusers",
        )
    if not path.is_file():
        raise UserError(f"No file at {path}.", field="diffusers")
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if not 2 <= n <= HEADER_LIMIT:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc}).", field="diffusers") from None
    return [k for k in header if k != "__metadata__"]


def checkpoint_layout(path: Path) -> str:
    """Usage: ``checkpoint_layout(path)`` -> ``"diffusers-unet"``, ``"ldm"`` or ``"sgm"`` from the file's
    keys (see the module docstring); a UserError (field ``diffusers``) naming what was found otherwise."""
    keys = safetensors_keys(path)
    has = {p: any(k.startswith(p) for k in keys) for p in (UNET_PREFIX, VAE_PREFIX)}
    if has[UNET_PREFIX]:
        if any(k.startswith("conditioner.embedders.") for k in keys):
            return "sgm"
        if any(k.startswith("cond_stage_model.") for k in keys) or has[VAE_PREFIX]:
            return "ldm"
        raise UserError(
            f"{path} holds an original-layout UNet ({UNET_PREFIX}*) without its VAE ({VAE_PREFIX}*); give a "
            "full single-file checkpoint, or UNet weights in the diffusers layout.",
            field="diffusers",
        )
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "diffusers-unet"
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise UserError(
        f"Unknown key layout in {path} ({sample} …): expected a diffusers-layout UNet (conv_in.*, "
        f"down_blocks.*), an LDM / CompVis checkpoint ({UNET_PREFIX}*, {VAE_PREFIX}*, cond_stage_model.*) "
        "or an SDXL one (conditioner.embedders.*).",
        field="diffusers",
    )


def encoder_sources(keys: list[str], layout: str, index: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Usage: ``encoder_sources(keys, "ldm", model_index)`` -> ``{component: (prefix, kind)}`` for the text
    encoders the file carries; the config folder must name each of them (an SDXL file needs
    ``text_encoder_2``)."""
    if layout == "sgm" and "text_encoder_2" not in index:
        raise UserError(
            f"The checkpoint is in the SDXL (SGM) layout, but the config folder's pipeline "
            f"({index.get('_class_name', '?')}) has no text_encoder_2: give an SDXL config folder.",
            field="config",
        )
    if layout == "ldm" and "text_encoder_2" in index:
        raise UserError(
            f"The checkpoint is in the SD 1.x / 2.x (LDM) layout, but the config folder's pipeline "
            f"({index.get('_class_name', '?')}) has two text encoders: give an SD 1.x / 2.x config folder.",
            field="config",
        )
    found: dict[str, tuple[str, str]] = {}
    for component, prefix, kind in ENCODERS[layout]:
        if component not in found and any(k.startswith(prefix) for k in keys):
            found[component] = (prefix, kind)
    for component in found:
        if component not in index:
            raise UserError(
                f"The checkpoint is an {layout.upper()} file with a {component} ({found[component][0]}*), "
                f"but the config folder's pipeline ({index.get('_class_name', '?')}) has no {component}: "
                "give the config folder of the same architecture (SDXL for conditioner.embedders.*, "
                "SD 1.x / 2.x otherwise).",
                field="config",
            )
    return found


def folder_parts(path: Path, folder: Path, index: Mapping[str, Any], layout: str) -> list[str]:
    """Usage: ``folder_parts(file, folder, model_index, "ldm")`` -> the text encoders the file lacks, which
    load from the config folder's own weights (a UserError, field ``config``, when it has none)."""
    carried = encoder_sources(safetensors_keys(path), layout, index)
    parts = [c for c in ("text_encoder", "text_encoder_2") if c in index and c not in carried]
    for component in parts:
        if not any(p.suffix in (".safetensors", ".bin") for p in (folder / component).glob("*")):
            raise UserError(
                f"The checkpoint {path} carries no {component} and the config folder {folder} has no "
                f"{component} weights either; give a config folder with them, or a checkpoint that includes "
                "the text encoder.",
                field="config",
            )
    return parts


def state_mismatch(own: Mapping[str, Any], state: Mapping[str, Any], ignored: tuple[str, ...] = ()) -> str:
    """What keeps ``state`` from loading strictly into a module whose ``state_dict()`` is ``own``: "" when
    it fits, else the first offenders ("missing: …; unexpected: …; wrong shape: …"). Keys ending in one of
    ``ignored`` may be extra."""
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own and not (ignored and k.endswith(ignored))]
    shaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return "; ".join(
        f"{what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
        for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shaped))
        if keys
    )


def _strict(component: str, module: Any, state: dict[str, Any], path: Path) -> None:
    own = module.state_dict()
    detail = state_mismatch(own, state, ignored=("position_ids",))
    if detail:
        raise UserError(
            f"The {component} weights in {path} do not fit the config folder's {component} ({detail}); give "
            "the config folder of the checkpoint's architecture.",
            field="config",
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def load_components(
    path: Path, folder: Path, index: Mapping[str, Any], layout: str
) -> tuple[dict[str, Any], list[str]]:
    """Usage: ``modules, from_folder = load_components(file, folder, model_index, "ldm")``.

    -> ({"unet", "vae", text encoders in the file: float32 eval modules loaded strictly}, [the model
    components the file lacks, to be loaded from the folder's weights]). UserError (field ``config``) when
    the folder's configs do not fit the file."""
    import diffusers
    import transformers
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    keys = safetensors_keys(path)
    encoders = encoder_sources(keys, layout, index)
    from_folder = folder_parts(path, folder, index, layout)
    try:
        checkpoint = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a truncated file
        raise UserError(f"{path} is not a readable safetensors file: {exc}", field="diffusers") from None
    modules: dict[str, Any] = {}
    for component in ("unet", "vae"):
        cls = getattr(diffusers, index[component][1])
        try:
            cfg = cls.load_config(folder / component, local_files_only=True)
            module = cls.from_config(cfg)
            convert = (
                sfu.convert_ldm_unet_checkpoint if component == "unet" else sfu.convert_ldm_vae_checkpoint
            )
            state = convert(checkpoint, dict(module.config))
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(
                f"Could not convert the {component} of {path} with the config in {folder / component}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                field="config",
            ) from None
        _strict(component, module, state, path)
        modules[component] = module
    for component, (prefix, kind) in encoders.items():
        cls = getattr(transformers, index[component][1])
        try:
            module = cls(cls.config_class.from_pretrained(folder / component, local_files_only=True))
            if kind == "clip":
                state = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
            else:
                state = sfu.convert_open_clip_checkpoint(module, checkpoint, prefix=prefix)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
            raise UserError(
                f"Could not convert the {component} of {path} with the config in {folder / component}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                field="config",
            ) from None
        if not hasattr(module, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        _strict(component, module, state, path)
        modules[component] = module
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules, from_folder
