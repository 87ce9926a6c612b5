"""Generator checkpoints: strict loading of DMD2-format state dicts and safetensors, atomic saving.

Accepted inputs (``load_generator``):

* ``*.safetensors`` with the EDMPrecond keys (``model.map_layer0.weight`` ... ``model.out_conv.bias``);
* a PyTorch file read with ``torch.load(weights_only=True, map_location="cpu")`` holding a flat dict key ->
  tensor (DMD2's released ``pytorch_model.bin``); a leading ``module.`` on every key is tolerated;
* an accelerate run folder containing ``model.safetensors`` (preferred) or ``pytorch_model.bin``.

Nothing is ever unpickled beyond what ``weights_only=True`` allows: a whole pickled model is refused with
instructions to convert it. Loading is always strict; a key or shape mismatch raises ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickletools
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.ml.device import resolve_precision, set_precision
from common.ml.networks import EDMPrecond
from common.ml.presets import Preset, get_preset

__all__ = [
    "CheckpointError",
    "build_generator",
    "file_sha256",
    "find_checkpoint_file",
    "load_generator",
    "read_state_dict",
    "save_generator",
]

log = logging.getLogger(__name__)

ACCELERATE_FILES = ("model.safetensors", "pytorch_model.bin")
_MAX_LISTED = 10
# globals that a plain tensor dict also pickles; anything else is what weights_only refused
_PLAIN_PICKLE_GLOBALS = ("torch._utils.", "torch._tensor.", "collections.", "__builtin__.", "builtins.")


class CheckpointError(ValueError):
    """Usage: ``except CheckpointError as e: return {"error": str(e)}``; the message says what to change.

    Raised for a checkpoint that cannot be loaded as the requested generator (a ValueError).
    """


# ----------------------------------------------------------------------------------------------------------
# Files.


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Usage: ``file_sha256("generator.safetensors")`` -> 64-char lowercase hex digest (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoint_file(path: str | os.PathLike) -> Path:
    """Usage: ``find_checkpoint_file(run_dir)`` -> the weights file for a file or an accelerate folder.

    A folder must contain ``model.safetensors`` or ``pytorch_model.bin`` (in that order of preference;
    ``pytorch_model_1.bin`` in DMD2 folders is the critic, not the generator). Raises CheckpointError.
    """
    p = Path(path)
    if p.is_dir():
        for name in ACCELERATE_FILES:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"folder {str(p)!r} holds no generator weights: expected one of {ACCELERATE_FILES}"
        )
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    return p


def _pickle_globals(path: Path, limit: int = 8) -> list[str]:
    """Classes/functions a torch zip checkpoint's pickle refers to, read without unpickling anything."""
    found: list[str] = []
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return found
            data = zf.read(name)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
                continue
            ref = None
            if op.name == "GLOBAL":
                ref = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                ref = f"{strings[-2]}.{strings[-1]}"
            if (
                ref
                and not ref.startswith(_PLAIN_PICKLE_GLOBALS)
                and not ref.endswith("Storage")
                and ref not in found
            ):
                found.append(ref)
                if len(found) >= limit:
                    break
    except Exception:  # best effort: the error message is still useful without the class names
        return found
    return found


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Usage: ``sd = read_state_dict("pytorch_model.bin")`` -> flat ``{key: CPU tensor}`` as stored.

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``. A leading
    ``module.`` is stripped when every key has it. Raises CheckpointError for a pickled model object,
    a nested or non-tensor dict, or an unreadable file.
    """
    p = find_checkpoint_file(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as e:
            raise CheckpointError(f"could not read safetensors file {str(p)!r}: {e}") from e
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            text = str(e)
            if "weights_only" in text or "Weights only load failed" in text or "Unsupported global" in text:
                classes = _pickle_globals(p)
                what = f" ({', '.join(classes)})" if classes else ""
                raise CheckpointError(
                    f"{str(p)!r} is not a plain state dict: torch.load(weights_only=True) refused it "
                    f"because it contains pickled Python objects{what}, typically a whole model saved with "
                    f"torch.save(model). Unpickling such a file can run arbitrary code, so it is not loaded. "
                    f"Convert it once in an environment you trust: load it there with "
                    f"torch.load(path, weights_only=False) and save model.state_dict() with torch.save "
                    f"(or safetensors.torch.save_file(model.state_dict(), 'generator.safetensors')), "
                    f"then use the converted file."
                ) from e
            raise CheckpointError(
                f"could not read checkpoint {str(p)!r}: {text.splitlines()[0] if text else e!r}"
            ) from e

    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{str(p)!r} holds a {type(obj).__name__}, not a state dict (a flat mapping key -> tensor)"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{str(p)!r} is not a flat state dict: key(s) {bad[:_MAX_LISTED]} hold "
            f"{type(obj[bad[0]]).__name__} instead of tensors (DMD2's format is a flat dict key -> tensor; "
            f"extract the generator's state dict first)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


# ----------------------------------------------------------------------------------------------------------
# Building and loading.


def _config_and_label(config: Mapping[str, Any] | Preset | str) -> tuple[dict[str, Any], str]:
    if isinstance(config, str):
        config = get_preset(config)
    if isinstance(config, Preset):
        return dict(config.config), f"preset {config.name!r} ({config.architecture})"
    return dict(config), "dhariwal-unet"


def build_generator(
    config: Mapping[str, Any] | Preset | str, device: str | torch.device = "cpu"
) -> EDMPrecond:
    """Usage: ``model = build_generator(get_preset("tiny16"), "cpu")`` -> randomly initialised, eval mode.

    For tests and benchmarks; real weights come from ``load_generator``. Parameters do not require grad.
    """
    cfg, _ = _config_and_label(config)
    model = EDMPrecond(**cfg).to(device).eval()
    model.requires_grad_(False)
    return model


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {title}: {shown}{more}"


def _check_keys(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    path: Path,
    config: Mapping[str, Any],
    label: str,
) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = [
        _listing(t, items)
        for t, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        )
        if items
    ]
    raise CheckpointError(
        f"checkpoint {str(path)!r} does not match the expected generator, {label} with config "
        f"{json.dumps(config, sort_keys=True)}: "
        + "; ".join(parts)
        + ". Check that the checkpoint belongs to this model config (strict loading is required)."
    )


def load_generator(
    path: str | os.PathLike,
    config: Mapping[str, Any] | Preset | str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[EDMPrecond, str]:
    """Usage: ``model, sha = load_generator("pytorch_model.bin", get_preset("dmd2-imagenet64"), "cuda")``.

    Builds ``EDMPrecond(**config)`` (``config`` is a dict, a ``Preset`` or a preset name), loads the
    checkpoint strictly (see the module docstring for accepted formats; float tensors that are not
    float32 are cast to float32) and returns ``(model, sha256 hex of the weights file)``. The model is on
    ``device``, in eval mode, with ``requires_grad=False``; weights are float32. ``dtype`` selects the
    compute precision (``None``/"float32", or "bf16"/"fp16"/"auto" on CUDA only, see
    ``device.resolve_precision``). Raises CheckpointError (a ValueError) for any mismatch.
    """
    cfg, label = _config_and_label(config)
    file = find_checkpoint_file(path)
    compute_dtype = resolve_precision(device, dtype)
    sd = read_state_dict(file)

    with torch.device("meta"):  # no allocation or init: every tensor comes from the checkpoint
        model = EDMPrecond(**cfg)
    expected = model.state_dict()
    _check_keys(sd, expected, file, cfg, label)

    for k, v in list(sd.items()):
        if v.dtype == torch.float32:
            continue
        if not v.is_floating_point():
            raise CheckpointError(
                f"checkpoint {str(file)!r}: key {k!r} has dtype {v.dtype}; expected float32"
            )
        log.info("casting %s from %s to float32", k, v.dtype)
        sd[k] = v.to(torch.float32)

    model.load_state_dict(sd, strict=True, assign=True)
    model = model.to(device).eval()
    model.requires_grad_(False)
    set_precision(model, compute_dtype)
    return model, file_sha256(file)


# ----------------------------------------------------------------------------------------------------------
# Saving.


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_generator(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Usage: ``sha = save_generator(model, "data/models/digits.safetensors", {"trained_steps": 2000})``.

    Writes the model's ``state_dict()`` (keys ``model.*``, float32 CPU tensors) as safetensors
    atomically: a temporary file in the same folder, flushed and fsynced, then renamed over ``path``.
    Metadata values that are not strings are stored as JSON; an ``EDMPrecond``'s constructor config is
    added under ``latentlab.config``. Returns the sha256 hex digest of the written file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    meta = {"latentlab.format": "edmprecond-state-dict"}
    if isinstance(model, EDMPrecond):
        meta["latentlab.config"] = json.dumps(model.config, sort_keys=True)
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file_sha256(path)
