"""Exports from the shell: ``latentlab history --format csv|parquet -o FILE`` (the history command calls
``write_history``), ``latentlab export samples DATASET`` / ``export points EMBEDDING`` (CSV or Parquet) and
``latentlab export activations DATASET -o DIR`` (one ``.npy`` per layer plus ``sample_ids.npy``). Files are
written under a temporary name and renamed into place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.base import load_settings, main, open_sessions, require_schema


def write_history(sessions, query, fmt: str, out: str | None) -> None:
    """Write every history row matching ``query`` as ``fmt`` to ``out`` ('-' or None: standard output)."""
    from common.research.exports import history_table

    write_table(history_table(sessions, query), fmt, out)


def write_table(table, fmt: str, out: str | None) -> None:
    """Write ``table`` (common.research.exports.Table) as ``fmt`` to ``out`` ("-"/None: stdout)."""
    from common.research.exports import table_csv, write_table_parquet

    if fmt == "parquet":
        if out in (None, "-"):
            raise click.UsageError(f"Parquet is binary: give a file with -o, e.g. -o {table.name}.parquet.")
        path = write_table_parquet(table, Path(out))
        click.echo(f"wrote {path}", err=True)
        return
    if out in (None, "-"):
        for chunk in table_csv(table):
            sys.stdout.write(chunk)
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as fh:
            for chunk in table_csv(table):
                fh.write(chunk)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"wrote {path}", err=True)


@main.group()
def export() -> None:
    """Export lab data to files for notebooks (see also `latentlab history --format`)."""


@export.command("activations")
@click.argument("dataset")
@click.option("-o", "--output", "out", required=True, help="Folder for <layer>.npy and sample_ids.npy.")
@click.option("--layers", default=None, help="Comma-separated layers (default: all of the dataset's).")
def export_activations(dataset: str, out: str, layers: str | None) -> None:
    """Write DATASET's activations (name or id): <layer>.npy [n, C, H, W] float32 per layer, and
    sample_ids.npy [n] int64 giving each row's sample id (every sample, generated ones included)."""
    from tqdm import tqdm

    from common.research.embeddings import get_dataset
    from common.research.exports import export_dataset_activations

    settings = load_settings()
    require_schema(settings)
    sessions = open_sessions(settings)
    with sessions() as session:
        ds = get_dataset(session, dataset)
    wanted = None if layers is None else [v.strip() for v in layers.split(",") if v.strip()]
    with tqdm(total=1, desc=f"export {ds.name}", unit="sample") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        paths = export_dataset_activations(settings, sessions, ds, Path(out), wanted, progress=progress)
    for key, path in paths.items():
        click.echo(f"{key}\t{path}")


FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True
)
OUTPUT = click.option("-o", "--output", "out", default=None, help="File (CSV: default standard output).")


@export.command("samples")
@click.argument("dataset")
@FORMAT
@OUTPUT
def export_samples(dataset: str, fmt: str, out: str | None) -> None:
    """Every sample of DATASET (name or id), generated ones included, in id order."""
    from common.research.embeddings import get_dataset
    from common.research.exports import samples_table

    sessions = open_sessions(load_settings())
    with sessions() as session:
        ds = get_dataset(session, dataset)
    write_table(samples_table(sessions, ds.id), fmt, out)


@export.command("points")
@click.argument("embedding", type=int)
@FORMAT
@OUTPUT
def export_points(embedding: int, fmt: str, out: str | None) -> None:
    """Every point of map EMBEDDING: sample_id, x, y, class_label, origin, projected."""
    from common.research.embeddings import get_embedding
    from common.research.exports import points_table

    sessions = open_sessions(load_settings())
    with sessions() as session:
        emb = get_embedding(session, embedding)
    write_table(points_table(sessions, emb.id), fmt, out)
