"""Registered generators: a checkpoint, its architecture config and its labels."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from common.models.base import Base, utcnow


class GeneratorModel(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    architecture: Mapped[str] = mapped_column(String(32), default="dhariwal-unet")
    # which common/ml/families module loads and samples it: "edm" or "diffusers"
    family: Mapped[str] = mapped_column(String(32), default="edm", server_default="edm")
    preset: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    # relative to the data root when inside it, else absolute (a checkpoint the user keeps elsewhere)
    checkpoint_path: Mapped[str] = mapped_column(String(1024))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    label_names: Mapped[list[Any]]
    default_steps: Mapped[int] = mapped_column(default=1)
    default_sigma_max: Mapped[float] = mapped_column(default=80.0)
    card: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images this model makes."""
        res = int(self.config["img_resolution"])
        return (
            int(self.config.get("height", res)),
            int(self.config.get("width", res)),
            int(self.config["img_channels"]),
        )
