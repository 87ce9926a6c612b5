"""Generators and datasets (``/api/v1/models``, ``/api/v1/datasets``): list, inspect, browse samples, and
generate (or grow) a dataset as a ``generate_dataset`` job. Lab data: every signed-in user reads it."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from common.ml.activations import layer_table
from common.models import GeneratorModel
from common.research import reads as research_reads
from common.research.datasets import GenerateDatasetParams, dataset_to_dict, get_dataset
from common.research.exports import samples_table
from common.research.history import sample_to_dict
from common.research.registry import model_to_dict
from web.api import PageQuery, api_route
from web.auth import get_db, get_sessions
from web.blueprints.jobs import JobOut
from web.research import bound_ids, download, submit_kind

bp = Blueprint("datasets", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)


class ModelList(BaseModel):
    models: list[dict[str, Any]]


class DatasetList(BaseModel):
    datasets: list[dict[str, Any]]
    next_offset: int | None = Field(description="pass as ?offset= for the next page; null on the last")


class SampleQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_label: int | None = Field(default=None, alias="class", ge=-1, le=100_000, description="-1: none")
    origin: Literal["dataset", "generated"] | None = None
    limit: int = Field(default=100, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=10_000_000)
    format: Literal["json", "csv", "parquet"] = Field(
        default="json", description="json (a page), or csv or parquet (every sample, as a file)"
    )


class SamplePage(BaseModel):
    total: int
    samples: list[dict[str, Any]]


def _model_out(model: GeneratorModel) -> dict[str, Any]:
    out = model_to_dict(model)
    try:
        table = layer_table(model.config, model.architecture)
    except (KeyError, TypeError, ValueError):  # a config this version cannot lay out: no layer list
        table = []
    out["layers"] = [{"name": i.name, "module": i.module, "shape": list(i.shape)} for i in table]
    return out


@api_route(
    bp,
    "/models",
    methods=["GET"],
    response=ModelList,
    summary="Registered generators, each with the layers a dataset can capture",
)
def list_models():
    return {"models": [_model_out(m) for m in research_reads.list_models(get_db())]}


@api_route(
    bp, "/datasets", methods=["GET"], query=PageQuery, response=DatasetList, summary="Datasets, newest first"
)
def list_datasets(query: PageQuery):
    db = get_db()
    rows, next_offset = research_reads.dataset_page(db, limit=query.limit, offset=query.offset)
    return {"datasets": [dataset_to_dict(db, ds) for ds in rows], "next_offset": next_offset}


@api_route(
    bp,
    "/datasets",
    methods=["POST"],
    body=GenerateDatasetParams,
    response=JobOut,
    status=202,
    summary="Generate a dataset (or grow one with the same settings) as a generate_dataset job",
)
def create_dataset(body: GenerateDatasetParams):
    return submit_kind("generate_dataset", body)


@api_route(
    bp,
    "/datasets/<int:dataset_id>",
    methods=["GET"],
    summary="One dataset, with its samples per class (class_counts)",
)
def get_dataset_detail(dataset_id: int):
    db = get_db()
    ds = get_dataset(db, dataset_id)
    out = dataset_to_dict(db, ds)
    out["class_counts"] = research_reads.class_counts(db, ds.id)
    return out


@api_route(
    bp,
    "/datasets/<int:dataset_id>/samples",
    methods=["GET"],
    query=SampleQuery,
    response=SamplePage,
    summary="A page of a dataset's samples, in id order",
)
def list_samples(dataset_id: int, query: SampleQuery):
    db = get_db()
    ds = get_dataset(db, dataset_id)
    if query.format != "json":
        return download(samples_table(get_sessions(), ds.id, query.class_label, query.origin), query.format)
    total, rows = research_reads.sample_page(
        db,
        ds.id,
        class_label=query.class_label,
        origin=query.origin,
        limit=query.limit,
        offset=query.offset,
    )
    return {"total": total, "samples": [sample_to_dict(s) for s in rows]}
