"""Datasets: generate images with a registered generator and capture layer activations, as jobs.

A ``generate_dataset`` job (queue ``batch``) plans fixed chunks of ``chunk_size`` sample indices and
spawns one ``dataset_chunk`` job per chunk, so several workers share one dataset and interactive jobs
interleave between chunks. Chunk k covers indices [k·cs, min((k+1)·cs, target)). Per chunk:

* a PNG per sample: ``datasets/<id>/images/chunk-<k>/<index>.png``
* one ``.npy`` shard per layer, row r = sample k·cs + r, flattened C·H·W:
  ``datasets/<id>/act/chunk-<k>/<layer>.npy`` (memory-mappable; written whole, atomically)
* a ``samples`` row per index, unique (dataset, index): a redelivered chunk rewrites identical bytes
  and inserts nothing new.

Determinism: sample i's class and noise seed depend only on (dataset seed, i), and the model runs on
micro-batches aligned to absolute indices: micro-batch m is always the model call on samples
[m·b, (m+1)·b), b recorded on the dataset (``micro_batch``), chunk sizes multiples of b. A micro-batch
cut by the dataset's target still runs whole (its samples past the target are computed and dropped), so
every model call a sample is ever part of has the same inputs: sample i is byte-identical however the
work was split into chunks, workers or growth steps, even for a model whose kernels are not batch
invariant. Growing a dataset continues the same seed stream with the same b; a chunk that already holds
samples recomputes only from the micro-batch of its first missing sample and keeps the samples it has.

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
from common.ml import batching
from common.ml.activations import check_layers
from common.models import Dataset, Job, Sample, User
from common.platform.config import Settings
from common.platform.db import insert_ignore
from common.platform.errors import Conflict, Forbidden, NotFound, QuotaExceeded, UserError
from common.platform.ids import find_by_id_or_name
from common.platform.storage import sweep_temp_files
from common.research.conditioning import (
    TEXT_FIELDS,
    conditioned_layer_map,
    is_text_model,
    refuse_text_fields,
    text_conditioning,
)
from common.research.micro_batches import default_micro_batch, measure_once, out_of_memory
from common.research.registry import get_model
from common.research.shards import (  # noqa: F401 - the file layout's names, re-exported where they were
    BackgroundWriter,
    chunk_dir,
    chunk_folders,
    image_rel,
    iter_activation_batches,
    read_activations,
    shard_rel,
    write_chunk_images,
    write_chunk_shards,
)

CODE_VERSION = "latentlab-0.1"
DEFAULT_LAYERS = ["encoder_bottleneck", "midblock"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$"


# -- finding a dataset, its seed stream ------------------------------------------------------------


def get_dataset(session: Session, ref: str | int) -> Dataset:
    """The dataset with id or name ``ref``; raises NotFound (UserError for an id spelt oddly: "٣", "007")."""
    ds = find_by_id_or_name(session, Dataset, ref, "dataset")
    if ds is None:
        raise NotFound(f"No dataset '{ref}'.", field="dataset")
    return ds


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
    batch_size: int = Field(
        default=64, ge=1, le=1024, description="samples per sampler run (rounded up to whole micro-batches)"
    )
    micro_batch: int | None = Field(
        default=None,
        ge=1,
        le=batching.MAX_MICRO_BATCH,
        description="samples per model call, recorded on the dataset (default: the server's; a dataset "
        "grows only with the micro-batch it was created with)",
    )
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
    if params.micro_batch is not None:
        refusal = batching.check_micro_batch(
            model.config, params.micro_batch, settings.micro_batch_memory_mb, model.architecture
        )
        if refusal:
            raise UserError(refusal, field="params.micro_batch")
    if ds is None:
        table = conditioned_layer_map(model, conditioning)
        b = params.micro_batch or default_micro_batch(settings, model)
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
            chunk_size=math.ceil(settings.chunk_size / b) * b,  # chunk boundaries on micro-batch boundaries
            micro_batch=b,
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
    out.update(
        model=model.name,
        layers=layers,
        classes=classes,
        steps=steps,
        dataset_id=ds.id,
        micro_batch=ds.micro_batch,
    )
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
        "micro_batch": params.micro_batch in (None, ds.micro_batch),
        "text conditioning": (ds.conditioning or None) == conditioning,
    }
    differ = [k for k, ok in same.items() if not ok]
    if differ == ["micro_batch"]:
        raise Conflict(
            f"Dataset '{ds.name}' was made with micro_batch {ds.micro_batch}; it grows only with that "
            f"micro-batch (mixed batching would change its samples). Ask with micro_batch "
            f"{ds.micro_batch} or leave it out.",
            field="params.micro_batch",
        )
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


def plan_chunks(session: Session, ds: Dataset) -> list[tuple[int, int, int, int]]:
    """(chunk, start, stop, resume) for every chunk with missing samples below the dataset's target;
    ``resume`` is its first missing index (the chunk keeps the samples it has before it)."""
    cs = ds.chunk_size
    have = set(
        session.scalars(
            select(Sample.index).where(Sample.dataset_id == ds.id, Sample.origin == "dataset")
        ).all()
    )
    plan = []
    for k in range(math.ceil(ds.target_size / cs)):
        start, stop = k * cs, min((k + 1) * cs, ds.target_size)
        missing = next((i for i in range(start, stop) if i not in have), None)
        if missing is not None:
            plan.append((k, start, stop, missing))
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
                        "resume": resume,
                        "batch_size": ctx.params.get("batch_size", 64),
                    },
                )
                for k, start, stop, resume in plan
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
    """Generate one chunk: images, activation shards, sample rows (all-or-nothing, idempotent).

    Only micro-batches from the one holding the chunk's first missing sample (``resume``) run; the
    samples before it keep their files and shard rows. PNG encoding and image writes run in a background
    thread while the next micro-batches compute."""
    from common.ml.families import get_family

    p = ctx.params
    k, start, stop = int(p["chunk"]), int(p["start"]), int(p["stop"])
    with ctx.session_factory() as session:
        ds = session.get(Dataset, p["dataset_id"])
        if ds is None:
            raise NotFound(f"Dataset {p['dataset_id']} no longer exists.")
        model_row = ds.model
        layers, shapes, classes = list(ds.layers), dict(ds.layer_shapes), list(ds.classes)
        seed, steps, dtype, mb = ds.seed, ds.steps, np.dtype(ds.dtype), int(ds.micro_batch)
        family = get_family(model_row.family or "edm")
        options = family.sampler_options(
            model_row.config,
            {"sigma_max": model_row.default_sigma_max, "prompts": model_row.label_names},
            ds.conditioning,
        )
        dataset_id, model_sha = ds.id, model_row.checkpoint_sha256
    if start % mb:
        raise UserError(f"Chunk {k} starts at {start}, not on a micro-batch boundary (micro_batch {mb}).")
    # outside the session: on SQLite every transaction holds the write lock (BEGIN IMMEDIATE), and a cold
    # load (torch import, checkpoint read) would block every heartbeat and claim for its duration
    model = model_cache.get(ctx.settings, model_row)
    measure_once(ctx.settings, model, model_sha)
    root: Path = ctx.settings.data_root
    n = stop - start
    # an earlier attempt killed mid-write left its temporary files; its process is gone, so drop them
    for folder in chunk_folders(dataset_id, k):
        sweep_temp_files(root / folder)
    first = min(max(start, int(p.get("resume") or start)), stop)
    acts = {name: np.empty((n, int(np.prod(shapes[name]))), dtype=dtype) for name in layers}
    if first > start and not _keep_rows(root, dataset_id, k, acts, first - start):
        first = start  # the kept rows' shard is missing or short: redo the whole chunk (same bytes)
    rows: list[dict[str, Any]] = []
    # whole micro-batches from the one holding `first`: micro-batch m is always samples [m·mb, (m+1)·mb)
    a0, end = (first // mb) * mb, math.ceil(stop / mb) * mb
    group = math.ceil(max(1, int(p.get("batch_size", 64))) / mb) * mb  # samples per sampler run
    with BackgroundWriter() as writer:
        for a in range(a0, end, group):
            ctx.check()
            z = min(a + group, end)
            idx = list(range(a, z))
            labels = [class_for(classes, i) for i in idx]
            seeds = [noise_seed(seed, i) for i in idx]
            try:
                res = family.generate(
                    model,
                    labels,
                    seeds,
                    steps=steps,
                    capture=layers,
                    check=ctx.check,
                    micro_batch=mb,
                    **options,
                )
            except RuntimeError as exc:  # torch's OutOfMemoryError: a refusal that says what to change
                refusal = out_of_memory(exc, mb, str(next(model.parameters()).device))
                if refusal is None:
                    raise
                raise refusal from None
            keep = [j for j, i in enumerate(idx) if first <= i < stop]  # not kept rows, not past the target
            kept = [idx[j] for j in keep]
            ctx.check(fresh=True)  # files are not fenced by a transaction: a lost attempt stops here
            writer.submit(write_chunk_images, root, dataset_id, k, kept, res.images[keep])
            for j in keep:
                rows.append(_sample_row(ctx, dataset_id, k, start, idx[j], labels[j], seeds[j]))
            if kept:
                for name in layers:  # [len(kept), C*H*W] rows kept[0]-start ..
                    acts[name][kept[0] - start : kept[-1] + 1 - start] = res.activations[name][keep].reshape(
                        len(keep), -1
                    )
            done = min(z, stop) - a0
            ctx.progress(done / max(1, stop - a0), f"chunk {k}: {min(z, stop) - start} of {n} samples")
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
        "computed": len(rows),
        "new_rows": new,
        "micro_batch": mb,
        "checkpoint_sha256": model_sha,
    }


def _sample_row(ctx, dataset_id: int, k: int, start: int, i: int, label: int, seed: int) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "index": i,
        "class_label": label,
        "noise_seed": seed,
        "image_path": image_rel(dataset_id, k, i),
        "act_shard": shard_rel(dataset_id, k),
        "act_row": i - start,
        "origin": "dataset",
        "job_id": ctx.job_id,
        "created_by_id": ctx.owner_id,
        "created_at": jobs.now(),
    }


def _keep_rows(root: Path, dataset_id: int, k: int, acts: dict[str, np.ndarray], rows: int) -> bool:
    """Copy the first ``rows`` rows of the chunk's existing shards into ``acts``; False when a shard is
    missing or shorter (or of another width or type) than that."""
    arrays = {}
    for name, out in acts.items():
        path = root / shard_rel(dataset_id, k) / f"{name}.npy"
        try:
            old = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        if old.ndim != 2 or old.shape[0] < rows or old.shape[1] != out.shape[1] or old.dtype != out.dtype:
            return False
        arrays[name] = old
    for name, old in arrays.items():
        acts[name][:rows] = old[:rows]  # [rows, C*H*W], the bytes they were written with
    return True


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
        "micro_batch": ds.micro_batch,
        "chunk_size": ds.chunk_size,
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
    resume: int | None = Field(default=None, ge=0, description="the chunk's first missing sample index")
    batch_size: int = Field(default=64, ge=1, le=1024)


DATASET_CHUNK_KIND = jobs.JobKind("dataset_chunk", "batch", ChunkParams, internal=True)

KINDS = (
    GENERATE_DATASET_KIND,
    DATASET_CHUNK_KIND,
)
