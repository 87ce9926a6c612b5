"""A dataset's files: where a chunk's images and activation shards live, writing them (atomically, in a
background thread that overlaps the next micro-batch) and reading activation rows back.

Layout (docs/ARCHITECTURE.md, "Data on disk"): ``datasets/<id>/images/chunk-<k>/<index>.png`` and
``datasets/<id>/act/chunk-<k>/<layer>.npy``, row r of a shard = sample k·chunk_size + r, flattened C·H·W.

Usage::

    with BackgroundWriter() as writer:          # PNG encoding and writes off the sampling thread
        writer.submit(write_chunk_images, root, dataset_id, k, indices, images)
    write_chunk_shards(root, dataset_id, k, acts)
    rows = read_activations(settings, [(shard, row), ...], layers)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.ml.activations import flatten_activations
from common.platform.config import Settings
from common.platform.storage import atomic_save_npy, atomic_write_bytes, png_bytes, resolve_inside

# -- where things live -------------------------------------------------------------------------------


def chunk_dir(dataset_id: int, chunk: int) -> str:
    return f"chunk-{chunk:06d}"


def image_rel(dataset_id: int, chunk: int, index: int) -> str:
    return f"datasets/{dataset_id}/images/{chunk_dir(dataset_id, chunk)}/{index:08d}.png"


def shard_rel(dataset_id: int, chunk: int) -> str:
    """The folder of a chunk's activation shards; ``<shard>/<layer>.npy`` holds one row per sample."""
    return f"datasets/{dataset_id}/act/{chunk_dir(dataset_id, chunk)}"


# -- writing ---------------------------------------------------------------------------------------


def chunk_folders(dataset_id: int, chunk: int) -> list[str]:
    """The folders a chunk writes into (its images, its activation shards)."""
    return [f"datasets/{dataset_id}/images/{chunk_dir(dataset_id, chunk)}", shard_rel(dataset_id, chunk)]


def write_chunk_images(root: Path, dataset_id: int, chunk: int, indices: list[int], images) -> None:
    """Write sample ``indices[j]``'s image ``images[j]`` (uint8 [H, W, C]) as a PNG, each atomically."""
    for j, i in enumerate(indices):
        atomic_write_bytes(root / image_rel(dataset_id, chunk, i), png_bytes(images[j]))


def write_chunk_shards(root: Path, dataset_id: int, chunk: int, acts: dict[str, np.ndarray]) -> None:
    """Write one ``.npy`` shard per layer ([n, C·H·W], row r = sample chunk·cs + r), each atomically."""
    for name, array in acts.items():
        atomic_save_npy(root / shard_rel(dataset_id, chunk) / f"{name}.npy", array)


class BackgroundWriter:
    """Usage: ``with BackgroundWriter() as w: w.submit(fn, *args)``; runs ``fn(*args)`` in order in one
    background thread, fed through a queue of at most ``depth`` pending calls (the producer blocks
    beyond it, so memory stays bounded while the next micro-batch computes).

    The first error in the thread is re-raised in the producer at its next ``submit`` or at ``close``;
    calls queued after it are skipped. Leaving the block by an exception stops the thread too (its
    pending writes still finish: every file is written atomically, and a retry rewrites them)."""

    _STOP = object()

    def __init__(self, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is None:
                fn, args = item
                try:
                    fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self._error = exc

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self._queue.put((fn, args))

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every pending call; raise the thread's error, if any."""
        if self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._thread.is_alive():
            self._queue.put(self._STOP)
            self._thread.join()


# -- reading ---------------------------------------------------------------------------------------


def read_activations(
    settings: Settings, locations: list[tuple[str, int]], layers: list[str], dtype=np.float32
) -> np.ndarray:
    """[n, D] activation vectors for (act_shard, act_row) locations, layers concatenated in sorted
    order (each flattened C·H·W). Shards are memory-mapped, read once per shard, never unpickled."""
    layers = sorted(layers)
    if not locations:
        return np.zeros((0, 0), dtype=dtype)
    by_shard: dict[str, list[int]] = {}
    for pos, (shard, _row) in enumerate(locations):
        by_shard.setdefault(shard, []).append(pos)
    parts: list[np.ndarray] = []
    widths: list[int] = []
    for name in layers:
        block = None
        for shard, positions in by_shard.items():
            arr = np.load(
                resolve_inside(settings.data_root, f"{shard}/{name}.npy"), mmap_mode="r", allow_pickle=False
            )
            if block is None:
                block = np.empty((len(locations), arr.shape[1]), dtype=dtype)
            rows = [locations[p][1] for p in positions]
            block[positions] = arr[rows]
        parts.append(block)
        widths.append(block.shape[1])
    return flatten_activations(dict(zip(layers, parts, strict=True)))  # [n, D], the layout contract


def iter_activation_batches(
    settings: Settings, locations: list[tuple[str, int]], layers: list[str], batch: int = 2048
):
    """Yield [m, D] batches of ``read_activations`` in order (bounded memory for big datasets)."""
    for a in range(0, len(locations), batch):
        yield read_activations(settings, locations[a : a + batch], layers)
