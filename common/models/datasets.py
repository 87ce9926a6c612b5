"""Datasets of generated images with captured activations, and their samples."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from common.models.base import Base, utcnow
from common.models.registry import GeneratorModel

DATASET_STATUSES = ("generating", "ready", "failed")
SAMPLE_ORIGINS = ("dataset", "generated")


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (CheckConstraint("status IN ('generating', 'ready', 'failed')", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="RESTRICT"), index=True)
    layers: Mapped[list[Any]]  # friendly names, sorted
    layer_shapes: Mapped[dict[str, Any]]  # name -> [C, H, W]
    layer_modules: Mapped[dict[str, Any]]  # name -> module path, e.g. "model.enc.8x8_block2"
    seed: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(default=1)
    dtype: Mapped[str] = mapped_column(String(16), default="float32")
    classes: Mapped[list[Any]]  # class indices drawn from, in order
    target_size: Mapped[int]
    chunk_size: Mapped[int] = mapped_column(default=256)  # samples per chunk (and per shard file)
    # samples per model call; micro-batch m covers indices [m·b, (m+1)·b), chunk_size is a multiple of it
    micro_batch: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    status: Mapped[str] = mapped_column(String(16), default="generating")
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # text conditioning of a diffusers model's dataset (prompts, negative_prompt, guidance_scale, height,
    # width); NULL for an EDM model's dataset
    conditioning: Mapped[dict[str, Any] | None]

    model: Mapped[GeneratorModel] = relationship()

    @property
    def label_names(self) -> list[Any]:
        """What a class index names here: the prompts (text conditioning), else the model's labels."""
        prompts = (self.conditioning or {}).get("prompts")
        return list(prompts) if prompts else list(self.model.label_names)


class Sample(Base):
    """One image with its activations; from the dataset's seed stream or generated from neighbours."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "index"),
        # a generated sample is keyed by the job and variation that made it (redelivery is a no-op)
        UniqueConstraint("job_id", "variation"),
        CheckConstraint("origin IN ('dataset', 'generated')", name="origin"),
        CheckConstraint("(origin = 'dataset') = (\"index\" IS NOT NULL)", name="index_iff_dataset"),
        Index("ix_samples_dataset_class", "dataset_id", "class_label"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    index: Mapped[int | None]  # position in the dataset's seed stream; NULL for generated samples
    class_label: Mapped[int | None]  # NULL when the conditioning was not a single class
    label_weights: Mapped[dict[str, Any] | None]  # class -> weight for blended conditioning
    noise_seed: Mapped[int] = mapped_column(BigInteger)
    image_path: Mapped[str] = mapped_column(String(1024))
    # activations live in <act_shard>/<layer>.npy at row act_row, one file per layer
    act_shard: Mapped[str] = mapped_column(String(1024))
    act_row: Mapped[int]
    origin: Mapped[str] = mapped_column(String(16), default="dataset")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    variation: Mapped[int | None]
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    dataset: Mapped[Dataset] = relationship()
