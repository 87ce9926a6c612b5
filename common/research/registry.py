"""Registered generators: the shipped demo models and any checkpoint a user adds (no torch here).

Usage::

    register_shipped_models(session, settings)           # on a fresh data root (``latentlab up``)
    model = add_model(session, settings, "dmd2", preset="dmd2-imagenet64", checkpoint="/ckpt/model.bin")
    path = checkpoint_file(settings, model)               # resolved, inside the data root or absolute
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import GeneratorModel
from common.platform.config import Settings
from common.platform.errors import Conflict, NotFound, UserError
from common.platform.ids import find_by_id_or_name
from common.platform.storage import atomic_writer, resolve_inside, sha256_file

log = logging.getLogger(__name__)

SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[2] / "data" / "models"
MODEL_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


def checkpoint_file(settings: Settings, model: GeneratorModel) -> Path:
    """The model's checkpoint on disk: relative paths resolve inside the data root."""
    stored = Path(model.checkpoint_path)
    if stored.is_absolute():
        return stored
    return resolve_inside(settings.data_root, stored)


def _stored_path(settings: Settings, path: Path) -> str:
    real = path.resolve()
    root = settings.data_root
    return real.relative_to(root).as_posix() if real.is_relative_to(root) else str(real)


def get_model(session: Session, ref: str | int) -> GeneratorModel:
    """A model by id or name; NotFound lists the registered names."""
    model = find_by_id_or_name(session, GeneratorModel, ref, "model")
    if model is None:
        names = session.scalars(select(GeneratorModel.name).order_by(GeneratorModel.name)).all()
        raise NotFound(
            f"No model '{ref}'; registered models: {', '.join(names) or 'none (run latentlab up once)'}.",
            field="model",
        )
    return model


def check_model_name(session: Session, name: str) -> None:
    """Refuse a malformed or taken model name (UserError / Conflict naming the field)."""
    if not name or len(name) > 100 or any(ch not in MODEL_NAME_CHARS for ch in name):
        raise UserError("A model name has 1–100 characters: letters, digits, '-', '_' or '.'.", field="name")
    if name.isdigit():  # a model is found by id or name: "3" would be shadowed by model 3
        raise UserError(f"A model name cannot be only digits ('{name}'); add a letter.", field="name")
    if session.scalar(select(GeneratorModel.id).where(GeneratorModel.name == name)) is not None:
        raise Conflict(f"A model named '{name}' is already registered; pick another name.", field="name")


def add_diffusers_model(
    session: Session,
    settings: Settings,
    name: str,
    *,
    path: str | Path,
    prompts: list[str],
    card: dict[str, Any] | None = None,
    created_by_id: int | None = None,
    expected_sha256: str | None = None,
    **options: Any,
) -> GeneratorModel:
    """Register a diffusers pipeline folder under ``name`` (family ``diffusers``): the pipeline is loaded
    once on the CPU to check every option and measure its layer table
    (``common.ml.families.diffusers.inspect``: ``weights_file`` -- a single ``.safetensors`` with ``path``
    as its config folder, UNet weights or an original-layout checkpoint --, ``unet_weights``, ``steps``,
    ``guidance_scale``, ``allow_guidance``, ``scheduler``, ``timesteps``, ``height``, ``width``, ``dtype``,
    ``negative_prompt``).
    ``prompts`` are the model's default prompts (its label names); ``expected_sha256`` (a shipped card's)
    must equal the weights' digest. Nothing is written when a check fails."""
    check_model_name(session, name)
    folder = Path(path).expanduser()
    from common.ml.families import ARCHITECTURES, get_family

    config, digest = get_family("diffusers").inspect(folder, prompts=prompts, **options)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"The weights' sha256 is {digest}, not the expected {expected_sha256}.")
    model = GeneratorModel(
        name=name,
        architecture=ARCHITECTURES["diffusers"],
        family="diffusers",
        preset=None,
        config=config,
        checkpoint_path=_stored_path(settings, folder),
        checkpoint_sha256=digest,
        label_names=list(prompts),
        default_steps=int(config["default_steps"]),
        default_sigma_max=0.0,
        card={
            **(card or {}),
            "family": "diffusers",
            "prompts": list(prompts),
            "source": config.get("source", "pipeline"),
            "weights_sha256": "sha256 over (relative path, sha256) of every weight file",
        },
        created_by_id=created_by_id,
    )
    session.add(model)
    session.flush()
    return model


def add_model(
    session: Session,
    settings: Settings,
    name: str,
    *,
    checkpoint: str | Path,
    preset: str | None = None,
    config: dict[str, Any] | None = None,
    label_names: list[str] | None = None,
    default_steps: int | None = None,
    default_sigma_max: float | None = None,
    card: dict[str, Any] | None = None,
    created_by_id: int | None = None,
    expected_sha256: str | None = None,
) -> GeneratorModel:
    """Register a checkpoint under ``name``. Either ``preset`` (its config, labels and sampler) or an
    explicit ``config`` + ``label_names``. The checkpoint is hashed; loading it strictly is the caller's
    check (``common.ml.checkpoints.load_generator``), done by ``latentlab model add``."""
    check_model_name(session, name)
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise UserError(
            f"No checkpoint at {path}; give the path of a .safetensors or .bin file.", field="checkpoint"
        )
    if preset:
        from common.ml.presets import get_preset

        try:
            p = get_preset(preset)
        except KeyError as exc:
            raise UserError(str(exc).strip("'\""), field="preset") from None
        config = config or p.config
        label_names = label_names or list(p.label_names)
        default_steps = default_steps or p.default_steps
        default_sigma_max = default_sigma_max or p.default_sigma_max
    if config is None or label_names is None:
        raise UserError("Give a --preset, or both a config and label names.", field="preset")
    if len(label_names) != int(config.get("label_dim", 0)):
        raise UserError(
            f"{len(label_names)} label names for a model with label_dim {config.get('label_dim')}.",
            field="label_names",
        )
    target = path
    if path.is_dir():
        from common.ml.checkpoints import find_checkpoint_file

        target = find_checkpoint_file(path)
    digest = sha256_file(target)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"The checkpoint's sha256 is {digest}, not the expected {expected_sha256}.")
    model = GeneratorModel(
        name=name,
        architecture="dhariwal-unet",
        preset=preset,
        config=config,
        checkpoint_path=_stored_path(settings, target),
        checkpoint_sha256=digest,
        label_names=list(label_names),
        default_steps=default_steps or 1,
        default_sigma_max=default_sigma_max or 80.0,
        card=card or {},
        created_by_id=created_by_id,
    )
    session.add(model)
    session.flush()
    return model


def shipped_cards(directory: Path = SHIPPED_MODELS_DIR) -> list[dict[str, Any]]:
    """The model cards (``*.json``) shipped with latentlab, each with its ``_path``."""
    cards = []
    for path in sorted(directory.glob("*.json")):
        card = json.loads(path.read_text())
        if "name" in card and "checkpoint" in card:
            card["_path"] = path
            cards.append(card)
    return cards


def register_shipped_models(session: Session, settings: Settings, directory: Path | None = None) -> list[str]:
    """Register every shipped model card not yet registered (copying its weights into the data root
    when the data root is elsewhere); returns the names added."""
    if directory is None:
        configured = str(settings.shipped_models) not in ("", ".")
        directory = settings.shipped_models if configured else SHIPPED_MODELS_DIR
    added = []
    for card in shipped_cards(directory):
        name = card["name"]
        if session.scalar(select(GeneratorModel.id).where(GeneratorModel.name == name)) is not None:
            continue
        source = card["_path"].parent / card["checkpoint"]
        if not source.exists():
            log.warning("shipped model %s has no weights at %s; skipped", name, source)
            continue
        dest = settings.data_root / "models" / source.name
        if card.get("family") == "diffusers":
            try:  # a pipeline that cannot load here (no diffusers, a bad copy) must not cost the other demos
                with session.begin_nested():
                    _register_shipped_pipeline(session, settings, card, source, dest)
            except (UserError, OSError, ImportError) as exc:
                log.warning("shipped model %s could not be registered: %s", name, exc)
                continue
            added.append(name)
            continue
        if source.resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or sha256_file(dest) != card["sha256"]:
                with atomic_writer(dest) as out, open(source, "rb") as src:
                    shutil.copyfileobj(src, out)
        public_card = {k: v for k, v in card.items() if not k.startswith("_")}
        add_model(
            session,
            settings,
            name,
            checkpoint=dest,
            config=card["config"],
            label_names=card["label_names"],
            default_steps=card.get("default_steps", 1),
            default_sigma_max=card.get("default_sigma_max", 80.0),
            card=public_card,
            preset=card.get("preset"),
            expected_sha256=card["sha256"],
        )
        added.append(name)
    return added


def _register_shipped_pipeline(
    session: Session, settings: Settings, card: dict[str, Any], source: Path, dest: Path
) -> None:
    """A shipped diffusers pipeline folder: copied into the data root (a temporary sibling renamed into
    place) unless it is there already, then registered with the card's prompts and defaults; its weights'
    digest must match the card's."""
    if source.resolve() != dest.resolve() and not dest.exists():
        staging = dest.parent / f".{dest.name}.copying"
        shutil.rmtree(staging, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, staging)
        staging.rename(dest)
    defaults = card.get("defaults") or {}
    add_diffusers_model(
        session,
        settings,
        card["name"],
        path=dest,
        prompts=list(card["prompts"]),
        card={k: v for k, v in card.items() if not k.startswith("_")},
        expected_sha256=card["sha256"],
        steps=defaults.get("steps"),
        guidance_scale=defaults.get("guidance_scale"),
        scheduler=defaults.get("scheduler"),
        height=defaults.get("height"),
        width=defaults.get("width"),
        dtype=defaults.get("dtype", "float32"),
    )


def model_to_dict(model: GeneratorModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "architecture": model.architecture,
        "family": model.family,
        "preset": model.preset,
        "config": model.config,
        "checkpoint_sha256": model.checkpoint_sha256,
        "label_names": model.label_names,
        "default_steps": model.default_steps,
        "default_sigma_max": model.default_sigma_max,
        "image_shape": list(model.image_shape),
        "card": {k: v for k, v in (model.card or {}).items() if k not in ("config", "label_names")},
        "created_at": model.created_at.isoformat() if model.created_at else None,
    }
