"""A per-process LRU cache of loaded generators, keyed by model id, checkpoint sha256 and device.

A warm worker runs its second job without reloading the checkpoint (``loads`` counts real loads).
The cache also checks, after each job, that no forward hook was left on any cached model. Models load
through their family (``common/ml/families``: an EDM checkpoint or a diffusers pipeline folder).

The cache is bounded by count (``capacity``) and by memory (``max_bytes``, the parameters and buffers of
the cached models): least recently used models are dropped until both hold, but the model just asked
for is always kept, so one SDXL pipeline and several small models can share a GPU worker.

Usage::

    cache = ModelCache(capacity=4, max_bytes=12 << 30)
    model = cache.get(settings, model_row)      # loads on a miss, verifies the file's sha256
    cache.assert_no_hooks()
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from common.models import GeneratorModel
from common.platform.config import Settings
from common.platform.errors import UserError
from common.research.registry import checkpoint_file


class ModelCache:
    def __init__(
        self,
        capacity: int = 2,
        device: str | None = None,
        threads: int | None = None,
        max_bytes: int | None = None,
    ):
        self.capacity = max(1, capacity)
        self.max_bytes = max_bytes if max_bytes and max_bytes > 0 else None
        self.threads = threads
        self.device_preference = device or None
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def device(self):
        from common.ml.device import pick_device

        return pick_device(self.device_preference)

    def _apply_threads(self, device) -> None:
        if self.threads and device.type == "cpu":
            from common.ml.device import limit_cpu_threads

            limit_cpu_threads(self.threads)  # every use: a UMAP fit in this process may have raised it

    def get(self, settings: Settings, row: GeneratorModel):
        """The loaded, eval-mode generator for ``row`` (loaded strictly on a miss)."""
        device = self.device()
        key = (row.id, row.checkpoint_sha256, str(device))
        with self._lock:
            self._apply_threads(device)
            if key in self._models:
                self._models.move_to_end(key)
                self.hits += 1
                return self._models[key]
            from common.ml.families import get_family

            path = checkpoint_file(settings, row)
            if not path.exists():
                raise UserError(f"The checkpoint of model '{row.name}' is missing at {path}.")
            model, digest = get_family(row.family or "edm").load(path, row.config, str(device))
            if digest != row.checkpoint_sha256:
                raise UserError(
                    f"The checkpoint of model '{row.name}' changed on disk (sha256 {digest[:12]}…, "
                    "registered "
                    f"{row.checkpoint_sha256[:12]}…); register it again under a new name."
                )
            self.loads += 1
            self._models[key] = model
            while len(self._models) > 1 and (
                len(self._models) > self.capacity or (self.max_bytes and self.nbytes() > self.max_bytes)
            ):
                self._models.popitem(last=False)
            return model

    def nbytes(self) -> int:
        """Bytes of the parameters and buffers of every cached model."""
        return sum(model_nbytes(m) for m in self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def assert_no_hooks(self) -> None:
        from common.ml.hooks import active_hook_count

        for (model_id, _sha, device), model in self._models.items():
            left = active_hook_count(model)
            if left:
                raise RuntimeError(f"{left} hook(s) left on cached model {model_id} ({device}) after a job")

    def stats(self) -> dict[str, Any]:
        return {
            "loads": self.loads,
            "hits": self.hits,
            "cached": len(self._models),
            "capacity": self.capacity,
            "bytes": self.nbytes(),
            "max_bytes": self.max_bytes,
        }


def model_nbytes(model) -> int:
    """Usage: ``model_nbytes(model)`` -> bytes of an ``nn.Module``'s parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
