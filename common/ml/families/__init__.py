"""Model families: one small interface the research code calls, one module per family.

A family module (``edm``, ``diffusers``) provides, for a registered model row's ``config``:

* ``load(path, config, device) -> (model, sha256)`` -- the eval-mode generator and the digest of its weights;
* ``generate(model, class_labels, seeds, *, steps, masks, mask_steps, capture, label_mode, micro_batch,
  check, **options) -> common.ml.generation.GenerationResult`` -- the signature of
  ``common.ml.generation.generate``; masks and captures go through ``common.ml.hooks`` in every family;
* ``micro_batch_for(model, n) -> int`` -- samples per model call for n variations of one recipe;
* ``sampler_options(config, defaults, conditioning) -> dict`` -- the family's own ``**options`` for a
  dataset or a generation (EDM: ``sigma_max``; diffusers: prompts, guidance, size, timesteps);
* the layer table is the torch-free ``common.ml.activations.layer_table(config, architecture)``.

The table below is the one place families are listed (no import side effects); modules load lazily, so
this package imports no torch.

Usage::

    family = get_family(model_row.family)
    model, sha = family.load(path, model_row.config, "cpu")
    res = family.generate(model, labels, seeds, steps=4, capture=["mid_block"], **options)
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES: dict[str, str] = {
    "edm": "common.ml.families.edm",
    "diffusers": "common.ml.families.diffusers",
}

# the architecture each family's models are registered with (common.ml.activations.LAYER_TABLES)
ARCHITECTURES: dict[str, str] = {"edm": "dhariwal-unet", "diffusers": "diffusers-unet"}


def get_family(name: str) -> ModuleType:
    """Usage: ``get_family("diffusers").generate(...)``; raises KeyError listing the known families."""
    try:
        return importlib.import_module(FAMILIES[name])
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}") from None
