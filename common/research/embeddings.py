"""Embeddings as jobs: ``fit_embedding`` (queue ``embed``) and ``reproject``, plus reading the map.

Usage (a worker)::

    result = run_fit_embedding(ctx)
    reducer = reducers.get(settings, session, embedding)     # verified, cached per process
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from common import jobs
from common.maps.reducer import (
    FitParams,
    Reducer,
    ReducerIntegrityError,
    default_pca_dims,
    fit_reducer,
    library_versions,
    load_reducer,
)
from common.maps.reducer import save_reducer as _save
from common.models import Dataset, Embedding, EmbeddingPoint, Generation, Job, Lineage, Sample, User
from common.models.base import RowId, row_id
from common.platform.config import Settings
from common.platform.db import fetch_tuples, insert_ignore
from common.platform.errors import Conflict, NotFound, UserError
from common.research.datasets import get_dataset, iter_activation_batches, read_activations

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$"


def embedding_dir(embedding_id: int) -> str:
    return f"embeddings/{embedding_id}"


def get_embedding(session: Session, embedding_id: int) -> Embedding:
    emb = session.get(Embedding, row_id(embedding_id) or 0)
    if emb is None:
        raise NotFound(f"No embedding {embedding_id}.", field="embedding")
    return emb


# -- fit_embedding ------------------------------------------------------------------------------------


class FitEmbeddingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=100, description="dataset name or id")
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    layers: list[str] | None = Field(default=None, max_length=64, description="default: all captured layers")
    scaler: Literal["standard", "none"] = "standard"
    pca_dims: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="PCA width before UMAP; 0: none; default: 256 from 20,000 samples, and from 2,560 "
        "samples when the layers have over 1,024 numbers, else none",
    )
    n_neighbors: int = Field(default=15, ge=2, le=200)
    min_dist: float = Field(default=0.1, ge=0.0, le=0.99)
    metric: Literal["euclidean", "cosine", "manhattan", "correlation"] = "euclidean"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_samples: int | None = Field(default=None, ge=3, le=2_000_000)
    backend: Literal["auto", "umap-learn", "cuml"] = Field(
        default="auto", description="auto: cuML on a GPU worker that has it, else umap-learn (CPU)"
    )


def _training_rows(session: Session, ds: Dataset, max_samples: int | None, seed: int) -> list[tuple]:
    rows = session.execute(
        select(Sample.id, Sample.act_shard, Sample.act_row)
        .where(Sample.dataset_id == ds.id, Sample.origin == "dataset")
        .order_by(Sample.index)
    ).all()
    if max_samples and len(rows) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_samples, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def prepare_fit_embedding(
    session: Session, params: FitEmbeddingParams, owner: User, settings: Settings
) -> dict:
    ds = get_dataset(session, params.dataset)
    if ds.status != "ready":
        raise UserError(
            f"Dataset '{ds.name}' is {ds.status}; an embedding needs a finished dataset "
            "(wait for its job, or resubmit it to finish the missing chunks).",
            field="params.dataset",
        )
    layers = sorted(set(params.layers or ds.layers))
    unknown = [name for name in layers if name not in ds.layers]
    if unknown:
        raise UserError(
            f"Layer(s) {', '.join(unknown)} were not captured in dataset '{ds.name}'; it has "
            f"{', '.join(ds.layers)}.",
            field="params.layers",
        )
    n = session.scalar(
        select(func.count(Sample.id)).where(Sample.dataset_id == ds.id, Sample.origin == "dataset")
    )
    n = min(n, params.max_samples or n)
    if n <= params.n_neighbors:
        raise UserError(
            f"{n} samples is too few for n_neighbors={params.n_neighbors}; "
            "lower n_neighbors or grow the dataset.",
            field="params.n_neighbors",
        )
    dim = sum(int(np.prod(ds.layer_shapes[name])) for name in layers)
    pca_dims = params.pca_dims if params.pca_dims is not None else default_pca_dims(n, dim)
    if pca_dims == 1:
        raise UserError("pca_dims must be 0 (no PCA) or at least 2.", field="params.pca_dims")
    pca_dims = pca_dims or None
    if pca_dims is not None and pca_dims > min(n, dim):
        raise UserError(
            f"pca_dims={pca_dims} is larger than the data allows "
            f"(at most min(samples, dims) = {min(n, dim)}).",
            field="params.pca_dims",
        )
    emb = Embedding(
        dataset_id=ds.id,
        name=params.name or f"{ds.name} · {'+'.join(layers)}",
        layers=layers,
        params={**params.model_dump(mode="json"), "layers": layers, "pca_dims": pca_dims, "samples": n},
        status="fitting",
        owner_id=owner.id,
    )
    session.add(emb)
    session.flush()
    out = params.model_dump(mode="json")
    out.update(layers=layers, pca_dims=pca_dims, embedding_id=emb.id, dataset=ds.name)
    return out


def run_fit_embedding(ctx: jobs.JobContext) -> dict[str, Any]:
    p = ctx.params
    settings = ctx.settings
    with ctx.session_factory() as session:
        emb = get_embedding(session, p["embedding_id"])
        ds = emb.dataset
        rows = _training_rows(session, ds, p.get("max_samples"), p["seed"])
        dim = sum(int(np.prod(ds.layer_shapes[name])) for name in emb.layers)
        layers = list(emb.layers)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    locations = [(r[1], r[2]) for r in rows]
    ctx.progress(0.01, f"reading {len(rows)} × {dim} activations")

    def batches():
        for xb in iter_activation_batches(settings, locations, layers):
            ctx.check()
            yield xb

    params = FitParams(
        layers,
        p["scaler"],
        p["pca_dims"],
        p["n_neighbors"],
        p["min_dist"],
        p["metric"],
        p["seed"],
        p.get("backend", "auto"),
    )
    reducer, xy = fit_reducer(
        batches,
        len(rows),
        dim,
        params,
        progress=lambda f, m: ctx.progress(f, m),
        check=ctx.check,
        landmarks=settings.map_landmarks,
    )
    ctx.progress(0.9, "saving the reducer")
    input_hash = hashlib.sha256(ids.tobytes() + repr(params).encode()).hexdigest()
    folder = settings.data_root / embedding_dir(p["embedding_id"])
    fitted = np.ones(len(ids), dtype=bool)  # rows UMAP was fitted on; the others were placed by transform
    train_ids = ids
    landmark_rows = reducer.info.pop("landmark_rows", None)
    if landmark_rows is not None:
        fitted[:] = False
        fitted[landmark_rows] = True
        train_ids = ids[landmark_rows]
    manifest_sha = _save(reducer, folder, settings.resolved_signing_key(), train_ids)
    ctx.check()
    points = [
        {
            "embedding_id": p["embedding_id"],
            "sample_id": int(i),
            "x": float(a),
            "y": float(b),
            "projected": not bool(f),
        }
        for i, (a, b), f in zip(ids, xy, fitted, strict=True)
    ]
    ctx.progress(0.95, f"saving {len(points):,} map points")  # a million take about 20 s to insert
    with ctx.session_factory.begin() as session:
        ctx.lease.fence(session)
        insert_ignore(session, EmbeddingPoint.__table__, points)
        emb = session.get(Embedding, p["embedding_id"])
        emb.status = "ready"
        emb.backend = reducer.backend
        emb.reducer_path = embedding_dir(emb.id)
        emb.reducer_sha256 = manifest_sha
        emb.versions = library_versions()
        emb.input_hash = input_hash
        emb.fit_seconds = round(reducer.info.get("fit_seconds", 0.0), 3)
        emb.num_points = len(points)
        emb.job_id = ctx.job_id
        if "landmarks" in reducer.info:  # recorded on the map: UMAP saw these rows, transform placed the rest
            info = reducer.info
            emb.params = {**emb.params, "landmarks": info["landmarks"], "placed": info["placed"]}
    return {
        "embedding_id": p["embedding_id"],
        "points": len(points),
        "fit_seconds": emb.fit_seconds,
        "backend": reducer.backend,
        **({"landmarks": reducer.info["landmarks"]} if "landmarks" in reducer.info else {}),
        **({"backend_note": reducer.info["backend_note"]} if "backend_note" in reducer.info else {}),
    }


def on_fit_failed(session: Session, job: Job) -> None:
    emb = session.get(Embedding, job.params.get("embedding_id", -1))
    if emb is not None and emb.status == "fitting":
        emb.status = "failed"


# -- loading reducers (cached per process) -------------------------------------------------------------


class ReducerRefused(Conflict):
    """A saved reducer failed its integrity check: the job fails with this sentence, nothing is loaded."""


class ReducerCache:
    """Verified reducers per process, keyed by (embedding id, manifest sha256); LRU of ``capacity``."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[tuple, Reducer] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, settings: Settings, session: Session, emb: Embedding) -> Reducer:
        if emb.status != "ready" or not emb.reducer_sha256:
            raise UserError(
                f"Embedding {emb.id} is {emb.status}; wait for its fit to finish.", field="embedding"
            )
        key = (emb.id, emb.reducer_sha256)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        from common.platform.storage import resolve_inside

        folder = resolve_inside(settings.data_root, emb.reducer_path)
        locations_of = _locations_loader(session)

        def z_loader(train_ids: np.ndarray, partial: Reducer) -> np.ndarray:
            locs = locations_of(train_ids)
            return np.concatenate(
                [partial.to_z(xb) for xb in iter_activation_batches(settings, locs, partial.layers)]
            )

        try:
            reducer = load_reducer(folder, emb.reducer_sha256, settings.resolved_signing_key(), z_loader)
        except ReducerIntegrityError as exc:
            raise ReducerRefused(
                f"Embedding {emb.id}'s saved reducer is refused and was not loaded: {exc}. Refit the "
                "embedding, or restore its files from a backup."
            ) from None
        with self._lock:
            self.loads += 1
            self._items[key] = reducer
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return reducer


def _locations_loader(session: Session):
    def locations(ids: np.ndarray) -> list[tuple[str, int]]:
        found: dict[int, tuple[str, int]] = {}
        id_list = [int(i) for i in ids]
        for a in range(0, len(id_list), 5000):
            part = id_list[a : a + 5000]
            for sid, shard, row in session.execute(
                select(Sample.id, Sample.act_shard, Sample.act_row).where(Sample.id.in_(part))
            ):
                found[sid] = (shard, row)
        missing = [i for i in id_list if i not in found]
        if missing:
            raise UserError(f"{len(missing)} training samples of this embedding no longer exist; refit it.")
        return [found[i] for i in id_list]

    return locations


# -- reproject ----------------------------------------------------------------------------------------


class ReprojectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding: RowId
    samples: list[RowId] | None = Field(
        default=None,
        max_length=100_000,
        description="default: all unplaced; up to 256 ids run on the interactive queue (a click), more on "
        "the embed queue",
    )


def prepare_reproject(session: Session, params: ReprojectParams, owner: User, settings: Settings) -> None:
    emb = get_embedding(session, params.embedding)
    if emb.status != "ready":
        raise UserError(
            f"Embedding {emb.id} is {emb.status}; wait for its fit to finish.", field="params.embedding"
        )


def unplaced_samples(session: Session, emb: Embedding) -> list[int]:
    placed = select(EmbeddingPoint.sample_id).where(EmbeddingPoint.embedding_id == emb.id)
    return list(
        session.scalars(
            select(Sample.id)
            .where(Sample.dataset_id == emb.dataset_id, Sample.id.not_in(placed))
            .order_by(Sample.id)
        )
    )


def run_reproject(ctx: jobs.JobContext, reducers: ReducerCache) -> dict[str, Any]:
    """Place samples added after the fit (generated ones, dataset growth) with ``transform``; existing
    points never move."""
    from common.maps import warmup

    warm = warmup.status()  # before any work: was this process warmed up before its first job?
    p = ctx.params
    with ctx.session_factory() as session:
        emb = get_embedding(session, p["embedding"])
        wanted = p.get("samples") or unplaced_samples(session, emb)
        rows = session.execute(
            select(Sample.id, Sample.act_shard, Sample.act_row).where(
                Sample.id.in_(wanted), Sample.dataset_id == emb.dataset_id
            )
        ).all()
        reducer = reducers.get(ctx.settings, session, emb)
        emb_id = emb.id
    placed = a = 0
    size = REPROJECT_PART_ROWS[0]
    while a < len(rows):
        ctx.check()
        part = rows[a : a + size]
        started = time.perf_counter()
        x = read_activations(ctx.settings, [(r[1], r[2]) for r in part], reducer.layers)
        xy = reducer.transform(x)
        points = [
            {"embedding_id": emb_id, "sample_id": r[0], "x": float(q[0]), "y": float(q[1]), "projected": True}
            for r, q in zip(part, xy, strict=True)
        ]
        with ctx.session_factory.begin() as session:
            ctx.lease.fence(session)
            inserted = insert_ignore(session, EmbeddingPoint.__table__, points)
            placed += inserted
            # counted as placed (as a generation's points are), not recounted over the whole map each part
            session.execute(
                update(Embedding)
                .where(Embedding.id == emb_id)
                .values(num_points=Embedding.num_points + inserted)
            )
        a += len(part)
        ctx.progress(min(1.0, a / max(1, len(rows))), f"placed {a} of {len(rows)}")
        size = next_part_rows(size, time.perf_counter() - started)
    return {"embedding_id": emb_id, "placed": placed, "requested": len(rows), "warm": warm}


REPROJECT_PART_ROWS = (32, 512)  # the first part's rows, the most one part may have
REPROJECT_PART_SECONDS = 0.25  # a reprojection checks for a cancel about this often, whatever the map's size


def next_part_rows(size: int, seconds: float) -> int:
    """Rows of the next reprojection part, so that one part takes about ``REPROJECT_PART_SECONDS``
    (transform costs ~0.1 ms a row on a small map, ~10 ms on a million-point one): the cancel check
    between parts then lands well within a second. Grows at most 2× a part."""
    lo, hi = REPROJECT_PART_ROWS
    if seconds <= 0:
        return min(hi, size * 2)
    return max(lo, min(hi, size * 2, int(size * REPROJECT_PART_SECONDS / seconds)))


# -- reading ------------------------------------------------------------------------------------------


def embedding_to_dict(emb: Embedding) -> dict[str, Any]:
    return {
        "id": emb.id,
        "name": emb.name,
        "dataset_id": emb.dataset_id,
        "layers": emb.layers,
        "params": emb.params,
        "status": emb.status,
        "backend": emb.backend,
        "reducer_sha256": emb.reducer_sha256,
        "versions": emb.versions,
        "input_hash": emb.input_hash,
        "fit_seconds": emb.fit_seconds,
        "num_points": emb.num_points,
        "owner_id": emb.owner_id,
        "job_id": emb.job_id,
        "created_at": emb.created_at.isoformat(),
    }


POINT_FIELDS = np.dtype(
    [
        ("id", "<i8"),
        ("x", "<f4"),
        ("y", "<f4"),
        ("class", "<i2"),
        ("origin", "u1"),
        ("projected", "u1"),
        ("owner", "<i4"),
        ("job", "<i4"),
        ("rt_error", "<f4"),
    ]
)


def points_columns(session: Session, emb: Embedding, after: int | None = None) -> dict[str, np.ndarray]:
    """The map as typed columns in sample id order: sample id (int64), x, y (float32), class (int16,
    -1 = none), origin (uint8: 0 dataset, 1 generated), projected (uint8), owner (int32: the user who
    made the sample, -1 none), job (int32: the job that made it, -1 none), rt_error (float32: a
    generation's round-trip error on its map, NaN none) and depth (uint16: 0 for a dataset sample, else
    one more than its deepest parent). ``after``: only the points of samples with a larger id (what was
    added to a map since it was last read)."""
    stmt = (
        select(
            EmbeddingPoint.sample_id,
            EmbeddingPoint.x,
            EmbeddingPoint.y,
            func.coalesce(Sample.class_label, -1),
            case((Sample.origin == "generated", 1), else_=0),
            case((EmbeddingPoint.projected, 1), else_=0),
            func.coalesce(Sample.created_by_id, -1),
            func.coalesce(Sample.job_id, -1),
            Generation.roundtrip_error,
        )
        .join(Sample, Sample.id == EmbeddingPoint.sample_id)
        .outerjoin(Generation, Generation.sample_id == EmbeddingPoint.sample_id)
        .where(EmbeddingPoint.embedding_id == emb.id)
        .order_by(EmbeddingPoint.sample_id)
    )
    if after is not None:
        stmt = stmt.where(EmbeddingPoint.sample_id > after)
    rows = np.array(fetch_tuples(session, stmt), dtype=POINT_FIELDS)  # [N] records, C speed
    cols = {name: np.ascontiguousarray(rows[name]) for name in POINT_FIELDS.names}
    cols["depth"] = generation_depths(session, emb.dataset_id, cols["id"], cols["origin"])
    return cols


def generation_depths(session: Session, dataset_id: int, ids: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Generation depth of each sample (uint16, [N]): 0 for a dataset sample, else 1 + its deepest
    parent's. Parents are always older than their children (smaller ids), so one pass in id order over
    the dataset's lineage edges settles every depth."""
    depths = np.zeros(len(ids), dtype=np.uint16)
    if not origin.any():
        return depths
    edges = session.execute(
        select(Lineage.child_id, Lineage.parent_id)
        .join(Sample, Sample.id == Lineage.child_id)
        .where(Sample.dataset_id == dataset_id, Sample.origin == "generated")
        .order_by(Lineage.child_id)
    ).all()
    depth: dict[int, int] = {}
    for child, parent in edges:
        depth[child] = max(depth.get(child, 1), depth.get(parent, 0) + 1)
    for i in np.flatnonzero(origin):
        depths[i] = min(depth.get(int(ids[i]), 1), np.iinfo(np.uint16).max)
    return depths


FIT_EMBEDDING_KIND = jobs.JobKind(
    "fit_embedding", "embed", FitEmbeddingParams, prepare=prepare_fit_embedding, on_failed=on_fit_failed
)
REPROJECT_INTERACTIVE_MAX = 256  # a reprojection of at most this many listed samples is a click


def reproject_queue(params: ReprojectParams) -> str:
    """``interactive`` for a few listed samples (a click: placed in well under a second, never behind a
    dataset chunk or a fit), ``embed`` for more, or for "every unplaced sample" (any number)."""
    few = params.samples is not None and len(params.samples) <= REPROJECT_INTERACTIVE_MAX
    return "interactive" if few else "embed"


REPROJECT_KIND = jobs.JobKind(
    "reproject", "embed", ReprojectParams, prepare=prepare_reproject, route=reproject_queue
)

KINDS = (
    FIT_EMBEDDING_KIND,
    REPROJECT_KIND,
)
