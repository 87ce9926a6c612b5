"""The EDM family: class-conditional pixel-space ``EDMPrecond``/``DhariwalUNet`` generators (DMD2
ImageNet-64, the digits demo). A thin wrapper: loading is ``common.ml.checkpoints.load_generator`` and
sampling ``common.ml.generation.generate``, unchanged (see ``common/ml/families/__init__.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.ml import generation
from common.ml.checkpoints import load_generator

NAME = "edm"
generate = generation.generate


def load(path: str | Path, config: Mapping[str, Any], device: str):
    """Usage: ``model, sha = load(path, row.config, "cpu")`` -> (eval ``EDMPrecond``, checkpoint sha256)."""
    return load_generator(path, dict(config), device=device)


def micro_batch_for(model, n: int) -> int:
    """Usage: ``micro_batch_for(model, 4)`` -> samples per model call (``generation.micro_batch_for``)."""
    return generation.micro_batch_for(next(model.parameters()).device, n)


def sampler_options(
    config: Mapping[str, Any], defaults: Mapping[str, Any], conditioning: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Usage: ``sampler_options(row.config, {"sigma_max": 80.0}, None)`` -> ``{"sigma_max": 80.0}``."""
    return {"sigma_max": float(defaults.get("sigma_max", 80.0))}
