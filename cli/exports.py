"""Exports from the shell: ``latentlab history --format csv|parquet -o FILE`` (the history command calls
``write_history``) and ``latentlab export activations DATASET -o DIR`` (one ``.npy`` per layer plus
``sample_ids.npy``). Files are written under a temporary name and renamed into place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from cli.main import _require_schema, _sessions, load_settings, main


def write_history(sessions, query, fmt: str, out: str | None) -> None:
    """Write every history row matching ``query`` as ``fmt`` to ``out`` ('-' or None: standard output)."""
    from common.exports import history_csv, write_history_parquet

    if fmt == "parquet":
        if out in (None, "-"):
            raise click.UsageError("Parquet is binary: give a file with -o, e.g. -o history.parquet.")
        path = write_history_parquet(sessions, query, Path(out))
        click.echo(f"wrote {path}", err=True)
        return
    if out in (None, "-"):
        for chunk in history_csv(sessions, query):
            sys.stdout.write(chunk)
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as fh:
            for chunk in history_csv(sessions, query):
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

    from common.embeddings import get_dataset
    from common.exports import export_dataset_activations

    settings = load_settings()
    _require_schema(settings)
    sessions = _sessions(settings)
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
