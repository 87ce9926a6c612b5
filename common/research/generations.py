"""Generate from neighbours: combine the chosen samples' activations, clamp them into the generator with
forward hooks, make new images, and record each one with its full recipe and lineage.

How the neighbours combine (the modes, the masks, the class) is ``common/research/recipe.py``; how much,
when and in which direction the masks act, and the readout against each image's natural twin, is
``common/research/interventions.py`` (mode ``direction``: the neighbours are the positive set, ``negative``
the set to steer away from); rendering and recording the variations is ``common/research/variations.py``.

After generating, the image's actual activations are captured and projected with the map's reducer, so
each generation stores where it was meant to land and where it landed.

Usage (a worker)::

    result = run_generate_from_neighbors(ctx, model_cache, reducers)
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from common import jobs
from common.ml.activations import split_flat
from common.models import Dataset, Embedding, EmbeddingPoint, Generation, Job, Lineage, Sample, User
from common.models.base import RowId
from common.platform.config import Settings
from common.platform.errors import UserError
from common.platform.storage import resolve_inside
from common.research.conditioning import check_prompts, is_text_model, refuse_text_fields, sampler_setup
from common.research.datasets import read_activations
from common.research.embeddings import ReducerCache, get_embedding
from common.research.interventions import MAX_ALPHA, check_intervention, render_options
from common.research.recipe import (
    Recipe,
    choose_class,
    combine_activations,
    masks_from_targets,
    neighbour_weights,
    weighted_center,
)
from common.research.variations import (
    generated_dir,
    make_variations,
    record_made,
    render,
    save_made,
    variation_seeds,
)

MAX_WEIGHT = 1e6


# a neighbour's weight: bounded so that their sum stays finite (1e308 + 1e308 overflows to inf, and
# normalising by inf put the generation at (0, 0))
Weight = Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]
Strength = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Step = Annotated[int, Field(ge=0, le=256)]


class GenerateFromNeighborsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    embedding: RowId
    selected: RowId = Field(description="the sample clicked on the map")
    neighbors: list[RowId] = Field(
        min_length=1, max_length=256, description="sample ids whose activations combine"
    )
    mode: Literal["activation_mean", "umap_inverse", "weighted", "direction"] = "activation_mean"
    weights: list[Weight] | None = Field(
        default=None, max_length=256, description="for mode 'weighted': one per neighbour (0 to 1e6)"
    )
    layers: list[str] | None = Field(
        default=None, max_length=64, description="layers to mask (default: the map's)"
    )
    class_mode: Literal["selected", "neighbor_majority", "blend", "uniform", "none"] | int = Field(
        default="selected", alias="class", description="conditioning: a mode or an explicit class index"
    )
    steps: int | None = Field(default=None, ge=1, le=256)
    mask_steps: int | None = Field(default=None, ge=0, le=256, description="mask only the first k steps")
    mask_window: tuple[Step, Step] | None = Field(
        default=None, description="[start, stop): mask only these steps (null: every step)"
    )
    strength: float = Field(
        default=1.0, ge=0, le=1, description="(1 - s)·natural + s·target; 0 = unmasked, 1 = the clamp"
    )
    layer_strength: dict[str, Strength] | None = Field(
        default=None, max_length=64, description="per masked layer, overriding 'strength'"
    )
    negative: list[RowId] | None = Field(
        default=None, min_length=1, max_length=256, description="mode 'direction': the set to steer away from"
    )
    alpha: float | None = Field(
        default=None,
        ge=-MAX_ALPHA,
        le=MAX_ALPHA,
        allow_inf_nan=False,
        description="mode 'direction': signed scale of mean(neighbors) − mean(negative) (default 1)",
    )
    normalize: bool = Field(
        default=False, description="mode 'direction': rescale the direction to the natural activation's norm"
    )
    compare_natural: bool = Field(
        default=True, description="also render each seed without the intervention and record the effect"
    )
    variations: int = Field(default=1, ge=1, le=64)
    seed: int | None = Field(default=None, ge=0, le=2**62)
    # text-to-image (diffusers) models only
    prompt: str | None = Field(
        default=None, max_length=2000, description="free-text conditioning instead of the 'class' mode"
    )
    mask_passes: Literal["both", "cond"] | None = Field(
        default=None, description="under guidance: mask both passes (default) or only the conditional one"
    )
    target: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="for mode 'umap_inverse': the [x, y] on the map to invert (the explorer's place tool) "
        "instead of the neighbours' weighted centre; they still choose the class",
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.target is not None and self.mode != "umap_inverse":
            raise ValueError("'target' is only used with mode 'umap_inverse'")
        if self.mode == "weighted":
            if self.weights is None or len(self.weights) != len(self.neighbors):
                raise ValueError("mode 'weighted' needs 'weights' with one value per neighbour")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        elif self.weights is not None:
            raise ValueError("'weights' is only used with mode 'weighted'")
        if len(set(self.neighbors)) != len(self.neighbors):
            raise ValueError("'neighbors' lists a sample twice")
        if self.negative is not None and len(set(self.negative)) != len(self.negative):
            raise ValueError("'negative' lists a sample twice")
        if isinstance(self.class_mode, int) and self.class_mode < 0:
            raise ValueError("an explicit class must be a non-negative class index")
        return self


def prepare_generate_from_neighbors(
    session: Session, params: GenerateFromNeighborsParams, owner: User, settings: Settings
) -> dict[str, Any]:
    emb = get_embedding(session, params.embedding)
    if emb.status != "ready":
        raise UserError(
            f"Embedding {emb.id} is still {emb.status}; wait for its fit to finish.", field="params.embedding"
        )
    ds = emb.dataset
    wanted = [params.selected, *params.neighbors, *(params.negative or [])]
    on_map = set(
        session.scalars(
            select(EmbeddingPoint.sample_id).where(
                EmbeddingPoint.embedding_id == emb.id, EmbeddingPoint.sample_id.in_(wanted)
            )
        )
    )
    off = [sid for sid in wanted if sid not in on_map]
    if off:
        raise UserError(
            f"Sample(s) {', '.join(map(str, off))} are not on embedding {emb.id} (they belong to another "
            "dataset or embedding, or were never placed); choose samples shown on this map.",
            field="params.selected"
            if params.selected in off
            else "params.neighbors"
            if set(off) & set(params.neighbors)
            else "params.negative",
        )
    layers = sorted(set(params.layers or emb.layers))
    allowed = emb.layers if params.mode == "umap_inverse" else ds.layers
    bad = [name for name in layers if name not in allowed]
    if bad:
        where = "the map's layers" if params.mode == "umap_inverse" else f"the layers captured in '{ds.name}'"
        raise UserError(
            f"Cannot mask {', '.join(bad)}: use {where} ({', '.join(allowed)}).", field="params.layers"
        )
    model = ds.model
    label_dim = len(ds.label_names) if is_text_model(model) else int(model.config["label_dim"])
    if is_text_model(model):
        if params.prompt is not None:
            check_prompts([params.prompt], "params.prompt")
            if "class_mode" in params.model_fields_set:
                raise UserError(
                    "Give either a free-text 'prompt' or a 'class' mode, not both.", field="params.prompt"
                )
    else:
        refuse_text_fields(model, {"prompt": params.prompt, "mask_passes": params.mask_passes})
    if isinstance(params.class_mode, int) and params.class_mode >= label_dim:
        raise UserError(
            f"class {params.class_mode} is out of range (0–{label_dim - 1}).", field="params.class"
        )
    steps = params.steps or model.default_steps
    if params.mask_steps is not None and params.mask_steps > steps:
        raise UserError(
            f"mask_steps ({params.mask_steps}) cannot exceed steps ({steps}).", field="params.mask_steps"
        )
    out = params.model_dump(mode="json", by_alias=True)
    check_intervention(out, steps=steps, layers=layers)
    out.update(
        layers=layers, steps=steps, seed=params.seed if params.seed is not None else secrets.randbits(31)
    )
    return out


# -- the recipe ---------------------------------------------------------------------------------------------


def build_recipe(
    settings: Settings, session: Session, emb: Embedding, p: dict[str, Any], reducers: ReducerCache
) -> Recipe:
    ds: Dataset = emb.dataset
    neighbors = [int(s) for s in p["neighbors"]]
    negative = [int(s) for s in p.get("negative") or []]
    samples = {
        s.id: s
        for s in session.scalars(select(Sample).where(Sample.id.in_([p["selected"], *neighbors, *negative])))
    }
    points = {
        pt.sample_id: (pt.x, pt.y)
        for pt in session.scalars(
            select(EmbeddingPoint).where(
                EmbeddingPoint.embedding_id == emb.id, EmbeddingPoint.sample_id.in_(list(samples))
            )
        )
    }
    k = len(neighbors)
    w = neighbour_weights(p["mode"], k, p.get("weights"))  # [k]
    center = weighted_center(w, np.array([points[s] for s in neighbors], dtype=np.float64))  # [2]
    if p.get("target") is not None:  # a point placed on the map: inverted as it is
        center = np.asarray(p["target"], dtype=np.float64)  # [2]
    layers = list(p["layers"])
    shapes = {name: tuple(ds.layer_shapes[name]) for name in ds.layers}
    roundtrip = None
    diagnostics: dict[str, Any] = {"neighbors": k}
    if p.get("target") is not None:
        diagnostics["target"] = [float(v) for v in p["target"]]  # recorded, so a replay inverts it again
    if p["mode"] == "umap_inverse":
        reducer = reducers.get(settings, session, emb)
        flat, notes = reducer.inverse_with_diagnostics(center[None, :])  # [1, D_map]
        back = reducer.transform(flat)[0]
        roundtrip = float(np.linalg.norm(back - center))
        diagnostics.update(notes[0])  # nearest_sample_distance (+ _input_), inverse_warning (None if fine)
        if reducer.map.spacing > 0:  # in units of the map's typical distance between neighbouring samples
            diagnostics["roundtrip_in_spacings"] = roundtrip / reducer.map.spacing
        parts = split_flat(flat[0], {name: shapes[name] for name in reducer.layers})  # {name: [C, H, W]}
        targets = {name: parts[name] for name in layers}
        diagnostics["inverse_reprojected"] = [float(back[0]), float(back[1])]
    else:
        locs = [(samples[s].act_shard, samples[s].act_row) for s in neighbors]
        x = read_activations(settings, locs, layers).astype(np.float64)  # [k, D_masked]
        if p["mode"] == "direction":  # mean(positive) - mean(negative), one vector over the masked layers
            neg = [(samples[s].act_shard, samples[s].act_row) for s in negative]
            x = x - read_activations(settings, neg, layers).astype(np.float64).mean(axis=0)  # [k, D_masked]
        targets = combine_activations(x, w, {name: shapes[name] for name in layers})  # {name: [C, H, W]}
    masks = masks_from_targets(targets, shapes, layers)

    label_dim = len(ds.label_names) if is_text_model(ds.model) else int(ds.model.config["label_dim"])
    cm = p["class"]
    class_label, label_weights, label_mode = choose_class(
        cm,
        samples[p["selected"]].class_label,
        [samples[s].class_label for s in neighbors],
        w,
        label_dim,
    )
    if p.get("prompt"):  # free text: not one of the dataset's prompts, so no class
        class_label, label_weights, label_mode = None, None, "onehot"
        diagnostics["prompt"] = p["prompt"]
    return Recipe(
        masks, center, w, class_label, label_mode, class_label, label_weights, roundtrip, diagnostics
    )


# -- the job ---------------------------------------------------------------------------------------------


def run_generate_from_neighbors(ctx: jobs.JobContext, model_cache, reducers: ReducerCache) -> dict[str, Any]:
    p = ctx.params
    settings = ctx.settings
    with ctx.session_factory() as session:
        emb = get_embedding(session, p["embedding"])
        ds = emb.dataset
        model_row = ds.model
        recipe = build_recipe(settings, session, emb, p, reducers)
        reducer = reducers.get(settings, session, emb)
        model = model_cache.get(settings, model_row)
        ds_id, emb_id, ds_layers = ds.id, emb.id, list(ds.layers)
        sigma_max, sha = model_row.default_sigma_max, model_row.checkpoint_sha256
        family, options = sampler_setup(model_row, ds, p)
    ctx.progress(0.2, f"generating {p['variations']} variation(s)")
    seeds = variation_seeds(int(p["seed"]), int(p["variations"]))
    made = make_variations(
        model, reducer, recipe, p, seeds, sigma_max, ds_layers, ctx.check, family=family, sampler=options
    )
    model_cache.assert_no_hooks()
    ctx.check()
    ctx.progress(0.8, "saving images and activations")
    folder = generated_dir(ds_id, ctx.job_id)
    save_made(settings, folder, made, recipe, ds_layers)
    with ctx.session_factory.begin() as session:  # fenced at its end, by ctx.complete
        ids = record_made(
            session,
            job_id=ctx.job_id,
            owner_id=ctx.owner_id,
            ds_id=ds_id,
            emb_id=emb_id,
            p=p,
            recipe=recipe,
            made=made,
            folder=folder,
            sha=sha,
        )
        result = {
            "embedding_id": emb_id,
            "samples": ids,
            "center": [float(recipe.center[0]), float(recipe.center[1])],
            "actual": made.actual.round(6).tolist(),
            "twin": made.twin_points.round(6).tolist() if made.twin_points is not None else None,
            "readout": made.readouts,
            "roundtrip_error": recipe.roundtrip_error,
            "inverse_warning": recipe.diagnostics.get("inverse_warning"),
            "model_cache": model_cache.stats(),
        }
        # the images' rows and the job's success commit together: no moment shows one without the other
        ctx.complete(session, result)
    return result


def replay_params(session: Session, gen: Generation) -> dict[str, Any]:
    """The generate parameters a recorded generation ran with (its recipe, intervention and steps)."""
    parents = session.execute(
        select(Lineage.parent_id, Lineage.role, Lineage.weight).where(Lineage.child_id == gen.sample_id)
    ).all()
    neighbors = [pid for pid, role, _ in parents if role == "neighbor"]
    negative = sorted(pid for pid, role, _ in parents if role == "negative")
    weights = {pid: wt for pid, role, wt in parents if role == "neighbor"}
    # lineage rows come back unordered; the job's params keep the neighbours' order
    job = session.get(Job, gen.job_id) if gen.job_id else None
    if job is not None and "neighbors" in job.params:
        neighbors = [int(s) for s in job.params["neighbors"]]
        negative = [int(s) for s in job.params.get("negative") or []] or negative
    elif job is not None and gen.sweep_id is not None and gen.sweep_cell is not None:
        cell = job.params["cells"][gen.sweep_cell]  # a sweep's job keeps each cell's prepared params
        neighbors = [int(s) for s in cell["neighbors"]]
        negative = [int(s) for s in cell.get("negative") or []] or negative
    inter = gen.intervention or {}
    return {
        "selected": gen.selected_sample_id,
        "neighbors": neighbors,
        "negative": negative or None,
        "mode": gen.mode,
        "weights": [weights[s] for s in neighbors] if gen.mode == "weighted" else None,
        "layers": list(gen.layers),
        "class": int(gen.class_mode)
        if gen.class_mode.isdigit()
        else ("selected" if gen.class_mode == "prompt" else gen.class_mode),
        "prompt": (gen.diagnostics or {}).get("prompt"),
        "mask_passes": (gen.diagnostics or {}).get("mask_passes"),
        "target": (gen.diagnostics or {}).get("target"),
        "steps": gen.steps,
        "mask_steps": gen.mask_steps if gen.mask_window is None else None,
        "mask_window": gen.mask_window,
        "strength": gen.strength if gen.strength is not None else 1.0,
        "layer_strength": inter.get("layer_strength"),
        "alpha": inter.get("alpha"),
        "normalize": bool(inter.get("normalize")),
    }


def replay(settings: Settings, session: Session, sample_id: int, model_cache, reducers: ReducerCache):
    """Regenerate a generated sample from its recorded recipe; returns (uint8 image, stored PNG bytes)."""
    gen = session.scalar(select(Generation).where(Generation.sample_id == sample_id))
    if gen is None:
        raise UserError(f"Sample {sample_id} was not generated from neighbours; nothing to replay.")
    emb = get_embedding(session, gen.embedding_id)
    params = replay_params(session, gen)
    recipe = build_recipe(settings, session, emb, params, reducers)
    family, options = sampler_setup(emb.dataset.model, emb.dataset, params)
    model = model_cache.get(settings, emb.dataset.model)
    seeds, micro_batch, pos = _replay_batch(gen)
    res = render(
        model,
        recipe,
        seeds,
        gen.steps,
        emb.dataset.model.default_sigma_max,
        render_options(params),
        [],
        micro_batch,
        family=family,
        sampler=options,
    )
    sample = session.get(Sample, sample_id)
    return res.images[pos], resolve_inside(settings.data_root, sample.image_path).read_bytes()


def _replay_batch(gen: Generation) -> tuple[list[int], int | None, int]:
    """The seeds to render again, the micro-batch, and the position of ``gen``'s image among them: the
    whole micro-batch the image was made in (the same model call, so the same bits), or the image's own
    seed alone for generations recorded before micro-batches were (made one per call)."""
    diag = gen.diagnostics or {}
    k = diag.get("micro_batch")
    if k is None or "variations" not in diag:
        return [gen.noise_seed], None, 0
    v, k = int(diag["variation"]), int(k)
    seeds = variation_seeds(int(diag["recipe_seed"]), int(diag["variations"]))
    if seeds[v] != gen.noise_seed:
        raise UserError(
            f"Sample {gen.sample_id}'s recorded recipe is inconsistent (its seed); cannot replay."
        )
    first = v // k * k
    return seeds[first : first + k], k, v - first


GENERATE_FROM_NEIGHBORS_KIND = jobs.JobKind(
    "generate_from_neighbors",
    "interactive",
    GenerateFromNeighborsParams,
    prepare=prepare_generate_from_neighbors,
)

KINDS = (GENERATE_FROM_NEIGHBORS_KIND,)
