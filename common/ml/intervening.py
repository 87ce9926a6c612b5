"""How a masked layer's output changes: one intervention for the whole batch (``apply_intervention``) or one
per row (``RowIntervention``, ``apply_rows``: a sweep's cells packed into one model call). The hooks that
call them live in ``common/ml/hooks.py`` (``ActivationMask``); the semantics are described in
``common/research/interventions.py``.

Usage::

    out = apply_intervention(natural, target, 0.5)                       # [B, ...] -> [B, ...]
    out, active = apply_rows(natural, targets, [None, RowIntervention(1.0)], step)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

MASK_MODES = ("replace", "add")


def checked_strength(name: str, value: Any) -> float:
    s = float(value)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"strength for layer {name!r} is {s}; it must be within [0, 1]")
    return s


def apply_intervention(
    output: torch.Tensor,
    mask: torch.Tensor,
    strength: float,
    mode: str = "replace",
    normalize: bool = False,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Usage: ``apply_intervention(natural, target, 0.5)`` -> the intervened output, same shape and dtype.

    ``output`` (the layer's natural output) [B, ...] and ``mask`` [B, ...] (already broadcast and cast)
    of any layout, so a UNet of any family can use it. ``mode="replace"``: ``(1 - s) * natural + s *
    target``, with s = 1 returning ``mask`` itself and s = 0 ``output`` itself (both exact).
    ``mode="add"``: ``natural + s * alpha * d`` for a direction ``d`` and a signed scale ``alpha``; with
    ``normalize`` the direction of each sample is first rescaled to the norm of that sample's natural
    output (``d / |d| * |natural|``, both norms over all of a sample's elements), so ``alpha`` reads as a
    fraction of the activation's own size. s = 0 or alpha = 0 returns ``output`` itself.
    """
    if strength == 0.0 or (mode == "add" and alpha == 0.0):
        return output
    if mode == "replace":
        return mask if strength == 1.0 else (1.0 - strength) * output + strength * mask
    if mode != "add":
        raise ValueError(f"unknown mask mode {mode!r}; valid modes: {', '.join(MASK_MODES)}")
    d = mask
    if normalize:
        dims = tuple(range(1, output.ndim))
        vnorm = torch.linalg.vector_norm
        scale = vnorm(output, dim=dims, keepdim=True) / vnorm(d, dim=dims, keepdim=True).clamp_min(1e-12)
        d = d * scale  # [B, 1, ..., 1] * [B, ...]
    return output + (strength * alpha) * d


@dataclass(frozen=True)
class RowIntervention:
    """Usage: ``RowIntervention(0.5, window=(0, 2))``; one batch row's intervention at one layer.

    The arguments of ``apply_intervention`` for that row (``strength`` s in [0, 1], ``mode``, ``alpha``,
    ``normalize``) and its step window ``[start, stop)`` (None: every step). Rows of one model call may
    each carry their own (``ActivationMask(rows=...)``): a sweep packs its cells into shared calls."""

    strength: float = 1.0
    mode: str = "replace"
    alpha: float = 1.0
    normalize: bool = False
    window: tuple[int, int] | None = None

    def on(self, step: int | None) -> bool:
        """Whether the row is intervened at ``step`` (None: the sampler sets no step, always on)."""
        return self.window is None or step is None or self.window[0] <= step < self.window[1]

    def is_natural(self) -> bool:
        """Whether the row keeps its natural output exactly (strength 0, or alpha 0 along a direction)."""
        return self.strength == 0.0 or (self.mode == "add" and self.alpha == 0.0)

    def key(self) -> tuple:
        return (self.strength, self.mode, self.alpha, self.normalize)


def checked_rows(name: str, specs: Sequence[RowIntervention | None]) -> list[RowIntervention | None]:
    out = []
    for spec in specs:
        if spec is not None:
            if spec.mode not in MASK_MODES:
                raise ValueError(f"unknown mask mode {spec.mode!r}; valid modes: {', '.join(MASK_MODES)}")
            checked_strength(name, spec.strength)
            if spec.window is not None and not 0 <= spec.window[0] <= spec.window[1]:
                raise ValueError(f"window {list(spec.window)} must satisfy 0 <= start <= stop")
        out.append(spec)
    return out


def apply_rows(
    output: torch.Tensor, mask: torch.Tensor, specs: Sequence[RowIntervention | None], step: int | None
) -> tuple[torch.Tensor, list[int]]:
    """Usage: ``out, active = apply_rows(natural, targets, specs, step)``; each row its own intervention.

    ``output`` [B, ...] and ``mask`` [B, ...] as for ``apply_intervention``; ``specs`` one entry per row
    (None: the row is not intervened at this layer). Rows sharing settings go through
    ``apply_intervention`` together with the same scalars a single-setting call uses, so every row gets
    exactly the bits it would get alone at the same batch shape; a row that is None or outside its
    window keeps its natural output exactly. Returns the output and the rows intervened at ``step``."""
    active = [r for r, spec in enumerate(specs) if spec is not None and spec.on(step)]
    groups: dict[tuple, list[int]] = {}
    for r in active:
        groups.setdefault(specs[r].key(), []).append(r)
    out = output
    for (strength, mode, alpha, normalize), rows in groups.items():
        if specs[rows[0]].is_natural():
            continue  # the natural output, as apply_intervention returns it
        if out is output:
            out = output.clone()
        ix = torch.tensor(rows, device=output.device)
        out[ix] = apply_intervention(output[ix], mask[ix], strength, mode, normalize, alpha)  # [n, ...]
    return out, active
