"""``latentlab sql "SELECT …"``: one read-only query over the lab database, printed as a table, CSV or JSON.
The views it is meant for are documented in docs/SQL.md; the guards live in common.platform.sqlconsole."""

from __future__ import annotations

import csv
import json
import sys

import click

from cli.base import load_settings, main, require_schema


@main.command()
@click.argument("query")
@click.option("--max-rows", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=click.FloatRange(0.001, 3600))
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
def sql(query: str, max_rows: int, timeout_s: float, fmt: str) -> None:
    """Run QUERY, a single read-only statement (SELECT / WITH / VALUES), with a row and time limit.
    Use '-' to read the query from standard input."""
    from common.platform.sqlconsole import run_readonly

    settings = load_settings()
    require_schema(settings)
    if query == "-":
        query = sys.stdin.read()
    result = run_readonly(settings, query, max_rows=max_rows, timeout_s=timeout_s)
    if fmt == "json":
        rows = [dict(zip(result.columns, r, strict=True)) for r in result.rows]
        click.echo(json.dumps(rows, indent=2, default=str))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    else:
        click.echo("\t".join(result.columns))
        for row in result.rows:
            click.echo("\t".join("" if v is None else str(v) for v in row))
    if result.truncated:
        click.echo(f"(stopped at {max_rows} rows; raise --max-rows or add a LIMIT)", err=True)
