"""Per-sample activation vectors: layers concatenated in sorted layer-name order, each flattened C*H*W.

The layout is the contract between capture, storage (activation shards), the embedding (UMAP/PCA) and
masking: ``flatten_activations`` and ``split_flat`` invert each other exactly, for NumPy arrays and torch
tensors alike. Sorting is plain ``sorted()`` on the names (so ``decoder_block_10`` sorts before
``decoder_block_2``); flattening is row-major (C, then H, then W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["flat_dim", "flat_layout", "flatten_activations", "split_flat"]


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def flat_layout(shapes: Mapping[str, Sequence[int]]) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """Usage: ``flat_layout({"midblock": (768, 8, 8), ...})`` -> ``[(name, start, stop, (C, H, W)), ...]``.

    Sorted by layer name; ``stop - start == C * H * W``; offsets index the flat per-sample vector.
    """
    layout = []
    start = 0
    for name in sorted(shapes):
        shape = tuple(int(s) for s in shapes[name])
        size = int(np.prod(shape)) if shape else 1
        layout.append((name, start, start + size, shape))
        start += size
    return layout


def flat_dim(shapes: Mapping[str, Sequence[int]]) -> int:
    """Usage: ``flat_dim(layer_shapes(model))`` -> D, the length of one sample's flat vector."""
    layout = flat_layout(shapes)
    return layout[-1][2] if layout else 0


def flatten_activations(acts: Mapping[str, Any]):
    """Usage: ``X = flatten_activations({"midblock": a, "encoder_bottleneck": b})`` -> [B, D].

    Each value is [B, C, H, W] (NumPy array or torch tensor, any float dtype, kept as is); the result
    concatenates the layers in sorted name order, each reshaped row-major to [B, C*H*W]. All layers must
    have the same batch size. Returns a NumPy array for NumPy input and a tensor for torch input.
    """
    if not acts:
        raise ValueError("no activations to flatten")
    names = sorted(acts)
    batch = {name: int(acts[name].shape[0]) for name in names}
    if len(set(batch.values())) != 1:
        raise ValueError(f"layers have different batch sizes: {batch}")
    B = batch[names[0]]
    parts = [acts[name].reshape(B, -1) for name in names]  # [B, C*H*W] each
    if all(_is_torch(p) for p in parts):
        import torch

        return torch.cat(parts, dim=1)  # [B, D]
    return np.concatenate([np.asarray(p) for p in parts], axis=1)  # [B, D]


def split_flat(flat: Any, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Usage: ``split_flat(X, layer_shapes)`` -> ``{name: [B, C, H, W]}`` (or ``{name: [C, H, W]}`` for [D]).

    Inverts ``flatten_activations``: ``flat`` is one vector [D] or a matrix [B, D] (NumPy or torch) and
    ``shapes`` maps each layer to (C, H, W). Raises ValueError when D does not match the shapes.
    """
    layout = flat_layout(shapes)
    D = layout[-1][2] if layout else 0
    if flat.ndim not in (1, 2):
        raise ValueError(f"expected a flat vector [D] or matrix [B, D], got shape {tuple(flat.shape)}")
    if int(flat.shape[-1]) != D:
        detail = ", ".join(f"{n} {s}" for n, _, _, s in layout)
        raise ValueError(
            f"flat length {int(flat.shape[-1])} does not match the layer shapes ({detail}; D = {D})"
        )
    out = {}
    for name, start, stop, shape in layout:
        part = flat[..., start:stop]
        out[name] = part.reshape(*flat.shape[:-1], *shape)  # [B, C, H, W] or [C, H, W]
    return out
