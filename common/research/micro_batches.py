"""A dataset's micro-batch: the default for a new dataset, and the one measurement a GPU worker makes.

The micro-batch itself (samples per model call, aligned to absolute indices) is recorded on the dataset
and never changes; see ``common/research/datasets.py``. ``common/ml/batching.py`` holds the estimate and
the measurement; this module decides when they are used.

Usage::

    b = default_micro_batch(settings, model_row)        # prepare: a new dataset asked without one
    measure_once(settings, net, model_row.checkpoint_sha256)   # a chunk on a GPU worker
"""

from __future__ import annotations

import logging
import threading

from common.ml import batching
from common.platform.config import Settings
from common.platform.errors import UserError

log = logging.getLogger(__name__)


def default_micro_batch(settings: Settings, model) -> int:
    """The micro-batch of a new dataset asked without one: ``LATENTLAB_MICRO_BATCH``, or (0) what a GPU
    worker measured for this checkpoint (``SAFE_MICRO_BATCH`` before any measurement), within the budget."""
    b = settings.micro_batch
    if b == 0:
        b = batching.read_measured(settings.data_root, model.checkpoint_sha256) or batching.SAFE_MICRO_BATCH
    return min(b, batching.largest_fitting(model.config, settings.micro_batch_memory_mb, model.architecture))


_measured: set[str] = set()
_measure_lock = threading.Lock()


def measure_once(settings: Settings, model, model_sha: str) -> None:
    """With ``LATENTLAB_MICRO_BATCH=0``, measure the largest micro-batch of this model on this worker's
    accelerator the first time the process uses it, and record it for later datasets of the model
    (``default_micro_batch``); nothing on CPU. A failed measurement records the safe size (logged)."""
    if settings.micro_batch != 0:
        return
    device = str(next(model.parameters()).device)
    key = batching.cache_key(model_sha, device)
    with _measure_lock:
        if key in _measured or device == "cpu":
            return
        b = batching.measure_micro_batch(model, settings.micro_batch_memory_mb)
        _measured.add(key)
        try:
            batching.write_measured(settings.data_root, model_sha, device, b)
        except OSError:  # later datasets fall back to SAFE_MICRO_BATCH; this chunk is not affected
            log.warning("could not record the measured micro-batch %d of %s", b, key, exc_info=True)


def out_of_memory(exc: BaseException, micro_batch: int, device: str) -> UserError | None:
    """The refusal for a model call at ``micro_batch`` that ran out of device memory, else None."""
    if type(exc).__name__ != "OutOfMemoryError":
        return None
    return UserError(
        f"micro_batch {micro_batch} does not fit the memory of this worker's {device}; a dataset keeps its "
        "micro-batch, so make a new dataset with a smaller micro_batch (or run it on a larger device)."
    )
