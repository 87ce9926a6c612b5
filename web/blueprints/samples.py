"""Samples and what was made from them: generate from neighbours (a ``generate_from_neighbors`` job), a
sample's record (recipe, parents, children, places on every map), its image, its lineage graph, and the
generation history with filters.

Images: the path comes from the database, never from the request; it is still resolved inside the data
root (``common.platform.storage.resolve_inside``: symlinks followed before the containment check) and opened
with ``O_NOFOLLOW``, so a tampered row or a planted symlink answers 404 instead of serving another file.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from typing import Any, Literal

from flask import Blueprint, send_file
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.models.base import ID_SPELLING, MAX_ROW_ID, is_id_text, looks_numeric
from common.platform.errors import NotFound
from common.platform.storage import UnsafePath, resolve_inside
from common.research import reads as research_reads
from common.research.bundles import build_bundle
from common.research.exports import history_table, lineage_table
from common.research.generations import GenerateFromNeighborsParams
from common.research.history import (
    HistoryQuery,
    get_sample,
    history,
    lineage_graph,
    sample_detail,
    twin_image_path,
)
from web.api import api_route
from web.auth import get_db, get_sessions, get_settings
from web.blueprints.jobs import JobOut
from web.research import bound_ids, download, submit_kind

log = logging.getLogger("latentlab.web")

bp = Blueprint("samples", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)

FORMAT = Field(default="json", description="json (a page), or csv or parquet (every row, as a file)")
IMAGE_CACHE_CONTROL = "private, max-age=86400, immutable"
MAX_IMAGE_BYTES = 32 * 1024 * 1024


class LineageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    depth: int = Field(default=6, ge=1, le=20, description="generations to follow up and down")
    format: Literal["json", "csv", "parquet"] = FORMAT


class HistoryParams(HistoryQuery):
    limit: int = Field(default=100, ge=1, le=500)
    format: Literal["json", "csv", "parquet"] = FORMAT

    @field_validator("dataset")
    @classmethod
    def _id_in_range(cls, value: str | None) -> str | None:
        if value is not None and looks_numeric(value):
            if not is_id_text(value):
                raise ValueError(ID_SPELLING)
            if len(value) > 19 or int(value) > MAX_ROW_ID:
                raise ValueError("no dataset has this id")
        return value


class HistoryPage(BaseModel):
    generations: list[dict[str, Any]]
    next_offset: int | None = Field(description="pass as ?offset= for the next page; null on the last")


@api_route(
    bp,
    "/generations",
    methods=["POST"],
    body=GenerateFromNeighborsParams,
    response=JobOut,
    status=202,
    summary="Generate new images from a sample's neighbours (a generate_from_neighbors job)",
)
def create_generation(body: GenerateFromNeighborsParams):
    return submit_kind("generate_from_neighbors", body)


@api_route(
    bp,
    "/samples/<int:sample_id>",
    methods=["GET"],
    summary="A sample: its recipe, parents, children and its point on every map of its dataset",
)
def get_sample_detail(sample_id: int):
    db = get_db()
    sample = get_sample(db, sample_id)
    out = sample_detail(db, sample)
    out["points"] = research_reads.sample_points(db, sample.id)
    return out


@api_route(bp, "/samples/<int:sample_id>/image", methods=["GET"], summary="A sample's image (PNG)")
def get_image(sample_id: int):
    sample = get_sample(get_db(), sample_id)
    return _png_response(sample.id, sample.image_path, "sample")


@api_route(
    bp,
    "/samples/<int:sample_id>/twin",
    methods=["GET"],
    summary="A generated sample's natural twin: the same seed without the intervention (PNG)",
)
def get_twin(sample_id: int):
    return _png_response(sample_id, twin_image_path(get_db(), sample_id), "twin")


@api_route(
    bp,
    "/samples/<int:sample_id>/bundle",
    methods=["GET"],
    summary="A generated sample's reproducibility bundle (zip): recipe, model card, neighbour hashes, "
    "target tensors, versions, the image and a replay command, with a manifest of file hashes",
)
def get_bundle(sample_id: int):
    data = build_bundle(get_settings(), get_db(), sample_id)
    response = send_file(
        io.BytesIO(data),
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"sample-{sample_id}.zip",
    )
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def _png_response(sample_id: int, stored: str, tag: str):
    data, mtime = _read_image(sample_id, stored)
    response = send_file(
        io.BytesIO(data),
        mimetype="image/png",
        etag=f"{tag}-{sample_id}-{len(data)}-{int(mtime)}",
        last_modified=mtime,
        conditional=True,
    )
    response.headers["Cache-Control"] = IMAGE_CACHE_CONTROL
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _read_image(sample_id: int, stored: str) -> tuple[bytes, float]:
    missing = NotFound(f"The image of sample {sample_id} is not available.")
    try:
        path = resolve_inside(get_settings().data_root, stored)
    except UnsafePath:
        log.warning("sample %s: refusing image path %r outside the data root", sample_id, stored)
        raise missing from None
    # O_NONBLOCK: a FIFO planted under that name must not hang this thread waiting for a writer
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        raise missing from None
    # checked on the descriptor before wrapping it: fdopen() of a directory raises IsADirectoryError
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
        os.close(fd)
        raise missing
    with os.fdopen(fd, "rb") as fh:
        return fh.read(), info.st_mtime


@api_route(
    bp,
    "/samples/<int:sample_id>/lineage",
    methods=["GET"],
    query=LineageQuery,
    summary="A sample's ancestors and descendants as a graph (nodes by level, parent → child edges)",
)
def get_lineage(sample_id: int, query: LineageQuery):
    if query.format != "json":
        return download(lineage_table(get_sessions(), sample_id, depth=query.depth), query.format)
    return lineage_graph(get_db(), sample_id, depth=query.depth)


@api_route(
    bp,
    "/history",
    methods=["GET"],
    query=HistoryParams,
    response=HistoryPage,
    summary="Generations, newest first, filtered by creator, dataset, class, parent, mode, map and time",
)
def get_history(query: HistoryParams):
    if query.format != "json":
        return download(history_table(get_sessions(), query), query.format)
    rows = history(get_db(), query)
    next_offset = query.offset + query.limit if len(rows) == query.limit else None
    return {"generations": rows, "next_offset": next_offset}
