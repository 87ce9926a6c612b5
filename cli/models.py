"""``latentlab model …``: register and list generators."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.base import load_settings, main, open_sessions, require_schema


@main.group()
def model() -> None:
    """Registered generators."""


@model.command("add")
@click.argument("name")
@click.option("--preset", default=None, help="EDM architecture preset, e.g. dmd2-imagenet64.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=True), help="EDM weights file.")
@click.option(
    "--skip-load-check", is_flag=True, help="Do not load the checkpoint strictly before registering."
)
@click.option(
    "--diffusers",
    "diffusers_path",
    default=None,
    type=click.Path(),
    help="A diffusers pipeline folder (model_index.json), or with --config a single .safetensors: UNet "
    "weights in the diffusers layout, or an original-layout (LDM / SDXL) checkpoint.",
)
@click.option(
    "--config",
    "config_dir",
    default=None,
    type=click.Path(),
    help="The pipeline (or configs-only) folder giving the architecture of a .safetensors.",
)
@click.option(
    "--prompt", "prompts", multiple=True, help="A default prompt (repeatable; the model's classes)."
)
@click.option("--steps", type=int, default=None, help="Default sampler steps.")
@click.option("--guidance-scale", type=float, default=None, help="Default guidance (> 1 turns CFG on).")
@click.option("--no-guidance", is_flag=True, help="The recipe forbids classifier-free guidance (Turbo).")
@click.option(
    "--scheduler", default=None, help="A diffusers scheduler class name, e.g. EulerDiscreteScheduler."
)
@click.option("--timesteps", default=None, help="Explicit timesteps, e.g. 999,749,499,249.")
@click.option("--resolution", type=int, default=None, help="Default height and width in pixels.")
@click.option("--height", type=int, default=None, help="Default height in pixels.")
@click.option("--width", type=int, default=None, help="Default width in pixels.")
@click.option(
    "--dtype", default="float16", show_default=True, help="GPU precision: float16, bfloat16, float32."
)
@click.option("--negative-prompt", default="", help="The unconditional prompt of guidance.")
def model_add(
    name: str,
    preset: str | None,
    checkpoint: str | None,
    skip_load_check: bool,
    diffusers_path: str | None,
    config_dir: str | None,
    prompts: tuple[str, ...],
    steps: int | None,
    guidance_scale: float | None,
    no_guidance: bool,
    scheduler: str | None,
    timesteps: str | None,
    resolution: int | None,
    height: int | None,
    width: int | None,
    dtype: str,
    negative_prompt: str,
) -> None:
    """Register model NAME: an EDM CHECKPOINT with --preset (loaded strictly once to prove it matches), or a
    diffusers pipeline with --diffusers (loaded once on the CPU; its layer table is measured)."""
    settings = load_settings()
    require_schema(settings)
    if diffusers_path:
        if preset or checkpoint:
            raise click.UsageError("Give either --diffusers or --preset/--checkpoint, not both.")
        _add_diffusers(
            settings,
            name,
            diffusers_path,
            config_dir,
            list(prompts),
            steps=steps,
            guidance_scale=guidance_scale,
            allow_guidance=not no_guidance,
            scheduler=scheduler,
            timesteps=_parse_timesteps(timesteps),
            height=height or resolution,
            width=width or resolution,
            dtype=dtype,
            negative_prompt=negative_prompt,
        )
        return
    if not preset or not checkpoint:
        raise click.UsageError("Give --preset and --checkpoint (an EDM model) or --diffusers PATH.")
    if not Path(checkpoint).exists():
        raise click.BadParameter(f"no file or folder at {checkpoint}", param_hint="--checkpoint")
    from common.ml.presets import get_preset
    from common.research.registry import add_model

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


def _parse_timesteps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(
            f"'{text}' is not comma-separated integers, e.g. 999,749,499,249", param_hint="--timesteps"
        ) from None


def _add_diffusers(
    settings, name: str, path: str, config_dir: str | None, prompts: list[str], **options
) -> None:
    from common.platform.errors import UserError
    from common.research.registry import add_diffusers_model

    folder, weights = Path(path), None
    if folder.is_file():
        if not config_dir:
            raise click.BadParameter(
                f"{path} is a file: give its pipeline folder with --config FOLDER", param_hint="--diffusers"
            )
        folder, weights = Path(config_dir), path  # the file's keys decide: UNet weights or a checkpoint
    elif config_dir:
        raise click.BadParameter(
            "--config goes with a .safetensors file given to --diffusers", param_hint="--config"
        )
    click.echo(f"loading the diffusers pipeline in {folder} on the CPU …")
    try:
        with open_sessions(settings).begin() as session:
            m = add_diffusers_model(
                session, settings, name, path=folder, prompts=prompts, weights_file=weights, **options
            )
            click.echo(
                f"registered model '{m.name}' (id {m.id}, family diffusers, {m.config['pipeline']}, "
                f"source {m.card['source']}, "
                f"sha256 {m.checkpoint_sha256[:16]}…)"
            )
    except UserError as exc:
        hints = {"prompts": "--prompt", "diffusers": "--diffusers", "config": "--config", "name": "NAME"}
        hint = hints.get(exc.field, f"--{exc.field.replace('_', '-')}") if exc.field else None
        raise click.BadParameter(exc.message, param_hint=hint) from None


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
@click.option(
    "--sd",
    is_flag=True,
    help="Train the text-to-image demo digits-sd instead (a diffusers pipeline folder: VAE, CLIP text "
    "encoder, UNet2DConditionModel, DDIM); bench/demo_sd.py then measures its quality.",
)
@click.option("--vae-steps", type=click.IntRange(1), default=None, help="With --sd: VAE training steps.")
@click.option("--unet-steps", type=click.IntRange(1), default=None, help="With --sd: UNet training steps.")
def train_demo_command(
    out_dir: str | None,
    threads: int,
    teacher_steps: int | None,
    distill_steps: int | None,
    pairs: int | None,
    no_eval: bool,
    eval_per_class: int,
    sd: bool,
    vae_steps: int | None,
    unet_steps: int | None,
) -> None:
    """Train the digits demo models: an EDM teacher and its one-step student, with cards and a sheet
    (or, with --sd, the text-to-image pipeline digits-sd and its card).

    Deterministic: the same options, thread count and machine give the same files. The defaults are the
    recipe of the shipped digits-edm / digits-onestep models (with --sd: of digits-sd).
    """
    import dataclasses

    if sd:
        if teacher_steps or distill_steps or pairs:
            raise click.UsageError(
                "--teacher-steps, --distill-steps and --pairs train the EDM pair; not with --sd."
            )
        _train_sd_demo(out_dir, threads, vae_steps, unet_steps)
        return
    if vae_steps or unet_steps:
        raise click.UsageError("--vae-steps and --unet-steps train digits-sd; add --sd.")
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


def _train_sd_demo(out_dir: str | None, threads: int, vae_steps: int | None, unet_steps: int | None) -> None:
    import dataclasses

    from common.ml.demo.sd import SDTrainConfig, train_sd_demo
    from common.research.registry import SHIPPED_MODELS_DIR

    cfg = SDTrainConfig()
    if vae_steps:
        cfg = dataclasses.replace(cfg, vae_steps=vae_steps)
    if unet_steps:
        cfg = dataclasses.replace(cfg, unet_steps=unet_steps)
    out = out_dir or str(SHIPPED_MODELS_DIR)
    summary = train_sd_demo(out, config=cfg, threads=threads, log=click.echo)
    click.echo(json.dumps({"out": out, "timings": summary["timings"]}, indent=2))
