"""2-D maps (``/api/v1/embeddings``): list, inspect, fit one as a ``fit_embedding`` job, load its points,
find a sample's neighbours, and list the generations drawn over it.

The points answer is the whole map as base64 typed columns (docs/API.md "Points format"). Its ETag
hashes (embedding, num_points, reducer, and the count, largest and sum of the sample ids on it): points
never move once placed (reprojection only adds), so a map changes exactly when points are added or
removed. The encoded body (and its gzip form) is cached per process by ETag, bounded by
``PointsCache.max_bytes``, so reloading a 100k-point map costs one aggregate query; after a generation
adds points, only the new rows are read (``PointsCache.columns``).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, RootModel
from sqlalchemy import func, select

from common.embeddings import FitEmbeddingParams, embedding_to_dict, get_embedding, points_columns
from common.errors import UserError
from common.models import Embedding, EmbeddingPoint, Generation, Job, Lineage
from common.models.base import RowId
from common.neighbors import find_neighbors
from web.api import PageQuery, api_route, one_page
from web.auth import get_db, get_settings
from web.blueprints.jobs import JobOut
from web.research import bound_ids, submit_kind

bp = Blueprint("embeddings", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)

POINTS_FORMAT = "points-v1"
GZIP_LEVEL = 1  # 100k points: 2.1 MB → 1.03 MB; level 5 saves 3% more at 1.3× the time
COLUMN_TYPES = {
    "id": "<i4",
    "x": "<f4",
    "y": "<f4",
    "class": "<i2",
    "origin": "u1",
    "projected": "u1",
}
DTYPE_NAMES = {"<i4": "int32", "<f4": "float32", "<i2": "int16", "u1": "uint8"}


class EmbeddingListQuery(PageQuery):
    dataset: RowId | None = Field(default=None, description="only maps of this dataset id")


class EmbeddingList(BaseModel):
    embeddings: list[dict[str, Any]]
    next_offset: int | None = Field(description="pass as ?offset= for the next page; null on the last")


class NeighborQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample: RowId = Field(description="the sample whose neighbours to find")
    k: int = Field(default=10, ge=1, le=200)
    space: Literal["2d", "full"] = Field(
        default="2d", description="2d: distance on the map; full: in the map's activation space"
    )


class Neighbor(BaseModel):
    sample_id: int
    distance: float


class NeighborList(BaseModel):
    sample: int
    k: int
    space: str
    neighbors: list[Neighbor]


class OverlayQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=500, ge=1, le=500)


class Overlay(BaseModel):
    sample_id: int
    job_id: int | None
    mode: str
    center: list[float | None]
    actual: list[float | None]
    parents: list[int]
    selected: int | None


class OverlayList(RootModel[list[Overlay]]):
    pass


# -- the points cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapStats:
    """What one aggregate query says about a map's points now."""

    count: int
    max_id: int | None
    id_sum: int


class EncodedPoints:
    """One encoded points body; its gzip form is made on first request and kept."""

    def __init__(self, body: bytes):
        self.body = body
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
            return self._gzipped

    @property
    def size(self) -> int:
        return len(self.body) + len(self._gzipped or b"")


@dataclass(frozen=True)
class KnownMap:
    """The decoded columns of a map as last read, so that a read after additions fetches only the tail."""

    reducer: str | None
    stats: MapStats
    cols: dict[str, np.ndarray]


class PointsCache:
    """Encoded bodies by ETag (least recently used out beyond ``max_bytes``) and the last columns read of
    up to ``max_maps`` maps. Points are only ever added with new sample ids (generations, reprojection
    of a grown dataset), so when a map grew and its count and id sum agree with the known columns plus
    the rows after the known largest id, only those rows are read; anything else reads the whole map."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, max_maps: int = 8):
        self.max_bytes = max_bytes
        self.max_maps = max_maps
        self._bodies: OrderedDict[str, EncodedPoints] = OrderedDict()
        self._maps: OrderedDict[int, KnownMap] = OrderedDict()
        self._lock = threading.Lock()
        self.full_reads = 0
        self.tail_reads = 0

    def body(self, etag: str) -> EncodedPoints | None:
        with self._lock:
            found = self._bodies.get(etag)
            if found is not None:
                self._bodies.move_to_end(etag)
            return found

    def put_body(self, etag: str, encoded: EncodedPoints) -> None:
        with self._lock:
            if etag in self._bodies or encoded.size > self.max_bytes:
                return
            self._bodies[etag] = encoded
            while sum(e.size for e in self._bodies.values()) > self.max_bytes:
                self._bodies.popitem(last=False)

    def columns(self, db, emb: Embedding, stats: MapStats) -> dict[str, np.ndarray]:
        with self._lock:
            known = self._maps.get(emb.id)
        cols = None
        if known is not None and known.reducer == emb.reducer_sha256 and known.stats.max_id is not None:
            if known.stats == stats:
                cols = known.cols
            elif (
                stats.max_id is not None
                and stats.max_id > known.stats.max_id
                and stats.count > known.stats.count
            ):
                tail = points_columns(db, emb, after=known.stats.max_id)
                self.tail_reads += 1
                grown = MapStats(
                    known.stats.count + len(tail["id"]),
                    int(tail["id"][-1]) if len(tail["id"]) else known.stats.max_id,
                    known.stats.id_sum + int(tail["id"].sum()),
                )
                if grown == stats:
                    cols = {name: np.concatenate([known.cols[name], tail[name]]) for name in known.cols}
        if cols is None:
            cols = points_columns(db, emb)
            self.full_reads += 1
        ids = cols["id"]
        read = MapStats(len(ids), int(ids[-1]) if len(ids) else None, int(ids.sum()))
        with self._lock:
            self._maps[emb.id] = KnownMap(emb.reducer_sha256, read, cols)
            self._maps.move_to_end(emb.id)
            while len(self._maps) > self.max_maps:
                self._maps.popitem(last=False)
        return cols


CACHE_KEY = "latentlab.points_cache"


def cache_for(app: Flask) -> PointsCache:
    """The app's points cache: one per app (so per database), never shared between apps in a process."""
    return app.extensions.setdefault(CACHE_KEY, PointsCache())


def map_stats(db, emb: Embedding) -> MapStats:
    point = EmbeddingPoint.sample_id
    count, max_id, id_sum = db.execute(
        select(func.count(), func.max(point), func.sum(point)).where(EmbeddingPoint.embedding_id == emb.id)
    ).one()
    return MapStats(int(count), None if max_id is None else int(max_id), int(id_sum or 0))


def points_etag(emb: Embedding, stats: MapStats) -> str:
    key = (
        f"{POINTS_FORMAT}:{emb.id}:{emb.num_points}:{emb.reducer_sha256}:"
        f"{stats.max_id}:{stats.count}:{stats.id_sum}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def encode_points(emb: Embedding, label_names: list, etag: str, cols: dict[str, np.ndarray]) -> bytes:
    """The points JSON body: each column little-endian, base64 (docs/API.md "Points format")."""
    n = len(cols["id"])
    if n and int(cols["id"].max()) > np.iinfo(np.int32).max:
        raise RuntimeError("sample ids no longer fit the int32 points format; bump POINTS_FORMAT")
    columns = {}
    for name, dtype in COLUMN_TYPES.items():
        data = np.ascontiguousarray(cols[name], dtype=dtype)
        encoded = base64.b64encode(data.tobytes()).decode("ascii")
        columns[name] = {"dtype": DTYPE_NAMES[dtype], "data": encoded}
    bounds = None
    if n:
        x, y = cols["x"], cols["y"]
        bounds = [float(x.min()), float(x.max()), float(y.min()), float(y.max())]
    body = {
        "embedding_id": emb.id,
        "n": n,
        "etag": etag,
        "label_names": label_names,
        "bounds": bounds,
        "columns": columns,
    }
    return json.dumps(body, separators=(",", ":")).encode()


# -- views --------------------------------------------------------------------------------------------


@api_route(
    bp,
    "/embeddings",
    methods=["GET"],
    query=EmbeddingListQuery,
    response=EmbeddingList,
    summary="2-D maps, newest first",
)
def list_embeddings(query: EmbeddingListQuery):
    stmt = select(Embedding).order_by(Embedding.id.desc())
    if query.dataset is not None:
        stmt = stmt.where(Embedding.dataset_id == query.dataset)
    rows, next_offset = one_page(get_db(), stmt, query)
    return {"embeddings": [embedding_to_dict(e) for e in rows], "next_offset": next_offset}


@api_route(
    bp,
    "/embeddings",
    methods=["POST"],
    body=FitEmbeddingParams,
    response=JobOut,
    status=202,
    summary="Fit a 2-D map of a finished dataset as a fit_embedding job",
)
def create_embedding(body: FitEmbeddingParams):
    return submit_kind("fit_embedding", body)


@api_route(bp, "/embeddings/<int:embedding_id>", methods=["GET"], summary="One map, with its label names")
def get_embedding_detail(embedding_id: int):
    emb = get_embedding(get_db(), embedding_id)
    out = embedding_to_dict(emb)
    out["label_names"] = emb.dataset.model.label_names
    out["dataset_name"] = emb.dataset.name
    return out


@api_route(
    bp,
    "/embeddings/<int:embedding_id>/points",
    methods=["GET"],
    summary="Every point of a map as base64 typed columns (ETag; 304 on If-None-Match)",
    description="See docs/API.md 'Points format'. Send If-None-Match with the ETag: 304 when unchanged.",
)
def get_points(embedding_id: int):
    db = get_db()
    emb = get_embedding(db, embedding_id)
    stats = map_stats(db, emb)
    etag = points_etag(emb, stats)
    points_cache = cache_for(current_app)
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
    else:
        encoded = points_cache.body(etag)
        if encoded is None:
            cols = points_cache.columns(db, emb, stats)
            encoded = EncodedPoints(encode_points(emb, emb.dataset.model.label_names, etag, cols))
            if len(cols["id"]) == stats.count:  # else points arrived in between: serve, do not keep
                points_cache.put_body(etag, encoded)
        if request.accept_encodings["gzip"] > 0:
            response = Response(encoded.gzipped(), mimetype="application/json")
            response.headers["Content-Encoding"] = "gzip"
        else:
            response = Response(encoded.body, mimetype="application/json")
    response.set_etag(etag)
    response.headers["Vary"] = "Accept-Encoding"
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@api_route(
    bp,
    "/embeddings/<int:embedding_id>/neighbors",
    methods=["GET"],
    query=NeighborQuery,
    response=NeighborList,
    summary="A sample's nearest neighbours on the map (2d) or in its activation space (full)",
)
def get_neighbors(embedding_id: int, query: NeighborQuery):
    db = get_db()
    emb = get_embedding(db, embedding_id)
    if emb.status != "ready":
        raise UserError(f"Embedding {emb.id} is {emb.status}; wait for its fit to finish.", field="embedding")
    hits = find_neighbors(get_settings(), db, emb, query.sample, k=query.k, space=query.space)
    return {"sample": query.sample, "k": query.k, "space": query.space, "neighbors": hits}


@api_route(
    bp,
    "/embeddings/<int:embedding_id>/generations",
    methods=["GET"],
    query=OverlayQuery,
    response=OverlayList,
    summary="Generations on a map, newest first: intended centre, actual point, parents, selected sample",
)
def list_overlays(embedding_id: int, query: OverlayQuery):
    db = get_db()
    emb = get_embedding(db, embedding_id)
    gens = db.execute(
        select(
            Generation.sample_id,
            Generation.job_id,
            Generation.mode,
            Generation.center_x,
            Generation.center_y,
            Generation.actual_x,
            Generation.actual_y,
            Generation.selected_sample_id,
            Job.params,
        )
        .outerjoin(Job, Job.id == Generation.job_id)
        .where(Generation.embedding_id == emb.id)
        .order_by(Generation.id.desc())
        .limit(query.limit)
    ).all()
    parents: dict[int, list[int]] = {}
    ids = [g.sample_id for g in gens]
    for chunk in (ids[a : a + 500] for a in range(0, len(ids), 500)):
        for child, parent in db.execute(
            select(Lineage.child_id, Lineage.parent_id)
            .where(Lineage.child_id.in_(chunk), Lineage.role == "neighbor")
            .order_by(Lineage.child_id, Lineage.parent_id)
        ):
            parents.setdefault(child, []).append(parent)
    out = []
    for g in gens:
        found = parents.get(g.sample_id, [])
        # the job's params keep the order the user chose the neighbours in
        ordered = [int(s) for s in (g.params or {}).get("neighbors", [])]
        if sorted(ordered) == found:
            found = ordered
        out.append(
            {
                "sample_id": g.sample_id,
                "job_id": g.job_id,
                "mode": g.mode,
                "center": [g.center_x, g.center_y],
                "actual": [g.actual_x, g.actual_y],
                "parents": found,
                "selected": g.selected_sample_id,
            }
        )
    return out
