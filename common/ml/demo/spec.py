"""The demo models' fixed facts: names, preset, resolution, seeds, sampler settings."""

from __future__ import annotations

from typing import Any

TEACHER_NAME = "digits-edm"
STUDENT_NAME = "digits-onestep"
PRESET = "digits16"
LABEL_NAMES = [str(i) for i in range(10)]
RESOLUTION = 16
UPSAMPLE = "bilinear"
RESOLUTION_NOTE = (
    "scikit-learn's 8x8 digits (values 0..16 scaled to v/8 - 1 in [-1, 1]), 1 channel, upsampled to 16x16 "
    "bilinearly (torch.nn.functional.interpolate, mode='bilinear', align_corners=False)"
)
EVAL_SEED_BASE = 5_000_000  # evaluation seeds; training pairs use DistillConfig.pair_seed_base (10,000,000+)
CAPTURE_LAYERS = ("encoder_bottleneck", "midblock")
TEACHER_STEPS = 18
SIGMA_MAX = 80.0


def _model_config() -> dict[str, Any]:
    from common.ml.presets import get_preset

    return get_preset(PRESET).config
