"""Read-only research queries shared by the API and the CLI: generators, datasets and their samples,
maps, a map's point statistics, where a sample sits on each map, and the generations drawn over a map.

Usage::

    models = list_models(session)                                   # id order
    datasets = list_datasets(session, newest_first=True)
    counts = class_counts(session, dataset.id)                      # {"3": 120, "-1": 4}
    total, samples = sample_page(session, dataset.id, class_label=3, origin=None, limit=100, offset=0)
    maps, next_offset = list_embeddings(session, dataset_id=None, limit=100)  # newest first
    stats = map_stats(session, emb.id)                              # MapStats(count, max_id, id_sum)
    places = sample_points(session, sample.id)                      # {"7": [x, y]}
    overlays = generation_overlays(session, emb.id, limit=500)      # newest first
    effects = map_effects(session, emb.id)                          # {"ids", "effect", "image_change"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import (
    Dataset,
    Embedding,
    EmbeddingPoint,
    Generation,
    GeneratorModel,
    Job,
    Lineage,
    Sample,
    User,
)
from common.platform.db import page

IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class MapStats:
    """What one aggregate query says about a map's points now."""

    count: int
    max_id: int | None
    id_sum: int


def list_models(session: Session) -> list[GeneratorModel]:
    return list(session.scalars(select(GeneratorModel).order_by(GeneratorModel.id)))


def list_datasets(session: Session, *, newest_first: bool = False) -> list[Dataset]:
    order = Dataset.id.desc() if newest_first else Dataset.id
    return list(session.scalars(select(Dataset).order_by(order)))


def dataset_page(session: Session, *, limit: int, offset: int = 0) -> tuple[list[Dataset], int | None]:
    """Datasets newest first, one page (``common.platform.db.page``)."""
    return page(session, select(Dataset).order_by(Dataset.id.desc()), limit, offset)


def class_counts(session: Session, dataset_id: int) -> dict[str, int]:
    """A dataset's own samples (not generated ones) per class label; no label counts as "-1"."""
    rows = session.execute(
        select(Sample.class_label, func.count(Sample.id))
        .where(Sample.dataset_id == dataset_id, Sample.origin == "dataset")
        .group_by(Sample.class_label)
        .order_by(Sample.class_label)
    )
    return {str(-1 if c is None else c): int(n) for c, n in rows}


def sample_page(
    session: Session,
    dataset_id: int,
    *,
    class_label: int | None = None,
    origin: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[int, list[Sample]]:
    """(total matching, one page in id order); ``class_label`` -1 means samples without a label."""
    where = [Sample.dataset_id == dataset_id]
    if class_label is not None:
        where.append(Sample.class_label.is_(None) if class_label == -1 else Sample.class_label == class_label)
    if origin:
        where.append(Sample.origin == origin)
    total = session.scalar(select(func.count(Sample.id)).where(*where))
    page = select(Sample).where(*where).order_by(Sample.id).limit(limit).offset(offset)
    return int(total), list(session.scalars(page))


def list_embeddings(
    session: Session, *, dataset_id: int | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[Embedding], int | None]:
    """Maps newest first (of one dataset, if given), one page (``common.platform.db.page``)."""
    stmt = select(Embedding).order_by(Embedding.id.desc())
    if dataset_id is not None:
        stmt = stmt.where(Embedding.dataset_id == dataset_id)
    return page(session, stmt, limit, offset)


def map_stats(session: Session, embedding_id: int) -> MapStats:
    point = EmbeddingPoint.sample_id
    count, max_id, id_sum = session.execute(
        select(func.count(), func.max(point), func.sum(point)).where(
            EmbeddingPoint.embedding_id == embedding_id
        )
    ).one()
    return MapStats(int(count), None if max_id is None else int(max_id), int(id_sum or 0))


def sample_points(session: Session, sample_id: int) -> dict[str, list[float]]:
    """Where a sample sits on every map it is on: {embedding id: [x, y]}."""
    rows = session.execute(
        select(EmbeddingPoint.embedding_id, EmbeddingPoint.x, EmbeddingPoint.y)
        .where(EmbeddingPoint.sample_id == sample_id)
        .order_by(EmbeddingPoint.embedding_id)
    )
    return {str(emb_id): [x, y] for emb_id, x, y in rows}


def generation_overlays(session: Session, embedding_id: int, *, limit: int = 500) -> list[dict[str, Any]]:
    """Generations on a map, newest first: intended centre, actual point, neighbour parents (in the
    order the user chose them), selected sample."""
    gens = session.execute(
        select(
            Generation.sample_id,
            Generation.job_id,
            Generation.mode,
            Generation.center_x,
            Generation.center_y,
            Generation.actual_x,
            Generation.actual_y,
            Generation.selected_sample_id,
            Generation.twin_x,
            Generation.twin_y,
            Job.params,
        )
        .outerjoin(Job, Job.id == Generation.job_id)
        .where(Generation.embedding_id == embedding_id)
        .order_by(Generation.id.desc())
        .limit(limit)
    ).all()
    parents: dict[int, list[int]] = {}
    ids = [g.sample_id for g in gens]
    for chunk in (ids[a : a + IN_CHUNK] for a in range(0, len(ids), IN_CHUNK)):
        for child, parent in session.execute(
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
                "twin": [g.twin_x, g.twin_y],
            }
        )
    return out


def map_effects(session: Session, embedding_id: int) -> dict[str, list[Any]]:
    """The intervention readout of every generated sample on a map that has one, as columns in sample id
    order: ``{"ids": [...], "effect": [...], "image_change": [...]}`` (``None`` where that number is
    missing). Samples without a readout (every dataset sample) are left out, so the answer stays small
    beside the points of a million-point map."""
    rows = session.execute(
        select(Generation.sample_id, Generation.effect, Generation.image_change)
        .join(EmbeddingPoint, EmbeddingPoint.sample_id == Generation.sample_id)
        .where(EmbeddingPoint.embedding_id == embedding_id)
        .where((Generation.effect.is_not(None)) | (Generation.image_change.is_not(None)))
        .order_by(Generation.sample_id)
    ).all()
    return {
        "ids": [r.sample_id for r in rows],
        "effect": [r.effect for r in rows],
        "image_change": [r.image_change for r in rows],
    }


def usernames(session: Session, user_ids: set[int]) -> dict[int, str]:
    """{user id: username} of these users (ids of deleted users are left out)."""
    if not user_ids:
        return {}
    rows = session.execute(select(User.id, User.username).where(User.id.in_(sorted(user_ids))))
    return {int(uid): name for uid, name in rows}
