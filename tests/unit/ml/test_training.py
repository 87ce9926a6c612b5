"""EDM training and one-step distillation on a toy budget: finite, decreasing loss; bit-identical reruns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.ml.networks import EDMPrecond
from common.ml.training import (
    DistillConfig,
    EDMTrainConfig,
    deterministic,
    distill_one_step,
    edm_loss,
    load_digits_images,
    make_distill_pairs,
    no_progress,
    one_hot,
    train_edm,
)

# 8x8 digits, 16 -> 32 channels, no attention: ~100k parameters, a training step in milliseconds
TOY_CONFIG = {
    "img_resolution": 8,
    "img_channels": 1,
    "label_dim": 10,
    "use_fp16": False,
    "sigma_min": 0,
    "sigma_max": "inf",
    "sigma_data": 0.5,
    "model_type": "DhariwalUNet",
    "augment_dim": 0,
    "model_channels": 16,
    "channel_mult": [1, 2],
    "channel_mult_emb": 1,
    "num_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
    "label_dropout": 0,
}
TOY_TRAIN = EDMTrainConfig(steps=40, batch_size=32, lr=3e-3, lr_warmup_steps=5, ema_decay=0.9, seed=3)
TOY_DISTILL = DistillConfig(
    pairs=64,
    teacher_steps=3,
    pair_micro_batch=32,
    steps=30,
    batch_size=16,
    lr=1e-3,
    lr_warmup_steps=5,
    seed=4,
)


@pytest.fixture(scope="module")
def digits8():
    x, y = load_digits_images(8)
    return x[:320], y[:320]


@pytest.fixture(autouse=True)
def _one_thread():
    with deterministic(threads=1):
        yield


def _fixed_eval_loss(model: EDMPrecond, x: torch.Tensor, y: torch.Tensor) -> float:
    gen = torch.Generator().manual_seed(123)
    q = torch.linspace(0.05, 0.95, len(x))
    sigma = (torch.erfinv(2 * q - 1) * 2**0.5 * 1.2 - 1.2).exp()  # log-normal quantiles, as trained
    noise = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        return float(edm_loss(model, x, one_hot(y, 10), sigma, noise).mean())


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_digits_images_scales_to_minus_one_one_and_upsamples():
    x8, y = load_digits_images(8)
    assert x8.shape == (1797, 1, 8, 8) and y.shape == (1797,) and x8.dtype == torch.float32
    assert float(x8.min()) == -1.0 and float(x8.max()) == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    x16, _ = load_digits_images(16)
    assert x16.shape == (1797, 1, 16, 16) and float(x16.min()) >= -1 and float(x16.max()) <= 1
    assert torch.equal(
        x16, F.interpolate(x8, size=(16, 16), mode="bilinear", align_corners=False).clamp(-1, 1)
    )
    pooled = F.avg_pool2d(x16, 2).flatten()
    assert float(torch.corrcoef(torch.stack([pooled, x8.flatten()]))[0, 1]) > 0.95, "the digit survives"
    xn, _ = load_digits_images(16, "nearest")
    assert torch.equal(xn, x8.repeat_interleave(2, 2).repeat_interleave(2, 3))
    with pytest.raises(ValueError, match="upsampling mode"):
        load_digits_images(16, "bicubic")


def test_edm_training_loss_is_finite_and_decreases(digits8):
    x, y = digits8
    res = train_edm(TOY_CONFIG, x, y, TOY_TRAIN, progress=no_progress)
    assert len(res.losses) == TOY_TRAIN.steps and all(np.isfinite(res.losses))
    assert np.mean(res.losses[-10:]) < np.mean(res.losses[:10])
    torch.manual_seed(TOY_TRAIN.seed)
    initial = EDMPrecond(**TOY_CONFIG)  # the same initialisation train_edm starts from
    before, after = _fixed_eval_loss(initial, x[:64], y[:64]), _fixed_eval_loss(res.model, x[:64], y[:64])
    assert np.isfinite(after) and after < 0.8 * before, (before, after)
    assert not res.ema.training and not any(p.requires_grad for p in res.ema.parameters())


def test_two_training_runs_with_the_same_seed_are_bit_identical(digits8):
    x, y = digits8
    cfg = dataclasses.replace(TOY_TRAIN, steps=6)
    a = train_edm(TOY_CONFIG, x, y, cfg, progress=no_progress)
    b = train_edm(TOY_CONFIG, x, y, cfg, progress=no_progress)
    assert a.losses == b.losses
    assert _state_equal(a.ema, b.ema) and _state_equal(a.model, b.model)
    c = train_edm(TOY_CONFIG, x, y, dataclasses.replace(cfg, seed=cfg.seed + 1), progress=no_progress)
    assert not _state_equal(a.ema, c.ema)


def test_distillation_regresses_the_teacher_pairs_and_is_deterministic(digits8):
    x, y = digits8
    teacher = train_edm(TOY_CONFIG, x, y, dataclasses.replace(TOY_TRAIN, steps=10), progress=no_progress).ema
    pairs = make_distill_pairs(teacher, TOY_DISTILL, progress=no_progress)
    assert pairs.noise.shape == pairs.targets.shape == (64, 1, 8, 8)
    assert pairs.labels.tolist() == [i % 10 for i in range(64)]
    assert float(pairs.targets.abs().max()) <= 1.0
    again = make_distill_pairs(teacher, TOY_DISTILL, progress=no_progress)
    assert torch.equal(pairs.targets, again.targets), "pairs are a function of the teacher and the seeds"

    res = distill_one_step(teacher, pairs, TOY_DISTILL, progress=no_progress)
    assert all(np.isfinite(res.losses)) and np.mean(res.losses[-5:]) < np.mean(res.losses[:5])

    def one_step_mse(model):
        with torch.no_grad():
            out = model(pairs.noise * 80, torch.full((64,), 80.0), one_hot(pairs.labels, 10))
        return float((out - pairs.targets).square().mean())

    assert one_step_mse(res.model) < one_step_mse(teacher)
    twin = distill_one_step(teacher, pairs, TOY_DISTILL, progress=no_progress)
    assert twin.losses == res.losses and _state_equal(twin.ema, res.ema)


def test_deterministic_restores_the_previous_settings():
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    with deterministic(threads=1):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == was
