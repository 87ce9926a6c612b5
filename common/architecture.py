"""Layer layout of a generator, computed from its config alone (no torch): the friendly layer names, the
module each one addresses, and its activation shape. The web and the submit-time checks use this to
validate layer choices without loading a model; ``common.ml.hooks`` resolves the same names on a
live model (a test checks the two agree).

Usage::

    layers = layer_table(config)   # [LayerInfo("encoder_block_0", "model.enc.16x16_conv", (32, 16, 16)), …]
    shapes = {l.name: l.shape for l in layers}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerInfo:
    name: str  # visualizer name, e.g. "encoder_bottleneck"
    module: str  # module path in the EDMPrecond, e.g. "model.enc.8x8_block2"
    shape: tuple[int, int, int]  # (C, H, W) of the module's output

    @property
    def size(self) -> int:
        c, h, w = self.shape
        return c * h * w


def _blocks(config: dict[str, Any]) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
    """(enc, dec): ordered (block name, (C, H, W)) as DhariwalUNet builds them.

    See tests/data/reference/DHARIWAL_UNET_SPEC.md, section 2.3."""
    res0 = int(config["img_resolution"])
    mc = int(config["model_channels"])
    mult = [int(m) for m in config["channel_mult"]]
    nb = int(config["num_blocks"])
    levels = len(mult)
    enc: list[tuple[str, tuple]] = []
    c = int(config["img_channels"])
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


def layer_table(config: dict[str, Any], architecture: str = "dhariwal-unet") -> list[LayerInfo]:
    """Every hookable layer in forward order: encoder_block_0.., encoder_bottleneck, midblock,
    decoder_block_1.. (the visualizer convention)."""
    if architecture != "dhariwal-unet":
        raise ValueError(f"unknown architecture '{architecture}'; latentlab knows 'dhariwal-unet'")
    enc, dec = _blocks(config)
    table = [LayerInfo(f"encoder_block_{i}", f"model.enc.{n}", s) for i, (n, s) in enumerate(enc[:-1])]
    table.append(LayerInfo("encoder_bottleneck", f"model.enc.{enc[-1][0]}", enc[-1][1]))
    table.append(LayerInfo("midblock", f"model.dec.{dec[0][0]}", dec[0][1]))
    table += [LayerInfo(f"decoder_block_{i}", f"model.dec.{n}", s) for i, (n, s) in enumerate(dec) if i > 0]
    return table


def layer_map(config: dict[str, Any], architecture: str = "dhariwal-unet") -> dict[str, LayerInfo]:
    return {info.name: info for info in layer_table(config, architecture)}


def check_layers(config: dict[str, Any], layers: list[str], architecture: str = "dhariwal-unet") -> list[str]:
    """The layers, de-duplicated and sorted; raises KeyError listing the valid names for unknown ones."""
    known = layer_map(config, architecture)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise KeyError(f"unknown layer(s) {', '.join(unknown)}; valid layers: {', '.join(known)}")
    return sorted(set(layers))


def flat_size(config: dict[str, Any], layers: list[str]) -> int:
    known = layer_map(config)
    return sum(known[name].size for name in layers)
