"""The diffusers family: latent text-to-image ``UNet2DConditionModel`` pipelines (SD 1.5 / 2.x with one text
encoder, SDXL with two encoders, pooled embeddings and time ids; their Turbo / LCM / DMD2 few-step recipes).

Loading is offline only: ``local_files_only=True`` and the Hugging Face offline variables are set before
diffusers or transformers is imported. A model (its config's ``source``) is

* ``pipeline`` -- a pipeline folder (``model_index.json``: unet, vae, text_encoder[, text_encoder_2],
  tokenizer[, tokenizer_2], scheduler);
* ``diffusers-unet`` -- a config folder and one ``.safetensors`` of UNet weights in the diffusers layout
  that replaces the folder's UNet (how DMD2-SDXL and other distilled UNets ship);
* ``ldm`` / ``sgm`` -- a config folder and one original-layout single-file ``.safetensors`` checkpoint (the
  CompVis / LDM layout of SD 1.x / 2.x, the SGM layout of SDXL) holding UNet, VAE and text encoder(s):
  converted with diffusers' single-file conversion and loaded strictly into the folder's architecture
  (``common/ml/families/diffusers_single_file.py``, which tells the layouts apart by their keys).

Registering measures the layer table and hashes the weights (``inspect``, ``weights_sha256``); sampling is
``common/ml/families/diffusers_sampling.py``.

Layers (``unet_layer_refs``), in forward order, paths relative to ``DiffusersGenerator``:

* ``down_blocks.<i>.attentions.<j>`` -- a transformer block; output ``(sample,)``: capture stores item 0,
  a mask replaces it (and so the skip the block pushes from it);
* ``down_block_<i>_skip_<j>`` -- skip tensor j of down block i (every skip but the last, which *is* the
  block's output); capture stores it, a mask replaces only that skip;
* ``down_block_<i>`` -- the block's hidden states, item 0 of ``(hidden, skips)``; a mask replaces it **and**
  the last skip (the same tensor), so nothing of the clamped layer flows on unclamped;
* ``mid_block.attentions.0``, ``mid_block`` (a tensor), ``up_blocks.<i>.attentions.<j>``, ``up_block_<i>``.

Usage::

    config, sha = inspect("/models/sd15", prompts=["a cat"], steps=25, guidance_scale=7.5)
    config, sha = inspect("/models/sd15", weights_file="/models/sd15.safetensors", prompts=["a cat"])
    model, sha = load("/models/sd15", config, "cuda")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # never reach the network, whatever the folder's configs say
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from common.ml.families.diffusers_sampling import generate, micro_batch_for  # noqa: E402
from common.platform.errors import UserError  # noqa: E402
from common.platform.storage import sha256_file  # noqa: E402

__all__ = ["DTYPES", "NAME", "DiffusersGenerator", "generate", "inspect", "load", "micro_batch_for"]

NAME = "diffusers"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


# ----------------------------------------------------------------------------------------------------------
# The loaded generator.


def unet_layer_refs(unet: nn.Module, prefix: str = "unet.") -> dict[str, tuple[str, str | None]]:
    """Usage: ``unet_layer_refs(pipe.unet)`` -> ``{name: (module path, part)}`` in forward order (see the
    module docstring; ``part`` as in ``common.ml.hooks``)."""
    refs: dict[str, tuple[str, str | None]] = {}
    for i, block in enumerate(unet.down_blocks):
        attentions = list(getattr(block, "attentions", None) or [])
        n_skips = len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)
        for j in range(n_skips - 1):
            if j < len(attentions):
                refs[f"down_blocks.{i}.attentions.{j}"] = (f"{prefix}down_blocks.{i}.attentions.{j}", "first")
            refs[f"down_block_{i}_skip_{j}"] = (f"{prefix}down_blocks.{i}", f"skip:{j}")
        for j in range(max(0, n_skips - 1), len(attentions)):  # a last block without downsampler
            refs[f"down_blocks.{i}.attentions.{j}"] = (f"{prefix}down_blocks.{i}.attentions.{j}", "first")
        refs[f"down_block_{i}"] = (f"{prefix}down_blocks.{i}", "first")
    for j, _ in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        refs[f"mid_block.attentions.{j}"] = (f"{prefix}mid_block.attentions.{j}", "first")
    refs["mid_block"] = (f"{prefix}mid_block", None)
    for i, block in enumerate(unet.up_blocks):
        for j, _ in enumerate(getattr(block, "attentions", None) or []):
            refs[f"up_blocks.{i}.attentions.{j}"] = (f"{prefix}up_blocks.{i}.attentions.{j}", "first")
        refs[f"up_block_{i}"] = (f"{prefix}up_blocks.{i}", None)
    return refs


class DiffusersGenerator(nn.Module):
    """Usage: ``gen = DiffusersGenerator(pipe, config)``; the pipeline's modules as one ``nn.Module`` (so
    ``common.ml.hooks`` resolves layers and counts hooks on it), its tokenizers and scheduler, and the
    registered config (resolution, guidance, timesteps, negative prompt)."""

    def __init__(self, pipe: Any, config: Mapping[str, Any]):
        super().__init__()
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        self.tokenizer = pipe.tokenizer
        self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
        self.scheduler = pipe.scheduler
        self.config = dict(config)
        self.sdxl = self.text_encoder_2 is not None
        self.force_zeros_for_empty_prompt = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
        self._refs = unet_layer_refs(self.unet)
        self.embedding_cache: dict[tuple, Any] = {}

    def latentlab_layer_refs(self) -> dict[str, tuple[str, str | None]]:
        return dict(self._refs)

    @torch.no_grad()
    def latentlab_dry_run(self) -> None:
        """One UNet call at the configured resolution (batch 1, zero latents and conditioning)."""
        from common.ml.families.diffusers_sampling import unet_call

        h, w = int(self.config["height"]), int(self.config["width"])
        f = int(self.config["vae_scale_factor"])
        dev, dt = self.unet.device, self.unet.dtype
        x = torch.zeros(1, self.unet.config.in_channels, h // f, w // f, device=dev, dtype=dt)
        ctx = torch.zeros(1, 1, int(self.unet.config.cross_attention_dim), device=dev, dtype=dt)
        pooled = torch.zeros(1, _pooled_dim(self), device=dev, dtype=dt) if self.sdxl else None
        unet_call(self, x, torch.tensor(999, device=dev), ctx, pooled, h, w)


def _pooled_dim(gen: DiffusersGenerator) -> int:
    return int(gen.text_encoder_2.config.projection_dim)


# ----------------------------------------------------------------------------------------------------------
# Files and digests.


def weight_files(folder: Path) -> list[Path]:
    """Every weight file under a pipeline folder, sorted by relative path."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def weights_sha256(
    folder: Path,
    unet_weights: Path | None = None,
    *,
    single_file: Path | None = None,
    folder_parts: Sequence[str] = (),
) -> str:
    """Usage: ``weights_sha256(folder)`` -> hex sha256 over ``relative path, file sha256`` of every weight
    file (plus the separate UNet file, if any): any changed, added or removed weight changes it. With
    ``single_file`` (an original-layout checkpoint) it covers that file and only the folder's weights of
    the components in ``folder_parts`` (those the checkpoint lacks), not the folder's unused weights."""
    h = hashlib.sha256()
    files = [(p.relative_to(folder).as_posix(), p) for p in weight_files(folder)]
    if single_file is not None:
        files = [(rel, p) for rel, p in files if rel.split("/")[0] in set(folder_parts)]
        files.append(("single-file:" + single_file.name, single_file))
    if unet_weights is not None:
        files.append(("unet-weights:" + unet_weights.name, unet_weights))
    for rel, path in files:
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def _check_folder(folder: Path, field: str = "diffusers") -> dict[str, Any]:
    if not folder.is_dir() or not (folder / "model_index.json").is_file():
        if field == "config":
            hint = (
                "give, with --config, the folder a pipeline of the same architecture was saved to with "
                "save_pretrained (its configs alone are enough for an original-layout file)."
            )
        else:
            hint = (
                "give the folder a pipeline was saved to with save_pretrained, or a single .safetensors "
                "file with --config FOLDER."
            )
        what = "config folder" if field == "config" else "pipeline folder"
        raise UserError(f"{folder} is not a diffusers {what} (no model_index.json); {hint}", field=field)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}/model_index.json is not readable JSON: {exc}", field=field) from None
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in index]
    if missing:
        raise UserError(
            f"{folder}/model_index.json lacks {', '.join(missing)}; a text-to-image pipeline has unet, vae, "
            "text_encoder, tokenizer and scheduler.",
            field=field,
        )
    return index


def _make_scheduler(name: str | None, base: Any) -> Any:
    if not name:
        return base
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and name.endswith("Scheduler") and hasattr(cls, "from_config")):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Scheduler"))
        raise UserError(
            f"Unknown scheduler '{name}'; give a diffusers scheduler class name, e.g. "
            f"{', '.join(k for k in known if 'Euler' in k or k in ('DDIMScheduler', 'LCMScheduler'))}.",
            field="scheduler",
        )
    return cls.from_config(base.config)


def _load_pipe(folder: Path, config: Mapping[str, Any], dtype: torch.dtype):
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no "install accelerate" advice or progress bars in job logs
    diffusers_logging.disable_progress_bar()

    index = _check_folder(
        folder, "config" if config.get("single_file") or config.get("unet_weights") else "diffusers"
    )
    extra = {"safety_checker": None, "feature_extractor": None} if "safety_checker" in index else {}
    if config.get("single_file"):
        from common.ml.families.diffusers_single_file import load_components

        modules, _ = load_components(Path(config["single_file"]), folder, index, config["source"])
        extra.update({name: m.to(dtype) for name, m in modules.items()})  # the folder gives the rest
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise UserError(
            f"Could not load the diffusers pipeline in {folder}: {str(exc).splitlines()[0][:400]}",
            field="diffusers",
        ) from None
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise UserError(f"{folder} holds a {type(pipe).__name__}, not a UNet text-to-image pipeline.")
    _check_complete(pipe, folder, skip=set(extra))
    weights = config.get("unet_weights")
    if weights:
        _load_unet_weights(pipe.unet, Path(weights))
    pipe.scheduler = _make_scheduler(config.get("scheduler"), pipe.scheduler)
    return pipe


def _check_complete(pipe: Any, folder: Path, skip: set[str]) -> None:
    """diffusers leaves a parameter its weight file lacks at its random init (with a warning); refuse that:
    every parameter of each model loaded from the folder's ``.safetensors`` must be in the files' keys
    (read from their headers; a component stored as ``.bin`` only is not checked)."""
    from common.ml.families.diffusers_single_file import safetensors_keys

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        files = sorted((folder / name).glob("*.safetensors"))
        if name in skip or module is None or not files:
            continue
        keys = {k for f in files for k in safetensors_keys(f)}
        missing = [k for k in module.state_dict() if k not in keys]
        if missing:
            raise UserError(
                f"The {name} weights in {folder / name} lack {len(missing)} of the model's tensors "
                f"({', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}); the files are incomplete.",
                field="diffusers",
            )


def _load_unet_weights(unet: nn.Module, path: Path) -> None:
    """Replace the UNet's weights strictly from a diffusers-layout ``.safetensors``: every key present,
    every shape right, nothing extra; else a UserError naming the first offenders."""
    from safetensors.torch import load_file

    if path.suffix != ".safetensors" or not path.is_file():
        raise UserError(f"No .safetensors UNet weights at {path}.", field="diffusers")
    try:
        state = load_file(str(path))
    except Exception as exc:  # a truncated or foreign file: safetensors raises its own error types
        raise UserError(f"{path} is not a readable safetensors file: {exc}", field="diffusers") from None
    from common.ml.families.diffusers_single_file import state_mismatch

    own = unet.state_dict()
    detail = state_mismatch(own, state)
    if detail:
        raise UserError(
            f"The UNet weights in {path} do not fit the pipeline's UNet ({detail}).", field="diffusers"
        )
    unet.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


# ----------------------------------------------------------------------------------------------------------
# The family interface.


def load(path: str | Path, config: Mapping[str, Any], device: str) -> tuple[DiffusersGenerator, str]:
    """Usage: ``model, sha = load(folder, row.config, "cuda")`` -> (eval ``DiffusersGenerator``, sha256).

    fp16/bf16 (the config's ``dtype``) on an accelerator, float32 on the CPU. A scheduler whose
    ``prediction_type`` (epsilon, v_prediction, sample) differs from the registered one is refused.
    """
    folder = Path(path)
    dev = torch.device(device)
    dtype = DTYPES[config.get("dtype", "float32")] if dev.type != "cpu" else torch.float32
    pipe = _load_pipe(folder, config, dtype)
    registered, found = config.get("prediction_type"), pipe.scheduler.config.get("prediction_type", "epsilon")
    if registered and found != registered:  # the digest covers weights only, not the scheduler's config
        raise UserError(
            f"The scheduler config in {folder} now predicts '{found}', but the model was registered with "
            f"'{registered}' (e.g. SD 2.x 768 models predict v_prediction); restore the config or register "
            "the model again under a new name.",
            field="scheduler",
        )
    gen = DiffusersGenerator(pipe, config).to(dev).eval()
    gen.requires_grad_(False)
    return gen, _digest(folder, config)


def _digest(folder: Path, config: Mapping[str, Any]) -> str:
    weights, single = config.get("unet_weights"), config.get("single_file")
    return weights_sha256(
        folder,
        Path(weights) if weights else None,
        single_file=Path(single) if single else None,
        folder_parts=config.get("folder_parts") or (),
    )


def sampler_options(
    config: Mapping[str, Any], defaults: Mapping[str, Any], conditioning: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Usage: ``sampler_options(row.config, {}, ds.conditioning)`` -> the ``generate`` options: the
    dataset's prompts, negative prompt, guidance and size over the model's registered defaults."""
    cond = dict(conditioning or {})
    return {
        "prompts": list(cond.get("prompts") or defaults.get("prompts") or []),
        "negative_prompt": cond.get("negative_prompt", config.get("negative_prompt", "")) or "",
        "guidance_scale": float(cond.get("guidance_scale", config.get("guidance_scale", 0.0))),
        "height": int(cond.get("height") or config["height"]),
        "width": int(cond.get("width") or config["width"]),
        "timesteps": config.get("timesteps"),
        "mask_passes": cond.get("mask_passes", "both"),
    }


def inspect(
    path: str | Path,
    *,
    prompts: Sequence[str],
    weights_file: str | Path | None = None,
    unet_weights: str | Path | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    allow_guidance: bool = True,
    scheduler: str | None = None,
    timesteps: Sequence[int] | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str = "float16",
    negative_prompt: str = "",
) -> tuple[dict[str, Any], str]:
    """Usage: ``config, sha = inspect(folder, prompts=["a cat"])`` -> the model row's config and digest.

    ``weights_file`` is a ``.safetensors`` given with the config folder ``path``: its keys decide whether it
    is diffusers-layout UNet weights (as ``unet_weights``) or an original-layout LDM / SGM checkpoint
    (``single_file``; see the module docstring). Loads the pipeline on the CPU (float32), checks every
    option (scheduler class, timesteps, size divisible by the VAE and UNet factors, dtype, prompts),
    measures the layer table with one dry run and hashes the weights. Raises UserError naming the field for
    anything wrong.
    """
    folder = Path(path).expanduser()
    if dtype not in DTYPES:
        raise UserError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}.", field="dtype")
    prompts = [str(p) for p in prompts]
    if not prompts or any(not p.strip() for p in prompts):
        raise UserError("Give at least one non-empty prompt (--prompt TEXT, repeatable).", field="prompts")
    if guidance_scale is not None and guidance_scale > 1 and not allow_guidance:
        raise UserError(
            f"guidance_scale {guidance_scale} with --no-guidance: the recipe forbids guidance.",
            field="guidance_scale",
        )
    config: dict[str, Any] = {"scheduler": scheduler, "dtype": dtype}
    if weights_file:
        from common.ml.families.diffusers_single_file import checkpoint_layout

        file = Path(weights_file).expanduser().resolve()
        layout = checkpoint_layout(file)
        index = _check_folder(folder, field="config")
        if layout == "diffusers-unet":
            unet_weights = file
        else:
            from common.ml.families.diffusers_single_file import folder_parts

            config.update(source=layout, single_file=str(file))
            config["folder_parts"] = folder_parts(file, folder, index, layout)
    if unet_weights:
        config.update(source="diffusers-unet", unet_weights=str(Path(unet_weights).expanduser().resolve()))
    pipe = _load_pipe(folder, config, torch.float32)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    levels = len(pipe.unet.config.block_out_channels)
    multiple = factor * 2 ** (levels - 1)
    native = int(pipe.unet.config.sample_size) * factor
    height, width = int(height or native), int(width or native)
    for field, v in (("height", height), ("width", width)):
        if v <= 0 or v % multiple:
            raise UserError(
                f"{field} {v} is not a positive multiple of {multiple} (the VAE factor {factor} times the "
                f"UNet's {2 ** (levels - 1)}x downsampling).",
                field=field,
            )
    sched_cfg = dict(pipe.scheduler.config)
    steps = int(steps or (len(timesteps) if timesteps else 25))
    if timesteps:
        timesteps = [int(t) for t in timesteps]
        n_train = int(sched_cfg.get("num_train_timesteps", 1000))
        if any(not 0 <= t < n_train for t in timesteps) or timesteps != sorted(set(timesteps), reverse=True):
            raise UserError(
                f"timesteps must be distinct, decreasing and in [0, {n_train}), e.g. 999,749,499,249.",
                field="timesteps",
            )
        steps = len(timesteps)
    try:
        from common.ml.families.diffusers_sampling import set_timesteps

        set_timesteps(pipe.scheduler, steps, timesteps, "cpu")
    except (ValueError, TypeError) as exc:
        raise UserError(
            f"Scheduler {type(pipe.scheduler).__name__} refuses these timesteps: {exc}", field="timesteps"
        ) from None
    max_tokens = int(pipe.tokenizer.model_max_length)
    config.update(
        family=NAME,
        pipeline=type(pipe).__name__,
        sdxl=getattr(pipe, "text_encoder_2", None) is not None,
        scheduler=type(pipe.scheduler).__name__,
        timesteps=timesteps or None,
        default_steps=steps,
        guidance_scale=float(
            guidance_scale if guidance_scale is not None else (7.5 if allow_guidance else 0.0)
        ),
        allow_guidance=bool(allow_guidance),
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        img_resolution=height,
        img_channels=3,
        label_dim=len(prompts),
        latent_channels=int(pipe.unet.config.in_channels),
        vae_scale_factor=factor,
        size_multiple=multiple,
        max_prompt_tokens=max_tokens,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"),
        default_layers=["mid_block"],
    )
    gen = DiffusersGenerator(pipe, config).eval()
    from common.ml.hooks import layer_shapes, module_path

    shapes = layer_shapes(gen)
    config["layers"] = [[name, module_path(gen, name), list(shape)] for name, shape in shapes.items()]
    return config, _digest(folder, config)
