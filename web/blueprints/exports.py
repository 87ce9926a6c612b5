"""Downloads for notebooks and scripts: a sample's activations as ``.npy``, and the generation history, a
dataset's samples and a map's points as CSV or Parquet, streamed page by page (the server never holds the
whole table).

Access is the pages' own: lab data (samples, activations, history) is readable by every signed-in user;
nothing here exposes jobs or tokens. Activation downloads are counted per user
(``LATENTLAB_ACTIVATION_DOWNLOADS_PER_MINUTE``, shared through Redis like the sign-in limits).
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, ConfigDict, Field

from common.research.embeddings import get_dataset, get_embedding
from common.research.exports import (
    history_table,
    lineage_table,
    npy_bytes,
    points_table,
    sample_activation,
    samples_table,
)
from common.research.history import get_sample
from web.api import api_route
from web.auth import get_db, get_sessions, get_settings, principal, services
from web.blueprints.samples import HistoryParams, LineageQuery
from web.ratelimit import DownloadLimiter
from web.research import bound_ids, download

bp = Blueprint("exports", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)


class ActivationQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: str = Field(min_length=1, max_length=100, description="a layer of the sample's dataset")


class HistoryExport(HistoryParams):
    format: Literal["csv", "parquet"] = Field(description="csv or parquet")


def _limiter() -> DownloadLimiter:
    limiter = current_app.extensions.get("latentlab.download_limiter")
    if limiter is None:
        per_minute = get_settings().activation_downloads_per_minute
        limiter = DownloadLimiter(per_minute, services().login_limiter.redis_client)
        current_app.extensions["latentlab.download_limiter"] = limiter
    return limiter


@api_route(
    bp,
    "/samples/<int:sample_id>/activations",
    methods=["GET"],
    query=ActivationQuery,
    summary="A sample's captured activations for one layer, as a NumPy .npy file [C, H, W] float32",
)
def get_activations(sample_id: int, query: ActivationQuery):
    _limiter().hit(principal().id)
    db = get_db()
    sample = get_sample(db, sample_id)
    data = npy_bytes(sample_activation(get_settings(), db, sample, query.layer))
    response = Response(data, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = f'attachment; filename="sample-{sample.id}-{query.layer}.npy"'
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


class TableExport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["csv", "parquet"] = Field(description="csv or parquet")


class SampleExport(TableExport):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_label: int | None = Field(default=None, alias="class", ge=-1, le=100_000, description="-1: none")
    origin: Literal["dataset", "generated"] | None = None


class LineageExport(LineageQuery):
    format: Literal["csv", "parquet"] = Field(description="csv or parquet")


@api_route(
    bp,
    "/exports/history",
    methods=["GET"],
    query=HistoryExport,
    summary="The generation history (filters as GET /api/v1/history, every row) as CSV or Parquet",
)
def export_history(query: HistoryExport):
    return download(history_table(get_sessions(), query), query.format)


@api_route(
    bp,
    "/exports/datasets/<int:dataset_id>/samples",
    methods=["GET"],
    query=SampleExport,
    summary="Every sample of a dataset (filters as GET /api/v1/datasets/<id>/samples) as CSV or Parquet",
)
def export_samples(dataset_id: int, query: SampleExport):
    ds = get_dataset(get_db(), dataset_id)
    return download(samples_table(get_sessions(), ds.id, query.class_label, query.origin), query.format)


@api_route(
    bp,
    "/exports/embeddings/<int:embedding_id>/points",
    methods=["GET"],
    query=TableExport,
    summary="Every point of a map (sample_id, x, y, class_label, origin, projected) as CSV or Parquet",
)
def export_points(embedding_id: int, query: TableExport):
    emb = get_embedding(get_db(), embedding_id)
    return download(points_table(get_sessions(), emb.id), query.format)


@api_route(
    bp,
    "/exports/samples/<int:sample_id>/lineage",
    methods=["GET"],
    query=LineageExport,
    summary="A sample's lineage edges (child_id, parent_id, role, weight, levels) as CSV or Parquet",
)
def export_lineage(sample_id: int, query: LineageExport):
    return download(lineage_table(get_sessions(), sample_id, depth=query.depth), query.format)
