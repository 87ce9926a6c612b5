"""What a job kind is (``JobKind``) and the one accessor to the kind table (``get_kind``).

The table itself is built explicitly in ``common/research/kinds.py`` (every kind the product runs, from each
research module's exported ``KINDS``); this layer never imports the research layer, it loads that table by
name the first time a kind is asked for (``KIND_TABLE``), so every process that touches jobs (web, worker,
reaper, CLI) resolves the same kinds and their hooks, whatever it imported before.

Usage::

    spec = get_kind("fit_embedding")        # raises UserError naming the known kinds
    params = parse_params(spec, {"dataset_id": 1})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from common.models import Job
from common.models.base import RowId  # noqa: F401  (re-exported: jobs.RowId)
from common.platform.errors import UserError, pydantic_message

KIND_TABLE = "common.research.kinds"  # the module whose ``KINDS`` dict is the kind table


@dataclass(frozen=True)
class JobKind:
    """What a job kind is: its queue, its parameter schema and the DB-aware checks run at submit time.

    ``prepare(session, params, owner, settings)`` runs inside the submit transaction; it raises
    ``UserError`` for bad input and may return a replacement params dict (normalised, with ids of rows
    it created). ``on_children_done(session, parent)`` finishes a parent whose chunk jobs all succeeded.
    """

    name: str
    queue: str
    params_model: type[BaseModel]
    prepare: Callable[..., dict | None] | None = None
    on_children_done: Callable[[Session, Job], dict | None] | None = None
    on_failed: Callable[[Session, Job], None] | None = None
    internal: bool = False  # spawned by other jobs only, never submitted through the API
    # the queue for these params when it depends on them (a small reprojection is a click); default ``queue``
    route: Callable[[BaseModel], str] | None = None

    def queue_for(self, params: BaseModel) -> str:
        """The queue a job of this kind with ``params`` (validated) goes to."""
        return self.route(params) if self.route is not None else self.queue


_table: dict[str, JobKind] | None = None


def kind_table() -> dict[str, JobKind]:
    """Every job kind by name (loaded from ``KIND_TABLE`` on first use; read-only for callers)."""
    global _table
    if _table is None:
        _table = importlib.import_module(KIND_TABLE).KINDS
    return _table


def get_kind(name: str) -> JobKind:
    """The kind called ``name``; raises UserError (naming the public kinds) when there is none."""
    table = kind_table()
    try:
        return table[name]
    except KeyError:
        public = sorted(k for k, v in table.items() if not v.internal)
        raise UserError(
            f"Unknown job kind '{name}'; use one of: {', '.join(public)}.", field="kind"
        ) from None


def parse_params(kind: JobKind, params: Any) -> BaseModel:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise UserError("'params' must be a JSON object.", field="params")
    try:
        return kind.params_model.model_validate(params)
    except ValidationError as exc:
        message, loc = pydantic_message(exc)
        raise UserError(
            f"Invalid params for '{kind.name}': {message}", field=f"params.{loc}" if loc else "params"
        ) from None
