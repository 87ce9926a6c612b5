"""Micro-batches of dataset generation: how many samples one model call takes, and what that costs.

A dataset records its micro-batch b (samples per model call); micro-batch m covers sample indices
[m·b, (m+1)·b), so a sample's bytes never depend on how the work was split into chunks, workers or
growth steps. This module says whether a b fits a memory budget (an estimate from the layer table, no
torch: the web refuses a b beyond the budget before any job runs) and, on an accelerator, measures the
largest b within the budget with a few real forward passes (``measure_micro_batch``), cached per model
and device in the data root so later datasets of that model pick it up.

Usage::

    working_set_mib(model.config, 64)                 # estimated MiB of one model call at b = 64
    largest_fitting(model.config, budget_mib=8192)    # the largest power of two within the budget
    b = measure_micro_batch(net, budget_mib=8192)     # on a GPU worker (falls back to SAFE_MICRO_BATCH)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.ml.activations import DHARIWAL_ARCHITECTURE, layer_table

log = logging.getLogger(__name__)

MAX_MICRO_BATCH = 1024
SAFE_MICRO_BATCH = 16  # the fallback when a measurement fails: small enough for any supported device
CPU_MICRO_BATCH = 16  # measured on the digits teacher: ~4× the throughput of one sample per call
# one model call keeps every encoder output for the skips plus a block's temporaries: estimated as twice
# the sum of the layer table's outputs in float32 (an upper bound under no_grad, not a measurement)
_WORKING_SET_FACTOR = 2.0
_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024)


def working_set_mib(
    config: Mapping[str, Any], micro_batch: int, architecture: str = DHARIWAL_ARCHITECTURE
) -> float:
    """Usage: ``working_set_mib(config, 16)`` -> estimated MiB one float32 model call at that batch holds."""
    per_sample = sum(info.size for info in layer_table(config, architecture)) * 4 * _WORKING_SET_FACTOR
    return micro_batch * per_sample / 2**20


def largest_fitting(
    config: Mapping[str, Any], budget_mib: float, architecture: str = DHARIWAL_ARCHITECTURE
) -> int:
    """Usage: ``largest_fitting(config, 8192)`` -> the largest power of two ≤ 1024 whose estimated working
    set fits ``budget_mib`` (at least 1)."""
    b = 1
    while b * 2 <= MAX_MICRO_BATCH and working_set_mib(config, b * 2, architecture) <= budget_mib:
        b *= 2
    return b


def check_micro_batch(
    config: Mapping[str, Any], micro_batch: int, budget_mib: float, architecture: str = DHARIWAL_ARCHITECTURE
) -> str | None:
    """A sentence saying why ``micro_batch`` cannot be used for this model, or None when it can."""
    if not 1 <= micro_batch <= MAX_MICRO_BATCH:
        return f"micro_batch must be between 1 and {MAX_MICRO_BATCH}, got {micro_batch}."
    need = working_set_mib(config, micro_batch, architecture)
    if need > budget_mib:
        most = largest_fitting(config, budget_mib, architecture)
        return (
            f"micro_batch {micro_batch} needs about {need:.0f} MiB per model call, over the budget of "
            f"{budget_mib:.0f} MiB (LATENTLAB_MICRO_BATCH_MEMORY_MB); use {most} or less."
        )
    return None


# -- the measurement on an accelerator ---------------------------------------------------------------------


def _cache_file(data_root: Path) -> Path:
    return Path(data_root) / "run" / "micro-batch.json"


def cache_key(checkpoint_sha256: str, device: str) -> str:
    return f"{checkpoint_sha256}@{device}"


def read_measured(data_root: Path, checkpoint_sha256: str) -> int | None:
    """The smallest micro-batch measured for this checkpoint on any device (None: never measured).

    The smallest, because a dataset's micro-batch must run on every worker that may take its chunks."""
    try:
        table = json.loads(_cache_file(data_root).read_text())
    except (OSError, ValueError):
        return None
    found = [int(v) for k, v in table.items() if k.startswith(f"{checkpoint_sha256}@") and int(v) >= 1]
    return min(found) if found else None


def write_measured(data_root: Path, checkpoint_sha256: str, device: str, micro_batch: int) -> None:
    """Record a measurement (atomically: temporary name, then rename; last writer wins)."""
    path = _cache_file(data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    table[cache_key(checkpoint_sha256, device)] = int(micro_batch)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    os.replace(tmp, path)


def pick_largest(candidates, peak_mib, budget_mib: float, where: str = "the device") -> int:
    """Usage: ``pick_largest((16, 32, 64), peak_mib, 8192)`` -> the largest candidate, in increasing order,
    whose ``peak_mib(b)`` is within the budget, stopping at the first that is not (or raises MemoryError).

    Any other failure, or no candidate fitting, is logged and gives ``SAFE_MICRO_BATCH``: a worker never
    crash-loops on its measurement."""
    best = None
    try:
        for b in candidates:
            try:
                peak = peak_mib(b)
            except MemoryError:
                break
            if peak > budget_mib:
                break
            best = b
    except Exception:  # noqa: BLE001 - a measurement must never take the worker down
        log.warning("micro-batch measurement failed on %s; using %d", where, SAFE_MICRO_BATCH, exc_info=True)
        return SAFE_MICRO_BATCH
    if best is None:
        log.warning(
            "micro-batch measurement: not even %d fits %s MiB on %s; using %d",
            candidates[0],
            budget_mib,
            where,
            SAFE_MICRO_BATCH,
        )
        return SAFE_MICRO_BATCH
    log.info("micro-batch measured on %s: %d within %s MiB", where, best, budget_mib)
    return best


def measure_micro_batch(model, budget_mib: float, *, candidates=_CANDIDATES) -> int:
    """Usage: ``measure_micro_batch(net, 8192)`` -> the largest candidate batch whose forward pass (no
    grad, the model's dtype) peaks within ``budget_mib`` of device memory, one call each
    (``pick_largest``: a failure gives ``SAFE_MICRO_BATCH``). CPU models get ``CPU_MICRO_BATCH``
    (nothing to measure: host memory is not the limit there)."""
    import torch

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    if device.type != "cuda":
        return CPU_MICRO_BATCH

    def peak_mib(b: int) -> float:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        side = model.img_resolution
        x = torch.randn(b, model.img_channels, side, side, device=device)  # [b, C, R, R]
        sigma = torch.full((b,), 1.0, device=device)
        labels = torch.zeros(b, model.label_dim, device=device) if model.label_dim else None
        try:
            with torch.no_grad():
                model(x, sigma, labels)
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            raise MemoryError(f"batch {b}") from None
        finally:
            del x, sigma, labels
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20

    try:
        return pick_largest(candidates, peak_mib, budget_mib, str(device))
    finally:
        torch.cuda.empty_cache()
