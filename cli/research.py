"""``latentlab dataset|embed|generate|reproject|neighbors|history|replay``: the research loop from a shell.
Each job command enqueues through the same path as the API; ``--wait`` shows a progress bar."""

from __future__ import annotations

import json
import sys

import click

from cli.base import (
    ROW_ID,
    job_owner,
    load_settings,
    main,
    make_publisher,
    open_sessions,
    require_schema,
    wait_for_job,
)


def _csv_ints(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers") from None


def _csv_ids(value: str | None) -> list[int] | None:
    if value is None:
        return None
    return [ROW_ID.convert(v.strip(), None, None) for v in value.split(",") if v.strip()]


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _submit(kind: str, params: dict, username: str | None, wait: bool) -> None:
    from common import jobs

    settings = load_settings()
    require_schema(settings)
    sessions = open_sessions(settings)
    params = {k: v for k, v in params.items() if v is not None}
    job = jobs.submit(
        sessions,
        make_publisher(settings),
        settings,
        owner=job_owner(sessions, username),
        kind=kind,
        params=params,
    )
    note = "" if job.published_at else " (broker unreachable: it will be published when Redis is back)"
    click.echo(f"job {job.id} ({kind}) {job.status}{note}")
    if wait:
        sys.exit(wait_for_job(sessions, job.id))


wait_option = click.option("--wait/--no-wait", default=False, help="Wait for the job with a progress bar.")
as_option = click.option(
    "--as", "username", default=None, help="Owner of the job (default: the first admin)."
)


@main.group()
def dataset() -> None:
    """Datasets of generated images with captured activations."""


@dataset.command("create")
@click.option("--model", required=True, help="Model name or id (see `latentlab model list`).")
@click.option("--name", required=True, help="Dataset name; an existing name grows that dataset.")
@click.option("--num-samples", "-n", required=True, type=int)
@click.option("--classes", default="all", show_default=True, help="'all' or comma-separated class indices.")
@click.option("--layers", default=None, help="Comma-separated layers (default encoder_bottleneck,midblock).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--steps", default=None, type=int, help="Sampler steps (default: the model's).")
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option(
    "--micro-batch",
    default=None,
    type=int,
    help="Samples per model call, fixed for the dataset (default: LATENTLAB_MICRO_BATCH, 16).",
)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="Text-to-image models: a prompt (repeatable).")
@click.option("--negative-prompt", default=None, help="Text-to-image models: the unconditional prompt.")
@click.option("--guidance-scale", default=None, type=float, help="Text-to-image models: > 1 turns CFG on.")
@click.option("--height", default=None, type=int, help="Text-to-image models: image height in pixels.")
@click.option("--width", default=None, type=int, help="Text-to-image models: image width in pixels.")
@as_option
@wait_option
def dataset_create(
    model,
    name,
    num_samples,
    classes,
    layers,
    seed,
    steps,
    batch_size,
    micro_batch,
    dtype,
    prompts,
    negative_prompt,
    guidance_scale,
    height,
    width,
    username,
    wait,
):
    """Enqueue a generate_dataset job (text-to-image models: sample i uses prompt i mod the number)."""
    params = {
        "prompts": list(prompts) or None,
        "negative_prompt": negative_prompt,
        "guidance_scale": guidance_scale,
        "height": height,
        "width": width,
        "model": model,
        "name": name,
        "num_samples": num_samples,
        "classes": "all" if classes == "all" else _csv_ints(classes),
        "layers": _csv(layers),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "micro_batch": micro_batch,
        "dtype": dtype,
    }
    _submit("generate_dataset", params, username, wait)


@dataset.command("list")
@click.option("--json", "as_json", is_flag=True)
def dataset_list(as_json: bool) -> None:
    """List datasets."""
    from common.research.datasets import dataset_to_dict
    from common.research.reads import list_datasets

    with open_sessions(load_settings())() as session:
        rows = [dataset_to_dict(session, d) for d in list_datasets(session)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for d in rows:
        click.echo(
            f"{d['id']}\t{d['name']}\t{d['model']}\t{d['status']}\t{d['num_samples']}/{d['target_size']}"
            f"\t{','.join(d['layers'])}"
        )


@main.command()
@click.option("--dataset", required=True, help="Dataset name or id.")
@click.option("--name", default=None)
@click.option("--layers", default=None, help="Comma-separated subset of the captured layers.")
@click.option("--scaler", type=click.Choice(["standard", "none"]), default="standard", show_default=True)
@click.option("--pca-dims", default=None, type=int, help="Default: none below 20,000 samples, 256 above.")
@click.option("--n-neighbors", default=15, show_default=True, type=int)
@click.option("--min-dist", default=0.1, show_default=True, type=float)
@click.option(
    "--metric",
    type=click.Choice(["euclidean", "cosine", "manhattan", "correlation"]),
    default="euclidean",
    show_default=True,
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-samples", default=None, type=int)
@as_option
@wait_option
def embed(
    dataset, name, layers, scaler, pca_dims, n_neighbors, min_dist, metric, seed, max_samples, username, wait
):
    """Enqueue a fit_embedding job (scaler → PCA → UMAP)."""
    params = {
        "dataset": dataset,
        "name": name,
        "layers": _csv(layers),
        "scaler": scaler,
        "pca_dims": pca_dims,
        "n_neighbors": n_neighbors,
        "min_dist": min_dist,
        "metric": metric,
        "seed": seed,
        "max_samples": max_samples,
    }
    _submit("fit_embedding", params, username, wait)


@main.command()
@click.option("--embedding", required=True, type=ROW_ID)
@click.option("--samples", default=None, help="Comma-separated sample ids (default: all not yet placed).")
@as_option
@wait_option
def reproject(embedding, samples, username, wait):
    """Enqueue a reproject job: place samples added after the fit, without moving existing points."""
    _submit("reproject", {"embedding": embedding, "samples": _csv_ids(samples)}, username, wait)


@main.command()
@click.option("--embedding", required=True, type=ROW_ID)
@click.option("--selected", required=True, type=ROW_ID, help="The selected sample id.")
@click.option("--neighbors", required=True, help="Comma-separated neighbour sample ids.")
@click.option(
    "--mode",
    type=click.Choice(["activation_mean", "umap_inverse", "weighted", "direction"]),
    default="activation_mean",
    show_default=True,
)
@click.option("--weights", default=None, help="For --mode weighted: comma-separated, one per neighbour.")
@click.option(
    "--negative", default=None, help="For --mode direction: comma-separated sample ids to steer from."
)
@click.option("--alpha", default=None, type=float, help="For --mode direction: signed scale (default 1).")
@click.option("--normalize", is_flag=True, help="For --mode direction: scale to the activation's norm.")
@click.option("--strength", default=None, type=float, help="0 (unmasked) .. 1 (the clamp, default).")
@click.option("--layer-strength", default=None, help="Per layer: LAYER=S,LAYER=S (masked layers only).")
@click.option("--mask-window", default=None, help="START:STOP, the steps masked (STOP exclusive).")
@click.option("--no-compare-natural", is_flag=True, help="Skip the natural twin and the effect readout.")
@click.option("--layers", default=None, help="Layers to mask (default: the embedding's).")
@click.option(
    "--class",
    "class_",
    default=None,
    help="selected (default) | neighbor_majority | blend | uniform | none | a class (prompt) index",
)
@click.option(
    "--prompt", default=None, help="Text-to-image models: free-text conditioning instead of --class."
)
@click.option(
    "--mask-passes",
    type=click.Choice(["both", "cond"]),
    default=None,
    help="Text-to-image models under guidance: mask both passes (default) or the conditional one.",
)
@click.option("--steps", default=None, type=int)
@click.option("--mask-steps", default=None, type=int)
@click.option("--variations", default=1, show_default=True, type=int)
@click.option("--seed", default=None, type=int)
@as_option
@wait_option
def generate(
    embedding,
    selected,
    neighbors,
    mode,
    weights,
    negative,
    alpha,
    normalize,
    strength,
    layer_strength,
    mask_window,
    no_compare_natural,
    layers,
    class_,
    prompt,
    mask_passes,
    steps,
    mask_steps,
    variations,
    seed,
    username,
    wait,
):
    """Enqueue a generate_from_neighbors job."""
    try:
        weight_list = None if weights is None else [float(w) for w in weights.split(",")]
    except ValueError:
        raise click.BadParameter(f"'{weights}' is not a comma-separated list of numbers") from None
    params = {
        "embedding": embedding,
        "selected": selected,
        "neighbors": _csv_ids(neighbors),
        "mode": mode,
        "weights": weight_list,
        "layers": _csv(layers),
        "class": int(class_) if class_ and class_.isascii() and class_.isdigit() else class_,
        "prompt": prompt,
        "mask_passes": mask_passes,
        "steps": steps,
        "mask_steps": mask_steps,
        "variations": variations,
        "seed": seed,
        **intervention_options(negative, alpha, normalize, strength, layer_strength, mask_window),
    }
    if no_compare_natural:
        params["compare_natural"] = False
    _submit("generate_from_neighbors", params, username, wait)


def intervention_options(negative, alpha, normalize, strength, layer_strength, mask_window) -> dict:
    """The intervention's parameters from the command line (only those given)."""
    out: dict = {}
    if negative is not None:
        out["negative"] = _csv_ids(negative)
    if alpha is not None:
        out["alpha"] = alpha
    if normalize:
        out["normalize"] = True
    if strength is not None:
        out["strength"] = strength
    if layer_strength is not None:
        try:
            pairs = [item.split("=", 1) for item in layer_strength.split(",") if item.strip()]
            out["layer_strength"] = {name.strip(): float(v) for name, v in pairs}
        except ValueError:
            raise click.BadParameter(
                f"'{layer_strength}' is not LAYER=S,LAYER=S (e.g. midblock=0.5)",
                param_hint="--layer-strength",
            ) from None
    if mask_window is not None:
        start, _, stop = mask_window.partition(":")
        if not (start.isascii() and start.isdigit() and stop.isascii() and stop.isdigit()):
            raise click.BadParameter(
                f"'{mask_window}' is not START:STOP (e.g. 0:2)", param_hint="--mask-window"
            )
        out["mask_window"] = [int(start), int(stop)]
    return out


@main.command()
@click.option("--embedding", required=True, type=ROW_ID)
@click.option("--sample", required=True, type=ROW_ID)
@click.option("-k", default=10, show_default=True, type=click.IntRange(1, 500))
@click.option("--space", type=click.Choice(["2d", "full"]), default="2d", show_default=True)
def neighbors(embedding, sample, k, space):
    """Print a sample's nearest neighbours on a map."""
    from common.research.embeddings import get_embedding
    from common.research.neighbors import find_neighbors

    settings = load_settings()
    with open_sessions(settings)() as session:
        hits = find_neighbors(settings, session, get_embedding(session, embedding), sample, k, space)
    for h in hits:
        click.echo(f"{h['sample_id']}\t{h['distance']:.6f}")


@main.command()
@click.option("--user", default=None)
@click.option("--dataset", default=None)
@click.option("--class", "class_label", default=None, type=int)
@click.option("--parent", default=None, type=ROW_ID)
@click.option(
    "--mode", type=click.Choice(["activation_mean", "umap_inverse", "weighted", "direction"]), default=None
)
@click.option("--effect-min", default=None, type=float, help="Only effects at least this (relative).")
@click.option("--since", default=None, help="ISO date or datetime.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
    help="Export every matching row (no --limit) as CSV or Parquet.",
)  # fmt: skip
@click.option("-o", "--output", "out", default=None, help="File for --format (CSV: default standard output).")
def history(user, dataset, class_label, parent, mode, effect_min, since, limit, as_json, fmt, out):
    """Generated samples, newest first, with their recipes."""
    from pydantic import ValidationError

    from common.platform.errors import UserError, pydantic_message
    from common.research.history import HistoryQuery
    from common.research.history import history as read_history

    try:
        q = HistoryQuery(
            user=user,
            dataset=dataset,
            class_label=class_label,
            parent=parent,
            mode=mode,
            effect_min=effect_min,
            since=since,
            limit=limit,
        )
    except ValidationError as exc:
        raise UserError(pydantic_message(exc)[0]) from None
    if fmt:
        from cli.exports import write_history

        write_history(open_sessions(load_settings()), q, fmt, out)
        return
    with open_sessions(load_settings())() as session:
        rows = read_history(session, q)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['sample_id']}\t{r['created_at'][:19]}\t{r['created_by'] or '-'}\t{r['mode']}\t"
            f"class={r['class_label']}\tembedding={r['embedding_id']}\t"
            f"miss={r['distance_to_intended']:.3f}"
        )


@main.command()
@click.argument("sample", type=int, required=False)
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Also write the replayed PNG here."
)
@click.option("--bundle", default=None, help="Replay a reproducibility bundle (zip) instead of a sample.")
def replay(sample: int | None, out: str | None, bundle: str | None) -> None:
    """Regenerate generated SAMPLE from its recorded recipe (or --bundle FILE from the bundle alone, on
    any data root with the same model registered) and compare with the stored image; exit 1 if it differs."""
    if (sample is None) == (bundle is None):
        raise click.UsageError("Give a SAMPLE id or --bundle FILE (one of the two).")
    if bundle is not None:
        from common.research.bundles import replay_bundle

        report = replay_bundle(load_settings(), bundle)
        click.echo(report.summary, err=not report.identical)
        sys.exit(0 if report.identical else 1)
    from common.platform.storage import atomic_write_bytes, png_bytes
    from common.research.embeddings import ReducerCache
    from common.research.generations import replay as do_replay
    from common.research.modelcache import ModelCache

    settings = load_settings()
    with open_sessions(settings)() as session:
        image, stored = do_replay(
            settings, session, sample, ModelCache(settings.model_cache_size), ReducerCache()
        )
    data = png_bytes(image)
    if out:
        from pathlib import Path

        atomic_write_bytes(Path(out), data)
    if data == stored:
        click.echo(f"sample {sample}: replayed image is byte-identical to the stored one")
        return
    click.echo(f"sample {sample}: replayed image DIFFERS from the stored one", err=True)
    sys.exit(1)
