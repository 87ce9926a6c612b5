"""Model preset registry: architecture, constructor config, label names and default sampler per model."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["PRESETS", "Preset", "get_preset", "imagenet_class_names", "preset_names"]


@dataclass(frozen=True)
class Preset:
    """Usage: ``EDMPrecond(**get_preset("tiny16").config)``; ``label_names[i]`` names class i."""

    name: str
    architecture: str
    config: dict[str, Any]
    label_names: list[str]
    default_steps: int
    default_sigma_max: float
    default_sigma_min: float = 0.002
    default_rho: float = 7.0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _imagenet_class_names() -> tuple[str, ...]:
    text = resources.files("common.ml").joinpath("data/imagenet_class_index.json").read_text(encoding="utf-8")
    index = json.loads(text)  # {"0": ["n01440764", "tench"], ...}
    return tuple(index[str(i)][1] for i in range(len(index)))


def imagenet_class_names() -> list[str]:
    """Usage: ``imagenet_class_names()[1]`` -> ``"goldfish"``; the 1,000 short ImageNet-1k class names."""
    return list(_imagenet_class_names())


# The DMD2 ImageNet-64 generator (tests/data/reference/DHARIWAL_UNET_SPEC.md, section 1);
# sigma_max is infinity, written "inf" as JSON has none.
DMD2_IMAGENET64_CONFIG: dict[str, Any] = {
    "img_resolution": 64,
    "img_channels": 3,
    "label_dim": 1000,
    "use_fp16": False,
    "sigma_min": 0,
    "sigma_max": "inf",
    "sigma_data": 0.5,
    "model_type": "DhariwalUNet",
    "augment_dim": 0,
    "model_channels": 192,
    "channel_mult": [1, 2, 3, 4],
    "channel_mult_emb": 4,
    "num_blocks": 3,
    "attn_resolutions": [32, 16, 8],
    "dropout": 0.0,
    "label_dropout": 0,
}

# The reference test-vector configuration (tests/data/reference/dhariwal_tiny16_meta.json):
# 814,563 parameters.
TINY16_CONFIG: dict[str, Any] = {
    **DMD2_IMAGENET64_CONFIG,
    "img_resolution": 16,
    "label_dim": 10,
    "model_channels": 8,
    "channel_mult": [1, 8],
    "num_blocks": 2,
    "attn_resolutions": [8],
}

# The 1-channel 16x16 digits demo generator (data/models/digits-*, trained by ``latentlab train-demo``).
# 16 -> 32 -> 64 channels at 16x16 / 8x8 / 4x4, one residual block per level, one attention head at 4x4
# (64 channels), E = 16: 731,057 parameters (2.9 MB of float32), 57.5 MFLOP per forward pass -- 3.6x less
# than 32 -> 64 channels with two blocks per level (208 MFLOP), which is what makes training, 18-step teacher
# pairs and evaluation fit a 2-core CPU budget. encoder_bottleneck and midblock are [64, 4, 4].
DIGITS16_CONFIG: dict[str, Any] = {
    **DMD2_IMAGENET64_CONFIG,
    "img_resolution": 16,
    "img_channels": 1,
    "label_dim": 10,
    "model_channels": 16,
    "channel_mult": [1, 2, 4],
    "channel_mult_emb": 1,
    "num_blocks": 1,
    "attn_resolutions": [4],
}


def _dmd2_imagenet64() -> Preset:
    return Preset(
        name="dmd2-imagenet64",
        architecture="dhariwal-unet",
        config=copy.deepcopy(DMD2_IMAGENET64_CONFIG),
        label_names=imagenet_class_names(),
        default_steps=1,
        default_sigma_max=80.0,
        description="DMD2 one-step ImageNet 64x64 generator (EDM DhariwalUNet, 295,899,267 parameters)",
    )


def _tiny16() -> Preset:
    return Preset(
        name="tiny16",
        architecture="dhariwal-unet",
        config=copy.deepcopy(TINY16_CONFIG),
        label_names=[f"class_{i}" for i in range(10)],
        default_steps=1,
        default_sigma_max=80.0,
        description="tiny 16x16 test configuration of the reference vectors (814,563 parameters)",
    )


def _digits16() -> Preset:
    return Preset(
        name="digits16",
        architecture="dhariwal-unet",
        config=copy.deepcopy(DIGITS16_CONFIG),
        label_names=[str(i) for i in range(10)],
        default_steps=18,
        default_sigma_max=80.0,
        description="1-channel 16x16 class-conditional digits demo generator (731,057 parameters)",
    )


PRESETS: dict[str, Callable[[], Preset]] = {
    "dmd2-imagenet64": _dmd2_imagenet64,
    "tiny16": _tiny16,
    "digits16": _digits16,
}


def preset_names() -> list[str]:
    """Usage: ``preset_names()`` -> ``["digits16", "dmd2-imagenet64", "tiny16"]`` (sorted)."""
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    """Usage: ``get_preset("dmd2-imagenet64").config`` -> a fresh ``Preset`` (its dicts are copies).

    Raises KeyError listing the valid names for an unknown preset.
    """
    try:
        builder = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; valid presets: {', '.join(preset_names())}") from None
    return builder()
