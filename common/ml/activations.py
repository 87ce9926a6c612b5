"""The activation layout contract: which layers a generator has, and how one sample's activations are laid
out as a vector. Torch is never imported here (the web and the submit-time checks use it without a model).

* The layer table of an architecture, from its config alone: friendly name (``encoder_bottleneck``,
  ``midblock``, …) -> module path in the ``EDMPrecond`` and (C, H, W) of its output (``layer_table``);
  ``common.ml.hooks`` resolves the same names on a live model (a test checks the two agree).
* The per-sample vector: layers concatenated in sorted layer-name order, each flattened C*H*W
  (``flatten_activations`` / ``split_flat``, exact inverses for NumPy arrays and torch tensors alike).
  Sorting is plain ``sorted()`` on the names (so ``decoder_block_10`` sorts before ``decoder_block_2``);
  flattening is row-major (C, then H, then W). Capture, the dataset shards, the map's input and the
  generation masks all use it.

Usage::

    layers = layer_table(config)   # [LayerInfo("encoder_block_0", "model.enc.16x16_conv", (32, 16, 16)), …]
    X = flatten_activations({"midblock": a, "encoder_bottleneck": b})   # [B, D]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DHARIWAL_ARCHITECTURE",
    "DIFFUSERS_ARCHITECTURE",
    "LAYER_TABLES",
    "LayerInfo",
    "check_layers",
    "dhariwal_block_names",
    "dhariwal_layer_table",
    "flat_dim",
    "flat_layout",
    "flat_size",
    "flatten_activations",
    "layer_map",
    "layer_table",
    "layer_table_for_config",
    "split_flat",
]

DHARIWAL_ARCHITECTURE = "dhariwal-unet"
DIFFUSERS_ARCHITECTURE = "diffusers-unet"


# -- the layer table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerInfo:
    name: str  # visualizer name, e.g. "encoder_bottleneck"
    module: str  # module path in the EDMPrecond, e.g. "model.enc.8x8_block2"
    shape: tuple[int, int, int]  # (C, H, W) of the module's output

    @property
    def size(self) -> int:
        c, h, w = self.shape
        return c * h * w


def _dhariwal_blocks(config: Mapping[str, Any]) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    """(enc, dec): ordered (entry name, (C, H, W)) as ``DhariwalUNet`` builds them, with its defaults for
    what the config leaves out (tests/data/reference/DHARIWAL_UNET_SPEC.md, section 2.3)."""
    res0 = int(config["img_resolution"])
    mc = int(config.get("model_channels", 192))
    mult = [int(m) for m in config.get("channel_mult", (1, 2, 3, 4))]
    nb = int(config.get("num_blocks", 3))
    levels = len(mult)
    enc: list[tuple[str, tuple]] = []
    c = int(config.get("img_channels", 3))
    for lvl in range(levels):
        res = res0 >> lvl
        if lvl == 0:
            c = mc * mult[0]
            enc.append((f"{res}x{res}_conv", (c, res, res)))
        else:
            enc.append((f"{res}x{res}_down", (c, res, res)))
        for idx in range(nb):
            c = mc * mult[lvl]
            enc.append((f"{res}x{res}_block{idx}", (c, res, res)))
    dec: list[tuple[str, tuple]] = []
    for lvl in reversed(range(levels)):
        res = res0 >> lvl
        if lvl == levels - 1:
            dec.append((f"{res}x{res}_in0", (c, res, res)))
            dec.append((f"{res}x{res}_in1", (c, res, res)))
        else:
            dec.append((f"{res}x{res}_up", (c, res, res)))
        for idx in range(nb + 1):
            c = mc * mult[lvl]
            dec.append((f"{res}x{res}_block{idx}", (c, res, res)))
    return enc, dec


def dhariwal_block_names(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Usage: ``enc, dec = dhariwal_block_names(preset.config)`` -> the ``enc``/``dec`` entry names in order,
    e.g. ``["64x64_conv", "64x64_block0", ...]`` (no model is built)."""
    enc, dec = _dhariwal_blocks(config)
    return [n for n, _ in enc], [n for n, _ in dec]


def dhariwal_layer_table(enc_names: list[str], dec_names: list[str]) -> dict[str, str]:
    """Usage: ``dhariwal_layer_table(enc, dec)`` -> ``{friendly name: "model.enc.<entry>", ...}`` in order.

    The naming convention: ``encoder_block_<i>`` for every encoder entry but the last, which is
    ``encoder_bottleneck``; ``midblock`` is the first decoder entry; ``decoder_block_<i>`` the others."""
    table = {f"encoder_block_{i}": f"model.enc.{n}" for i, n in enumerate(enc_names[:-1])}
    table["encoder_bottleneck"] = f"model.enc.{enc_names[-1]}"
    table["midblock"] = f"model.dec.{dec_names[0]}"
    table.update({f"decoder_block_{i}": f"model.dec.{n}" for i, n in enumerate(dec_names) if i > 0})
    return table


def _dhariwal_table(config: Mapping[str, Any]) -> list[LayerInfo]:
    enc, dec = _dhariwal_blocks(config)
    shapes = {f"model.enc.{n}": s for n, s in enc} | {f"model.dec.{n}": s for n, s in dec}
    table = dhariwal_layer_table([n for n, _ in enc], [n for n, _ in dec])
    return [LayerInfo(name, module, shapes[module]) for name, module in table.items()]


def _stored_table(config: Mapping[str, Any]) -> list[LayerInfo]:
    """A diffusers UNet's table, measured once when the model was registered and stored in its config as
    ``layers: [[name, module path, [C, H, W]], ...]`` at the model's default resolution
    (``common/ml/families/diffusers.py``)."""
    return [LayerInfo(str(n), str(m), tuple(int(v) for v in s)) for n, m, s in config["layers"]]


# architecture -> builder(config) -> every hookable layer in forward order
LAYER_TABLES: dict[str, Callable[[Mapping[str, Any]], list[LayerInfo]]] = {
    DHARIWAL_ARCHITECTURE: _dhariwal_table,
    DIFFUSERS_ARCHITECTURE: _stored_table,
}


def layer_table(config: Mapping[str, Any], architecture: str = DHARIWAL_ARCHITECTURE) -> list[LayerInfo]:
    """Usage: ``layer_table(model.config)`` -> every hookable layer in forward order: encoder_block_0..,
    encoder_bottleneck, midblock, decoder_block_1.. (the visualizer convention)."""
    try:
        builder = LAYER_TABLES[architecture]
    except KeyError:
        known = ", ".join(f"'{a}'" for a in sorted(LAYER_TABLES))
        raise ValueError(f"unknown architecture '{architecture}'; latentlab knows {known}") from None
    return builder(config)


def layer_map(config: Mapping[str, Any], architecture: str = DHARIWAL_ARCHITECTURE) -> dict[str, LayerInfo]:
    """Usage: ``layer_map(config)["midblock"].shape`` -> (C, H, W)."""
    return {info.name: info for info in layer_table(config, architecture)}


def layer_table_for_config(
    config: Mapping[str, Any], architecture: str = DHARIWAL_ARCHITECTURE
) -> dict[str, str]:
    """Usage: ``layer_table_for_config(preset.config)`` -> ``{friendly name: module path}`` (no model)."""
    if architecture not in LAYER_TABLES:
        raise KeyError(f"unknown architecture {architecture!r}; known: {sorted(LAYER_TABLES)}")
    return {info.name: info.module for info in layer_table(config, architecture)}


def check_layers(
    config: Mapping[str, Any], layers: list[str], architecture: str = DHARIWAL_ARCHITECTURE
) -> list[str]:
    """The layers, de-duplicated and sorted; raises KeyError listing the valid names for unknown ones."""
    known = layer_map(config, architecture)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise KeyError(f"unknown layer(s) {', '.join(unknown)}; valid layers: {', '.join(known)}")
    return sorted(set(layers))


def flat_size(config: Mapping[str, Any], layers: list[str]) -> int:
    """Usage: ``flat_size(config, ["midblock"])`` -> D, the length of one sample's vector of those layers."""
    known = layer_map(config)
    return sum(known[name].size for name in layers)


# -- the per-sample vector ---------------------------------------------------------------------------------


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
