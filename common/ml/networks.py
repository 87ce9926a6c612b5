"""EDM's ADM-style U-Net (``DhariwalUNet``) inside EDM's preconditioning wrapper (``EDMPrecond``).

Written from the prose specification in ``tests/data/reference/DHARIWAL_UNET_SPEC.md``. The module tree,
attribute names and registration order reproduce the reference ``state_dict()`` key for key, so DMD2's
released ImageNet-64 generator (a flat ``model.``-prefixed dict) loads with ``strict=True``.

Sections:
    1. primitive layers   (Linear, Conv2d with box-filter resampling, GroupNorm)
    2. noise embedding    (PositionalEmbedding)
    3. UNetBlock          (adaptive GroupNorm residual block + multi-head self-attention)
    4. DhariwalUNet       (the encoder/decoder with skip stack)
    5. EDMPrecond         (Karras et al. preconditioning: c_skip, c_out, c_in, c_noise)

Conventions: tensors are NCHW; B batch, C channels, E embedding width, T = H*W tokens, n heads,
d channels per head. Every layer casts its weights to the dtype of its input, so a float32 model can run
in bfloat16 on CUDA (``use_fp16``) without converting the stored weights. Nothing is ever modified in
place after it has been returned by a module: forward hooks (capture, masks) and the skip stack may hold
on to any block output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Conv2d",
    "DhariwalUNet",
    "EDMPrecond",
    "GroupNorm",
    "Linear",
    "PositionalEmbedding",
    "UNetBlock",
    "parse_sigma",
]

# ----------------------------------------------------------------------------------------------------------
# 1. Primitive layers.
#
# Parameters are created with the initialisation of tests/data/reference/DHARIWAL_UNET_SPEC.md section 3.8
# (kaiming-uniform with gain sqrt(1/3), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; zero
# init where the U-Net asks for it). Loading a checkpoint overwrites all of it; the init only matters for
# random-weight tests and benchmarks.


def _uniform_init(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return (torch.rand(*shape) * 2 - 1) * bound


class Linear(nn.Module):
    """Usage: ``Linear(E, 2 * o)(emb [B, E])`` -> [B, 2o]; ``y = x W^T + b``, W stored (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_zero: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        scale = 0.0 if init_zero else 1.0
        self.weight = nn.Parameter(_uniform_init((out_features, in_features), in_features) * scale)
        self.bias = nn.Parameter(_uniform_init((out_features,), in_features) * scale) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


class Conv2d(nn.Module):
    """Usage: ``Conv2d(i, o, 3, down=True)(x [B, i, H, W])`` -> [B, o, H/2, W/2]; conv with box resampling.

    Cross-correlation with zero padding k//2, as PyTorch's conv2d.

    ``up``/``down`` resample *before* the convolution: down = depthwise stride-2 conv with the 2x2 filter
    of 0.25s (2x2 average pooling); up = depthwise stride-2 transposed conv with the filter times 4
    (nearest-neighbour x2). ``kernel=0`` gives a parameter-free resampler (the skip path of up/down blocks),
    whose only state is the persistent ``resample_filter`` buffer, shape (1, 1, 2, 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: tuple[int, ...] = (1, 1),
        init_zero: bool = False,
    ):
        assert not (up and down), "a Conv2d resamples up or down, not both"
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        scale = 0.0 if init_zero else 1.0
        fan_in = in_channels * kernel * kernel
        self.weight = (
            nn.Parameter(_uniform_init((out_channels, in_channels, kernel, kernel), fan_in) * scale)
            if kernel
            else None
        )
        self.bias = nn.Parameter(_uniform_init((out_channels,), fan_in) * scale) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()  # [1, 1, 2, 2], all 0.25
        self.register_buffer("resample_filter", f if up or down else None, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        C = x.shape[1]
        if self.up:
            fk = (f * 4).tile([C, 1, 1, 1])  # [C, 1, 2, 2], depthwise
            x = F.conv_transpose2d(x, fk, groups=C, stride=2, padding=f_pad)  # [B, C, 2H, 2W]
        elif self.down:
            fk = f.tile([C, 1, 1, 1])  # [C, 1, 2, 2], depthwise
            x = F.conv2d(x, fk, groups=C, stride=2, padding=f_pad)  # [B, C, H/2, W/2]
        if w is not None:
            x = F.conv2d(x, w, b, padding=w.shape[-1] // 2)  # [B, out, H', W']
        return x


class GroupNorm(nn.Module):
    """Usage: ``GroupNorm(C)(x [B, C, H, W])`` -> same shape; ``min(32, C // 4)`` groups, eps 1e-5."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


# ----------------------------------------------------------------------------------------------------------
# 2. Noise embedding: [cos(t f_0) .. cos(t f_{h-1}), sin(t f_0) .. sin(t f_{h-1})], f_j = (1/10000)^(j/h).


class PositionalEmbedding(nn.Module):
    """Usage: ``PositionalEmbedding(N)(t [B])`` -> [B, N]; sinusoidal embedding, cosines first."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=t.device) / half  # endpoint=False
        freqs = (1 / self.max_positions) ** freqs  # [half]
        angles = t.ger(freqs.to(t.dtype))  # [B, half]
        return torch.cat([angles.cos(), angles.sin()], dim=1)  # [B, num_channels]


# ----------------------------------------------------------------------------------------------------------
# 3. UNetBlock: GroupNorm-SiLU-conv0, adaptive scale/shift from emb, SiLU-conv1, residual, attention.


class UNetBlock(nn.Module):
    """Usage: ``UNetBlock(i, o, E, attention=True)(x [B, i, H, W], emb [B, E])`` -> [B, o, H', W'].

    Adaptive-GroupNorm residual block with optional multi-head self-attention.

    Attention exists iff requested and ``out_channels // channels_per_head > 0``
    (tests/data/reference/DHARIWAL_UNET_SPEC.md, pitfall 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: tuple[int, ...] = (1, 1),
        adaptive_scale: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Registration order == state_dict key order: norm0 conv0 affine norm1 conv1 [skip] [norm2 qkv proj].
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, init_zero=True)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if out_channels != in_channels else 0  # 0: parameter-free resampler
            self.skip = Conv2d(
                in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter
            )
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1, init_zero=True)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))  # [B, o, H', W']

        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)  # [B, 2o, 1, 1]
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)  # scale first, shift second; [B, o, 1, 1] each
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x + (self.skip(orig) if self.skip is not None else orig)
        if self.skip_scale != 1:
            x = x * self.skip_scale

        if self.num_heads:
            B, C, H, W = x.shape
            n, d = self.num_heads, C // self.num_heads
            qkv = self.qkv(self.norm2(x))  # [B, 3C, H, W]; channel = head*3d + c*3 + s (s: q/k/v)
            qkv = qkv.reshape(B * n, d, 3, H * W)  # [B*n, d, 3, T]
            q, k, v = qkv.unbind(2)  # [B*n, d, T] each
            # Only the keys are scaled; logits and softmax in float32 (softmax over the key axis).
            w = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(d)).float()).softmax(dim=2)
            w = w.to(q.dtype)  # [B*n, T, T]
            a = torch.einsum("nqk,nck->ncq", w, v)  # [B*n, d, T]
            x = self.proj(a.reshape(B, C, H, W)) + x  # [B, C, H, W]; output channel = head*d + c
            if self.skip_scale != 1:
                x = x * self.skip_scale
        return x


# ----------------------------------------------------------------------------------------------------------
# 4. DhariwalUNet (ADM): emb MLP, encoder pushing every output onto a skip stack, decoder popping LIFO.


class DhariwalUNet(nn.Module):
    """Usage: ``DhariwalUNet(64, 3, 3, label_dim=1000)(x [B, 3, 64, 64], c_noise [B], y [B|1, 1000])``.

    The ADM U-Net: ``(x [B, Cin, R, R], noise_labels [B], class_labels [B|1, L] | None) -> [B, Cout, R, R]``.

    ``enc``/``dec`` are ordered ``ModuleDict``s named ``{res}x{res}_conv|_down|_block{i}`` and
    ``{res}x{res}_in0|_in1|_up|_block{i}`` (tests/data/reference/DHARIWAL_UNET_SPEC.md section 2.3).
    ``map_augment`` is always ``None``, as in DMD2, which deletes it after construction; ``augment_dim`` is
    accepted for config compatibility only.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: tuple[int, ...] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: tuple[int, ...] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0,
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.label_dropout = label_dropout
        E = model_channels * channel_mult_emb
        block_kwargs = dict(emb_channels=E, channels_per_head=64, dropout=dropout)

        # Mapping (conditioning) network.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = None  # DMD2 deletes it; augment_dim > 0 would add a bias-free Linear here
        self.map_layer0 = Linear(model_channels, E)
        self.map_layer1 = Linear(E, E)
        self.map_label = Linear(label_dim, E, bias=False) if label_dim else None
        if self.map_label is not None:  # N(0, 1) init: tests/data/reference/DHARIWAL_UNET_SPEC.md section 3.8
            nn.init.normal_(self.map_label.weight)

        # Encoder.
        self.enc = nn.ModuleDict()
        c = in_channels
        skip_channels: list[int] = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels * channel_mult[0]
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, cout, 3)
                c = cout
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(c, c, down=True, **block_kwargs)
            skip_channels.append(c)
            for idx in range(num_blocks):
                cout = model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    c, cout, attention=(res in attn_resolutions), **block_kwargs
                )
                c = cout
                skip_channels.append(c)

        # Decoder.
        self.dec = nn.ModuleDict()
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(c, c, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(c, c, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(c, c, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = c + skip_channels.pop()
                cout = model_channels * channel_mult[level]
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=(res in attn_resolutions), **block_kwargs
                )
                c = cout
        assert not skip_channels
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, 3, init_zero=True)

    def embed(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Usage: ``emb = unet.embed(noise_labels [B], class_labels [B|1, label_dim] | None)`` -> [B, E]."""
        emb = self.map_noise(noise_labels)  # [B, model_channels]
        emb = F.silu(self.map_layer0(emb))  # [B, E]
        emb = self.map_layer1(emb)  # [B, E]; the label goes in before the activation
        if self.map_label is not None and class_labels is not None:
            y = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([y.shape[0], 1], device=y.device) >= self.label_dropout
                y = y * keep.to(y.dtype)
            emb = emb + self.map_label(y)  # [B, E] (a [1, label_dim] zero row broadcasts)
        return F.silu(emb)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels)  # [B, E] float32; blocks cast affine(emb) to x.dtype

        # Encoder: push every (possibly hook-replaced) module output, stem conv and down blocks included.
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)

        # Decoder: concatenate [x, skip] wherever the channel count differs from the block's input.
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)  # [B, c + s, H, W]
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))  # [B, out_channels, R, R]


# ----------------------------------------------------------------------------------------------------------
# 5. EDMPrecond: D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4, y).


def parse_sigma(value: float | int | str) -> float:
    """Usage: ``parse_sigma("inf") -> math.inf``; configs write infinity as the string ``"inf"``."""
    return float(value)


class EDMPrecond(nn.Module):
    """Usage: ``model = EDMPrecond(**preset.config); D = model(x, sigma, one_hot)`` -> float32 [B, C, R, R].

    EDM's preconditioned denoiser ``model(x [B, C, R, R], sigma [B] | scalar, class_labels [B, L] | None)``.

    The U-Net is the only child, under ``model`` (every state_dict key starts with ``model.``).
    ``use_fp16`` runs the U-Net in ``fp16_dtype`` (bfloat16 by default, as DMD2 does) on CUDA only; on
    any other device, and with ``force_fp32``, everything is float32. ``sigma_min``/``sigma_max`` are
    stored, unused in forward, and may be given as strings (``"inf"``).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float | str = 0,
        sigma_max: float | str = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ):
        super().__init__()
        if model_type != "DhariwalUNet":
            raise ValueError(f"model_type {model_type!r} is not supported; only 'DhariwalUNet' is")
        self.config = dict(
            img_resolution=img_resolution,
            img_channels=img_channels,
            label_dim=label_dim,
            use_fp16=use_fp16,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            sigma_data=sigma_data,
            model_type=model_type,
            **model_kwargs,
        )
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.fp16_dtype = torch.bfloat16
        self.sigma_min = parse_sigma(sigma_min)
        self.sigma_max = parse_sigma(sigma_max)
        self.sigma_data = float(sigma_data)
        self.model = DhariwalUNet(
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=img_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
    ) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = (
            torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        )  # [B|1, 1, 1, 1]
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)  # one zero row, broadcast
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)  # [B, label_dim]
        dtype = (
            self.fp16_dtype if self.use_fp16 and not force_fp32 and x.device.type == "cuda" else torch.float32
        )

        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4

        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels)  # [B, C, R, R]
        return c_skip * x + c_out * F_x.to(torch.float32)
