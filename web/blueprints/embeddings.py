"""2-D maps (``/api/v1/embeddings``): list, inspect, fit one as a ``fit_embedding`` job, load its points
(encoded and cached by ``web.points_cache``), find a sample's neighbours, and list the generations drawn
over it, and their intervention effects as columns (for colouring the map).
"""

from __future__ import annotations

import io
from typing import Any, Literal

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, RootModel
from werkzeug.wsgi import wrap_file

from common.models.base import RowId
from common.platform.errors import UserError
from common.research import reads as research_reads
from common.research.embeddings import FitEmbeddingParams, embedding_to_dict, get_embedding
from common.research.neighbors import find_neighbors
from web.api import PageQuery, api_route
from web.auth import get_db, get_settings
from web.blueprints.jobs import JobOut
from web.points_cache import (
    BINARY_MEDIA_TYPE,
    EncodedPoints,
    cache_for,
    encode_points,
    encode_points_binary,
    owner_ids,
    points_etag,
)
from web.research import bound_ids, submit_kind

bp = Blueprint("embeddings", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)


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


class PointsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["json", "binary"] | None = Field(
        default=None,
        description="json: base64 columns (the default); binary: columns viewed in place (docs/API.md). "
        f"Without it, Accept: {BINARY_MEDIA_TYPE} asks for binary.",
    )


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


class EffectColumns(BaseModel):
    embedding_id: int
    count: int
    ids: list[int] = Field(description="generated samples on the map with a readout, in id order")
    effect: list[float | None] = Field(description="the largest relative effect over the captured layers")
    image_change: list[float | None] = Field(description="mean |intervened - twin| in pixel values")


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
    rows, next_offset = research_reads.list_embeddings(
        get_db(), dataset_id=query.dataset, limit=query.limit, offset=query.offset
    )
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
    out["label_names"] = emb.dataset.label_names
    out["dataset_name"] = emb.dataset.name
    return out


@api_route(
    bp,
    "/embeddings/<int:embedding_id>/points",
    methods=["GET"],
    query=PointsQuery,
    summary="Every point of a map as typed columns, base64 JSON or binary (ETag; 304 on If-None-Match)",
    description="See docs/API.md 'Points format'. Send If-None-Match with the ETag: 304 when unchanged.",
)
def get_points(embedding_id: int, query: PointsQuery):
    db = get_db()
    emb = get_embedding(db, embedding_id)
    # binary only when asked by name: */* (curl, most clients) keeps the JSON answer
    named = any(value == BINARY_MEDIA_TYPE and q > 0 for value, q in request.accept_mimetypes)
    binary = query.format == "binary" or (query.format is None and named)
    points_cache = cache_for(current_app)
    points_cache.prefetch(emb)  # a disk copy is read while the stats query runs
    stats = research_reads.map_stats(db, emb.id)
    etag = points_etag(emb, stats, binary=binary)
    mimetype = BINARY_MEDIA_TYPE if binary else "application/json"
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
    else:
        encoded = points_cache.body(etag)
        if encoded is None:
            cols = points_cache.columns(db, emb, stats)
            labels = emb.dataset.label_names
            if binary:
                owners = research_reads.usernames(db, owner_ids(cols))
                encoded = EncodedPoints(encode_points_binary(emb, labels, etag, cols, owners))
            else:
                encoded = EncodedPoints(encode_points(emb, labels, etag, cols))
            if len(cols["id"]) == stats.count:  # else points arrived in between: serve, do not keep
                points_cache.put_body(etag, encoded)
        # the binary columns are mostly float noise: gzip would cost more time than it saves bytes
        if not binary and request.accept_encodings["gzip"] > 0:
            response = Response(encoded.gzipped(), mimetype=mimetype)
            response.headers["Content-Encoding"] = "gzip"
        else:
            # handed to the server as a file: waitress sends it as it is, instead of first copying tens
            # of megabytes into its own spill buffer
            body = wrap_file(request.environ, io.BytesIO(encoded.body))
            response = Response(body, mimetype=mimetype, direct_passthrough=True)
            response.content_length = len(encoded.body)
    response.set_etag(etag)
    response.headers["Vary"] = "Accept, Accept-Encoding"
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
    return research_reads.generation_overlays(db, emb.id, limit=query.limit)


@api_route(
    bp,
    "/embeddings/<int:embedding_id>/effects",
    methods=["GET"],
    response=EffectColumns,
    summary="The intervention effect and image change of the map's generated samples, as columns",
    description="Only generated samples with a readout (compared with their natural twin) are listed.",
)
def get_effects(embedding_id: int):
    db = get_db()
    emb = get_embedding(db, embedding_id)
    columns = research_reads.map_effects(db, emb.id)
    return {"embedding_id": emb.id, "count": len(columns["ids"]), **columns}
