"""Interventions as experiments: when (the step window), how much (strength, per layer) and in which
direction a generation changes its layers, checked against the model before anything is written, and the
readout that compares each intervened image with its natural twin (the same seed, no intervention).

The semantics live in ``common/ml/hooks.py`` (``ActivationMask``, ``apply_intervention``):

* replacement modes (``activation_mean``, ``umap_inverse``, ``weighted``): a masked layer's output becomes
  ``(1 - s) * natural + s * target``, s = ``layer_strength[layer]`` or ``strength`` (default 1, the clamp);
* ``direction``: ``natural + s * alpha * (mean(neighbors) - mean(negative))``; with ``normalize`` the
  difference is rescaled per sample to the natural activation's norm first, so ``alpha`` is a fraction of
  the activation's own size (0.5: a push half as long as the activation itself).

Readout (``readout``), per variation: the intervention size ``|applied - natural| / |natural|`` at each
masked layer (from the intervened run's hooks, last masked model evaluation), the effect
``|intervened - twin| / |twin|`` at every captured layer (last model evaluation of each run), and the mean
absolute pixel difference of the two images (0-255).

Usage::

    window = check_intervention(p, steps=steps, layers=layers)     # raises UserError naming the field
    res = render(model, recipe, seeds, ..., **render_options(p))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.platform.errors import UserError

MAX_ALPHA = 1000.0


def mask_window(p: Mapping[str, Any]) -> list[int] | None:
    """The steps masked as ``[start, stop)`` (``mask_steps`` k is ``[0, k]``), or None for every step."""
    if p.get("mask_window") is not None:
        return [int(v) for v in p["mask_window"]]
    if p.get("mask_steps") is not None:
        return [0, int(p["mask_steps"])]
    return None


def check_intervention(
    p: Mapping[str, Any], *, steps: int, layers: Sequence[str], prefix: str = "params."
) -> None:
    """Refuse an intervention that does not fit the model or the request, naming the field
    (``prefix`` + name): a window outside the steps, a ``layer_strength`` of an unmasked layer, a
    direction without a negative set or with overlapping sets, direction options on another mode."""
    mode = p.get("mode", "activation_mean")
    if p.get("mask_window") is not None and p.get("mask_steps") is not None:
        raise UserError(
            "Give mask_window or mask_steps, not both (mask_steps k is mask_window [0, k]).",
            field=f"{prefix}mask_window",
        )
    window = p.get("mask_window")
    if window is not None:
        start, stop = (int(v) for v in window)
        if not 0 <= start < stop <= steps:
            raise UserError(
                f"mask_window [{start}, {stop}] is outside the model's steps: "
                f"give 0 <= start < stop <= {steps}.",
                field=f"{prefix}mask_window",
            )
    strength = p.get("strength", 1.0)
    if strength is not None and not 0.0 <= float(strength) <= 1.0:
        raise UserError(f"strength {strength} is outside [0, 1].", field=f"{prefix}strength")
    unmasked = sorted(set(p.get("layer_strength") or {}) - set(layers))
    if unmasked:
        raise UserError(
            f"layer_strength names {', '.join(unmasked)}, which is not masked; masked layers: "
            f"{', '.join(layers)}.",
            field=f"{prefix}layer_strength",
        )
    negative = p.get("negative")
    if mode == "direction":
        if not negative:
            raise UserError(
                "mode 'direction' needs 'negative': the sample ids to steer away from.",
                field=f"{prefix}negative",
            )
        both = sorted(set(negative) & set(p.get("neighbors") or []))
        if both:
            raise UserError(
                f"Sample(s) {', '.join(map(str, both))} are in both 'neighbors' and 'negative'; "
                "the two sets must not overlap.",
                field=f"{prefix}negative",
            )
    else:
        for name in ("negative", "alpha"):
            if p.get(name) is not None:
                raise UserError(f"'{name}' is only used with mode 'direction'.", field=f"{prefix}{name}")
        if p.get("normalize"):
            raise UserError("'normalize' is only used with mode 'direction'.", field=f"{prefix}normalize")


def render_options(p: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``common.ml.generation.generate`` for ``p``'s intervention (window,
    strength, per-layer strength, mode, alpha, normalisation); defaults give today's clamp exactly."""
    direction = p.get("mode") == "direction"
    return {
        "mask_window": mask_window(p),
        "strength": float(p.get("strength", 1.0) if p.get("strength") is not None else 1.0),
        "layer_strength": dict(p.get("layer_strength") or {}) or None,
        "mask_mode": "add" if direction else "replace",
        "alpha": float(p.get("alpha") if p.get("alpha") is not None else 1.0) if direction else 1.0,
        "normalize": bool(p.get("normalize")) if direction else False,
    }


def relative_change(changed: np.ndarray, natural: np.ndarray) -> np.ndarray:
    """Per sample ``|changed - natural| / |natural|`` over all of a sample's elements: [B, ...] -> [B]."""
    a = changed.reshape(len(changed), -1).astype(np.float64)
    b = natural.reshape(len(natural), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def readout(
    intervention: Mapping[str, np.ndarray] | None,
    acts: Mapping[str, np.ndarray],
    twin_acts: Mapping[str, np.ndarray] | None,
    images: np.ndarray,
    twin_images: np.ndarray | None,
) -> list[dict[str, Any]]:
    """One readout per variation: ``{"intervention_size": {layer: v}, "effect": {layer: v} | None,
    "image_change": float | None}``. ``intervention``: ``{layer: [B]}`` from the masks (None when no step
    was masked: sizes are then 0); ``acts``/``twin_acts``: ``{layer: [B, C, H, W]}``; images uint8
    [B, H, W, C]."""
    n = len(images)
    sizes = {name: np.asarray(v, dtype=np.float64) for name, v in (intervention or {}).items()}
    effects = (
        {name: relative_change(acts[name], twin_acts[name]) for name in acts}
        if twin_acts is not None
        else None
    )
    change = (
        np.abs(images.astype(np.int16) - twin_images.astype(np.int16)).reshape(n, -1).mean(axis=1)
        if twin_images is not None
        else None
    )
    return [
        {
            "intervention_size": {name: float(v[i]) for name, v in sizes.items()},
            "effect": {name: float(v[i]) for name, v in effects.items()} if effects is not None else None,
            "image_change": float(change[i]) if change is not None else None,
        }
        for i in range(n)
    ]
