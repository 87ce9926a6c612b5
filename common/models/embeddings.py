"""2-D maps fitted over a dataset's activations, and where each sample lies on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from common.models.base import Base, utcnow
from common.models.datasets import Dataset

EMBEDDING_STATUSES = ("fitting", "ready", "failed")


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (CheckConstraint("status IN ('fitting', 'ready', 'failed')", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    layers: Mapped[list[Any]]
    # layers, scaler, pca_dims, n_neighbors, min_dist, metric, seed, max_samples
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="fitting")
    backend: Mapped[str | None] = mapped_column(String(32))  # umap-learn | cuml
    reducer_path: Mapped[str | None] = mapped_column(String(1024))
    reducer_sha256: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_hash: Mapped[str | None] = mapped_column(String(64))
    fit_seconds: Mapped[float | None]
    num_points: Mapped[int] = mapped_column(default=0)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship()


class EmbeddingPoint(Base):
    __tablename__ = "embedding_points"

    embedding_id: Mapped[int] = mapped_column(
        ForeignKey("embeddings.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(
        ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    # False: part of the fit; True: placed later with transform (generated samples, dataset growth)
    projected: Mapped[bool] = mapped_column(default=False)
