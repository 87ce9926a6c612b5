"""Training: EDM denoiser training and one-step distillation of an ``EDMPrecond`` (CPU-sized, deterministic).

Sections:
    1. data          (scikit-learn's 8x8 digits, scaled to [-1, 1] and upsampled)
    2. EDM training  (Karras et al. 2022 loss: log-normal sigma, weight (s^2 + sd^2) / (s sd)^2; Adam; EMA)
    3. distillation  (teacher ODE pairs noise -> image, student regressed to them at sigma_max in one step)

Determinism: every random draw (initial weights, data order, sigmas, noise) comes from the seed given in
the config, data order from its own ``torch.Generator``; ``torch.use_deterministic_algorithms(True)`` is
held for the duration of a run. Two runs with the same config, thread count and machine give bit-identical
weights (CPU float32 kernels are deterministic for a fixed thread count and fixed batch shapes).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.ml.networks import EDMPrecond

__all__ = [
    "DistillConfig",
    "DistillResult",
    "EDMTrainConfig",
    "TrainResult",
    "deterministic",
    "distill_one_step",
    "edm_loss",
    "load_digits_images",
    "make_distill_pairs",
    "one_hot",
    "train_edm",
]

UPSAMPLE_MODES = ("bilinear", "nearest")
Progress = Callable[..., Any]


# ----------------------------------------------------------------------------------------------------------
# 1. Data.


def load_digits_images(resolution: int = 16, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Usage: ``x, y = load_digits_images(16)`` -> (float32 [1797, 1, R, R] in [-1, 1], int64 [1797]).

    scikit-learn's digits (8x8, values 0..16) scaled by ``v / 8 - 1`` and resized to ``resolution`` with
    ``F.interpolate(mode, align_corners=False)`` for bilinear (``nearest`` repeats each pixel); the data
    set's own order. ``resolution=8`` returns the originals.
    """
    from sklearn.datasets import load_digits

    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsampling mode {mode!r}; valid modes: {', '.join(UPSAMPLE_MODES)}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)  # [N, 1, 8, 8]
    if resolution != x.shape[-1]:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        x = F.interpolate(x, size=(resolution, resolution), mode=mode, **kwargs)  # [N, 1, R, R]
    x = x.clamp(-1, 1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))  # [N]
    return x, y


def one_hot(labels: torch.Tensor, label_dim: int) -> torch.Tensor:
    """Usage: ``one_hot(torch.tensor([3, 7]), 10)`` -> float32 [B, label_dim]."""
    return F.one_hot(labels.long(), label_dim).to(torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Shared pieces: determinism, EMA, learning-rate warm-up.


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """Usage: ``with deterministic(threads=2): train(...)`` -- deterministic kernels (and a thread count)
    for the block, the previous settings restored afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        torch.set_num_threads(old_threads)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach(), 1.0 - decay)


def _ema_decay(step: int, decay: float) -> float:
    # short runs: the average must not remember the random initialisation (EDM's ema_rampup in spirit)
    return min(decay, (1.0 + step) / (10.0 + step))


def _lr_at(step: int, lr: float, warmup: int, total: int, final_fraction: float) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if final_fraction >= 1.0 or total <= warmup:
        return lr
    t = (step - warmup) / max(1, total - warmup)  # cosine decay to lr * final_fraction
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * t)))


def _progress(progress: Progress | None, total: int, desc: str):
    if progress is None:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=2.0)
    return progress(total=total, desc=desc)


class _NoBar:
    def __init__(self, total: int = 0, desc: str = "") -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int = 0, desc: str = "") -> _NoBar:
    """A silent stand-in for tqdm (tests)."""
    return _NoBar()


# ----------------------------------------------------------------------------------------------------------
# 2. EDM training.


@dataclass(frozen=True)
class EDMTrainConfig:
    """Hyperparameters of ``train_edm``; every field is recorded in the model card."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    lr_warmup_steps: int = 100
    lr_final_fraction: float = 0.1  # cosine decay to lr * this
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    P_mean: float = -1.2
    P_std: float = 1.2
    ema_decay: float = 0.999
    seed: int = 0


@dataclass
class TrainResult:
    """What ``train_edm`` / ``distill_one_step`` return: the EMA model (eval mode), the raw model, the loss
    per step, the wall-clock and process CPU seconds taken and the config."""

    ema: EDMPrecond
    model: EDMPrecond
    losses: list[float]
    seconds: float
    config: Any
    cpu_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def edm_loss(
    model: EDMPrecond,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Usage: ``loss = edm_loss(model, x [B, C, R, R], one_hot [B, L], sigma [B], noise [B, C, R, R])``.

    EDM's weighted denoising loss per sample, float32 [B]: ``w(s) |D(x + s n, s, y) - x|^2`` averaged over
    pixels, ``w(s) = (s^2 + sd^2) / (s sd)^2`` (unit effective weight at every noise level).
    """
    sd = model.sigma_data
    s = sigma.reshape(-1, 1, 1, 1)  # [B, 1, 1, 1]
    weight = (s**2 + sd**2) / (s * sd) ** 2
    denoised = model(images + s * noise, sigma, labels)  # [B, C, R, R]
    return (weight * (denoised - images) ** 2).mean(dim=(1, 2, 3))  # [B]


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation per epoch, drawn from ``gen``; the last partial batch of
    an epoch is dropped so every step has the same shape."""
    per_epoch = max(1, n // batch_size)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(per_epoch):
            yield perm[i * batch_size : (i + 1) * batch_size]


def _build(config: Mapping[str, Any], seed: int) -> EDMPrecond:
    torch.manual_seed(seed)  # the layers draw their initial weights from the global generator
    return EDMPrecond(**dict(config))


def train_edm(
    model_config: Mapping[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EDMTrainConfig = EDMTrainConfig(),
    *,
    progress: Progress | None = None,
    log_every: int = 50,
) -> TrainResult:
    """Usage: ``res = train_edm(DIGITS16_CONFIG, x [N, C, R, R], y int64 [N], EDMTrainConfig(steps=4000))``.

    Trains ``EDMPrecond(**model_config)`` from a seeded initialisation with EDM's loss (sigma log-normal
    with ``P_mean``/``P_std``), Adam with linear warm-up and cosine decay, gradient-norm clipping, and an
    EMA of the weights. Runs under ``deterministic()``; call inside ``deterministic(threads)`` to also fix
    the thread count. ``res.ema`` is the model to ship.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = config
    model = _build(model_config, cfg.seed).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = _batches(len(images), cfg.batch_size, gen)
    losses: list[float] = []
    bar = _progress(progress, cfg.steps, "train EDM teacher")
    with deterministic():
        for step in range(cfg.steps):
            idx = next(batches)
            x = images[idx]  # [B, C, R, R]
            y = one_hot(labels[idx], model.label_dim) if model.label_dim else None  # [B, L]
            sigma = (torch.randn(len(idx), generator=gen) * cfg.P_std + cfg.P_mean).exp()  # [B]
            noise = torch.randn(x.shape, generator=gen)  # [B, C, R, R]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.lr, cfg.lr_warmup_steps, cfg.steps, cfg.lr_final_fraction)
            loss = edm_loss(model, x, y, sigma, noise).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            _ema_update(ema, model, _ema_decay(step, cfg.ema_decay))
            losses.append(loss.item())
            bar.update(1)
            if log_every and (step + 1) % log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-log_every:]):.4f}")
    bar.close()
    model.eval().requires_grad_(False)
    return TrainResult(
        ema=ema,
        model=model,
        losses=losses,
        seconds=time.perf_counter() - t0,
        config=cfg,
        cpu_seconds=time.process_time() - c0,
    )


# ----------------------------------------------------------------------------------------------------------
# 3. One-step distillation.


@dataclass(frozen=True)
class DistillConfig:
    """Hyperparameters of ``make_distill_pairs`` + ``distill_one_step``; recorded in the model card.

    Pair ``i`` has class ``i % label_dim`` and noise seed ``pair_seed_base + i`` (``make_noise``'s
    per-seed generator), so the pair set is a pure function of the teacher and these numbers.
    """

    pairs: int = 4000
    teacher_steps: int = 18
    sigma_max: float = 80.0
    pair_seed_base: int = 10_000_000
    pair_micro_batch: int = 500
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4
    lr_warmup_steps: int = 100
    lr_final_fraction: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 1


@dataclass
class DistillPairs:
    """Teacher ODE pairs: noise float32 [N, C, R, R] (unit variance), labels int64 [N], targets float32
    [N, C, R, R] (the teacher's samples from ``noise * sigma_max``, clamped to [-1, 1])."""

    noise: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    seconds: float
    cpu_seconds: float = 0.0


DistillResult = TrainResult


def make_distill_pairs(
    teacher: EDMPrecond, config: DistillConfig = DistillConfig(), *, progress: Progress | None = None
) -> DistillPairs:
    """Usage: ``pairs = make_distill_pairs(teacher, DistillConfig(pairs=12000))``.

    Runs ``common.ml.generation.generate`` (EDM's deterministic Heun sampler, ``teacher_steps`` steps from
    ``sigma_max``) on the teacher for ``config.pairs`` balanced labels and consecutive seeds, in
    micro-batches of ``pair_micro_batch``.
    """
    from common.ml.generation import generate, make_noise

    t0, c0 = time.perf_counter(), time.process_time()
    n, L = config.pairs, teacher.label_dim
    C, R = teacher.img_channels, teacher.img_resolution
    labels = torch.arange(n) % L if L else torch.zeros(n, dtype=torch.long)  # [N]
    seeds = [config.pair_seed_base + i for i in range(n)]
    noise = make_noise(seeds, (C, R, R))  # [N, C, R, R]
    targets = torch.empty_like(noise)
    K = min(config.pair_micro_batch, n)
    bar = _progress(progress, n, f"teacher pairs ({config.teacher_steps} Heun steps)")
    with deterministic():
        for a in range(0, n, K):
            b = min(a + K, n)
            res = generate(
                teacher,
                labels[a:b].tolist(),
                seeds[a:b],
                steps=config.teacher_steps,
                sigma_max=config.sigma_max,
                return_float=True,
                micro_batch=K,
            )
            targets[a:b] = torch.from_numpy(res.images_float).clamp(-1, 1)
            bar.update(b - a)
    bar.close()
    return DistillPairs(
        noise=noise,
        labels=labels,
        targets=targets,
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )


def distill_one_step(
    teacher: EDMPrecond,
    pairs: DistillPairs,
    config: DistillConfig = DistillConfig(),
    *,
    progress: Progress | None = None,
    log_every: int = 50,
) -> TrainResult:
    """Usage: ``res = distill_one_step(teacher, pairs, cfg)``; ``res.ema(noise * 80, 80, one_hot)`` -> image.

    The student starts as a copy of the teacher and is regressed (mean squared error) so that
    ``student(noise * sigma_max, sigma_max, y)`` equals the teacher's multi-step sample from that noise:
    DMD2's one-step calling convention. Adam, warm-up + cosine decay, gradient clipping, EMA.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = config
    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(teacher).eval().requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches = _batches(len(pairs.noise), cfg.batch_size, gen)
    losses: list[float] = []
    bar = _progress(progress, cfg.steps, "distil one-step student")
    with deterministic():
        for step in range(cfg.steps):
            idx = next(batches)
            z = pairs.noise[idx] * cfg.sigma_max  # [B, C, R, R]
            y = one_hot(pairs.labels[idx], student.label_dim) if student.label_dim else None
            sigma = torch.full((len(idx),), cfg.sigma_max)  # [B]
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.lr, cfg.lr_warmup_steps, cfg.steps, cfg.lr_final_fraction)
            loss = (student(z, sigma, y) - pairs.targets[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            _ema_update(ema, student, _ema_decay(step, cfg.ema_decay))
            losses.append(loss.item())
            bar.update(1)
            if log_every and (step + 1) % log_every == 0:
                bar.set_postfix(mse=f"{np.mean(losses[-log_every:]):.4f}")
    bar.close()
    student.eval().requires_grad_(False)
    return TrainResult(
        ema=ema,
        model=student,
        losses=losses,
        seconds=time.perf_counter() - t0,
        config=cfg,
        cpu_seconds=time.process_time() - c0,
    )


def config_dict(config: Any) -> dict[str, Any]:
    """Usage: ``config_dict(EDMTrainConfig())`` -> a JSON-ready dict of a training config dataclass."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
