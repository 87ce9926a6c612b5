"""Sampling: DMD2's one-step recipe and EDM's deterministic Heun sampler, with masks and capture.

One step (``steps=1``), as DMD2's ImageNet demo: ``x = noise * sigma_max``, ``img = model(x, sigma_max, y)``.
Several steps: the EDM (Karras et al. 2022) schedule
``t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``t_N = 0``, sampled
with the deterministic 2nd-order Heun method (no churn), the last step being Euler. The sampler state is
float64 (float32 on MPS) as in EDM's reference sampler; the model always sees float32.

Determinism: each sample's noise is drawn on the CPU from its own ``torch.Generator().manual_seed(seed)``,
and the model runs on fixed-size micro-batches (``micro_batch``; by default 1 sample per call on CPU, 16
padded elsewhere; a dataset passes its own, aligned to absolute sample indices): matmul
and convolution kernels pick their blocking by shape, so the same sample gives different last bits at
batch 1 and batch 3 (measured ~2e-7 relative, 1e-5 after a 3-step Heun run) but identical bits whenever
every call has the same shape. A sample is therefore bit-identical whatever batch it is generated in
(tested on CPU; on CUDA this also needs deterministic cuDNN algorithms, ``cudnn.benchmark = False``).

Images: ``uint8 = clamp((img + 1) * 127.5, 0, 255)`` cast to uint8 (the cast truncates), NHWC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from common.ml.hooks import ActivationCapture, ActivationMask, RowIntervention

__all__ = [
    "LABEL_MODES",
    "GenerationResult",
    "generate",
    "default_micro_batch",
    "karras_sigmas",
    "make_class_labels",
    "make_noise",
    "to_uint8",
]

LABEL_MODES = ("onehot", "blend", "uniform", "null")


@dataclass
class GenerationResult:
    """Usage: ``res = generate(...); Image.fromarray(res.images[0])``; the output of ``generate``.

    images: uint8 [B, H, W, C]. activations: ``{layer: float32 [B, C, H, W]}`` from the last model
    evaluation, or None. images_float: float32 [B, C, H, W] raw output (about [-1, 1]) when asked for.
    sigmas: the noise levels t_0 .. t_N (t_N = 0) the sampler stepped through. intervention (with
    ``record_intervention``): ``{layer: float64 [B]}``, each sample's ``|applied - natural| / |natural|``
    at the last model evaluation where the masks were active (absent when they never were).
    """

    images: np.ndarray
    activations: dict[str, np.ndarray] | None = None
    images_float: np.ndarray | None = None
    sigmas: list[float] = field(default_factory=list)
    intervention: dict[str, np.ndarray] | None = None


# ----------------------------------------------------------------------------------------------------------
# Building blocks.


def karras_sigmas(
    steps: int, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0
) -> list[float]:
    """Usage: ``karras_sigmas(18)`` -> ``[t_0 = sigma_max, ..., t_17 = sigma_min, 0.0]`` (steps + 1 floats).

    ``steps=1`` gives ``[sigma_max, 0.0]``. Computed in float64.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not (sigma_max > 0 and sigma_min > 0 and rho > 0):
        raise ValueError(
            f"sigma_max, sigma_min and rho must be positive (got {sigma_max}, {sigma_min}, {rho})"
        )
    if steps == 1:
        return [float(sigma_max), 0.0]
    i = np.arange(steps, dtype=np.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (a + i / (steps - 1) * (b - a)) ** rho
    return [float(v) for v in t] + [0.0]


def make_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Usage: ``make_noise([1, 2], (3, 64, 64))`` -> float32 CPU tensor [B, *shape], N(0, I).

    Sample b is ``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[b]))``, independent
    of the other seeds and of its position in the batch.
    """
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    for b, seed in enumerate(seeds):
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out[b] = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    return out


def _blend_row(spec: Any, label_dim: int, b: int) -> np.ndarray:
    row = np.zeros(label_dim, dtype=np.float64)
    if isinstance(spec, Mapping):
        for cls, w in spec.items():
            c = int(cls)
            if not 0 <= c < label_dim:
                raise ValueError(f"sample {b}: class {cls!r} is outside [0, {label_dim})")
            row[c] += float(w)
    else:
        vec = np.asarray(spec, dtype=np.float64).reshape(-1)
        if vec.shape != (label_dim,):
            raise ValueError(
                f"sample {b}: a blend weight vector needs {label_dim} entries, got {vec.shape[0]}"
            )
        row = vec.copy()
    if not np.all(np.isfinite(row)) or np.any(row < 0):
        raise ValueError(f"sample {b}: blend weights must be finite and non-negative")
    total = row.sum()
    if total <= 0:
        raise ValueError(f"sample {b}: blend weights sum to zero")
    return row / total


def make_class_labels(
    class_labels: Any, batch: int, label_dim: int, mode: str = "onehot"
) -> torch.Tensor | None:
    """Usage: ``make_class_labels([3, 7], 2, 10)`` -> float32 CPU tensor [B, label_dim], or None.

    Modes: ``"onehot"`` (``class_labels``: B ints, or one int for all), ``"blend"`` (B weight vectors of
    length label_dim or B dicts class -> weight, each normalised to sum 1; one dict applies to all),
    ``"uniform"`` (every entry 1/label_dim; ``class_labels`` ignored), ``"null"`` (None: the model uses one
    zero row). A model with ``label_dim == 0`` gets None in every mode.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label_mode {mode!r}; valid modes: {', '.join(LABEL_MODES)}")
    if label_dim == 0 or mode == "null":
        return None
    if mode == "uniform":
        return torch.full((batch, label_dim), 1.0 / label_dim, dtype=torch.float32)
    if mode == "onehot":
        if isinstance(class_labels, int | np.integer):
            class_labels = [int(class_labels)] * batch
        if class_labels is None:
            raise ValueError("label_mode 'onehot' needs class_labels: one class index per sample")
        idx = [int(c) for c in class_labels]
        if len(idx) != batch:
            raise ValueError(f"got {len(idx)} class labels for {batch} seeds")
        bad = [c for c in idx if not 0 <= c < label_dim]
        if bad:
            raise ValueError(f"class index {bad[0]} is outside [0, {label_dim})")
        return torch.eye(label_dim, dtype=torch.float32)[
            torch.tensor(idx, dtype=torch.long)
        ]  # [B, label_dim]
    # blend
    if isinstance(class_labels, Mapping):
        class_labels = [class_labels] * batch
    if class_labels is None or len(class_labels) != batch:
        n = "no" if class_labels is None else len(class_labels)
        raise ValueError(
            f"label_mode 'blend' needs one weight vector or dict per sample; got {n} for {batch} seeds"
        )
    rows = np.stack([_blend_row(spec, label_dim, b) for b, spec in enumerate(class_labels)])
    return torch.from_numpy(rows.astype(np.float32))  # [B, label_dim]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Usage: ``to_uint8(img)`` for img float [B, C, H, W] in [-1, 1] -> uint8 ndarray [B, H, W, C].

    ``clamp((img + 1) * 127.5, 0, 255)`` then a truncating cast, as DMD2 does.
    """
    x = ((images.detach().to("cpu", torch.float32) + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # [B, H, W, C]


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------
# The sampler.


def default_micro_batch(device: torch.device) -> int:
    """Usage: ``default_micro_batch(torch.device("cpu"))`` -> 1; samples per model call on that device.

    CPU: 1 (batching gains nothing there: measured ~2.5 s per ImageNet-64 sample at batch 1 and 8 on
    2 cores). Accelerators: 16, padded, so small requests stay cheap and large ones stay efficient.
    """
    return 1 if device.type == "cpu" else 16


def micro_batch_for(device: torch.device, n: int) -> int:
    """Usage: ``micro_batch_for(torch.device("cpu"), 16)`` -> 16; samples per model call for a request of
    ``n`` samples that must be reproducible only as a whole (the variations of one generation: a replay
    runs the same micro-batch again).

    CPU: the smallest power of two ≥ ``n``, at most 16. One image stays at batch 1 (padding it costs
    up to 3×), while larger batches reach torch's oneDNN convolutions: measured on the demo model, one
    thread, 16 images in 44 ms at 16 per call against 207 ms one by one. Accelerators:
    ``default_micro_batch``.
    """
    if device.type != "cpu":
        return default_micro_batch(device)
    k = 1
    while k < min(int(n), 16):
        k *= 2
    return k


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    pad = torch.zeros((rows - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad])  # [rows, ...]


def step_window(mask_steps: int | None, mask_window: Sequence[int] | None) -> tuple[int, int] | None:
    """Usage: ``step_window(3, None)`` -> ``(0, 3)``; the steps [start, stop) masks act on (None: every
    step). ``mask_steps=k`` is the shorthand for ``mask_window=(0, k)``; giving both is refused."""
    if mask_steps is not None and mask_steps < 0:
        raise ValueError(f"mask_steps must be None or >= 0, got {mask_steps}")
    if mask_steps is not None and mask_window is not None:
        raise ValueError("give mask_steps or mask_window, not both (mask_steps=k is mask_window=(0, k))")
    if mask_window is None:
        return (0, int(mask_steps)) if mask_steps is not None else None
    window = (int(mask_window[0]), int(mask_window[1]))
    if not 0 <= window[0] <= window[1]:
        raise ValueError(f"mask_window {list(mask_window)} must satisfy 0 <= start <= stop")
    return window


def chunk_masks(
    model: nn.Module,
    masks: Mapping[str, Any] | None,
    chunks: Sequence[tuple[int, int]],
    K: int,
    rows: Sequence[Mapping[str, RowIntervention]] | None = None,
    **how: Any,
) -> list[ActivationMask] | None:
    """Usage: ``ctxs = chunk_masks(model, {"midblock": m}, [(0, 16), (16, 20)], 16, strength=0.5)``.

    One ``ActivationMask`` per micro-batch ``chunks[c] = (a, b)`` of a request of B seeds: a [1, C, H, W]
    (or [C, H, W]) mask is shared by every chunk, a [B, C, H, W] one is sliced to the chunk and padded to
    ``K`` rows. ``how`` goes to ``ActivationMask`` (strength, layer_strength, mode, normalize, alpha,
    record). None when there are no masks. Every model family's sampler builds its masks here.

    ``rows`` (one ``{layer: RowIntervention}`` per seed, ``{}`` for an untouched row) gives every row its
    own intervention (``ActivationMask(rows=...)``): each chunk gets its rows' settings, padding rows none."""
    if not masks:
        return None
    B = chunks[-1][1]
    tensors = {}
    for name, m in masks.items():
        t = torch.as_tensor(np.ascontiguousarray(m)) if isinstance(m, np.ndarray) else torch.as_tensor(m)
        t = t.unsqueeze(0) if t.ndim == 3 else t  # [C, H, W] -> [1, C, H, W]
        if t.ndim != 4 or t.shape[0] not in (1, B):
            raise ValueError(
                f"mask for layer {name!r} has shape {tuple(t.shape)}; expected (1, C, H, W) "
                f"or ({B}, C, H, W) for {B} seeds"
            )
        tensors[name] = t
    if rows is not None:
        if len(rows) != B:
            raise ValueError(f"got {len(rows)} row interventions for {B} seeds")
        unknown = sorted({n for r in rows for n in r} - set(tensors))
        if unknown:
            raise ValueError(f"row interventions name layer(s) without a mask: {', '.join(unknown)}")
        out = []
        for a, b in chunks:
            part = {
                n: _pad_rows(t.expand(B, *t.shape[1:])[a:b], K) for n, t in tensors.items()
            }  # [K, C, H, W]
            specs = {n: [rows[i].get(n) for i in range(a, b)] + [None] * (K - (b - a)) for n in tensors}
            out.append(ActivationMask(model, part, rows=specs, **how))
        return out
    if all(t.shape[0] == 1 for t in tensors.values()):
        shared = ActivationMask(model, tensors, **how)
        return [shared for _ in chunks]
    return [
        ActivationMask(
            model, {n: (t if t.shape[0] == 1 else _pad_rows(t[a:b], K)) for n, t in tensors.items()}, **how
        )
        for a, b in chunks
    ]


def joined_sizes(sizes: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """Usage: ``joined_sizes([{"midblock": [K0]}, {"midblock": [K1]}])`` -> ``{"midblock": [K0 + K1]}``;
    the per-chunk intervention sizes of a request joined in seed order (None unless every chunk has them)."""
    if not sizes or not all(sizes):
        return None
    return {name: np.concatenate([part[name] for part in sizes]) for name in sizes[0]}


@torch.no_grad()
def generate(
    model: nn.Module,
    class_labels: Any,
    seeds: Sequence[int],
    *,
    steps: int = 1,
    sigma_max: float = 80.0,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    masks: Mapping[str, Any] | None = None,
    mask_steps: int | None = None,
    mask_window: Sequence[int] | None = None,
    strength: float = 1.0,
    layer_strength: Mapping[str, float] | None = None,
    mask_mode: str = "replace",
    normalize: bool = False,
    alpha: float = 1.0,
    record_intervention: bool = False,
    capture: Sequence[str] | None = None,
    label_mode: str = "onehot",
    device: str | torch.device | None = None,
    return_float: bool = False,
    micro_batch: int | None = None,
    check: Callable[[], None] | None = None,
    row_interventions: Sequence[Mapping[str, RowIntervention]] | None = None,
) -> GenerationResult:
    """Usage: ``res = generate(model, [207, 360], seeds=[0, 1], capture=["encoder_bottleneck"])``.

    Generates ``len(seeds)`` images with an ``EDMPrecond`` model. ``steps=1`` is DMD2's one-step recipe;
    ``steps > 1`` runs EDM's deterministic Heun sampler on the Karras schedule (sigma_max, sigma_min,
    rho), 2*steps - 1 model evaluations. ``masks`` (``{layer: [1|B, C, H, W]}``, a [B, ...] mask gives
    each sample its own replacement) replace layer outputs on every evaluation of every step
    (``mask_steps=None``) or only of the first ``mask_steps`` steps; ``mask_window=(start, stop)`` masks
    steps start <= i < stop instead (``mask_steps=k`` is ``(0, k)``; give one of the two). Step i covers
    both model evaluations of Heun step i. ``strength``, ``layer_strength``, ``mask_mode``,
    ``normalize`` and ``alpha`` are ``ActivationMask``'s: strength 1 (default) is the plain replacement,
    strength 0 the unmasked output, bit-for-bit; ``mask_mode="add"`` adds the masks as steering directions.
    ``record_intervention`` returns the intervention's size per layer and sample. ``capture`` lists
    layers whose activations are returned as float32 ndarrays [B, C, H, W], taken from the **last**
    model evaluation: the one whose output is the returned image (masked, if masks are active on the
    last step).
    ``class_labels`` and ``label_mode``: see ``make_class_labels``. ``device`` must be None or the
    model's device (the model is never moved). Returns a ``GenerationResult`` (images uint8 [B, H, W, C]).

    The model runs on fixed-size micro-batches of ``micro_batch`` samples (``default_micro_batch``),
    the last one zero-padded, so every model call has the same shape whatever ``len(seeds)`` is: a
    sample's output depends only on its seed, label, masks and settings, not on the batch around it.
    All hooks are removed before returning, also on error.

    ``check`` (no arguments) is called before every model call, so a caller can stop a long sampling
    between steps and micro-batches by raising from it (a job's cancel check); it never changes the output.

    ``row_interventions`` (one ``{layer: RowIntervention}`` per seed; ``{}`` leaves a row untouched) gives
    every sample its own layers, strength, mode, alpha, normalisation and step window in one call (a
    sweep's cells packed together); ``masks`` then holds every named layer ([1|B, C, H, W]) and the scalar
    intervention options are not used. At the same ``micro_batch`` a row's image, activations and
    intervention size are the bits it gets when rendered alone with its own settings; its size is NaN
    at a layer it does not mask.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    window = step_window(mask_steps, mask_window)
    if row_interventions is not None and window is not None:
        raise ValueError("with row_interventions each row has its own window; give no mask_steps/mask_window")
    dev = _model_device(model)
    want = torch.device(device) if device is not None else dev
    if want.type != dev.type or want.index not in (None, dev.index):
        raise ValueError(f"the model is on {dev}, not {want}; move it with model.to(...) first")
    K = int(micro_batch) if micro_batch is not None else default_micro_batch(dev)
    if K < 1:
        raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")

    B = len(seeds)
    C, R = model.img_channels, model.img_resolution
    labels = make_class_labels(class_labels, B, model.label_dim, label_mode)
    labels = labels.to(dev) if labels is not None else None
    sigmas = karras_sigmas(steps, sigma_max, sigma_min, rho)
    state_dtype = torch.float32 if dev.type == "mps" else torch.float64
    chunks = [(a, min(a + K, B)) for a in range(0, B, K)]
    pinned = dev.type == "cuda"  # activations leave the GPU without stalling the next micro-batch

    how = dict(strength=strength, layer_strength=layer_strength, mode=mask_mode, normalize=normalize)
    if row_interventions is not None:
        how = {}  # each row's settings come with it
    mask_ctxs = chunk_masks(
        model, masks, chunks, K, row_interventions, alpha=alpha, record=record_intervention, **how
    )
    sizes: list[dict[str, np.ndarray]] = [{} for _ in chunks]  # per chunk: the last masked call's sizes
    captured: dict[str, list[np.ndarray]] | None = {n: [] for n in capture} if capture else None

    def denoise(x: torch.Tensor, sigma: float, step: int, last: bool) -> torch.Tensor:
        """D(x, sigma) for the whole batch [B, C, R, R] -> float32, in micro-batches of K."""
        outs = []
        for c, (a, b) in enumerate(chunks):
            if check is not None:
                check()
            n = b - a
            xc = _pad_rows(x[a:b].to(torch.float32), K)  # [K, C, R, R]
            yc = _pad_rows(labels[a:b], K) if labels is not None else None  # [K, label_dim]
            sigma_t = torch.full((K,), sigma, dtype=torch.float32, device=dev)
            masked = mask_ctxs is not None and (window is None or window[0] <= step < window[1])
            with ExitStack() as stack:
                if masked:
                    mask_ctxs[c].step = step  # per-row windows (a scalar window is decided here)
                    stack.enter_context(mask_ctxs[c])
                cap = (
                    stack.enter_context(ActivationCapture(model, capture, pinned=pinned))
                    if last and capture
                    else None
                )
                outs.append(model(xc, sigma_t, yc)[:n])  # [n, C, R, R]
            if masked and record_intervention and row_interventions is not None:
                got = mask_ctxs[c].sizes  # each row's last intervened call; NaN where none was
                sizes[c] = {name: got.get(name, np.full(K, np.nan))[:n].copy() for name in masks}
            elif masked and record_intervention:
                sizes[c] = {name: v[:n].copy() for name, v in mask_ctxs[c].sizes.items()}
            if cap is not None:
                for name in capture:  # read after the stream is synchronised (non-blocking copies)
                    captured[name].append(cap.activations[name][:n])
        return torch.cat(outs)  # [B, C, R, R] float32

    noise = make_noise(seeds, (C, R, R)).to(dev)  # [B, C, R, R]
    if steps == 1:
        img = denoise(noise * sigmas[0], sigmas[0], 0, last=True)
    else:
        x = noise.to(state_dtype) * sigmas[0]
        for i in range(steps):
            t_cur, t_next = sigmas[i], sigmas[i + 1]
            last = i == steps - 1
            denoised = denoise(x, t_cur, i, last=last)
            if last:  # Euler to t_N = 0: x + (0 - t)(x - D)/t == D, taken exactly
                img = denoised
                break
            d_cur = (x - denoised.to(state_dtype)) / t_cur
            x_next = x + (t_next - t_cur) * d_cur
            d_prime = (x_next - denoise(x_next, t_next, i, last=False).to(state_dtype)) / t_next
            x = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)

    images = to_uint8(img)  # a blocking copy: every activation copy queued before it has landed
    if pinned:
        torch.cuda.synchronize(dev)
    activations = {n: torch.cat(parts).numpy() for n, parts in captured.items()} if captured else None
    return GenerationResult(
        images=images,
        activations=activations,
        images_float=img.detach().to("cpu", torch.float32).numpy() if return_float else None,
        sigmas=sigmas,
        intervention=joined_sizes(sizes) if record_intervention else None,
    )
