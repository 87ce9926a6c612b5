"""Sweeps: a grid of generate-from-neighbours settings as one job (``common/research/sweeps.py``), the
cells with their parameters, samples and effect numbers, and a labelled contact sheet."""

from __future__ import annotations

import io

from flask import Blueprint, send_file
from pydantic import BaseModel, ConfigDict, Field

from common.research.sweeps import Axis, SweepParams, contact_sheet, sweep_detail
from web.api import api_route
from web.auth import get_db, get_settings
from web.blueprints.jobs import JobOut
from web.research import bound_ids, submit_kind

bp = Blueprint("sweeps", __name__, url_prefix="/api/v1")
bp.url_value_preprocessor(bound_ids)


class SheetQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: Axis | None = Field(default=None, description="the axis down the sheet (default: the grid's first)")
    cols: Axis | None = Field(default=None, description="the axis across it (default: the next one)")


@api_route(
    bp,
    "/sweeps",
    methods=["POST"],
    body=SweepParams,
    response=JobOut,
    status=202,
    summary="Run a grid of generate-from-neighbours settings (≤ 256 cells) as one sweep job",
)
def create_sweep(body: SweepParams):
    return submit_kind("sweep", body)


@api_route(
    bp,
    "/sweeps/<int:sweep_id>",
    methods=["GET"],
    summary="A sweep: its grid and cells with their parameters, sample ids and effect numbers",
)
def get_sweep(sweep_id: int):
    return sweep_detail(get_db(), sweep_id)


@api_route(
    bp,
    "/sweeps/<int:sweep_id>/sheet.png",
    methods=["GET"],
    query=SheetQuery,
    summary="A sweep's labelled contact sheet (PNG): rows × columns chosen from the grid's axes",
)
def get_sheet(sweep_id: int, query: SheetQuery):
    data = contact_sheet(get_settings(), get_db(), sweep_id, rows=query.rows, cols=query.cols)
    response = send_file(io.BytesIO(data), mimetype="image/png")
    response.headers["Cache-Control"] = "private, no-cache"
    return response
