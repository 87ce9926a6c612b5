"""Tables and activations out of the lab: the generation history, a dataset's samples and a map's points
as CSV or Parquet written page by page (bounded memory however long the table), one sample's activations
as ``.npy`` bytes, and a dataset's activations as one ``.npy`` per layer with the sample ids beside them.

Usage::

    for piece in table_csv(history_table(sessions, query)): ...     # str pieces, header first
    write_table_parquet(samples_table(sessions, dataset_id), path)  # one row group per page
    lineage_table(sessions, sample_id, depth=6)                      # the lineage graph's edges
    npy = npy_bytes(sample_activation(settings, session, sample, "midblock"))
    export_dataset_activations(settings, sessions, dataset, out_dir, layers=None)
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from common.models import Dataset, EmbeddingPoint, Sample
from common.platform.config import Settings
from common.platform.errors import NotFound
from common.research.history import HistoryQuery, history, lineage_graph, sample_to_dict

PAGE = 1000
INT, FLOAT, TEXT, BOOL, TIME = "int", "float", "text", "bool", "time"


@dataclass
class Table:
    """A table to export: typed columns and the pages of rows that fill them (each row a dict)."""

    name: str
    columns: dict[str, str]  # name -> INT | FLOAT | TEXT | BOOL | TIME
    pages: Iterable[list[dict[str, Any]]]


HISTORY_COLUMNS = {
    "sample_id": INT, "generation_id": INT, "embedding_id": INT, "dataset_id": INT, "job_id": INT,
    "selected_sample_id": INT, "mode": TEXT, "center_x": FLOAT, "center_y": FLOAT, "actual_x": FLOAT,
    "actual_y": FLOAT, "distance_to_intended": FLOAT, "roundtrip_error": FLOAT, "layers": TEXT,
    "steps": INT, "mask_steps": INT, "noise_seed": INT, "class_mode": TEXT, "class_label": INT,
    "label_weights": TEXT, "checkpoint_sha256": TEXT, "code_version": TEXT, "diagnostics": TEXT,
    "created_by": TEXT, "created_at": TIME,
}  # fmt: skip
SAMPLE_COLUMNS = {
    "id": INT, "dataset_id": INT, "index": INT, "class_label": INT, "label_weights": TEXT,
    "noise_seed": INT, "origin": TEXT, "job_id": INT, "variation": INT, "image_url": TEXT,
    "created_by_id": INT, "created_at": TIME,
}  # fmt: skip
POINT_COLUMNS = {
    "sample_id": INT,
    "x": FLOAT,
    "y": FLOAT,
    "class_label": INT,
    "origin": TEXT,
    "projected": BOOL,
}
LINEAGE_COLUMNS = {
    "child_id": INT, "parent_id": INT, "role": TEXT, "weight": FLOAT, "child_level": INT, "parent_level": INT,
}  # fmt: skip
JSON_FIELDS = ("layers", "label_weights", "diagnostics")


def _json_text(row: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_FIELDS:
        if key in row:
            row[key] = None if row[key] is None else json.dumps(row[key], sort_keys=True)
    return row


def flat_history_row(row: dict[str, Any]) -> dict[str, Any]:
    """A history row with ``center``/``actual`` split into x and y and nested values as JSON text."""
    out = dict(row)
    out["center_x"], out["center_y"] = out.pop("center")
    out["actual_x"], out["actual_y"] = out.pop("actual")
    return {k: v for k, v in _json_text(out).items() if k in HISTORY_COLUMNS}


def history_table(sessions, query: HistoryQuery) -> Table:
    """Every history row matching ``query`` (its limit and offset are ignored), newest first."""

    def pages():
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

    return Table("history", HISTORY_COLUMNS, pages())


def samples_table(
    sessions, dataset_id: int, class_label: int | None = None, origin: str | None = None
) -> Table:
    """A dataset's samples in id order (``class_label`` -1: no single class), as ``sample_to_dict`` rows."""
    where = [Sample.dataset_id == dataset_id]
    if class_label is not None:
        where.append(Sample.class_label.is_(None) if class_label == -1 else Sample.class_label == class_label)
    if origin:
        where.append(Sample.origin == origin)

    def pages():
        after = 0
        while True:
            with sessions() as session:
                rows = session.scalars(
                    select(Sample).where(*where, Sample.id > after).order_by(Sample.id).limit(PAGE)
                ).all()
                page = [_json_text(sample_to_dict(smp)) for smp in rows]
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1]["id"]

    return Table("samples", SAMPLE_COLUMNS, pages())


def points_table(sessions, embedding_id: int) -> Table:
    """A map's points in sample id order: where each sample lies, its class and origin."""

    def pages():
        after = 0
        while True:
            with sessions() as session:
                rows = session.execute(
                    select(EmbeddingPoint.sample_id, EmbeddingPoint.x, EmbeddingPoint.y, Sample.class_label,
                           Sample.origin, EmbeddingPoint.projected)
                    .join(Sample, Sample.id == EmbeddingPoint.sample_id)
                    .where(EmbeddingPoint.embedding_id == embedding_id, EmbeddingPoint.sample_id > after)
                    .order_by(EmbeddingPoint.sample_id)
                    .limit(PAGE)
                ).all()  # fmt: skip
            if rows:
                yield [dict(zip(POINT_COLUMNS, r, strict=True)) for r in rows]
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    return Table("points", POINT_COLUMNS, pages())


def lineage_table(sessions, sample_id: int, depth: int = 6) -> Table:
    """The edges of ``lineage_graph`` (same depth and node bound), one row per parent → child edge, with
    each end's generation level relative to the sample (ancestors negative). Raises NotFound first."""
    with sessions() as session:
        graph = lineage_graph(session, sample_id, depth=depth)
    levels = {node["sample_id"]: node["level"] for node in graph["nodes"]}
    rows = [
        {"child_id": e["child"], "parent_id": e["parent"], "role": e["role"], "weight": e["weight"],
         "child_level": levels.get(e["child"]), "parent_level": levels.get(e["parent"])}
        for e in graph["edges"]
    ]  # fmt: skip
    return Table(f"lineage-{sample_id}", LINEAGE_COLUMNS, [rows] if rows else [])


def table_csv(table: Table) -> Iterator[str]:
    """The table as CSV text pieces, header first, one piece per page."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table.columns), lineterminator="\n")
    writer.writeheader()
    for page in table.pages:
        writer.writerows(page)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.getvalue():
        yield buf.getvalue()


def arrow_schema(columns: dict[str, str]):
    import pyarrow as pa

    types = {INT: pa.int64(), FLOAT: pa.float64(), TEXT: pa.string(), BOOL: pa.bool_(),
             TIME: pa.timestamp("us", tz="UTC")}  # fmt: skip
    return pa.schema([(name, types[kind]) for name, kind in columns.items()])


def write_table_parquet(table: Table, path: Path) -> Path:
    """Write the table to ``path`` (via a temporary name beside it), one row group per page."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(table.columns)
    times = [name for name, kind in table.columns.items() if kind == TIME]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for page in table.pages:
                for row in page:
                    for name in times:
                        row[name] = datetime.fromisoformat(row[name])
                writer.write_table(pa.Table.from_pylist(page, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def table_parquet_stream(table: Table, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The Parquet file's bytes, built in a temporary file (never whole in memory), then streamed."""
    with tempfile.TemporaryDirectory(prefix="latentlab-export-") as tmp:
        path = write_table_parquet(table, Path(tmp) / f"{table.name}.parquet")
        with open(path, "rb") as fh:
            while data := fh.read(chunk):
                yield data


def sample_activation(settings: Settings, session, sample: Sample, layer: str) -> np.ndarray:
    """One sample's activation for ``layer`` as its dataset's shape [C, H, W] (float32)."""
    from common.research.datasets import read_activations

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
    from common.research.datasets import read_activations

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
