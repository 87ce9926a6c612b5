"""Device and precision choice for inference: cuda > mps > cpu, float32 unless asked otherwise on CUDA."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "disable_tf32",
    "limit_cpu_threads",
    "pick_device",
    "resolve_precision",
    "set_precision",
]

# name -> compute dtype of the U-Net (weights stay float32; layers cast them to the input dtype)
PRECISIONS: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


# (pid, threads, modules imported) when the BLAS pools were last limited: a new import may load another
# BLAS (scipy's, after numpy's), and finding the loaded ones costs ~3 ms, so look only after imports
_blas_limited: tuple[int, int, int] | None = None


def limit_cpu_threads(threads: int) -> None:
    """Hold this process's CPU compute to ``threads``: torch's intra-op threads and the BLAS pools
    (numpy's OpenBLAS, MKL). Cheap when nothing changed, so call it before every job, not once:

    * numba's OpenMP threading layer (a UMAP fit in the same process) shares torch's libgomp and sets its
      thread count to every core, after which torch ran one-image renders on two threads, slower on a
      machine whose other cores serve the web app and the other workers;
    * OpenBLAS threads spin for a while after each threaded call, taking a core from whatever runs next.
    """
    global _blas_limited
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = (os.getpid(), threads, len(sys.modules))
    if _blas_limited != key:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
        _blas_limited = (key[0], key[1], len(sys.modules))  # threadpoolctl may have imported modules


def current_threads() -> int:
    """Usage: ``current_threads()`` -> torch's intra-op CPU threads now (recorded with CPU renders: a
    batched convolution's bits may depend on it)."""
    return torch.get_num_threads()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """Usage: ``pick_device()`` -> ``torch.device("cuda")`` if available, else ``"mps"``, else ``"cpu"``.

    ``preference`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"auto"`` or None) overrides the
    automatic choice; asking for a device that is not available raises ValueError.
    """
    if preference is None or str(preference) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(preference)!r} was requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(preference)!r} does not exist ({torch.cuda.device_count()} GPUs)")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"device {str(preference)!r} was requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {str(preference)!r}; use cpu, cuda[:N] or mps")
    return device


def resolve_precision(device: str | torch.device, precision: str | torch.dtype | None = None) -> torch.dtype:
    """Usage: ``resolve_precision("cuda", "bf16")`` -> ``torch.bfloat16``; the U-Net compute dtype.

    ``None``/``"float32"`` -> float32 everywhere. ``"auto"`` -> bfloat16 on CUDA when supported, float32
    elsewhere. ``"bf16"``/``"fp16"`` (or the torch dtypes) are CUDA-only: CPU and MPS inference stays
    float32, and asking for less there raises ValueError.
    """
    device = torch.device(device)
    if precision is None:
        return torch.float32
    if isinstance(precision, str) and precision == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(precision, torch.dtype):
        dtype = precision
    else:
        try:
            dtype = PRECISIONS[str(precision)]
        except KeyError:
            raise ValueError(
                f"unknown precision {precision!r}; use one of {sorted(PRECISIONS)} or 'auto'"
            ) from None
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported inference dtype {dtype}")
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(
            f"{dtype} inference is only supported on CUDA; {device.type} inference stays float32"
        )
    return dtype


def set_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Usage: ``set_precision(model, torch.bfloat16)`` -> ``model`` with its U-Net computing in ``dtype``.

    For an ``EDMPrecond``: sets ``use_fp16``/``fp16_dtype``; weights stay float32 and the wrapper only
    switches dtype on CUDA (preconditioning, attention softmax and the output stay float32).
    """
    if dtype == torch.float32:
        model.use_fp16 = False
    else:
        model.use_fp16 = True
        model.fp16_dtype = dtype
    return model


def disable_tf32() -> None:
    """Usage: ``disable_tf32()`` -> turns TF32 off for CUDA matmuls and convolutions (process-wide).

    Needed to reproduce float32 reference numbers on Ampere+ GPUs (TF32 gives errors around 1e-3).
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
