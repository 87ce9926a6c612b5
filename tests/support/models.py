"""Small generators for tests: random-weight models in the real checkpoint format, registered for real."""

from __future__ import annotations

from pathlib import Path

from common.platform.config import Settings


def make_tiny_checkpoint(path: Path, preset: str = "tiny16", seed: int = 0) -> str:
    """Save a random-weight model of ``preset`` as safetensors at ``path``; returns its sha256."""
    import torch

    from common.ml.checkpoints import save_generator
    from common.ml.networks import EDMPrecond
    from common.ml.presets import get_preset

    torch.manual_seed(seed)
    model = EDMPrecond(**get_preset(preset).config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_generator(model, path)


def register_tiny_model(sessions, settings: Settings, name: str = "tiny", preset: str = "tiny16") -> int:
    from common.research.registry import add_model

    path = settings.data_root / "models" / f"{name}.safetensors"
    make_tiny_checkpoint(path, preset)
    with sessions.begin() as session:
        return add_model(session, settings, name, checkpoint=path, preset=preset).id
