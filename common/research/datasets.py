"""Datasets: generate images with a registered generator and capture layer activations, as jobs.

A ``generate_dataset`` job (queue ``batch``) plans fixed chunks of ``chunk_size`` sample indices and
spawns one ``dataset_chunk`` job per chunk, so several workers share one dataset and interactive jobs
interleave between chunks. Chunk k covers indices [k·cs, min((k+1)·cs, target)). Per chunk:

* a PNG per sample: ``datasets/<id>/images/chunk-<k>/<index>.png``
* one ``.npy`` shard per layer, row r = sample k·cs + r, flattened C·H·W:
  ``datasets/<id>/act/chunk-<k>/<layer>.npy`` (memory-mappable; written whole, atomically)
* a ``samples`` row per index, unique (dataset, index): a redelivered chunk rewrites identical bytes
  and inserts nothing new.

Sample i's class and noise seed depend only on (dataset seed, i), and the generator's output for a
sample does not depend on the batch around it, so sample i is byte-identical however the work was split;
growing a dataset continues the same seed stream.

Usage (a worker)::

    result = run_chunk(ctx, model_cache)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common import jobs
from common.ml.activations import check_layers, flatten_activations
from common.models import Dataset, Job, Sample, User
from common.platform.config import Settings
from common.platform.db import insert_ignore
from common.platform.errors import Conflict, Forbidden, NotFound, QuotaExceeded, UserError
from common.platform.ids import find_by_id_or_name
from common.platform.storage import atomic_save_npy, atomic_write_bytes, png_bytes, sweep_temp_files
from common.research.conditioning import (
    TEXT_FIELDS,
    conditioned_layer_map,
    is_text_model,
    refuse_text_fields,
    text_conditioning,
)
from common.research.registry import get_model

CODE_VERSION = "latentlab-0.1"
DEFAULT_LAYERS = ["encoder_bottleneck", "midblock"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$"


# -- where things live -----------------------------------------------------------------------------


def get_dataset(session: Session, ref: str | int) -> Dataset:
    """The dataset with id or name ``ref``; raises NotFound (UserError for an id spelt oddly: "٣", "007")."""
    ds = find_by_id_or_name(session, Dataset, ref, "dataset")
    if ds is None:
        raise NotFound(f"No dataset '{ref}'.", field="dataset")
    return ds


def chunk_dir(dataset_id: int, chunk: int) -> str:
    return f"chunk-{chunk:06d}"


def image_rel(dataset_id: int, chunk: int, index: int) -> str:
    return f"datasets/{dataset_id}/images/{chunk_dir(dataset_id, chunk)}/{index:08d}.png"


def shard_rel(dataset_id: int, chunk: int) -> str:
    """The folder of a chunk's activation shards; ``<shard>/<layer>.npy`` holds one row per sample."""
    return f"datasets/{dataset_id}/act/{chunk_dir(dataset_id, chunk)}"


def noise_seed(dataset_seed: int, index: int) -> int:
    """The noise seed of sample ``index`` of a dataset: a 63-bit value from (seed, index) alone."""
    state = np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def class_for(classes: list[int], index: int) -> int:
    """Classes cycle through the dataset's list, so every prefix of the stream is balanced."""
    return int(classes[index % len(classes)])


# -- submitting ------------------------------------------------------------------------------------


class GenerateDatasetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=100, description="model name or id")
    name: str = Field(pattern=NAME_PATTERN, description="dataset name; an existing name grows that dataset")
    num_samples: int = Field(ge=1, le=1_000_000, description="total samples the dataset should have")
    classes: Literal["all"] | list[int] = Field(default="all", description="'all' or class indices")
    layers: list[str] = Field(default_factory=lambda: list(DEFAULT_LAYERS), min_length=1, max_length=64)
    seed: int = Field(default=0, ge=0, le=2**62)
    steps: int | None = Field(default=None, ge=1, le=256, description="sampler steps (default: the model's)")
    batch_size: int = Field(default=64, ge=1, le=1024)
    dtype: Literal["float16", "float32"] = Field(
        default="float32", description="storage type of the activation shards (and GPU inference precision)"
    )
    # text conditioning (diffusers models only; common/research/conditioning.py)
    prompts: list[str] | None = Field(
        default=None,
        max_length=1000,
        description="sample i uses prompt i mod len (default: the model card's)",
    )
    negative_prompt: str | None = Field(default=None, max_length=2000, description="the unconditional prompt")
    guidance_scale: float | None = Field(
        default=None, ge=0, le=50, allow_inf_nan=False, description="classifier-free guidance (> 1: on)"
    )
    height: int | None = Field(default=None, ge=8, le=4096, description="image height in pixels")
    width: int | None = Field(default=None, ge=8, le=4096, description="image width in pixels")

    @field_validator("name")
    @classmethod
    def _name_not_digits(cls, v: str) -> str:
        if v.isdigit():  # a dataset is found by id or name: "3" would be shadowed by dataset 3
            raise ValueError("a dataset name must contain a letter or a symbol, not only digits")
        return v

    @field_validator("classes")
    @classmethod
    def _classes_not_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("give 'all' or at least one class index")
        return v


def prepare_generate_dataset(
    session: Session, params: GenerateDatasetParams, owner: User, settings: Settings
) -> dict[str, Any]:
    """Validate against the database and create (or grow) the dataset row; returns the job's params."""
    model = get_model(session, params.model)
    text = {k: getattr(params, k) for k in TEXT_FIELDS}
    conditioning = None
    if is_text_model(model):
        conditioning = text_conditioning(model, **text)
        label_dim = len(conditioning["prompts"])  # a prompt index plays the role of the class
    else:
        refuse_text_fields(model, text)
        label_dim = int(model.config["label_dim"])
    classes = list(range(label_dim)) if params.classes == "all" else sorted(set(params.classes))
    bad = [c for c in classes if not 0 <= c < label_dim]
    if bad:
        raise UserError(
            f"class(es) {bad} out of range: model '{model.name}' has classes 0–{label_dim - 1}.",
            field="params.classes",
        )
    wanted = params.layers
    if "layers" not in params.model_fields_set:  # each family names its own default layers
        wanted = list(model.config.get("default_layers", DEFAULT_LAYERS))
    try:
        layers = check_layers(model.config, wanted, model.architecture)
    except KeyError as exc:
        raise UserError(str(exc.args[0]), field="params.layers") from None
    if params.num_samples > settings.max_dataset_samples:
        raise QuotaExceeded(
            f"{params.num_samples} samples is over the per-dataset limit of {settings.max_dataset_samples}; "
            "ask for fewer."
        )
    steps = params.steps or model.default_steps
    ds = session.scalar(select(Dataset).where(Dataset.name == params.name))
    if ds is None:
        table = conditioned_layer_map(model, conditioning)
        ds = Dataset(
            name=params.name,
            model_id=model.id,
            layers=layers,
            layer_shapes={name: list(table[name].shape) for name in layers},
            layer_modules={name: table[name].module for name in layers},
            seed=params.seed,
            steps=steps,
            dtype=params.dtype,
            classes=classes,
            target_size=params.num_samples,
            chunk_size=settings.chunk_size,
            status="generating",
            checkpoint_sha256=model.checkpoint_sha256,
            code_version=CODE_VERSION,
            owner_id=owner.id,
            conditioning=conditioning,
        )
        session.add(ds)
        session.flush()
    else:
        if ds.owner_id != owner.id and owner.role != "admin":
            # lab data is readable by every member, but only its owner (or an admin) changes it
            raise Forbidden(
                f"Dataset '{ds.name}' belongs to another member; only its owner or an admin can grow it. "
                "Pick a new name for a dataset of your own.",
                field="params.name",
            )
        _check_growable(session, ds, model.id, layers, params, steps, classes, conditioning)
        ds.target_size = params.num_samples
        ds.status = "generating"
    out = params.model_dump(mode="json")
    out.update(model=model.name, layers=layers, classes=classes, steps=steps, dataset_id=ds.id)
    return out


def _check_growable(
    session, ds: Dataset, model_id, layers, params, steps, classes, conditioning=None
) -> None:
    if ds.status == "generating":
        raise Conflict(
            f"Dataset '{ds.name}' is still generating; wait for its job or cancel it first.",
            field="params.name",
        )
    same = {
        "model": ds.model_id == model_id,
        "layers": ds.layers == layers,
        "seed": ds.seed == params.seed,
        "steps": ds.steps == steps,
        "classes": ds.classes == classes,
        "dtype": ds.dtype == params.dtype,
        "text conditioning": (ds.conditioning or None) == conditioning,
    }
    differ = [k for k, ok in same.items() if not ok]
    if differ:
        raise Conflict(
            f"Dataset '{ds.name}' exists with different {', '.join(differ)}; a dataset only grows with the "
            "same settings. Pick a new name for a new dataset.",
            field="params.name",
        )
    have = count_samples(session, ds.id)
    if params.num_samples < ds.target_size or (params.num_samples == have and ds.status == "ready"):
        raise Conflict(
            f"Dataset '{ds.name}' already has {have} samples; ask for more than {ds.target_size} to grow it.",
            field="params.num_samples",
        )


def count_samples(session: Session, dataset_id: int, origin: str = "dataset") -> int:
    return int(
        session.scalar(
            select(func.count(Sample.id)).where(Sample.dataset_id == dataset_id, Sample.origin == origin)
        )
    )


# -- the parent job: plan chunks ------------------------------------------------------------------------


def plan_chunks(session: Session, ds: Dataset) -> list[tuple[int, int, int]]:
    """(chunk, start, stop) for every chunk with missing samples below the dataset's target."""
    cs = ds.chunk_size
    have = set(
        session.scalars(
            select(Sample.index).where(Sample.dataset_id == ds.id, Sample.origin == "dataset")
        ).all()
    )
    plan = []
    for k in range(math.ceil(ds.target_size / cs)):
        start, stop = k * cs, min((k + 1) * cs, ds.target_size)
        if any(i not in have for i in range(start, stop)):
            plan.append((k, start, stop))
    return plan


def run_generate_dataset(ctx: jobs.JobContext) -> Any:
    """Spawn the chunk jobs (once, even if this job is delivered twice) and leave the job running; the
    last chunk to finish settles it (``on_chunks_done``)."""
    dataset_id = ctx.params["dataset_id"]
    with ctx.session_factory.begin() as session:
        ctx.lease.fence(session)
        parent = session.get(Job, ctx.job_id)
        ds = session.get(Dataset, dataset_id)
        if parent.children:
            child_ids = [c.id for c in parent.children if c.status == "queued" and c.published_at is None]
        else:
            plan = plan_chunks(session, ds)
            if not plan:
                ds.status = "ready"
                return {"dataset_id": dataset_id, "samples": count_samples(session, ds.id), "chunks": 0}
            children = [
                Job(
                    kind="dataset_chunk",
                    queue="batch",
                    owner_id=ctx.owner_id,
                    parent_id=ctx.job_id,
                    params={
                        "dataset_id": dataset_id,
                        "chunk": k,
                        "start": start,
                        "stop": stop,
                        "batch_size": ctx.params.get("batch_size", 64),
                    },
                )
                for k, start, stop in plan
            ]
            session.add_all(children)
            session.flush()
            child_ids = [c.id for c in children]
            parent.progress_message = f"0 of {len(children)} chunks done"
    if child_ids:  # chunks wait their owner's fair share of the batch queue like any job
        jobs.dispatch(ctx.session_factory, ctx.publisher, ctx.settings, "batch")
    return jobs.WAIT_FOR_CHILDREN


def on_chunks_done(session: Session, parent: Job) -> dict[str, Any]:
    ds = session.get(Dataset, parent.params["dataset_id"])
    n = count_samples(session, ds.id)
    ds.status = "ready" if n >= ds.target_size else "failed"
    return {"dataset_id": ds.id, "samples": n, "chunks": len(parent.children)}


def on_dataset_job_failed(session: Session, job: Job) -> None:
    dataset_id = job.params.get("dataset_id")
    ds = session.get(Dataset, dataset_id) if dataset_id else None
    if ds is not None and ds.status == "generating":
        ds.status = "failed"


# -- a chunk ----------------------------------------------------------------------------------------


def run_chunk(ctx: jobs.JobContext, model_cache) -> dict[str, Any]:
    """Generate one chunk: images, activation shards, sample rows (all-or-nothing, idempotent)."""
    from common.ml.families import get_family

    p = ctx.params
    k, start, stop = int(p["chunk"]), int(p["start"]), int(p["stop"])
    with ctx.session_factory() as session:
        ds = session.get(Dataset, p["dataset_id"])
        if ds is None:
            raise NotFound(f"Dataset {p['dataset_id']} no longer exists.")
        model_row = ds.model
        layers, shapes, classes = list(ds.layers), dict(ds.layer_shapes), list(ds.classes)
        seed, steps, dtype = ds.seed, ds.steps, np.dtype(ds.dtype)
        family = get_family(model_row.family or "edm")
        options = family.sampler_options(
            model_row.config,
            {"sigma_max": model_row.default_sigma_max, "prompts": model_row.label_names},
            ds.conditioning,
        )
        dataset_id, model_sha = ds.id, model_row.checkpoint_sha256
    # outside the session: on SQLite every transaction holds the write lock (BEGIN IMMEDIATE), and a cold
    # load (torch import, checkpoint read) would block every heartbeat and claim for its duration
    model = model_cache.get(ctx.settings, model_row)
    root: Path = ctx.settings.data_root
    n = stop - start
    # an earlier attempt killed mid-write left its temporary files; its process is gone, so drop them
    for folder in chunk_folders(dataset_id, k):
        sweep_temp_files(root / folder)
    acts = {name: np.empty((n, int(np.prod(shapes[name]))), dtype=dtype) for name in layers}
    rows: list[dict[str, Any]] = []
    batch = max(1, int(p.get("batch_size", 64)))
    for a in range(start, stop, batch):
        ctx.check()
        b = min(a + batch, stop)
        idx = list(range(a, b))
        labels = [class_for(classes, i) for i in idx]
        seeds = [noise_seed(seed, i) for i in idx]
        res = family.generate(model, labels, seeds, steps=steps, capture=layers, check=ctx.check, **options)
        ctx.check(fresh=True)  # files are not fenced by a transaction: a cancelled or lost attempt stops here
        write_chunk_images(root, dataset_id, k, idx, res.images)
        for j, i in enumerate(idx):
            rel = image_rel(dataset_id, k, i)
            rows.append(
                {
                    "dataset_id": dataset_id,
                    "index": i,
                    "class_label": labels[j],
                    "noise_seed": seeds[j],
                    "image_path": rel,
                    "act_shard": shard_rel(dataset_id, k),
                    "act_row": i - start,
                    "origin": "dataset",
                    "job_id": ctx.job_id,
                    "created_by_id": ctx.owner_id,
                    "created_at": jobs.now(),
                }
            )
        for name in layers:
            acts[name][a - start : b - start] = res.activations[name].reshape(b - a, -1)  # [n, C*H*W]
        ctx.progress((b - start) / n, f"chunk {k}: {b - start} of {n} samples")
    ctx.check(fresh=True)
    write_chunk_shards(root, dataset_id, k, acts)
    with ctx.session_factory.begin() as session:
        ctx.lease.fence(session)
        new = insert_ignore(session, Sample.__table__, rows)
    model_cache.assert_no_hooks()
    return {
        "dataset_id": dataset_id,
        "chunk": k,
        "samples": n,
        "new_rows": new,
        "checkpoint_sha256": model_sha,
    }


def chunk_folders(dataset_id: int, chunk: int) -> list[str]:
    """The folders a chunk writes into (its images, its activation shards)."""
    return [f"datasets/{dataset_id}/images/{chunk_dir(dataset_id, chunk)}", shard_rel(dataset_id, chunk)]


def write_chunk_images(root: Path, dataset_id: int, chunk: int, indices: list[int], images) -> None:
    """Write sample ``indices[j]``'s image ``images[j]`` (uint8 [H, W, C]) as a PNG, each atomically."""
    for j, i in enumerate(indices):
        atomic_write_bytes(root / image_rel(dataset_id, chunk, i), png_bytes(images[j]))


def write_chunk_shards(root: Path, dataset_id: int, chunk: int, acts: dict[str, np.ndarray]) -> None:
    """Write one ``.npy`` shard per layer ([n, C·H·W], row r = sample chunk·cs + r), each atomically."""
    for name, array in acts.items():
        atomic_save_npy(root / shard_rel(dataset_id, chunk) / f"{name}.npy", array)


# -- reading ---------------------------------------------------------------------------------------


def dataset_to_dict(session: Session, ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id,
        "name": ds.name,
        "model": ds.model.name,
        "model_id": ds.model_id,
        "layers": ds.layers,
        "layer_shapes": ds.layer_shapes,
        "layer_modules": ds.layer_modules,
        "seed": ds.seed,
        "steps": ds.steps,
        "dtype": ds.dtype,
        "classes": ds.classes,
        "label_names": ds.label_names,
        "family": ds.model.family,
        "conditioning": ds.conditioning,
        "target_size": ds.target_size,
        "num_samples": count_samples(session, ds.id),
        "num_generated": count_samples(session, ds.id, origin="generated"),
        "status": ds.status,
        "owner_id": ds.owner_id,
        "checkpoint_sha256": ds.checkpoint_sha256,
        "created_at": ds.created_at.isoformat(),
    }


def read_activations(
    settings: Settings, locations: list[tuple[str, int]], layers: list[str], dtype=np.float32
) -> np.ndarray:
    """[n, D] activation vectors for (act_shard, act_row) locations, layers concatenated in sorted
    order (each flattened C·H·W). Shards are memory-mapped, read once per shard, never unpickled."""
    from common.platform.storage import resolve_inside

    layers = sorted(layers)
    if not locations:
        return np.zeros((0, 0), dtype=dtype)
    by_shard: dict[str, list[int]] = {}
    for pos, (shard, _row) in enumerate(locations):
        by_shard.setdefault(shard, []).append(pos)
    parts: list[np.ndarray] = []
    widths: list[int] = []
    for name in layers:
        block = None
        for shard, positions in by_shard.items():
            arr = np.load(
                resolve_inside(settings.data_root, f"{shard}/{name}.npy"), mmap_mode="r", allow_pickle=False
            )
            if block is None:
                block = np.empty((len(locations), arr.shape[1]), dtype=dtype)
            rows = [locations[p][1] for p in positions]
            block[positions] = arr[rows]
        parts.append(block)
        widths.append(block.shape[1])
    return flatten_activations(dict(zip(layers, parts, strict=True)))  # [n, D], the layout contract


def iter_activation_batches(
    settings: Settings, locations: list[tuple[str, int]], layers: list[str], batch: int = 2048
):
    """Yield [m, D] batches of ``read_activations`` in order (bounded memory for big datasets)."""
    for a in range(0, len(locations), batch):
        yield read_activations(settings, locations[a : a + batch], layers)


GENERATE_DATASET_KIND = jobs.JobKind(
    "generate_dataset",
    "batch",
    GenerateDatasetParams,
    prepare=prepare_generate_dataset,
    on_children_done=on_chunks_done,
    on_failed=on_dataset_job_failed,
)


class ChunkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    chunk: int = Field(ge=0)
    start: int = Field(ge=0)
    stop: int = Field(ge=1)
    batch_size: int = Field(default=64, ge=1, le=1024)


DATASET_CHUNK_KIND = jobs.JobKind("dataset_chunk", "batch", ChunkParams, internal=True)

KINDS = (
    GENERATE_DATASET_KIND,
    DATASET_CHUNK_KIND,
)
