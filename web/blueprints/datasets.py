"""Generators and datasets (``/api/v1/models``, ``/api/v1/datasets``): list, inspect, browse samples, and
generate (or grow) a dataset as a ``generate_dataset`` job. Lab data: every signed-in user reads it."""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from common.architecture import layer_table
from common.datasets import GenerateDatasetParams, dataset_to_dict
from common.embeddings import get_dataset
from common.history import sample_to_dict
from common.models import Dataset, GeneratorModel, Sample
from common.registry import model_to_dict
from web.api import PageQuery, api_route, one_page
from web.auth import get_db
from web.blueprints.jobs import JobOut
from web.research import bound_ids, submit_kind

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
    rows = get_db().scalars(select(GeneratorModel).order_by(GeneratorModel.id))
    return {"models": [_model_out(m) for m in rows]}


@api_route(
    bp, "/datasets", methods=["GET"], query=PageQuery, response=DatasetList, summary="Datasets, newest first"
)
def list_datasets(query: PageQuery):
    db = get_db()
    rows, next_offset = one_page(db, select(Dataset).order_by(Dataset.id.desc()), query)
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
    counts = db.execute(
        select(Sample.class_label, func.count(Sample.id))
        .where(Sample.dataset_id == ds.id, Sample.origin == "dataset")
        .group_by(Sample.class_label)
        .order_by(Sample.class_label)
    )
    out["class_counts"] = {str(-1 if c is None else c): int(n) for c, n in counts}
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
    where = [Sample.dataset_id == ds.id]
    if query.class_label is not None:
        label = query.class_label
        where.append(Sample.class_label.is_(None) if label == -1 else Sample.class_label == label)
    if query.origin:
        where.append(Sample.origin == query.origin)
    total = db.scalar(select(func.count(Sample.id)).where(*where))
    page = select(Sample).where(*where).order_by(Sample.id).limit(query.limit).offset(query.offset)
    rows = db.scalars(page)
    return {"total": int(total), "samples": [sample_to_dict(s) for s in rows]}
