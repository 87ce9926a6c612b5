"""The recipe math of generate-from-neighbours: how the chosen neighbours' activations and classes combine
into the masks and the conditioning a generation runs with. Pure NumPy; ``common/research/generations.py``
reads the rows and shards and calls these.

Modes of combining the neighbours (``MODES``):

* ``activation_mean`` (default): the mean of the neighbours' real activations, full dimension;
* ``umap_inverse``: the mean of the neighbours' 2-D points through the map's inverse (UMAP, PCA and
  scaler undone), split per layer in sorted order;
* ``weighted``: user weights over the neighbours (interpolation);
* ``direction``: the mean of the neighbours minus the mean of a ``negative`` set, added to the natural
  activation (a steering direction, ``common/research/interventions.py``).

Usage::

    w = neighbour_weights("weighted", 3, [1, 1, 2])            # [k], sums to 1
    targets = combine_activations(x, w, shapes)               # x [k, D] -> {layer: [C, H, W]}
    masks = masks_from_targets(targets, shapes, layers)       # {layer: [1, C, H, W] float32}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.ml.activations import split_flat
from common.platform.errors import UserError

MODES = ("activation_mean", "umap_inverse", "weighted", "direction")
CLASS_MODES = ("selected", "neighbor_majority", "blend", "uniform", "none")


@dataclass
class Recipe:
    """Everything that determines a generation's images (recomputable from the database and shards)."""

    masks: dict[str, np.ndarray]  # layer -> [1, C, H, W] float32
    center: np.ndarray  # [2] intended point on the map
    weights: np.ndarray  # [k] over the neighbours
    labels: Any  # per-sample class labels for common.ml.generation.generate
    label_mode: str
    class_label: int | None
    label_weights: dict[str, float] | None
    roundtrip_error: float | None
    diagnostics: dict[str, Any]


def neighbour_weights(mode: str, k: int, weights: Sequence[float] | None) -> np.ndarray:
    """[k] float64 weights over the neighbours: the user's, normalised, for ``weighted``; else uniform."""
    if mode == "weighted":
        w = np.asarray(weights, dtype=np.float64)
        return w / w.sum()
    return np.full(k, 1.0 / k)


def weighted_center(w: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The intended point on the map: ``w`` [k] over the neighbours' points ``xy`` [k, 2] -> [2]."""
    return (w[:, None] * xy).sum(axis=0)  # [2]


def combine_activations(x: np.ndarray, w: np.ndarray, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """The weighted sum of the neighbours' activation vectors ``x`` [k, D] (the layout of
    ``common/ml/activations.py`` over ``shapes``), split per layer: ``{name: [C, H, W]}``."""
    combined = (w[:, None] * x).sum(axis=0)  # [D]
    return split_flat(combined, shapes)


def masks_from_targets(
    targets: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]], layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """The masks clamped into the generator: ``{name: [1, C, H, W] float32}`` for each masked layer."""
    return {name: targets[name].astype(np.float32).reshape(1, *shapes[name]) for name in layers}


def choose_class(
    cm: str | int,
    selected_label: int | None,
    neighbour_labels: Sequence[int | None],
    w: np.ndarray,
    label_dim: int,
) -> tuple[int | None, dict[str, float] | None, str]:
    """The conditioning of a generation: (class label, blend weights, label mode) for class mode ``cm``
    (one of ``CLASS_MODES`` or an explicit class index); raises UserError when it cannot be decided."""
    nb_classes = [c for c in neighbour_labels if c is not None]
    class_label, label_weights, label_mode = None, None, "onehot"
    if cm == "selected":
        class_label = selected_label
        if class_label is None:
            cm = "neighbor_majority"
    if cm == "neighbor_majority":
        if not nb_classes:
            raise UserError("None of the neighbours has a single class; pick 'blend', 'uniform' or a class.")
        counts = Counter(nb_classes)
        top = max(counts.values())
        class_label = min(c for c, n in counts.items() if n == top)
    elif cm == "blend":
        acc: dict[int, float] = {}
        for c, weight in zip(neighbour_labels, w, strict=True):
            if c is not None:
                acc[c] = acc.get(c, 0.0) + float(weight)
        total = sum(acc.values()) or 1.0
        label_weights = {str(c): v / total for c, v in sorted(acc.items())}
        label_mode = "blend"
    elif cm == "uniform":
        label_mode = "uniform"
    elif cm == "none":
        label_mode = "null"
    elif isinstance(cm, int):
        class_label = cm
    if label_mode == "onehot" and not 0 <= int(class_label) < label_dim:
        raise UserError(f"class {class_label} is out of range for this model.")
    return class_label, label_weights, label_mode


def labels_for(recipe: Recipe, n: int) -> tuple[Any, str]:
    if recipe.label_mode == "onehot":
        return [int(recipe.class_label)] * n, "onehot"
    if recipe.label_mode == "blend":
        row = {int(c): v for c, v in recipe.label_weights.items()}
        return [row] * n, "blend"
    return None, recipe.label_mode
