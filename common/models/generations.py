"""The recipe of every generated sample and the samples it was made from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from common.models.base import Base, utcnow
from common.models.datasets import Sample

GENERATION_MODES = ("activation_mean", "umap_inverse", "weighted", "direction")
LINEAGE_ROLES = ("selected", "neighbor", "negative")


class Generation(Base):
    """One row per generated sample: together with its lineage rows, a complete recipe."""

    __tablename__ = "generations"
    __table_args__ = (
        CheckConstraint("mode IN ('activation_mean', 'umap_inverse', 'weighted', 'direction')", name="mode"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), unique=True)
    embedding_id: Mapped[int] = mapped_column(ForeignKey("embeddings.id", ondelete="CASCADE"), index=True)
    selected_sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    mode: Mapped[str] = mapped_column(String(32))
    center_x: Mapped[float | None] = mapped_column(Float)  # the intended 2-D point
    center_y: Mapped[float | None] = mapped_column(Float)
    layers: Mapped[list[Any]]  # layers masked
    steps: Mapped[int]
    mask_steps: Mapped[int | None]
    noise_seed: Mapped[int] = mapped_column(BigInteger)
    class_mode: Mapped[str] = mapped_column(String(32))  # selected | neighbor_majority | blend | ...
    class_label: Mapped[int | None]
    label_weights: Mapped[dict[str, Any] | None]
    actual_x: Mapped[float | None] = mapped_column(Float)  # where the image really landed
    actual_y: Mapped[float | None] = mapped_column(Float)
    roundtrip_error: Mapped[float | None] = mapped_column(Float)  # |umap(inverse(c)) - c|
    distance_to_intended: Mapped[float | None] = mapped_column(Float)
    diagnostics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the intervention (null on rows made before interventions: a full-strength clamp of mask_steps)
    mask_window: Mapped[list[Any] | None]  # [start, stop): the steps masked; null = every step
    strength: Mapped[float | None] = mapped_column(Float)
    intervention: Mapped[dict[str, Any] | None]  # layer_strength, alpha, normalize (mode 'direction')
    # the readout against the natural twin (the same seed without the intervention); null when not compared
    readout: Mapped[dict[str, Any] | None]  # intervention_size {layer: v}, effect {layer: v}, image_change
    effect: Mapped[float | None] = mapped_column(Float)  # the largest relative effect over captured layers
    image_change: Mapped[float | None] = mapped_column(Float)  # mean |intervened - twin| in pixel values
    twin_image_path: Mapped[str | None] = mapped_column(String(512))
    twin_x: Mapped[float | None] = mapped_column(Float)  # where the twin landed on the map
    twin_y: Mapped[float | None] = mapped_column(Float)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    sweep_cell: Mapped[int | None]

    sample: Mapped[Sample] = relationship(foreign_keys=[sample_id])


class Sweep(Base):
    """A grid of generations run as one job: the base parameters, the grid's axes and its cells."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    embedding_id: Mapped[int] = mapped_column(ForeignKey("embeddings.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]]  # the generate parameters every cell starts from
    grid: Mapped[dict[str, Any]]  # axis -> values, in the order given
    cells: Mapped[list[Any]]  # one dict of axis -> value per cell, row-major over the grid
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lineage(Base):
    """(child, parent, role, weight): which samples a generated sample was made from."""

    __tablename__ = "lineage"
    __table_args__ = (CheckConstraint("role IN ('selected', 'neighbor', 'negative')", name="role"),)

    child_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
