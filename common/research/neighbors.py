"""Nearest neighbours of a sample on a map: in the 2-D embedding (a KD-tree, cached per map state) or in
the full activation space of the map's layers (exact, streamed over the shards).

Usage::

    hits = find_neighbors(settings, session, embedding, sample_id, k=10, space="2d")
    # [{"sample_id": 17, "distance": 0.12}, ...] nearest first, the sample itself excluded
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.models import Embedding, EmbeddingPoint, Sample
from common.platform.config import Settings
from common.platform.errors import UserError
from common.research.datasets import iter_activation_batches, read_activations

_trees: OrderedDict[tuple, tuple[np.ndarray, cKDTree]] = OrderedDict()
_lock = threading.Lock()


def _tree(session: Session, emb: Embedding) -> tuple[np.ndarray, cKDTree]:
    count = session.scalar(select(func.count()).where(EmbeddingPoint.embedding_id == emb.id))
    key = (emb.id, count)
    with _lock:
        if key in _trees:
            _trees.move_to_end(key)
            return _trees[key]
    rows = session.execute(
        select(EmbeddingPoint.sample_id, EmbeddingPoint.x, EmbeddingPoint.y).where(
            EmbeddingPoint.embedding_id == emb.id
        )
    ).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    xy = np.array([(r[1], r[2]) for r in rows], dtype=np.float64).reshape(-1, 2)
    built = (ids, cKDTree(xy))
    with _lock:
        _trees[key] = built
        while len(_trees) > 8:
            _trees.popitem(last=False)
    return built


def find_neighbors(
    settings: Settings,
    session: Session,
    emb: Embedding,
    sample_id: int,
    k: int = 10,
    space: Literal["2d", "full"] = "2d",
) -> list[dict]:
    point = session.get(EmbeddingPoint, (emb.id, sample_id))
    if point is None:
        raise UserError(f"Sample {sample_id} is not on embedding {emb.id}.", field="sample")
    if space == "2d":
        ids, tree = _tree(session, emb)
        dist, idx = tree.query([point.x, point.y], k=min(k + 1, len(ids)))
        pairs = [
            (int(ids[i]), float(d)) for d, i in zip(np.atleast_1d(dist), np.atleast_1d(idx), strict=True)
        ]
    elif space == "full":
        pairs = _full_space(settings, session, emb, sample_id, k)
    else:
        raise UserError("space must be '2d' or 'full'.", field="space")
    return [{"sample_id": sid, "distance": round(d, 6)} for sid, d in pairs if sid != sample_id][:k]


def _full_space(settings: Settings, session: Session, emb: Embedding, sample_id: int, k: int):
    rows = session.execute(
        select(Sample.id, Sample.act_shard, Sample.act_row)
        .join(EmbeddingPoint, EmbeddingPoint.sample_id == Sample.id)
        .where(EmbeddingPoint.embedding_id == emb.id)
        .order_by(Sample.id)
    ).all()
    me = session.get(Sample, sample_id)
    q = read_activations(settings, [(me.act_shard, me.act_row)], emb.layers)[0].astype(np.float32)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    d2 = np.empty(len(rows), dtype=np.float64)
    at = 0
    for xb in iter_activation_batches(settings, [(r[1], r[2]) for r in rows], emb.layers):
        d2[at : at + len(xb)] = np.square(xb - q).sum(axis=1)
        at += len(xb)
    take = np.argsort(d2)[: k + 1]
    return [(int(ids[i]), float(np.sqrt(d2[i]))) for i in take]
