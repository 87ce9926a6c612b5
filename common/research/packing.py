"""A sweep's cells packed into shared model calls: the rows of one call belong to different cells (and to
their natural twins), each row with its own layers, strength, mode, alpha, step window, target and seed
(``RowIntervention`` in ``common/ml/intervening.py``).

Cells share calls when they share the sampler's steps and the kind of conditioning (``label_mode``); each
such group is laid out as rows (every cell's variations, then each distinct natural twin once) and run in
micro-batches of ``K = micro_batch_for(device, rows)`` (at most 16 on the CPU, the accelerators' fixed 16).
A cell whose family cannot take per-row settings (diffusers) is not packed: the sweep renders it on its
own as a generation (``common/research/variations.py``).

Exactness: at a fixed micro-batch a row's output does not depend on the other rows of the call nor on its
position (checked on the CPU for the demo models, one and two threads; the dataset's padded micro-batches
rely on the same property), so a packed cell is bit-for-bit its seeds rendered alone with its own settings
at micro-batch ``K``. ``K`` is recorded as the cell's ``micro_batch`` (with the call and row in
``packing``), so ``replay`` and ``latentlab replay --bundle`` re-render the cell's own seeds at ``K`` and
get the same bits; strength 0 is exactly the twin (rendered in the same calls), strength 1 the clamp. A
cell that leaves every layer natural (strength 0, or alpha 0 along a direction) is a natural forward pass
of its seeds row by row, so it serves as the twin of the cells with its seeds and conditioning: no extra
rows are rendered for that twin.

Usage::

    made = make_packed(model, cells, recipes, sigma_max, ds_layers, check, progress)   # [Made] per cell
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from common.research.interventions import render_options
from common.research.recipe import Recipe, labels_for
from common.research.variations import Made, twin_readout, variation_seeds


def packable(family: str) -> bool:
    """Whether ``family``'s sampler takes per-row interventions (``generate(row_interventions=...)``)."""
    return family == "edm"


def _row_specs(recipe: Recipe, p: dict[str, Any]) -> dict[str, Any]:
    from common.ml.hooks import RowIntervention

    o = render_options(p)
    window = tuple(o["mask_window"]) if o["mask_window"] is not None else None
    per_layer = o["layer_strength"] or {}
    return {
        name: RowIntervention(
            float(per_layer.get(name, o["strength"])), o["mask_mode"], o["alpha"], o["normalize"], window
        )
        for name in recipe.masks
    }


def _twin_key(seeds: list[int], recipe: Recipe) -> tuple:
    return (tuple(seeds), recipe.class_label, repr(recipe.label_weights))


def make_packed(
    model,
    cells: list[dict[str, Any]],
    recipes: list[Recipe],
    sigma_max: float,
    ds_layers: list[str],
    check: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Made]:
    """Every cell's ``Made`` (intervened images, twin, readouts; map points left to ``project_all``), the
    cells packed into shared calls. ``progress(done)`` is called after each call with the number of cells
    whose rows are all rendered; ``check`` before every model call (a job's cancel)."""
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (cell, recipe) in enumerate(zip(cells, recipes, strict=True)):
        groups.setdefault((int(cell["steps"]), recipe.label_mode), []).append(i)
    made: list[Made | None] = [None] * len(cells)
    finished: set[int] = set()
    calls = 0
    for (steps, label_mode), members in groups.items():
        seeds: list[int] = []
        labels: list[Any] = []
        specs: list[dict[str, Any]] = []
        targets: list[dict[str, np.ndarray]] = []
        cell_rows: dict[int, list[int]] = {}
        twin_rows: dict[tuple, list[int]] = {}
        twin_of: dict[int, tuple] = {}
        for i in members:
            cell, recipe = cells[i], recipes[i]
            own = variation_seeds(int(cell["seed"]), int(cell["variations"]))
            own_labels, _ = labels_for(recipe, len(own))
            row_specs = _row_specs(recipe, cell)
            cell_rows[i] = list(range(len(seeds), len(seeds) + len(own)))
            seeds += own
            labels += own_labels if own_labels is not None else [None] * len(own)
            specs += [row_specs] * len(own)
            targets += [recipe.masks] * len(own)
            if all(spec.is_natural() for spec in row_specs.values()):  # strength 0: its rows are the twin
                twin_rows.setdefault(_twin_key(own, recipe), cell_rows[i])
        for i in members:
            cell, recipe = cells[i], recipes[i]
            own = [seeds[r] for r in cell_rows[i]]
            own_labels = [labels[r] for r in cell_rows[i]]
            if cell.get("compare_natural", True):
                key = twin_of[i] = _twin_key(own, recipe)
                if key not in twin_rows:
                    twin_rows[key] = list(range(len(seeds), len(seeds) + len(own)))
                    seeds += own
                    labels += own_labels
                    specs += [{}] * len(own)
                    targets += [{}] * len(own)

        def after_call(end: int, members=members, cell_rows=cell_rows) -> None:
            finished.update(i for i in members if max(cell_rows[i]) < end)
            if progress is not None:
                progress(len(finished))

        rows_of = (seeds, labels, label_mode, specs, targets)
        results = _run_rows(model, *rows_of, steps, sigma_max, ds_layers, check, after_call)
        K, first_call = results["micro_batch"], calls
        calls += results["calls"]
        twins = {key: _take(results, rows, None) for key, rows in twin_rows.items()}
        from common.ml.device import current_threads

        device, threads = str(next(model.parameters()).device), current_threads()
        for i in members:
            rows, recipe = cell_rows[i], recipes[i]
            res = _take(results, rows, list(recipe.masks))
            twin = twins.get(twin_of.get(i))
            reads = twin_readout(res, twin)
            m = Made(
                list(seeds[r] for r in rows), K, res, twin, np.zeros((0, 2)), None, reads, device, threads
            )
            m.packing = [{"call": first_call + r // K, "row": r % K} for r in rows]
            made[i] = m
    return made


def _run_rows(
    model, seeds, labels, label_mode, specs, targets, steps, sigma_max, ds_layers, check, after_call
):
    """Render the rows in micro-batches (``after_call(rows done)`` after each); ``{"images",
    "activations", "intervention", "sigmas", "micro_batch", "calls"}`` over all rows (intervention NaN
    where a row does not mask a layer)."""
    from common.ml.generation import generate, micro_batch_for

    R = len(seeds)
    K = micro_batch_for(next(model.parameters()).device, R)
    images, acts, sizes, sigmas = [], {n: [] for n in ds_layers}, {}, []
    layers = list(dict.fromkeys(n for t in targets for n in t))
    for a in range(0, R, K):
        b = min(a + K, R)
        used = [n for n in layers if any(n in specs[r] for r in range(a, b))]
        masks = {}
        for name in used:
            shape = next(t[name] for t in targets if name in t).shape[-3:]
            rows = [
                np.broadcast_to(targets[r][name], (1, *shape))
                if name in targets[r]
                else np.zeros((1, *shape))
                for r in range(a, b)
            ]
            masks[name] = np.concatenate(rows).astype(np.float32)  # [b - a, C, H, W]
        res = generate(
            model,
            labels[a:b] if label_mode in ("onehot", "blend") else None,
            seeds[a:b],
            steps=steps,
            sigma_max=sigma_max,
            masks=masks or None,
            row_interventions=specs[a:b],
            record_intervention=True,
            capture=ds_layers,
            label_mode=label_mode,
            micro_batch=K,
            check=check,
        )
        images.append(res.images)
        sigmas = res.sigmas
        for name in ds_layers:
            acts[name].append(res.activations[name])
        for name in layers:
            got = (res.intervention or {}).get(name)
            sizes.setdefault(name, []).append(got if got is not None else np.full(b - a, np.nan))
        after_call(b)
    return {
        "images": np.concatenate(images),  # [R, H, W, C]
        "activations": {n: np.concatenate(v) for n, v in acts.items()},  # {layer: [R, C, H, W]}
        "intervention": {n: np.concatenate(v) for n, v in sizes.items()},  # {layer: [R]}
        "sigmas": sigmas,
        "micro_batch": K,
        "calls": -(-R // K),
    }


def _take(results: dict[str, Any], rows: list[int], layers: list[str] | None):
    """The ``GenerationResult`` of ``rows``; ``layers``: the masked layers whose sizes it records (None: a
    natural twin, no intervention). A layer no row was intervened on at any step has no size."""
    from common.ml.generation import GenerationResult

    intervention = None
    if layers is not None:
        intervention = {}
        for name in layers:
            v = results["intervention"][name][rows]
            if not np.isnan(v).any():
                intervention[name] = v
    return GenerationResult(
        images=results["images"][rows],
        activations={n: v[rows] for n, v in results["activations"].items()},
        sigmas=list(results["sigmas"]),
        intervention=intervention,
    )
