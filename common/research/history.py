"""Reading the record: sample detail with lineage up and down, the generation history, lineage graphs.

Usage::

    rows = history(session, HistoryQuery(user="ada", mode="umap_inverse", limit=50))
    detail = sample_detail(session, sample)
    graph = lineage_graph(session, sample_id, depth=4)      # {"nodes": [...], "edges": [...]}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from common.models import Dataset, Generation, Lineage, Sample, User
from common.models.base import RowId, row_id
from common.platform.errors import NotFound
from common.platform.ids import refuse_odd_id


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user: str | None = Field(default=None, max_length=64, description="creator's username")
    dataset: str | None = Field(default=None, max_length=100, description="dataset name or id")
    class_label: int | None = Field(default=None, alias="class", ge=0, le=100_000)
    parent: RowId | None = Field(default=None, description="only children of this sample")
    mode: Literal["activation_mean", "umap_inverse", "weighted", "direction"] | None = None
    embedding: RowId | None = None
    effect_min: float | None = Field(
        default=None, ge=0, le=1e6, allow_inf_nan=False, description="largest relative effect at least this"
    )
    image_change_min: float | None = Field(
        default=None, ge=0, le=255, allow_inf_nan=False, description="mean |pixel - twin's| at least this"
    )
    sweep: RowId | None = Field(default=None, description="only the cells of this sweep")
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=10_000_000)

    @field_validator("since", "until")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """A time without an offset means UTC (the database stores UTC); one whose UTC time falls outside
        years 1-9999 (``0001-01-01T00:00:00+01:00``) is refused here, not by an overflow in the query."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("in UTC it falls outside years 1 to 9999; give a time inside them") from None


def generation_to_dict(gen: Generation, sample: Sample, username: str | None = None) -> dict[str, Any]:
    return {
        "sample_id": gen.sample_id,
        "generation_id": gen.id,
        "embedding_id": gen.embedding_id,
        "dataset_id": sample.dataset_id,
        "job_id": gen.job_id,
        "selected_sample_id": gen.selected_sample_id,
        "mode": gen.mode,
        "center": [gen.center_x, gen.center_y],
        "actual": [gen.actual_x, gen.actual_y],
        "distance_to_intended": gen.distance_to_intended,
        "roundtrip_error": gen.roundtrip_error,
        "layers": gen.layers,
        "steps": gen.steps,
        "mask_steps": gen.mask_steps,
        "mask_window": gen.mask_window,
        "strength": gen.strength,
        "intervention": gen.intervention,
        "readout": gen.readout,
        "effect": gen.effect,
        "image_change": gen.image_change,
        "twin": (
            {"image_url": f"/api/v1/samples/{gen.sample_id}/twin", "point": [gen.twin_x, gen.twin_y]}
            if gen.twin_image_path
            else None
        ),
        "sweep_id": gen.sweep_id,
        "sweep_cell": gen.sweep_cell,
        "noise_seed": gen.noise_seed,
        "class_mode": gen.class_mode,
        "class_label": gen.class_label,
        "label_weights": gen.label_weights,
        "checkpoint_sha256": gen.checkpoint_sha256,
        "code_version": gen.code_version,
        "diagnostics": gen.diagnostics,
        "created_by": username,
        "created_at": gen.created_at.isoformat(),
    }


def history(session: Session, q: HistoryQuery) -> list[dict[str, Any]]:
    stmt = (
        select(Generation, Sample, User.username)
        .join(Sample, Sample.id == Generation.sample_id)
        .outerjoin(User, User.id == Generation.created_by_id)
    )
    if q.user:
        stmt = stmt.where(User.username == q.user)
    if q.dataset:
        refuse_odd_id(q.dataset, "dataset")
        ds = Dataset.id == row_id(q.dataset) if row_id(q.dataset) else Dataset.name == q.dataset
        stmt = stmt.where(Sample.dataset_id.in_(select(Dataset.id).where(ds)))
    if q.class_label is not None:
        stmt = stmt.where(Generation.class_label == q.class_label)
    if q.parent:
        stmt = stmt.where(
            Generation.sample_id.in_(select(Lineage.child_id).where(Lineage.parent_id == q.parent))
        )
    if q.mode:
        stmt = stmt.where(Generation.mode == q.mode)
    if q.embedding:
        stmt = stmt.where(Generation.embedding_id == q.embedding)
    if q.effect_min is not None:
        stmt = stmt.where(Generation.effect >= q.effect_min)
    if q.image_change_min is not None:
        stmt = stmt.where(Generation.image_change >= q.image_change_min)
    if q.sweep:
        stmt = stmt.where(Generation.sweep_id == q.sweep)
    if q.since:
        stmt = stmt.where(Generation.created_at >= q.since)
    if q.until:
        stmt = stmt.where(Generation.created_at <= q.until)
    stmt = stmt.order_by(Generation.id.desc()).limit(q.limit).offset(q.offset)
    return [generation_to_dict(g, s, u) for g, s, u in session.execute(stmt)]


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    return {
        "id": sample.id,
        "dataset_id": sample.dataset_id,
        "index": sample.index,
        "class_label": sample.class_label,
        "label_weights": sample.label_weights,
        "noise_seed": sample.noise_seed,
        "origin": sample.origin,
        "job_id": sample.job_id,
        "variation": sample.variation,
        "image_url": f"/api/v1/samples/{sample.id}/image",
        "created_by_id": sample.created_by_id,
        "created_at": sample.created_at.isoformat(),
    }


def get_sample(session: Session, sample_id: int) -> Sample:
    sample = session.get(Sample, sample_id)
    if sample is None:
        raise NotFound(f"No sample {sample_id}.", field="sample")
    return sample


def twin_image_path(session: Session, sample_id: int) -> str:
    """The stored path of a generated sample's natural twin image; NotFound when it has none."""
    get_sample(session, sample_id)
    path = session.scalar(select(Generation.twin_image_path).where(Generation.sample_id == sample_id))
    if not path:
        raise NotFound(
            f"Sample {sample_id} has no natural twin (it was not generated, or with compare_natural false).",
            field="sample",
        )
    return path


def sample_detail(session: Session, sample: Sample) -> dict[str, Any]:
    """The sample, its recipe (when generated), its parents and its children."""
    out = sample_to_dict(sample)
    gen = session.scalar(select(Generation).where(Generation.sample_id == sample.id))
    out["generation"] = generation_to_dict(gen, sample) if gen else None
    out["parents"] = [
        {"sample_id": pid, "role": role, "weight": weight}
        for pid, role, weight in session.execute(
            select(Lineage.parent_id, Lineage.role, Lineage.weight)
            .where(Lineage.child_id == sample.id)
            .order_by(Lineage.role.desc(), Lineage.parent_id)
        )
    ]
    out["children"] = [
        {"sample_id": cid, "role": role, "weight": weight}
        for cid, role, weight in session.execute(
            select(Lineage.child_id, Lineage.role, Lineage.weight)
            .where(Lineage.parent_id == sample.id)
            .order_by(Lineage.child_id)
        )
    ]
    return out


def lineage_graph(session: Session, sample_id: int, depth: int = 6, max_nodes: int = 500) -> dict[str, Any]:
    """Ancestors and descendants of a sample as a DAG: nodes with their generation level relative to it
    (ancestors negative) and parent → child edges."""
    get_sample(session, sample_id)
    levels = {sample_id: 0}
    edges: set[tuple[int, int, str, float]] = set()
    for direction in ("up", "down"):
        frontier = [sample_id]
        for step in range(1, depth + 1):
            if not frontier or len(levels) >= max_nodes:
                break
            if direction == "up":
                rows = session.execute(
                    select(Lineage.parent_id, Lineage.child_id, Lineage.role, Lineage.weight).where(
                        Lineage.child_id.in_(frontier)
                    )
                ).all()
                nxt = [r[0] for r in rows]
            else:
                rows = session.execute(
                    select(Lineage.parent_id, Lineage.child_id, Lineage.role, Lineage.weight).where(
                        Lineage.parent_id.in_(frontier)
                    )
                ).all()
                nxt = [r[1] for r in rows]
            edges.update((r[0], r[1], r[2], r[3]) for r in rows)
            frontier = []
            for sid in nxt:
                if sid not in levels and len(levels) < max_nodes:
                    levels[sid] = -step if direction == "up" else step
                    frontier.append(sid)
    s = aliased(Sample)
    info = {row.id: row for row in session.scalars(select(s).where(s.id.in_(list(levels))))}
    nodes = [
        {
            "sample_id": sid,
            "level": lvl,
            "origin": info[sid].origin,
            "class_label": info[sid].class_label,
            "image_url": f"/api/v1/samples/{sid}/image",
        }
        for sid, lvl in sorted(levels.items(), key=lambda kv: (kv[1], kv[0]))
        if sid in info
    ]
    kept = set(levels)
    return {
        "root": sample_id,
        "nodes": nodes,
        "edges": [
            {"parent": p, "child": c, "role": r, "weight": w}
            for p, c, r, w in sorted(edges)
            if p in kept and c in kept
        ],
        "truncated": len(levels) >= max_nodes,
    }
