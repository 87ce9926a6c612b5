"""``latentlab model …``: register and list generators."""

from __future__ import annotations

import json

import click

from cli.base import load_settings, main, open_sessions, require_schema


@main.group()
def model() -> None:
    """Registered generators."""


@model.command("add")
@click.argument("name")
@click.option("--preset", required=True, help="Architecture preset, e.g. dmd2-imagenet64.")
@click.option(
    "--checkpoint", required=True, type=click.Path(exists=True, dir_okay=True), help="Weights file."
)
@click.option(
    "--skip-load-check", is_flag=True, help="Do not load the checkpoint strictly before registering."
)
def model_add(name: str, preset: str, checkpoint: str, skip_load_check: bool) -> None:
    """Register CHECKPOINT as model NAME (loaded strictly once to prove it matches the preset)."""
    from common.ml.presets import get_preset
    from common.research.registry import add_model

    settings = load_settings()
    require_schema(settings)
    try:
        p = get_preset(preset)
    except KeyError as exc:
        raise click.BadParameter(str(exc).strip("'\""), param_hint="--preset") from None
    if not skip_load_check:
        from common.ml.checkpoints import load_generator

        click.echo(f"loading {checkpoint} strictly as {preset} …")
        loaded, _sha = load_generator(checkpoint, p.config, device="cpu")
        del loaded
    with open_sessions(settings).begin() as session:
        m = add_model(session, settings, name, checkpoint=checkpoint, preset=preset)
        click.echo(f"registered model '{m.name}' (id {m.id}, sha256 {m.checkpoint_sha256[:16]}…)")


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
def model_list(as_json: bool) -> None:
    """List registered models."""
    from common.research.reads import list_models
    from common.research.registry import model_to_dict

    with open_sessions(load_settings())() as session:
        rows = [model_to_dict(m) for m in list_models(session)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for m in rows:
        h, w, c = m["image_shape"]
        click.echo(
            f"{m['id']}\t{m['name']}\t{m['preset'] or '-'}\t{h}x{w}x{c}\t{len(m['label_names'])} classes"
        )


@model.command("register-shipped")
def model_register_shipped() -> None:
    """Register the demo models shipped under data/models (``latentlab up`` does this on first run)."""
    from common.research.registry import register_shipped_models

    settings = load_settings()
    require_schema(settings)
    with open_sessions(settings).begin() as session:
        added = register_shipped_models(session, settings)
    click.echo(f"registered: {', '.join(added) or 'nothing new'}")


@main.command("train-demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: the shipped models folder, data/models).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="torch CPU threads; 1 is the shipped recipe (on a busy 2-core machine 2 threads ran slower).",
)
@click.option("--teacher-steps", type=click.IntRange(1), default=None, help="Teacher training steps.")
@click.option("--distill-steps", type=click.IntRange(1), default=None, help="Student distillation steps.")
@click.option("--pairs", type=click.IntRange(1), default=None, help="Teacher noise -> image pairs.")
@click.option("--no-eval", is_flag=True, help="Skip the quality evaluation and contact sheets.")
@click.option(
    "--eval-per-class",
    type=click.IntRange(2),
    default=100,
    show_default=True,
    help="Evaluation samples per class.",
)
def train_demo_command(
    out_dir: str | None,
    threads: int,
    teacher_steps: int | None,
    distill_steps: int | None,
    pairs: int | None,
    no_eval: bool,
    eval_per_class: int,
) -> None:
    """Train the digits demo models: an EDM teacher and its one-step student, with cards and a sheet.

    Deterministic: the same options, thread count and machine give the same files. The defaults are the
    recipe of the shipped digits-edm / digits-onestep models.
    """
    import dataclasses

    from common.ml.demo import train_demo
    from common.ml.training import DistillConfig, EDMTrainConfig
    from common.research.registry import SHIPPED_MODELS_DIR

    tcfg = EDMTrainConfig()
    dcfg = DistillConfig()
    if teacher_steps:
        tcfg = dataclasses.replace(tcfg, steps=teacher_steps)
    if distill_steps:
        dcfg = dataclasses.replace(dcfg, steps=distill_steps)
    if pairs:
        dcfg = dataclasses.replace(dcfg, pairs=pairs)
    out = out_dir or str(SHIPPED_MODELS_DIR)
    summary = train_demo(
        out,
        teacher_config=tcfg,
        distill_config=dcfg,
        threads=threads,
        evaluate=not no_eval,
        eval_per_class=eval_per_class,
        log=click.echo,
    )
    click.echo(json.dumps({"out": out, "timings": summary["timings"]}, indent=2))
