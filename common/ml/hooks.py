"""Friendly layer names, activation capture and activation masks over forward hooks.

Layer names follow the visualizer convention (tests/data/reference/DHARIWAL_UNET_SPEC.md,
section 6), in forward order:

    encoder_block_0 .. encoder_block_{len(enc)-2}   enc entries 0 .. len(enc)-2 (stem conv, down blocks count)
    encoder_bottleneck                              the last enc entry
    midblock                                        the first dec entry
    decoder_block_1 .. decoder_block_{len(dec)-1}   dec entries 1 .. len(dec)-1

``decoder_block_0`` is not listed but resolves to the midblock module (as the adapter does);
``encoder_block_{len(enc)-1}`` does not exist (that module is only reachable as ``encoder_bottleneck``).

Each architecture has one mapping table friendly name -> module path, the path being the module's dotted
name inside ``EDMPrecond`` (the state_dict prefix), e.g. ``encoder_bottleneck -> model.enc.8x8_block2`` at
ImageNet-64. Stored data records both (``module_path``).

Capture and mask are context managers whose hooks are always removed on exit, exceptions included.
Mask hooks are registered with ``prepend=True`` so they run before any capture hook on the same module:
capturing a masked layer returns the mask. A replaced encoder output is also what the encoder pushes onto
its skip stack (the network appends the hook-returned tensor), as the reference does.

Other model families (``common/ml/families/``) describe their layers to this module instead of an EDM
network: a model object with a ``latentlab_layer_refs()`` method returning ``{name: (module path, part)}``
in forward order (and a ``latentlab_dry_run()`` for ``layer_shapes``). ``part`` says which piece of the
module's output the layer is (``_read_part``/``_write_part``):

* ``None`` -- the output is a tensor; capture stores it, a mask replaces it;
* ``"first"`` -- the output is a tuple; the layer is its item 0. A mask replaces item 0 **and** every
  entry of a later tuple item that is the same tensor object: a diffusers down block returns
  ``(hidden_states, skips)`` whose last skip *is* ``hidden_states``, so clamping the block clamps what
  flows down the skip connection from that point too;
* ``"skip:<j>"`` -- the output is ``(hidden, skips)`` and the layer is ``skips[j]`` (a down block's skip
  tensor, captured or clamped on its own).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from common.ml.activations import (
    LAYER_TABLES,
    dhariwal_block_names,
    dhariwal_layer_table,
    layer_table_for_config,
)
from common.ml.intervening import (
    MASK_MODES,
    RowIntervention,
    apply_intervention,
    apply_rows,
    checked_rows,
    checked_strength,
)
from common.ml.networks import DhariwalUNet, EDMPrecond

__all__ = [
    "LAYER_TABLES",
    "ActivationCapture",
    "ActivationMask",
    "MASK_MODES",
    "RowIntervention",
    "active_hook_count",
    "apply_intervention",
    "apply_rows",
    "dhariwal_block_names",
    "dhariwal_layer_table",
    "layer_module",
    "layer_names",
    "layer_shapes",
    "layer_table",
    "layer_table_for_config",
    "module_path",
]

# The layer tables (friendly name -> module path, per architecture) live in the layout contract,
# common/ml/activations.py; this module resolves those names on a live model.

# Names that resolve but are not listed by layer_names (tests/data/reference/DHARIWAL_UNET_SPEC.md
# section 6: the adapter resolves decoder_block_0 too).
_ALIASES = {"decoder_block_0": "midblock"}


def _unet(model: nn.Module) -> tuple[DhariwalUNet, str]:
    """The U-Net inside ``model`` and the prefix to strip from module paths to address it from ``model``."""
    if isinstance(model, EDMPrecond):
        return model.model, ""
    if isinstance(model, DhariwalUNet):
        return model, "model."
    raise TypeError(f"expected an EDMPrecond or DhariwalUNet, got {type(model).__name__}")


def _layer_refs(model: nn.Module) -> dict[str, tuple[str, str | None]] | None:
    """``{name: (module path, part)}`` of a model that describes its own layers, else None (EDM)."""
    refs = getattr(model, "latentlab_layer_refs", None)
    return refs() if callable(refs) else None


def _part(model: nn.Module, name: str) -> str | None:
    refs = _layer_refs(model)
    return refs[_ALIASES.get(name, name)][1] if refs is not None else None


def _read_part(output: Any, part: str | None) -> torch.Tensor:
    if part is None:
        return output
    if part == "first":
        return output[0]
    return output[1][int(part.removeprefix("skip:"))]


def _write_part(output: Any, part: str | None, value: torch.Tensor) -> Any:
    if part is None:
        return value
    if part == "first":
        old = output[0]
        rest = tuple(
            tuple(value if t is old else t for t in item) if isinstance(item, tuple) else item
            for item in output[1:]
        )
        return (value, *rest)
    j = int(part.removeprefix("skip:"))
    skips = list(output[1])
    skips[j] = value
    return (output[0], tuple(skips), *output[2:])


def layer_table(model: nn.Module) -> dict[str, str]:
    """Usage: ``layer_table(model)`` -> ``{"encoder_block_0": "model.enc.64x64_conv", ...}`` in forward order.

    Built from the model's own ``enc``/``dec`` entries; paths are relative to ``EDMPrecond``. A model with
    ``latentlab_layer_refs()`` (another family) gives its own table.
    """
    refs = _layer_refs(model)
    if refs is not None:
        return {name: path for name, (path, _part) in refs.items()}
    unet, _ = _unet(model)
    return dhariwal_layer_table(list(unet.enc.keys()), list(unet.dec.keys()))


def layer_names(model: nn.Module) -> list[str]:
    """Usage: ``layer_names(model)`` -> ``["encoder_block_0", ..., "encoder_bottleneck", "midblock", ...]``.

    Forward order; ``decoder_block_0`` (an alias of ``midblock``) is not listed.
    """
    return list(layer_table(model))


def _canonical(model: nn.Module, name: str, table: dict[str, str] | None = None) -> str:
    table = table if table is not None else layer_table(model)
    canonical = _ALIASES.get(name, name)
    if canonical not in table:
        raise KeyError(f"unknown layer {name!r}; valid layer names: {', '.join(table)}")
    return canonical


def module_path(model: nn.Module, name: str) -> str:
    """Usage: ``module_path(model, "encoder_bottleneck")`` -> ``"model.enc.8x8_block2"`` (ImageNet-64).

    Raises KeyError listing the valid names for an unknown layer.
    """
    table = layer_table(model)
    return table[_canonical(model, name, table)]


def layer_module(model: nn.Module, name: str) -> nn.Module:
    """Usage: ``layer_module(model, "midblock")`` -> the ``nn.Module`` whose forward output is that layer.

    Raises KeyError listing the valid names for an unknown layer.
    """
    if _layer_refs(model) is not None:
        return model.get_submodule(module_path(model, name))
    unet, strip = _unet(model)
    path = module_path(model, name)
    root = model if not strip else unet
    return root.get_submodule(path.removeprefix(strip))


def _resolve(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    table = layer_table(model)
    out: dict[str, nn.Module] = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names are strings, got {name!r}")
        _canonical(model, name, table)
        out[name] = layer_module(model, name)
    return out


def _param_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Hook bookkeeping.


def active_hook_count(model: nn.Module) -> int:
    """Usage: ``assert active_hook_count(model) == 0`` -> number of module hooks anywhere in ``model``.

    Counts forward, forward-pre, backward and backward-pre hooks of every submodule (global hooks are not
    counted). A long-lived worker model should report 0 between jobs.
    """
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total


class _HookContext:
    """Shared enter/exit logic: register on enter, always remove on exit."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._entered = False

    def _register(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        if self._entered:
            raise RuntimeError(f"{type(self).__name__} is already active; it cannot be entered twice")
        self._entered = True
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._entered = False

    def __exit__(self, *exc_info) -> None:
        self._remove()

    def remove(self) -> None:
        """Usage: ``ctx.remove()`` -> removes the hooks now (what ``__exit__`` does)."""
        self._remove()


# ----------------------------------------------------------------------------------------------------------
# Capture.


class ActivationCapture(_HookContext):
    """Usage: ``with ActivationCapture(model, ["encoder_bottleneck", "midblock"]) as cap: model(x, s, y)``.

    After a forward pass ``cap.activations[name]`` is that layer's output as a detached float32 tensor
    [B, C, H, W] on the CPU (``to_cpu=False`` keeps it on the model's device). A copy is always made, so
    the stored tensor never aliases the network's tensors. When the model runs several times inside one
    context (a multi-step sampler), each layer keeps its **last** output. Unknown names raise KeyError
    listing the valid names before anything is registered.

    ``pinned=True`` (CUDA outputs only) copies into page-locked host memory without blocking the stream:
    the values are the same, but they may be read only after the stream is synchronised (any blocking
    copy to the CPU, e.g. of the images, or ``torch.cuda.synchronize()``).
    """

    def __init__(
        self, model: nn.Module, layers: str | Iterable[str], *, to_cpu: bool = True, pinned: bool = False
    ):
        super().__init__()
        layers = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
        self.model = model
        self.layers = layers
        self.to_cpu = to_cpu
        self.pinned = pinned
        self.modules = _resolve(model, layers)
        self.activations: dict[str, torch.Tensor] = {}

    def _make_hook(self, name: str):
        part = _part(self.model, name)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            value = _read_part(output, part)
            if self.pinned and self.to_cpu and value.is_cuda:
                host = torch.empty(value.shape, dtype=torch.float32, pin_memory=True)  # [B, C, H, W]
                self.activations[name] = host.copy_(value.detach().float(), non_blocking=True)
                return
            device = "cpu" if self.to_cpu else value.device
            self.activations[name] = value.detach().to(device=device, dtype=torch.float32, copy=True)

        return hook

    def _register(self) -> None:
        self.activations = {}
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def numpy(self) -> dict[str, np.ndarray]:
        """Usage: ``cap.numpy()`` -> ``{layer: float32 ndarray [B, C, H, W]}`` (requires ``to_cpu=True``)."""
        return {k: v.numpy() for k, v in self.activations.items()}


# ----------------------------------------------------------------------------------------------------------
# Masks.

# module -> number of active mask hooks, to refuse two masks on one module (the order would be ambiguous).
_MASKED: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _as_mask_tensor(name: str, value: Any) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if not (t.is_floating_point()):
        raise ValueError(f"mask for layer {name!r} has dtype {t.dtype}; a floating-point tensor is required")
    if t.ndim == 3:
        t = t.unsqueeze(0)  # [C, H, W] -> [1, C, H, W]
    if t.ndim != 4:
        raise ValueError(
            f"mask for layer {name!r} has shape {tuple(t.shape)}; expected (1, C, H, W) or (B, C, H, W)"
        )
    return t


class ActivationMask(_HookContext):
    """Usage: ``with ActivationMask(model, {"encoder_bottleneck": mask}): model(x, sigma, y)``.

    Each named layer's output is **replaced** by its mask (a forward hook returning the replacement).
    A mask is a tensor or ndarray [1, C, H, W] (broadcast over the batch with ``expand``), [B, C, H, W]
    (one per sample) or [C, H, W]; it is cast to the model's device and float dtype on enter and to the
    output's dtype at run time. A shape that does not fit the layer raises ValueError naming the layer
    and both shapes (checked on enter when ``layer_shapes`` is cached for the model, else on the forward
    pass). Unknown names raise KeyError listing the valid names. Two active masks on one layer are refused.

    Interventions (``apply_intervention``): ``strength`` s in [0, 1] (default 1: the replacement above,
    bit-for-bit) blends ``(1 - s) * natural + s * mask``, overridable per layer with ``layer_strength``
    (``{layer: s}``, only masked layers); s = 0 leaves the layer untouched. ``mode="add"`` treats each
    mask as a direction added to the natural output (``natural + s * alpha * mask``, ``normalize``
    rescales it to the natural output's norm first). ``window=(start, stop)`` with the ``step``
    attribute set by the sampler before each call limits the hooks to steps start <= step < stop while
    the context stays entered (``step`` None: always on); samplers that enter the context per step need
    neither.
    ``record=True`` keeps, per layer, the last call's per-sample ``|applied - natural| / |natural|`` in
    ``sizes[layer]`` (float64 ndarray [B]).

    Per-row interventions: ``rows={layer: [RowIntervention | None] * B}`` gives every row of the batch its
    own strength, mode, alpha, normalisation and step window at that layer (``apply_rows``; the scalar
    options and ``window`` are then not used). The masks are then one per row ([B, C, H, W]); a row whose
    entry is None keeps its natural output at that layer bit-for-bit. With ``record``, ``sizes[layer]``
    holds each row's size at the last call that intervened on it (NaN before any).

    The hooks are family-agnostic: they only see a module's output tensor (or the first element of a
    tuple output), so any model whose layers resolve through ``modules`` (a ``{name: nn.Module}``
    mapping, instead of an EDM model's layer table) can be masked the same way.
    """

    def __init__(
        self,
        model: nn.Module,
        masks: Mapping[str, Any],
        *,
        strength: float = 1.0,
        layer_strength: Mapping[str, float] | None = None,
        mode: str = "replace",
        normalize: bool = False,
        alpha: float = 1.0,
        window: tuple[int, int] | None = None,
        record: bool = False,
        modules: Mapping[str, nn.Module] | None = None,
        rows: Mapping[str, Sequence[RowIntervention | None]] | None = None,
    ):
        super().__init__()
        self.model = model
        self._marked: list[nn.Module] = []
        self.modules = dict(modules) if modules is not None else _resolve(model, masks.keys())
        missing = [name for name in masks if name not in self.modules]
        if missing:
            raise KeyError(f"no module given for layer(s) {', '.join(map(repr, missing))}")
        self.masks = {name: _as_mask_tensor(name, value) for name, value in masks.items()}
        if mode not in MASK_MODES:
            raise ValueError(f"unknown mask mode {mode!r}; valid modes: {', '.join(MASK_MODES)}")
        unmasked = [name for name in (layer_strength or {}) if name not in self.masks]
        if unmasked:
            raise ValueError(
                f"layer_strength names {', '.join(map(repr, unmasked))}, which is not masked; "
                f"masked layers: {', '.join(self.masks)}"
            )
        base = checked_strength("*", strength)
        self.strength = {
            name: checked_strength(name, (layer_strength or {}).get(name, base)) for name in self.masks
        }
        self.mode, self.normalize, self.alpha, self.record = mode, bool(normalize), float(alpha), bool(record)
        if window is not None:
            start, stop = (int(v) for v in window)
            if not 0 <= start <= stop:
                raise ValueError(f"window {list(window)} must satisfy 0 <= start <= stop")
            window = (start, stop)
        self.window = window
        self.step: int | None = None
        self.rows = None
        if rows is not None:
            if window is not None:
                raise ValueError("give per-row windows in rows, not window")
            if set(rows) != set(self.masks):
                raise ValueError(f"rows must name exactly the masked layers: {', '.join(self.masks)}")
            self.rows = {name: checked_rows(name, rows[name]) for name in self.masks}
            for name, specs in self.rows.items():
                if self.masks[name].shape[0] != len(specs):
                    raise ValueError(
                        f"mask for layer {name!r} has {self.masks[name].shape[0]} rows but rows gives "
                        f"{len(specs)}; per-row interventions need one mask row per batch row"
                    )
        self.sizes: dict[str, np.ndarray] = {}
        seen: dict[tuple, str] = {}
        for name, module in self.modules.items():
            key = (id(module), _part(model, name))  # a down block and its skips are parts of one module
            if key in seen:
                raise ValueError(f"layers {seen[key]!r} and {name!r} are the same module; mask it once")
            seen[key] = name
        cached = _SHAPES.get(model)
        if cached is not None:
            for name, mask in self.masks.items():
                expected = cached.get(_ALIASES.get(name, name))
                if expected is not None and tuple(mask.shape[1:]) != tuple(expected):
                    raise ValueError(
                        f"mask for layer {name!r} has shape {tuple(mask.shape)} but the layer outputs "
                        f"(B, {', '.join(map(str, expected))}); expected (1, {', '.join(map(str, expected))})"
                    )

    def active(self) -> bool:
        """Usage: ``mask.step = i; mask.active()`` -> whether the hooks change outputs at the current step."""
        if self.window is None or self.step is None:
            return True
        return self.window[0] <= self.step < self.window[1]

    def _make_hook(self, name: str, mask: torch.Tensor):
        strength = self.strength[name]
        part = _part(self.model, name)

        def hook(module: nn.Module, args: Any, full: Any) -> Any:
            output = _read_part(full, part)
            B = output.shape[0]
            if mask.shape[1:] != output.shape[1:] or mask.shape[0] not in (1, B):
                raise ValueError(
                    f"mask for layer {name!r} has shape {tuple(mask.shape)} but the layer outputs "
                    f"{tuple(output.shape)}; expected (1, {', '.join(map(str, output.shape[1:]))}) "
                    f"or the full batch shape"
                )
            if not self.active():
                return None
            m = mask.to(device=output.device, dtype=output.dtype)
            m = m.expand(B, *([-1] * (m.ndim - 1))) if m.shape[0] != B else m  # [B, C, H, W]
            if self.rows is not None:
                if len(self.rows[name]) != B:
                    raise ValueError(f"rows gives {len(self.rows[name])} rows for a batch of {B}")
                out, active = apply_rows(output, m, self.rows[name], self.step)
                if not active:
                    return None
            else:
                out = apply_intervention(output, m, strength, self.mode, self.normalize, self.alpha)
                active = None
            if self.record:
                dims = tuple(range(1, output.ndim))
                nat = output.detach().to(torch.float64)
                change = torch.linalg.vector_norm(out.detach().to(torch.float64) - nat, dim=dims)
                size = (change / torch.linalg.vector_norm(nat, dim=dims).clamp_min(1e-12)).cpu().numpy()
                if active is None:
                    self.sizes[name] = size
                else:
                    kept = self.sizes.setdefault(name, np.full(B, np.nan))
                    kept[active] = size[active]
            return _write_part(full, part, out)

        return hook

    def _register(self) -> None:
        device, dtype = _param_device_dtype(self.model)
        for name in self.masks:
            if _MASKED.get(self.modules[name], 0):
                raise ValueError(f"layer {name!r} is already masked by another active ActivationMask")
        for name in self.masks:
            module = self.modules[name]
            mask = self.masks[name].to(device=device, dtype=dtype if dtype.is_floating_point else None)
            self._handles.append(module.register_forward_hook(self._make_hook(name, mask), prepend=True))
            _MASKED[module] = _MASKED.get(module, 0) + 1
            self._marked.append(module)

    def _remove(self) -> None:
        for module in self._marked:
            _MASKED[module] = max(0, _MASKED.get(module, 0) - 1)
        self._marked.clear()
        super()._remove()


# ----------------------------------------------------------------------------------------------------------
# Shapes (one dry run per model, cached).

_SHAPES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[int, int, int]]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def layer_shapes(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """Usage: ``layer_shapes(model)["encoder_bottleneck"]`` -> ``(768, 8, 8)``; every layer's (C, H, W).

    One batch-1 dry run (x = 0, sigma = 80, zero label row) on the model's device, cached per model
    object (weakly). Keys are ``layer_names(model)`` in forward order. Run it while no mask is active.
    """
    cached = _SHAPES.get(model)
    if cached is not None:
        return dict(cached)
    if _layer_refs(model) is not None:
        names = layer_names(model)
        with ActivationCapture(model, names, to_cpu=False) as cap:
            model.latentlab_dry_run()
        shapes = {name: tuple(int(s) for s in cap.activations[name].shape[1:]) for name in names}
        _SHAPES[model] = shapes
        return dict(shapes)
    unet, _ = _unet(model)
    device, _ = _param_device_dtype(model)
    names = layer_names(model)
    edm = model if isinstance(model, EDMPrecond) else None
    channels = edm.img_channels if edm is not None else unet.enc[next(iter(unet.enc))].in_channels
    x = torch.zeros(1, channels, unet.img_resolution, unet.img_resolution, device=device)
    with ActivationCapture(model, names, to_cpu=False) as cap:
        if edm is not None:
            edm(x, torch.full((1,), 80.0, device=device))
        else:
            unet(x, torch.zeros(1, device=device), None)
    shapes = {name: tuple(int(s) for s in cap.activations[name].shape[1:]) for name in names}
    _SHAPES[model] = shapes
    return dict(shapes)
