"""A seeded map: lab data written straight into the real database (no worker, no model): a dataset with
samples and PNG files, a fitted-looking map with points, and generations with lineage. For tests of the read
side (the web API) that do not need real activations.

Usage::

    lab = seed_map(sessions, settings, owner_id=user.id, n=30)
    lab.sample_ids, lab.embedding_id, lab.generated_ids
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from common.ml.activations import layer_map
from common.ml.presets import get_preset
from common.models import Dataset, Embedding, EmbeddingPoint, Generation, GeneratorModel, Lineage, Sample
from common.platform.storage import atomic_write_bytes, png_bytes

SHA = "0" * 64


@dataclass
class SeededMap:
    model_id: int
    dataset_id: int
    embedding_id: int
    sample_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, size=(8, 8), dtype=np.uint8))


def seed_map(
    sessions,
    settings,
    *,
    owner_id: int,
    n: int = 30,
    classes: int = 3,
    name: str = "fake",
    images: bool = True,
) -> SeededMap:
    """A ready dataset of ``n`` samples (classes cycling), a ready map with every sample on it at
    (i, i % 7), and PNGs under the data root."""
    config = {**get_preset("tiny16").config, "label_dim": classes}
    midblock = layer_map(config)["midblock"]
    with sessions.begin() as s:
        model = GeneratorModel(
            name=f"model-{name}",
            preset="tiny16",
            config=config,
            checkpoint_path=f"models/{name}.safetensors",
            checkpoint_sha256=SHA,
            label_names=[f"class-{c}" for c in range(classes)],
        )
        ds = Dataset(
            name=name,
            model=model,
            layers=["midblock"],
            layer_shapes={"midblock": list(midblock.shape)},
            layer_modules={"midblock": midblock.module},
            seed=0,
            classes=list(range(classes)),
            target_size=n,
            status="ready",
            checkpoint_sha256=SHA,
            code_version="test",
            owner_id=owner_id,
        )
        s.add(ds)
        s.flush()
        samples = [
            Sample(
                dataset_id=ds.id,
                index=i,
                class_label=i % classes,
                noise_seed=i,
                image_path=f"datasets/{ds.id}/images/{i:08d}.png",
                act_shard=f"datasets/{ds.id}/act/chunk-000000",
                act_row=i,
                origin="dataset",
                created_by_id=owner_id,
            )
            for i in range(n)
        ]
        s.add_all(samples)
        emb = Embedding(
            dataset_id=ds.id,
            name=f"{name} map",
            layers=["midblock"],
            params={"n_neighbors": 5},
            status="ready",
            reducer_sha256="r" * 64,
            num_points=n,
            owner_id=owner_id,
        )
        s.add(emb)
        s.flush()
        s.add_all(
            EmbeddingPoint(embedding_id=emb.id, sample_id=smp.id, x=float(i), y=float(i % 7))
            for i, smp in enumerate(samples)
        )
        lab = SeededMap(model.id, ds.id, emb.id, [smp.id for smp in samples])
    if images:
        with sessions() as s:
            for sid in lab.sample_ids:
                path = s.get(Sample, sid).image_path
                atomic_write_bytes(settings.data_root / path, _png(sid))
    return lab


def add_generation(
    sessions,
    settings,
    lab: SeededMap,
    *,
    owner_id: int,
    selected: int,
    neighbors: list[int],
    mode: str = "activation_mean",
    class_label: int | None = 0,
    created_at: datetime | None = None,
    job_id: int | None = None,
) -> int:
    """A generated sample on the lab's map with its generation row and lineage; returns its id."""
    when = created_at or datetime.now(UTC)
    with sessions.begin() as s:
        gen_count = len(lab.generated_ids)
        smp = Sample(
            dataset_id=lab.dataset_id,
            index=None,
            class_label=class_label,
            noise_seed=1000 + gen_count,
            image_path=f"datasets/{lab.dataset_id}/generated/fake-{gen_count:03d}.png",
            act_shard=f"datasets/{lab.dataset_id}/generated/fake",
            act_row=gen_count,
            origin="generated",
            job_id=job_id,
            variation=None if job_id is None else gen_count,
            created_by_id=owner_id,
            created_at=when,
        )
        s.add(smp)
        s.flush()
        cx, cy = 0.5 + gen_count, 1.5
        s.add(
            Generation(
                sample_id=smp.id,
                embedding_id=lab.embedding_id,
                selected_sample_id=selected,
                job_id=job_id,
                mode=mode,
                center_x=cx,
                center_y=cy,
                layers=["midblock"],
                steps=1,
                noise_seed=smp.noise_seed,
                class_mode="selected",
                class_label=class_label,
                actual_x=cx + 0.25,
                actual_y=cy - 0.25,
                distance_to_intended=0.35,
                checkpoint_sha256=SHA,
                code_version="test",
                created_by_id=owner_id,
                created_at=when,
            )
        )
        s.add(Lineage(child_id=smp.id, parent_id=selected, role="selected", weight=0.0))
        s.add_all(
            Lineage(child_id=smp.id, parent_id=nb, role="neighbor", weight=1.0 / len(neighbors))
            for nb in neighbors
        )
        s.add(
            EmbeddingPoint(
                embedding_id=lab.embedding_id, sample_id=smp.id, x=cx + 0.25, y=cy - 0.25, projected=True
            )
        )
        emb = s.get(Embedding, lab.embedding_id)
        emb.num_points += 1
        sid = smp.id
    atomic_write_bytes(
        settings.data_root / f"datasets/{lab.dataset_id}/generated/fake-{gen_count:03d}.png", _png(sid)
    )
    lab.generated_ids.append(sid)
    return sid


def ago(**kwargs) -> datetime:
    return datetime.now(UTC) - timedelta(**kwargs)
