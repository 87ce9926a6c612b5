"""Tables and activations out of the lab: the generation history as CSV or Parquet written page by page
(bounded memory however long the history), one sample's activations as ``.npy`` bytes, and a dataset's
activations as one ``.npy`` per layer with the sample ids beside them.

Usage::

    for chunk in history_csv(sessions, query): ...              # str pieces, header first
    write_history_parquet(sessions, query, path)                # one row group per page
    npy = npy_bytes(sample_activation(settings, session, sample, "midblock"))
    export_dataset_activations(settings, sessions, dataset, out_dir, layers=None)
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from common.config import Settings
from common.errors import NotFound
from common.history import HistoryQuery, history
from common.models import Dataset, Sample

PAGE = 1000
HISTORY_FIELDS = [
    "sample_id", "generation_id", "embedding_id", "dataset_id", "job_id", "selected_sample_id", "mode",
    "center_x", "center_y", "actual_x", "actual_y", "distance_to_intended", "roundtrip_error", "layers",
    "steps", "mask_steps", "noise_seed", "class_mode", "class_label", "label_weights", "checkpoint_sha256",
    "code_version", "diagnostics", "created_by", "created_at",
]  # fmt: skip
JSON_FIELDS = ("layers", "label_weights", "diagnostics")


def flat_history_row(row: dict[str, Any]) -> dict[str, Any]:
    """A history row with ``center``/``actual`` split into x and y and nested values as JSON text."""
    out = dict(row)
    out["center_x"], out["center_y"] = out.pop("center")
    out["actual_x"], out["actual_y"] = out.pop("actual")
    for key in JSON_FIELDS:
        out[key] = None if out[key] is None else json.dumps(out[key], sort_keys=True)
    return {k: out[k] for k in HISTORY_FIELDS}


def iter_history(sessions, query: HistoryQuery) -> Iterator[list[dict[str, Any]]]:
    """Pages of flat history rows matching ``query`` (its limit and offset are ignored: everything)."""
    offset = 0
    while True:
        q = query.model_copy(update={"limit": PAGE, "offset": offset})
        with sessions() as session:
            rows = history(session, q)
        if rows:
            yield [flat_history_row(r) for r in rows]
        if len(rows) < PAGE:
            return
        offset += PAGE


def history_csv(sessions, query: HistoryQuery) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for page in iter_history(sessions, query):
        writer.writerows(page)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def history_arrow_schema():
    import pyarrow as pa

    i, f, s = pa.int64(), pa.float64(), pa.string()
    types = {
        "sample_id": i, "generation_id": i, "embedding_id": i, "dataset_id": i, "job_id": i,
        "selected_sample_id": i, "mode": s, "center_x": f, "center_y": f, "actual_x": f, "actual_y": f,
        "distance_to_intended": f, "roundtrip_error": f, "layers": s, "steps": i, "mask_steps": i,
        "noise_seed": i, "class_mode": s, "class_label": i, "label_weights": s, "checkpoint_sha256": s,
        "code_version": s, "diagnostics": s, "created_by": s, "created_at": pa.timestamp("us", tz="UTC"),
    }  # fmt: skip
    return pa.schema([(name, types[name]) for name in HISTORY_FIELDS])


def write_history_parquet(sessions, query: HistoryQuery, path: Path) -> Path:
    """Write the history to ``path`` (via a temporary name beside it), one row group per page."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = history_arrow_schema()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for page in iter_history(sessions, query):
                for row in page:
                    row["created_at"] = datetime.fromisoformat(row["created_at"])
                writer.write_table(pa.Table.from_pylist(page, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def history_parquet_stream(sessions, query: HistoryQuery, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The Parquet file's bytes, built in a temporary file (never whole in memory), then streamed."""
    with tempfile.TemporaryDirectory(prefix="latentlab-export-") as tmp:
        path = write_history_parquet(sessions, query, Path(tmp) / "history.parquet")
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                yield data


def sample_activation(settings: Settings, session, sample: Sample, layer: str) -> np.ndarray:
    """One sample's activation for ``layer`` as its dataset's shape [C, H, W] (float32)."""
    from common.datasets import read_activations

    ds = session.get(Dataset, sample.dataset_id)
    if layer not in ds.layer_shapes:
        raise NotFound(
            f"Dataset '{ds.name}' has no layer '{layer}'; use one of {', '.join(sorted(ds.layer_shapes))}.",
            field="layer",
        )
    try:
        flat = read_activations(settings, [(sample.act_shard, sample.act_row)], [layer])
    except (OSError, ValueError, IndexError):
        raise NotFound(f"The activations of sample {sample.id} are not available.") from None
    return flat[0].reshape(ds.layer_shapes[layer])  # [C, H, W]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def export_dataset_activations(
    settings: Settings,
    sessions,
    dataset: Dataset,
    out_dir: Path,
    layers: list[str] | None = None,
    batch: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """``<out_dir>/<layer>.npy`` [n, C, H, W] for each layer and ``sample_ids.npy`` [n] (int64) in the same
    order (sample id order); written batch by batch into memory-mapped temporaries, renamed at the end."""
    from common.datasets import read_activations

    layers = sorted(layers or dataset.layers)
    unknown = sorted(set(layers) - set(dataset.layer_shapes))
    if unknown:
        raise NotFound(
            f"Dataset '{dataset.name}' has no layer {unknown[0]!r}; use some of "
            f"{', '.join(sorted(dataset.layer_shapes))}.",
            field="layers",
        )
    with sessions() as session:
        rows = session.execute(
            select(Sample.id, Sample.act_shard, Sample.act_row)
            .where(Sample.dataset_id == dataset.id)
            .order_by(Sample.id)
        ).all()
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    targets = {name: out_dir / f"{name}.npy" for name in layers} | {"sample_ids": out_dir / "sample_ids.npy"}
    temps = {key: p.with_name(f".{p.name}.tmp-{os.getpid()}") for key, p in targets.items()}
    try:
        arrays = {
            name: np.lib.format.open_memmap(
                temps[name], mode="w+", dtype=np.float32, shape=(n, *dataset.layer_shapes[name])
            )
            for name in layers
        }
        for a in range(0, n, batch):
            locs = [(shard, row) for _id, shard, row in rows[a : a + batch]]
            for name in layers:
                block = read_activations(settings, locs, [name])  # [m, C*H*W]
                arrays[name][a : a + len(locs)] = block.reshape(len(locs), *dataset.layer_shapes[name])
            if progress:
                progress(min(a + batch, n), n)
        for arr in arrays.values():
            arr.flush()
        del arrays
        with open(temps["sample_ids"], "wb") as fh:
            np.save(fh, np.array([r[0] for r in rows], dtype=np.int64))
        for key, tmp in temps.items():
            os.replace(tmp, targets[key])
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return targets
