"""Reproducibility bundles: one zip that regenerates a generated sample without the database it was made in.

Files (all listed in ``manifest.json`` with their sha256):

* ``recipe.json`` — the generation's parameters (mode, layers, intervention, steps, sigma), the seeds of
  the micro-batch it was rendered in and its position there, the conditioning, and the recorded row;
* ``model.json`` — the model card: name, preset, architecture config, label names, checkpoint sha256;
* ``neighbours.json`` — the parent sample ids by role with the sha256 of each one's activations used
  (float32, the masked layers in sorted order, ``common/ml/activations.py``'s layout);
* ``targets.npz`` — the tensors the layers were moved towards (the masks, [1, C, H, W] float32);
* ``environment.json`` — library versions and the device the image was made on (and the bundler's);
* ``image.png`` — the stored image; ``REPLAY.txt`` — the command that replays it.

``replay_bundle`` checks every hash first (a tampered file is named), finds the model by its checkpoint
sha256 among the registered models of this data root (no other rows needed), renders the micro-batch
again and compares the image bit for bit.

Usage::

    data = build_bundle(settings, session, sample_id)                 # zip bytes
    report = replay_bundle(settings, "sample-42.zip")                # report.identical, report.summary
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Embedding, Generation, GeneratorModel, Lineage, Sample
from common.platform.config import Settings
from common.platform.errors import NotFound, UserError
from common.platform.storage import UnsafePath, resolve_inside
from common.research.conditioning import sampler_setup
from common.research.datasets import read_activations
from common.research.generations import _replay_batch, replay_params
from common.research.interventions import render_options

FORMAT = "latentlab-bundle/1"
FILES = (
    "recipe.json",
    "model.json",
    "neighbours.json",
    "targets.npz",
    "environment.json",
    "image.png",
    "REPLAY.txt",
)
MAX_BUNDLE_BYTES = 256 * 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "latentlab"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_bundle(settings: Settings, session: Session, sample_id: int) -> bytes:
    """The reproducibility bundle of generated sample ``sample_id`` as zip bytes (NotFound when the
    sample was not generated from neighbours)."""
    gen = session.scalar(select(Generation).where(Generation.sample_id == sample_id))
    sample = session.get(Sample, sample_id)
    if gen is None or sample is None:
        raise NotFound(
            f"Sample {sample_id} was not generated from neighbours; it has no bundle.", field="sample"
        )
    try:
        return _bundle(settings, session, sample, gen)
    except (OSError, ValueError, UnsafePath):  # a file gone or changed under the data root
        raise NotFound(
            f"The files of sample {sample_id} (its target tensors, image or its neighbours' activations) "
            "are not available; it has no bundle.",
            field="sample",
        ) from None


def _bundle(settings: Settings, session: Session, sample: Sample, gen: Generation) -> bytes:
    sample_id = sample.id
    emb = session.get(Embedding, gen.embedding_id)
    model: GeneratorModel = emb.dataset.model
    params = replay_params(session, gen)
    seeds, micro_batch, pos = _replay_batch(gen)
    family, sampler = sampler_setup(model, emb.dataset, params)
    folder = (gen.diagnostics or {}).get("mask_dir") or sample.act_shard  # where the target tensors are
    targets = {}
    for name in gen.layers:
        targets[name] = np.load(
            resolve_inside(settings.data_root, f"{folder}/mask-{name}.npy"), allow_pickle=False
        )
    buf = io.BytesIO()
    np.savez(buf, **targets)
    parents = session.execute(
        select(Lineage.parent_id, Lineage.role)
        .where(Lineage.child_id == sample_id)
        .order_by(Lineage.parent_id)
    ).all()
    used = [pid for pid, role in parents if role in ("neighbor", "negative")]
    rows = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(used)))}
    masked = sorted(gen.layers) if gen.mode != "umap_inverse" else sorted(emb.layers)
    acts = read_activations(settings, [(rows[s].act_shard, rows[s].act_row) for s in used], masked)
    neighbours = {
        "selected": gen.selected_sample_id,
        "layers": masked,
        "samples": [
            {"sample_id": s, "role": role, "activation_sha256": _sha(np.ascontiguousarray(acts[i]).tobytes())}
            for i, (s, role) in enumerate((pid, role) for pid, role in parents if pid in rows)
        ],
    }
    recipe = {
        "format": FORMAT,
        "sample_id": sample_id,
        "params": params,
        "options": render_options(params),
        "seeds": seeds,
        "micro_batch": micro_batch,
        "position": pos,
        "steps": gen.steps,
        "sigma_max": model.default_sigma_max,
        "family": family,
        "sampler": sampler,
        "class_label": gen.class_label,
        "label_weights": gen.label_weights,
        "label_mode": "blend" if gen.label_weights else ("onehot" if gen.class_label is not None else None),
        "class_mode": gen.class_mode,
        "generation": {
            "noise_seed": gen.noise_seed,
            "checkpoint_sha256": gen.checkpoint_sha256,
            "code_version": gen.code_version,
            "diagnostics": gen.diagnostics,
        },
    }
    card = {
        "name": model.name,
        "preset": model.preset,
        "config": model.config,
        "label_names": model.label_names,
        "checkpoint_sha256": gen.checkpoint_sha256,
        "default_steps": model.default_steps,
        "default_sigma_max": model.default_sigma_max,
    }
    diag = gen.diagnostics or {}
    made_on = {"device": diag.get("device"), "torch": diag.get("torch"), "threads": diag.get("threads")}
    environment = {"made_on": made_on, "bundled_with": _versions()}
    files = {
        "recipe.json": _json(recipe),
        "model.json": _json(card),
        "neighbours.json": _json(neighbours),
        "targets.npz": buf.getvalue(),
        "environment.json": _json(environment),
        "image.png": resolve_inside(settings.data_root, sample.image_path).read_bytes(),
        "REPLAY.txt": (
            f"latentlab replay --bundle sample-{sample_id}.zip\n\n"
            "Needs a data root where a model with the checkpoint sha256 in model.json is registered\n"
            "(latentlab model add NAME --checkpoint FILE); exits 0 when the image is bit-identical.\n"
        ).encode(),
    }
    manifest = {"format": FORMAT, "files": {name: _sha(data) for name, data in files.items()}}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", _json(manifest))
    return out.getvalue()


# -- replay ---------------------------------------------------------------------------------------------


@dataclass
class ReplayReport:
    identical: bool
    summary: str
    max_abs_diff: int = 0
    differing_pixels: float = 0.0


def read_bundle(path: str | Path) -> dict[str, bytes]:
    """The bundle's files after checking each against ``manifest.json``; UserError naming a missing or
    tampered file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No bundle at {path}.", field="bundle")
    if path.stat().st_size > MAX_BUNDLE_BYTES:
        raise UserError(f"{path} is larger than a bundle can be ({MAX_BUNDLE_BYTES} bytes).", field="bundle")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "manifest.json" not in names:
                raise UserError(f"{path} has no manifest.json; it is not a latentlab bundle.", field="bundle")
            manifest = json.loads(zf.read("manifest.json"))
            files = {}
            for name in FILES:
                if name not in names:
                    raise UserError(f"The bundle is missing {name}.", field="bundle")
                if zf.getinfo(name).file_size > MAX_BUNDLE_BYTES:
                    raise UserError(f"{name} in the bundle is too large.", field="bundle")
                files[name] = zf.read(name)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(
            f"{path} is not a readable bundle (a zip with manifest.json).", field="bundle"
        ) from None
    expected = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    for name in FILES:
        if expected.get(name) != _sha(files[name]):
            raise UserError(
                f"{name} does not match its sha256 in manifest.json: "
                "the bundle was changed after it was made.",
                field="bundle",
            )
    return files


def replay_bundle(settings: Settings, path: str | Path, model_cache=None) -> ReplayReport:
    """Regenerate the bundle's image with the model registered here under the same checkpoint sha256."""
    from common.ml.families import get_family
    from common.platform.db import make_engine, session_factory
    from common.research.modelcache import ModelCache

    files = read_bundle(path)
    recipe = json.loads(files["recipe.json"])
    card = json.loads(files["model.json"])
    sha = card["checkpoint_sha256"]
    engine = make_engine(settings)
    with session_factory(engine)() as session:
        row = session.scalar(select(GeneratorModel).where(GeneratorModel.checkpoint_sha256 == sha))
        if row is None:
            raise UserError(
                f"No model with checkpoint sha256 {sha[:12]}… is registered here (the bundle's is "
                f"'{card['name']}'); register it with latentlab model add.",
                field="bundle",
            )
        made = json.loads(files["environment.json"]).get("made_on", {})
        threads = int(made.get("threads") or settings.cpu_threads())  # the same threads: the same bits
        cache = model_cache or ModelCache(1, settings.device or None, threads)
        model = cache.get(settings, row)
    engine.dispose()
    with np.load(io.BytesIO(files["targets.npz"]), allow_pickle=False) as z:
        masks = {name: z[name] for name in z.files}
    n = len(recipe["seeds"])
    mode = recipe["label_mode"]
    if mode == "blend":
        labels = [{int(c): v for c, v in recipe["label_weights"].items()}] * n
    elif mode == "onehot":
        labels = [int(recipe["class_label"])] * n
    else:
        labels, mode = None, {"uniform": "uniform", "none": "null"}.get(recipe["class_mode"], "null")
    sampler = dict(recipe.get("sampler") or {"sigma_max": float(recipe["sigma_max"])})
    if sampler.pop("free_prompt", False):
        labels, mode = [0] * n, "onehot"  # the one free-text prompt
    res = get_family(recipe.get("family") or "edm").generate(
        model,
        labels,
        recipe["seeds"],
        steps=int(recipe["steps"]),
        **sampler,
        masks=masks,
        label_mode=mode,
        micro_batch=recipe["micro_batch"],
        **recipe["options"],
    )
    from PIL import Image

    from common.platform.storage import png_bytes

    image = res.images[int(recipe["position"])]
    if png_bytes(image) == files["image.png"]:
        return ReplayReport(True, f"sample {recipe['sample_id']}: replayed image is bit-identical")
    stored = np.asarray(Image.open(io.BytesIO(files["image.png"])))
    stored = stored.reshape(image.shape) if stored.size == image.size else stored
    if stored.shape != image.shape:
        return ReplayReport(False, f"replayed image has shape {image.shape}, the bundle's {stored.shape}")
    diff = np.abs(stored.astype(np.int16) - image.astype(np.int16))
    report = ReplayReport(
        False, "", int(diff.max()), float((diff.reshape(-1, diff.shape[-1]).max(axis=1) > 0).mean())
    )
    report.summary = (
        f"sample {recipe['sample_id']}: replayed image DIFFERS: {report.differing_pixels:.1%} of pixels, "
        f"max |difference| {report.max_abs_diff}/255 (made on {made.get('device')} with torch "
        f"{made.get('torch')}; replayed on {next(model.parameters()).device} "
        f"with torch {_versions()['torch']})"
    )
    return report
