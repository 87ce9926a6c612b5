"""Sweeps: a grid of generate-from-neighbours settings run as one job on the interactive queue.

A sweep is the generate parameters plus ``grid``: axes (``strength``, ``layers``, ``mask_window``,
``seed``, ``mode``, ``alpha``), each a list of values; the cells are every combination, row-major in the
order of ``AXES`` (at most ``MAX_CELLS``). Every cell is checked like a generation of its own at submit
time (a bad cell refuses the whole sweep, naming the axis), then the job loads the model and the map once
and runs the cells packed into shared model calls (``common/research/packing.py``: rows of one call belong
to different cells; a diffusers model runs them one after the other), reporting progress per cell; each
cell's samples are recorded with the sweep id and the cell's index, their natural twins and readouts as
for any generation (``common/research/variations.py``), all committed with the job's success.

Usage::

    POST /api/v1/sweeps {"embedding": 3, "selected": 10, "neighbors": [11, 12],
                         "grid": {"strength": [0, 0.5, 1], "layers": [["midblock"], ["encoder_bottleneck"]]}}
    sweep_detail(session, sweep_id)          # the cells with parameters, sample ids and effect numbers
    contact_sheet(settings, session, sweep_id, rows="strength", cols="layers")   # PNG bytes
"""

from __future__ import annotations

import io
import itertools
import json
import re
import secrets
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from common import jobs
from common.models import Generation, Sample, Sweep, User
from common.platform.config import Settings
from common.platform.errors import NotFound, UserError, pydantic_message
from common.platform.storage import atomic_save_npy, atomic_write_bytes, png_bytes, resolve_inside
from common.research.conditioning import sampler_setup
from common.research.embeddings import ReducerCache, get_embedding
from common.research.generations import (
    MAX_ALPHA,
    GenerateFromNeighborsParams,
    Step,
    Strength,
    build_recipe,
    prepare_generate_from_neighbors,
)
from common.research.packing import make_packed, packable
from common.research.variations import (
    generated_dir,
    make_variations,
    project_all,
    record_many,
    variation_seeds,
)

MAX_CELLS = 256
AXES = ("strength", "layers", "mask_window", "seed", "mode", "alpha")
Alpha = Annotated[float, Field(ge=-MAX_ALPHA, le=MAX_ALPHA, allow_inf_nan=False)]
Axis = Literal["strength", "layers", "mask_window", "seed", "mode", "alpha"]


class SweepGrid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strength: list[Strength] | None = Field(default=None, min_length=1, max_length=MAX_CELLS)
    layers: list[list[str]] | None = Field(default=None, min_length=1, max_length=MAX_CELLS)
    mask_window: list[tuple[Step, Step] | None] | None = Field(
        default=None, min_length=1, max_length=MAX_CELLS
    )
    seed: list[int] | None = Field(default=None, min_length=1, max_length=MAX_CELLS)
    mode: list[Literal["activation_mean", "umap_inverse", "weighted", "direction"]] | None = Field(
        default=None, min_length=1, max_length=MAX_CELLS
    )
    alpha: list[Alpha] | None = Field(default=None, min_length=1, max_length=MAX_CELLS)


class SweepParams(GenerateFromNeighborsParams):
    grid: SweepGrid = Field(description="axis -> values; every combination is one cell (at most 256)")


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's axes, row-major in ``AXES`` order: ``[{axis: value}, ...]``."""
    axes = [a for a in AXES if grid.get(a) is not None]
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*(grid[a] for a in axes))]


def prepare_sweep(session: Session, params: SweepParams, owner: User, settings: Settings) -> dict[str, Any]:
    grid = params.grid.model_dump(mode="json", exclude_none=True)
    if not grid:
        raise UserError(
            "The grid has no axis; give at least one of " + ", ".join(AXES) + ".", field="params.grid"
        )
    count = 1
    for values in grid.values():
        count *= len(values)
    if count > MAX_CELLS:
        raise UserError(
            f"The grid has {count} cells; a sweep runs at most {MAX_CELLS}. Use fewer values.",
            field="params.grid",
        )
    base = params.model_dump(mode="json", by_alias=True, exclude={"grid"})
    if base["seed"] is None:
        base["seed"] = secrets.randbits(31)  # one seed for every cell, so the cells differ only by the grid
    cells = grid_cells(grid)
    prepared = []
    for i, cell in enumerate(cells):
        axis = next(iter(cell), "grid")
        merged = {**base, **cell}
        if merged["mode"] != "direction" and "mode" in cell:  # the direction's options serve its cells only
            merged.update(negative=None, alpha=None, normalize=False)
        try:
            one = GenerateFromNeighborsParams.model_validate(merged)
        except ValidationError as exc:
            message, _ = pydantic_message(exc)
            raise UserError(f"Cell {i} ({cell}): {message}", field=f"params.grid.{axis}") from None
        try:
            prepared.append(prepare_generate_from_neighbors(session, one, owner, settings))
        except UserError as exc:
            name = (exc.field or "").removeprefix("params.")
            field = f"params.grid.{name}" if name in cell else exc.field
            raise UserError(f"Cell {i} ({cell}): {exc}", field=field) from None
    emb = get_embedding(session, params.embedding)
    sweep = Sweep(embedding_id=emb.id, owner_id=owner.id, params=base, grid=grid, cells=cells)
    session.add(sweep)
    session.flush()
    return {"sweep_id": sweep.id, "embedding": emb.id, "cells": prepared}


def run_sweep(ctx: jobs.JobContext, model_cache, reducers: ReducerCache) -> dict[str, Any]:
    p = ctx.params
    settings, cells = ctx.settings, p["cells"]
    with ctx.session_factory() as session:
        emb = get_embedding(session, p["embedding"])
        ds, model_row = emb.dataset, emb.dataset.model
        reducer = reducers.get(settings, session, emb)
        model = model_cache.get(settings, model_row)
        recipes = _recipes(settings, session, emb, cells, reducers)
        ds_id, emb_id, ds_layers = ds.id, emb.id, list(ds.layers)
        sigma_max, sha = model_row.default_sigma_max, model_row.checkpoint_sha256
        family, sampler = sampler_setup(model_row, ds, p.get("base") or cells[0])
    if packable(family):  # the cells share model calls, row by row (common/research/packing.py)
        ctx.progress(0.05, f"cell 0 of {len(cells)}")

        def cells_done(done: int) -> None:
            ctx.progress(0.05 + 0.85 * done / len(cells), f"cell {done} of {len(cells)}")

        made = make_packed(model, cells, recipes, sigma_max, ds_layers, ctx.check, cells_done)
    else:
        made = _cell_by_cell(ctx, model, reducer, cells, recipes, sigma_max, ds_layers, family, sampler)
    project_all(reducer, made)
    model_cache.assert_no_hooks()
    ctx.check()
    ctx.progress(0.9, "saving images and activations")
    root = generated_dir(ds_id, ctx.job_id)
    places = save_sweep(settings, root, made, recipes, ds_layers)
    entries, first = [], 0
    for i, (cell, m, recipe) in enumerate(zip(cells, made, recipes, strict=True)):
        entries.append(
            dict(
                job_id=ctx.job_id,
                owner_id=ctx.owner_id,
                ds_id=ds_id,
                emb_id=emb_id,
                p=cell,
                recipe=recipe,
                made=m,
                folder=f"{root}/cell-{i:03d}",
                sha=sha,
                first_variation=first,
                sweep=(int(p["sweep_id"]), i),
                act_shard=root,
                first_row=first,
                **places[i],
            )
        )
        first += len(m.seeds)
    with ctx.session_factory.begin() as session:
        recorded = record_many(session, entries)  # every cell's rows in one insert per table
        out = [
            {"cell": i, "samples": ids, "readout": m.readouts}
            for i, (ids, m) in enumerate(zip(recorded, made, strict=True))
        ]
        sweep = session.get(Sweep, int(p["sweep_id"]))
        sweep.job_id = ctx.job_id
        result = {"sweep_id": sweep.id, "cells": out, "model_cache": model_cache.stats()}
        ctx.complete(session, result)
    return result


def _cell_by_cell(ctx, model, reducer, cells, recipes, sigma_max, ds_layers, family, sampler) -> list:
    """A family without per-row interventions: each cell is rendered as a generation of its own (cells
    with the same seeds and conditioning share one natural twin)."""
    made, twins = [], {}
    for i, (cell, recipe) in enumerate(zip(cells, recipes, strict=True)):
        ctx.progress(0.05 + 0.85 * i / len(cells), f"cell {i + 1} of {len(cells)}")
        seeds = variation_seeds(int(cell["seed"]), int(cell["variations"]))
        made.append(
            make_variations(
                model,
                reducer,
                recipe,
                cell,
                seeds,
                sigma_max,
                ds_layers,
                ctx.check,
                twins=twins,
                project=False,
                family=family,
                sampler=sampler,
            )
        )
    return made


def save_sweep(settings: Settings, root: str, made: list, recipes: list, ds_layers) -> list[dict[str, str]]:
    """A sweep's files under ``root``: each cell's images in ``cell-<i>/``, every cell's activations in one
    ``<layer>.npy`` (rows in cell order), and a twin (``twin-<k>/``) or a recipe's target tensors
    (``recipe-<k>/``) once however many cells share it. Returns each cell's ``twin_dir``/``mask_dir``."""
    data, places = settings.data_root, []
    twin_dirs: dict[int, str] = {}
    mask_dirs: dict[int, str] = {}
    for i, (m, recipe) in enumerate(zip(made, recipes, strict=True)):
        for v in range(len(m.seeds)):
            atomic_write_bytes(data / root / f"cell-{i:03d}" / f"{v:03d}.png", png_bytes(m.res.images[v]))
        if m.twin is not None and id(m.twin) not in twin_dirs:
            twin_dirs[id(m.twin)] = f"{root}/twin-{len(twin_dirs):03d}"
            for v in range(len(m.seeds)):
                atomic_write_bytes(
                    data / twin_dirs[id(m.twin)] / f"twin-{v:03d}.png", png_bytes(m.twin.images[v])
                )
        if id(recipe) not in mask_dirs:
            mask_dirs[id(recipe)] = f"{root}/recipe-{len(mask_dirs):03d}"
            for name, mask in recipe.masks.items():
                atomic_save_npy(data / mask_dirs[id(recipe)] / f"mask-{name}.npy", mask)
        places.append({"twin_dir": twin_dirs.get(id(m.twin)), "mask_dir": mask_dirs[id(recipe)]})
    for name in ds_layers:
        rows = [m.res.activations[name].reshape(len(m.seeds), -1) for m in made]
        atomic_save_npy(data / root / f"{name}.npy", np.concatenate(rows).astype(np.float32))  # [cells·n, D]
    return places


def _recipes(settings, session, emb, cells, reducers) -> list:
    """Each cell's recipe, built once per distinct one (strength, window, seed and alpha do not change it)."""
    keys = ("mode", "layers", "neighbors", "negative", "weights", "class", "selected")
    built: dict[str, Any] = {}
    out = []
    for cell in cells:
        key = json.dumps([cell.get(k) for k in keys])
        if key not in built:
            built[key] = build_recipe(settings, session, emb, cell, reducers)
        out.append(built[key])
    return out


# -- reads ---------------------------------------------------------------------------------------------


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"No sweep {sweep_id}.", field="sweep")
    return sweep


def sweep_detail(session: Session, sweep_id: int) -> dict[str, Any]:
    """The sweep, its job and its cells: each cell's axis values, sample ids and effect numbers."""
    sweep = get_sweep(session, sweep_id)
    rows = session.execute(
        select(Generation.sweep_cell, Generation.sample_id, Generation.effect, Generation.image_change)
        .where(Generation.sweep_id == sweep.id)
        .order_by(Generation.sweep_cell, Generation.sample_id)
    ).all()
    by_cell: dict[int, list[tuple[int, float | None, float | None]]] = {}
    for cell, sid, effect, change in rows:
        by_cell.setdefault(cell, []).append((sid, effect, change))
    cells = []
    for i, values in enumerate(sweep.cells):
        got = by_cell.get(i, [])
        effects = [e for _, e, _ in got if e is not None]
        changes = [c for _, _, c in got if c is not None]
        cells.append(
            {
                "cell": i,
                "params": values,
                "samples": [sid for sid, _, _ in got],
                "effect": sum(effects) / len(effects) if effects else None,
                "image_change": sum(changes) / len(changes) if changes else None,
            }
        )
    return {
        "id": sweep.id,
        "embedding_id": sweep.embedding_id,
        "job_id": sweep.job_id,
        "params": sweep.params,
        "grid": sweep.grid,
        "axes": [a for a in AXES if a in sweep.grid],
        "cells": cells,
        "created_at": sweep.created_at.isoformat(),
    }


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(map(str, value)) if value and isinstance(value[0], str) else str(value)
    return "none" if value is None else str(value)


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after ``+``, ``,`` or a space where it
    can be (a layer set such as ``encoder_bottleneck+midblock`` keeps every name, never cut short)."""
    lines, current = [], ""
    for piece in re.findall(r"[^+, ]+[+, ]?|[+, ]", text):
        if current and len(current) + len(piece.rstrip()) > width:
            lines.append(current.rstrip())
            current = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        current += piece
    if current.strip() or not lines:
        lines.append(current.rstrip())
    return lines


def contact_sheet(
    settings: Settings, session: Session, sweep_id: int, rows: str | None = None, cols: str | None = None
) -> bytes:
    """A labelled PNG of every cell's first image: one row per value of axis ``rows``, one column per value of
    ``cols`` (defaults: the grid's first and second axes); other axes are laid out along the columns."""
    detail = sweep_detail(session, sweep_id)
    axes = detail["axes"]
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None and value not in axes:
            raise UserError(f"{name}={value!r} is not an axis of this sweep ({', '.join(axes)}).", field=name)
    rows = rows or next((a for a in axes if a != cols), axes[0])
    cols = cols or next((a for a in axes if a != rows), None)
    if cols == rows:
        raise UserError("rows and cols must be different axes.", field="cols")
    row_values = detail["grid"][rows]
    col_keys: list[tuple] = []
    placed: dict[tuple[int, tuple], int] = {}
    for cell in detail["cells"]:
        r = row_values.index(cell["params"][rows])
        key = tuple(_label(cell["params"][a]) for a in axes if a != rows)
        if key not in col_keys:
            col_keys.append(key)
        placed[(r, key)] = cell["samples"][0] if cell["samples"] else None
    tile, pad, left, line = 96, 4, 110, 12
    heads = [_wrap(" ".join(key), 16) for key in col_keys]
    top = max(28, 6 + line * max((len(h) for h in heads), default=1))  # 28: one line, as before
    width = left + len(col_keys) * (tile + pad)
    height = top + len(row_values) * (tile + pad)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, head in enumerate(heads):
        draw.multiline_text((left + c * (tile + pad), 2), "\n".join(head), fill="black", spacing=2)
    wanted = [v for v in placed.values() if v]
    found = session.execute(select(Sample.id, Sample.image_path).where(Sample.id.in_(wanted)))
    paths = {sid: path for sid, path in found}
    for r, value in enumerate(row_values):
        label = _wrap(f"{rows}={_label(value)}", 17)
        y = top + r * (tile + pad) + max(0, tile // 2 - line * len(label) // 2)
        draw.multiline_text((2, y), "\n".join(label), fill="black", spacing=2)
        for c, key in enumerate(col_keys):
            sid = placed.get((r, key))
            if sid is None:
                continue
            try:
                with Image.open(resolve_inside(settings.data_root, paths[sid])) as im:
                    thumb = im.convert("RGB").resize((tile, tile), Image.NEAREST)
            except (OSError, ValueError):  # an image gone from the data root: its tile stays blank
                continue
            sheet.paste(thumb, (left + c * (tile + pad), top + r * (tile + pad)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


SWEEP_KIND = jobs.JobKind("sweep", "interactive", SweepParams, prepare=prepare_sweep)

KINDS = (SWEEP_KIND,)
