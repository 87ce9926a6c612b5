"""Rendering one recipe's variations and recording them: the intervened images, their natural twins, where
both land on the map and the readout (``common/research/interventions.py``), the files under the job's
folder and the sample, generation, lineage and map-point rows. Used by a generate-from-neighbours job
(``common/research/generations.py``) and by every cell of a sweep (``common/research/sweeps.py``).

Usage::

    made = make_variations(model, reducer, recipe, params, seeds, sigma_max, layers, check)
    save_made(settings, folder, made, recipe, layers)
    ids = record_made(session, job_id=…, owner_id=…, ds_id=…, emb_id=…, p=params, recipe=recipe, made=made,
                      folder=folder, sha=…)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common import jobs
from common.ml.activations import flatten_activations
from common.models import Embedding, EmbeddingPoint, Generation, Lineage, Sample
from common.platform.config import Settings
from common.platform.db import insert_ignore
from common.platform.storage import atomic_save_npy, atomic_write_bytes, png_bytes
from common.research.conditioning import text_diagnostics
from common.research.datasets import CODE_VERSION, noise_seed
from common.research.interventions import mask_window, readout, render_options
from common.research.recipe import Recipe, labels_for

try:
    TORCH_VERSION: str | None = metadata.version("torch")
except metadata.PackageNotFoundError:  # pragma: no cover - a worker always has torch
    TORCH_VERSION = None


def render(
    model,
    recipe: Recipe,
    seeds: list[int],
    steps: int,
    sigma_max: float,
    options: dict[str, Any] | None,
    capture: list[str],
    micro_batch: int | None = None,
    check=None,
    natural: bool = False,
    family: str = "edm",
    sampler: dict[str, Any] | None = None,
):
    """Run the generator with the recipe's masks and the intervention ``options`` (``render_options``;
    None: the plain clamp); returns common.ml.generation.GenerationResult with the intervention's size
    recorded. ``natural`` renders the same seeds, labels and micro-batch without any mask (the twin).
    ``check`` is called before every model call (see ``generate``). ``family`` and ``sampler``
    (``conditioning.sampler_setup``) pick the model family's sampler; without them the EDM sampler at
    ``sigma_max``."""
    from common.ml.families import get_family

    generate = get_family(family).generate
    sampler = dict(sampler) if sampler else {"sigma_max": sigma_max}
    if sampler.pop("free_prompt", False):
        labels, mode = [0] * len(seeds), "onehot"  # the one free-text prompt
    else:
        labels, mode = labels_for(recipe, len(seeds))
    common_kw = dict(
        **sampler,
        steps=steps,
        capture=capture,
        label_mode=mode,
        micro_batch=micro_batch,
        check=check,
    )
    if natural:
        return generate(model, labels, seeds, **common_kw)
    return generate(
        model, labels, seeds, masks=recipe.masks, record_intervention=True, **common_kw, **options
    )


def variations_micro_batch(model, variations: int) -> int:
    """Samples per model call for ``variations`` images of one recipe (recorded, so a replay matches)."""
    from common.ml.generation import micro_batch_for

    return micro_batch_for(next(model.parameters()).device, variations)


def generated_dir(dataset_id: int, job_id: int) -> str:
    return f"datasets/{dataset_id}/generated/job-{job_id:08d}"


def variation_seeds(seed: int, variations: int) -> list[int]:
    return [noise_seed(seed, v) for v in range(variations)]


@dataclass
class Made:
    """The images of one recipe: the intervened run, its natural twin (or None), where both landed, and
    the readout per variation."""

    seeds: list[int]
    micro_batch: int
    res: Any  # GenerationResult (intervened)
    twin: Any  # GenerationResult of the natural twin, or None
    actual: np.ndarray  # [n, 2]
    twin_points: np.ndarray | None  # [n, 2]
    readouts: list[dict[str, Any]]
    device: str = "cpu"  # where the images were made (recorded: bit-identity holds per kind of device)
    threads: int = 1  # torch CPU threads (a batched convolution's bits may depend on them)
    text: dict[str, Any] = field(default_factory=dict)  # a diffusers sampler's settings (text_diagnostics)
    packing: list[dict[str, int]] | None = None  # per variation: a packed sweep's call and row (packing.py)


def make_variations(
    model,
    reducer,
    recipe: Recipe,
    p: dict[str, Any],
    seeds,
    sigma_max,
    ds_layers,
    check,
    twins=None,
    project=True,
    family: str = "edm",
    sampler: dict[str, Any] | None = None,
):
    """Render ``seeds`` with the recipe and ``p``'s intervention, and (``compare_natural``, default on) the
    same seeds without it; project both onto the map and read out the intervention's size and effect.

    ``twins``: a dict shared by several calls (a sweep's cells) so that cells with the same seeds,
    conditioning and steps render their natural twin once. ``project=False`` leaves ``actual`` and
    ``twin_points`` to the caller (``project_all``: one transform for many cells)."""
    micro_batch = variations_micro_batch(model, len(seeds))  # all variations in as few model calls as fit
    steps, options = int(p["steps"]), render_options(p)
    how = dict(family=family, sampler=sampler)
    res = render(model, recipe, seeds, steps, sigma_max, options, ds_layers, micro_batch, check=check, **how)
    twin = None
    if p.get("compare_natural", True):
        key = (
            tuple(seeds),
            steps,
            micro_batch,
            recipe.label_mode,
            recipe.class_label,
            repr(recipe.label_weights),
            family,
            repr(sorted((sampler or {}).items())),
        )
        twin = (twins or {}).get(key)
        if twin is None:
            twin = render(
                model, recipe, seeds, steps, sigma_max, options, ds_layers, micro_batch, check, True, **how
            )
            if twins is not None:
                twins[key] = twin
    reads = twin_readout(res, twin)
    from common.ml.device import current_threads

    device = str(next(model.parameters()).device)
    made = Made(seeds, micro_batch, res, twin, np.zeros((0, 2)), None, reads, device, current_threads())
    made.text = text_diagnostics(family, sampler or {})
    if project:
        project_all(reducer, [made])
    return made


def twin_readout(res, twin) -> list[dict]:
    """``readout`` of an intervened render ``res`` against its natural ``twin`` (None: no twin)."""
    return readout(
        res.intervention,
        res.activations,
        twin.activations if twin else None,
        res.images,
        twin.images if twin else None,
    )


def project_all(reducer, made: list[Made]) -> None:
    """Where every image and twin of ``made`` lands on the map, in one transform (sets ``actual`` and
    ``twin_points``)."""
    layers = reducer.layers
    parts = [flatten_activations({n: m.res.activations[n] for n in layers}) for m in made]
    parts += [flatten_activations({n: m.twin.activations[n] for n in layers}) for m in made if m.twin]
    points = reducer.transform(np.concatenate(parts))  # [sum n (+ twins), 2]
    at = 0
    for m in made:
        m.actual, at = points[at : at + len(m.seeds)], at + len(m.seeds)
    for m in made:
        if m.twin:
            m.twin_points, at = points[at : at + len(m.seeds)], at + len(m.seeds)


def save_made(settings: Settings, folder: str, made: Made, recipe: Recipe, ds_layers) -> None:
    """Images, twins, activations and masks of ``made`` under ``folder`` (each file written atomically)."""
    root, n = settings.data_root, len(made.seeds)
    for v in range(n):
        atomic_write_bytes(root / folder / f"{v:03d}.png", png_bytes(made.res.images[v]))
        if made.twin is not None:
            atomic_write_bytes(root / folder / f"twin-{v:03d}.png", png_bytes(made.twin.images[v]))
    for name in ds_layers:
        acts = made.res.activations[name].reshape(n, -1).astype(np.float32)
        atomic_save_npy(root / folder / f"{name}.npy", acts)
    for name, mask in recipe.masks.items():
        atomic_save_npy(root / folder / f"mask-{name}.npy", mask)


def record_made(
    session: Session,
    *,
    job_id: int,
    owner_id: int | None,
    ds_id: int,
    emb_id: int,
    p: dict[str, Any],
    recipe: Recipe,
    made: Made,
    folder: str,
    sha: str,
    first_variation: int = 0,
    sweep: tuple[int, int] | None = None,
    act_shard: str | None = None,
    first_row: int = 0,
    twin_dir: str | None = None,
    mask_dir: str | None = None,
) -> list[int]:
    """The sample, generation, lineage and map-point rows of ``made`` (inserted idempotently, keyed by
    job and variation ``first_variation + v``); returns the new sample ids in variation order.

    Files as ``save_made`` lays them out under ``folder``, unless a sweep shares them: activations in
    ``act_shard`` from row ``first_row``, twins in ``twin_dir``, target tensors in ``mask_dir``."""
    return record_many(session, [{k: v for k, v in locals().items() if k != "session"}])[0]


def record_many(session: Session, entries: list[dict[str, Any]]) -> list[list[int]]:
    """``record_made`` for several ``made`` at once (a sweep's cells): each entry is ``record_made``'s
    keyword arguments; one insert per table for all of them. Returns each entry's sample ids."""
    now = jobs.now()
    samples = []
    for e in entries:
        made, recipe, folder = e["made"], e["recipe"], e["folder"]
        act_shard, first = e.get("act_shard") or folder, e.get("first_variation", 0)
        samples += [
            {
                "dataset_id": e["ds_id"],
                "index": None,
                "class_label": recipe.class_label,
                "label_weights": recipe.label_weights,
                "noise_seed": made.seeds[v],
                "image_path": f"{folder}/{v:03d}.png",
                "act_shard": act_shard,
                "act_row": e.get("first_row", 0) + v,
                "origin": "generated",
                "job_id": e["job_id"],
                "variation": first + v,
                "created_by_id": e["owner_id"],
                "created_at": now,
            }
            for v in range(len(made.seeds))
        ]
    insert_ignore(session, Sample.__table__, samples)
    job_ids = sorted({e["job_id"] for e in entries})
    by_variation = {
        (job, variation): sid
        for job, variation, sid in session.execute(
            select(Sample.job_id, Sample.variation, Sample.id).where(
                Sample.job_id.in_(job_ids), Sample.origin == "generated"
            )
        ).all()
    }
    out, gens, lineage, points = [], [], [], []
    placed: dict[int, int] = {}
    for e in entries:
        first, n = e.get("first_variation", 0), len(e["made"].seeds)
        ids = [by_variation[(e["job_id"], first + v)] for v in range(n)]
        _generation_rows(e, ids, now, gens, lineage, points)
        placed[e["emb_id"]] = placed.get(e["emb_id"], 0) + n
        out.append(ids)
    insert_ignore(session, Generation.__table__, gens)
    insert_ignore(session, Lineage.__table__, lineage)
    insert_ignore(session, EmbeddingPoint.__table__, points)
    for emb_id, n in placed.items():
        emb = session.get(Embedding, emb_id)
        emb.num_points = emb.num_points + n
    return out


def _generation_rows(e: dict[str, Any], ids: list[int], now, gens: list, lineage: list, points: list) -> None:
    """Append the generation, lineage and map-point rows of entry ``e`` (``record_made``'s arguments)."""
    p, recipe, made, folder, sweep = e["p"], e["recipe"], e["made"], e["folder"], e.get("sweep")
    twin_dir, mask_dir = e.get("twin_dir") or folder, e.get("mask_dir") or folder
    job_id, owner_id, emb_id, n = e["job_id"], e["owner_id"], e["emb_id"], len(made.seeds)
    sha = e["sha"]
    options = render_options(p)
    intervention = {
        "layer_strength": options["layer_strength"],
        "alpha": options["alpha"] if p["mode"] == "direction" else None,
        "normalize": options["normalize"],
    }
    for v, sid in enumerate(ids):
        ax, ay = float(made.actual[v, 0]), float(made.actual[v, 1])
        read = made.readouts[v]
        twin_xy = made.twin_points[v] if made.twin_points is not None else None
        effects = read["effect"]
        gens.append(
            {
                "sample_id": sid,
                "embedding_id": emb_id,
                "selected_sample_id": int(p["selected"]),
                "job_id": job_id,
                "mode": p["mode"],
                "center_x": float(recipe.center[0]),
                "center_y": float(recipe.center[1]),
                "layers": list(recipe.masks),
                "steps": int(p["steps"]),
                "mask_steps": p.get("mask_steps"),
                "mask_window": mask_window(p),
                "strength": options["strength"],
                "intervention": intervention,
                "readout": read,
                "effect": max(effects.values()) if effects else None,
                "image_change": read["image_change"],
                "twin_image_path": f"{twin_dir}/twin-{v:03d}.png" if made.twin is not None else None,
                "twin_x": float(twin_xy[0]) if twin_xy is not None else None,
                "twin_y": float(twin_xy[1]) if twin_xy is not None else None,
                "sweep_id": sweep[0] if sweep else None,
                "sweep_cell": sweep[1] if sweep else None,
                "noise_seed": made.seeds[v],
                "class_mode": "prompt" if p.get("prompt") else str(p["class"]),
                "class_label": recipe.class_label,
                "label_weights": recipe.label_weights,
                "actual_x": ax,
                "actual_y": ay,
                "roundtrip_error": recipe.roundtrip_error,
                "distance_to_intended": float(np.hypot(ax - recipe.center[0], ay - recipe.center[1])),
                "diagnostics": {
                    **recipe.diagnostics,
                    "variation": v,
                    "variations": n,
                    "recipe_seed": int(p["seed"]),
                    "micro_batch": made.micro_batch,
                    **({"packing": made.packing[v]} if made.packing is not None else {}),
                    "mask_dir": mask_dir,
                    "device": made.device,
                    "threads": made.threads,
                    "torch": TORCH_VERSION,
                    **made.text,
                },
                "checkpoint_sha256": sha,
                "code_version": CODE_VERSION,
                "created_by_id": owner_id,
                "created_at": now,
            }
        )
        lineage.append({"child_id": sid, "parent_id": int(p["selected"]), "role": "selected", "weight": 0.0})
        lineage += [
            {"child_id": sid, "parent_id": int(nb), "role": "neighbor", "weight": float(wt)}
            for nb, wt in zip(p["neighbors"], recipe.weights, strict=True)
        ]
        negative = [int(s) for s in p.get("negative") or []]
        lineage += [
            {"child_id": sid, "parent_id": nb, "role": "negative", "weight": 1.0 / len(negative)}
            for nb in negative
        ]
        points.append({"embedding_id": emb_id, "sample_id": sid, "x": ax, "y": ay, "projected": True})
