"""Interventions as experiments from the shell: ``latentlab sweep``, a grid of generate settings as one job
with a progress bar (``latentlab replay --bundle FILE`` lives with ``replay`` in ``cli/research.py``)."""

from __future__ import annotations

import click

from cli.base import ROW_ID, main
from cli.research import _csv, _csv_ids, _submit, as_option, intervention_options, wait_option


def parse_axis(text: str) -> tuple[str, list]:
    """``strength=0,0.5,1`` · ``seed=1,2`` · ``alpha=-1,1`` · ``mode=activation_mean,direction`` ·
    ``layers=midblock,encoder_bottleneck+midblock`` (``+`` joins the layers of one set) ·
    ``mask_window=0:1,1:2,none``."""
    axis, sep, values = text.partition("=")
    axis = axis.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not items:
        raise click.BadParameter(f"'{text}' is not AXIS=V1,V2,… (e.g. strength=0,0.5,1)", param_hint="--grid")
    try:
        if axis in ("strength", "alpha"):
            return axis, [float(v) for v in items]
        if axis == "seed":
            return axis, [int(v) for v in items]
        if axis == "layers":
            return axis, [[name for name in v.split("+") if name] for v in items]
        if axis == "mask_window":
            return axis, [None if v == "none" else [int(x) for x in v.split(":", 1)] for v in items]
    except ValueError:
        raise click.BadParameter(
            f"'{text}': a value of {axis} is not a number", param_hint="--grid"
        ) from None
    return axis, items  # mode, or an unknown axis the job's checks refuse by name


@main.command()
@click.option("--embedding", required=True, type=ROW_ID)
@click.option("--selected", required=True, type=ROW_ID, help="The selected sample id.")
@click.option("--neighbors", required=True, help="Comma-separated neighbour sample ids (the positive set).")
@click.option("--mode", default=None, help="activation_mean | umap_inverse | weighted | direction")
@click.option("--negative", default=None, help="For mode direction: comma-separated sample ids.")
@click.option("--alpha", default=None, type=float)
@click.option("--normalize", is_flag=True)
@click.option("--strength", default=None, type=float)
@click.option("--layer-strength", default=None, help="LAYER=S,LAYER=S")
@click.option("--mask-window", default=None, help="START:STOP")
@click.option("--layers", default=None, help="Layers to mask (default: the embedding's).")
@click.option("--class", "class_", default="selected", show_default=True)
@click.option("--steps", default=None, type=int)
@click.option("--variations", default=1, show_default=True, type=int)
@click.option("--seed", default=None, type=int)
@click.option("--no-compare-natural", is_flag=True, help="Skip the natural twins and the effect readout.")
@click.option(
    "--grid",
    "axes",
    multiple=True,
    required=True,
    help="AXIS=V1,V2,… (repeat): strength, layers (a+b,c), mask_window (0:1,none), seed, mode, alpha.",
)
@as_option
@wait_option
def sweep(embedding, selected, neighbors, mode, negative, alpha, normalize, strength, layer_strength,
          mask_window, layers, class_, steps, variations, seed, no_compare_natural, axes, username,
          wait):  # fmt: skip
    """Run a grid of generate-from-neighbours settings as one sweep job (at most 256 cells)."""
    grid = dict(parse_axis(a) for a in axes)
    params = {
        "embedding": embedding,
        "selected": selected,
        "neighbors": _csv_ids(neighbors),
        "mode": mode,
        "layers": _csv(layers),
        "class": int(class_) if class_.isascii() and class_.isdigit() else class_,
        "steps": steps,
        "variations": variations,
        "seed": seed,
        "grid": grid,
        **intervention_options(negative, alpha, normalize, strength, layer_strength, mask_window),
    }
    if no_compare_natural:
        params["compare_natural"] = False
    _submit("sweep", params, username, wait)
