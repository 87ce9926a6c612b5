"""Demo-model quality for the text-to-image demo ``digits-sd``, measured with an independent classifier.

Usage: ``.venv/bin/python bench/demo_sd.py [--models-dir data/models] [--per-class 20] [--trials 50] [--k 5]
[--threads 1] [--no-write]``

Loads the shipped pipeline folder through the product's loading path (``common.ml.families`` ``diffusers``:
``inspect`` then ``load``, offline; the weights' digest checked against the card) and measures:

(a) **prompted accuracy**: ``--per-class`` samples per prompt ("a handwritten digit zero" ... "nine") from
    the fixed evaluation seeds (``common.ml.demo.eval_seeds``), at the card's steps and guidance, classified
    by the same sklearn SVC on real digits the EDM demo uses (``DigitsClassifier``);
(b) **generate from neighbours**: those samples, with their ``mid_block`` activations captured as a dataset
    job captures them, play the dataset. Each trial picks a sample of digit ``trial % 10`` (seeded), takes
    its ``--k`` nearest samples in activation space, combines them as the product does
    (``common.research.recipe``: uniform weights, ``combine_activations``, ``masks_from_targets``) and
    renders one image through the product's generate path (``common.research.variations.render``) from a
    fresh seed, under two conditionings: the neighbours' majority prompt (the explorer's default kind of
    choice) and **no prompt** (the unconditional embedding: only the clamped activations carry the digit).
    The figure is the share of trials classified as the chosen digit.

Unless ``--no-write`` the figures go into the card's ``quality``. Prints figures; decides nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.ml.demo import DigitsClassifier, eval_seeds, read_card  # noqa: E402
from common.ml.demo.cards import _write_json  # noqa: E402
from common.ml.families import get_family  # noqa: E402
from common.research.registry import SHIPPED_MODELS_DIR  # noqa: E402

NAME = "digits-sd"
LAYER = "mid_block"
TARGETS = {"prompted_accuracy": 0.85, "neighbours_accuracy": 0.80}


def load_demo(models_dir: Path):
    """(DiffusersGenerator, config, card) through the product's loading path; the digest must match."""
    card = read_card(models_dir / f"{NAME}.json")
    folder = models_dir / card["checkpoint"]
    fam = get_family("diffusers")
    d = card.get("defaults") or {}
    config, sha = fam.inspect(
        folder,
        prompts=card["prompts"],
        steps=d.get("steps"),
        guidance_scale=d.get("guidance_scale"),
        scheduler=d.get("scheduler"),
        dtype="float32",
    )
    if sha != card["sha256"]:
        raise SystemExit(f"{folder}: weights sha256 {sha} does not match the card's {card['sha256']}")
    model, _ = fam.load(folder, config, "cpu")
    return model, {**config, "prompts": list(card["prompts"])}, card


def grey(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] (the pipeline's RGB) -> [B, H, W, 1] for the classifier (the digits are grey)."""
    return images.mean(axis=-1, keepdims=True).round().astype(np.uint8)


def prompted(model, config, clf, per_class: int) -> tuple[dict, np.ndarray, np.ndarray]:
    fam = get_family("diffusers")
    opts = fam.sampler_options(config, {"prompts": config["prompts"]}, None)
    labels, seeds = eval_seeds(per_class)
    res = fam.generate(model, labels, seeds, steps=config["default_steps"], capture=[LAYER], **opts)
    pred = clf.predict(grey(res.images))
    acc = float(np.mean(pred == np.array(labels)))
    per = {str(c): float(np.mean(pred[np.array(labels) == c] == c)) for c in range(10)}
    q = {
        "samples": len(seeds),
        "seeds": "prompt c, sample j: 5000000 + 1000 c + j",
        "steps": int(config["default_steps"]),
        "guidance_scale": opts["guidance_scale"],
        "accuracy": round(acc, 4),
        "accuracy_per_prompt": per,
    }
    flat = res.activations[LAYER].reshape(len(seeds), -1)  # [N, C*H*W]
    return q, flat, res.images


def neighbours(model, config, clf, flat: np.ndarray, labels: list[int], trials: int, k: int) -> dict:
    from common.research.recipe import Recipe, combine_activations, masks_from_targets, neighbour_weights
    from common.research.variations import render

    fam = get_family("diffusers")
    sampler = fam.sampler_options(config, {"prompts": config["prompts"]}, None)
    shape = {LAYER: next(tuple(s) for n, _, s in config["layers"] if n == LAYER)}
    rng = np.random.default_rng(0)
    y = np.array(labels)
    hits = {"majority_prompt": 0, "no_prompt": 0}
    purity = []
    for t in range(trials):
        digit = t % 10
        sel = int(rng.choice(np.flatnonzero(y == digit)))
        d = np.linalg.norm(flat - flat[sel], axis=1)
        nb = np.argsort(d, kind="stable")[:k]  # the selected sample and its k-1 nearest
        purity.append(float(np.mean(y[nb] == digit)))
        w = neighbour_weights("average", k, None)
        masks = masks_from_targets(combine_activations(flat[nb].astype(np.float64), w, shape), shape, [LAYER])
        majority = int(np.bincount(y[nb], minlength=10).argmax())
        kinds = {"majority_prompt": (majority, "onehot"), "no_prompt": (None, "null")}
        for kind, (cls, mode) in kinds.items():
            recipe = Recipe(masks, np.zeros(2), w, cls, mode, cls, None, None, {})
            res = render(
                model, recipe, [9_000_000 + t], int(config["default_steps"]), 0.0, {}, [], 1,
                family="diffusers", sampler=sampler,
            )  # fmt: skip
            hits[kind] += int(clf.predict(grey(res.images))[0] == digit)
    return {
        "trials": trials,
        "k": k,
        "layer": LAYER,
        "neighbours": "the selected sample and its k-1 nearest in mid_block activation space (L2)",
        "combine": "uniform average, clamped at mid_block on every step (both guidance passes)",
        "neighbour_purity": round(float(np.mean(purity)), 4),
        "accuracy_majority_prompt": round(hits["majority_prompt"] / trials, 4),
        "accuracy_no_prompt": round(hits["no_prompt"] / trials, 4),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", type=Path, default=SHIPPED_MODELS_DIR)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="do not store the figures in the card")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, config, card = load_demo(args.models_dir)
    clf = DigitsClassifier.fit()
    print(f"loaded {NAME} ({card['sha256'][:12]}…) through the diffusers family; torch {torch.__version__}")
    print(f"classifier: {clf.describe()}; held-out accuracy on real digits {clf.held_out_accuracy:.4f}")
    q_a, flat, _ = prompted(model, config, clf, args.per_class)
    print(f"(a) prompted: {q_a['samples']} samples, accuracy {q_a['accuracy']:.4f} (target >= 0.85)")
    print("    per prompt: " + ", ".join(f"{c}: {v:.2f}" for c, v in q_a["accuracy_per_prompt"].items()))
    labels, _ = eval_seeds(args.per_class)
    q_b = neighbours(model, config, clf, flat, labels, args.trials, args.k)
    print(
        f"(b) generate from {args.k} neighbours, {args.trials} trials: digit kept "
        f"{q_b['accuracy_majority_prompt']:.4f} with the majority prompt, {q_b['accuracy_no_prompt']:.4f} "
        f"with no prompt (target >= 0.80); neighbour purity {q_b['neighbour_purity']:.4f}"
    )
    quality = {
        "classifier": {"model": clf.describe(), "held_out_accuracy": round(clf.held_out_accuracy, 4)},
        "prompted": q_a,
        "generate_from_neighbours": q_b,
        "targets": TARGETS,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"total {quality['seconds']:.0f} s")
    if args.no_write:
        print(json.dumps(quality, indent=1)[:3000])
        return
    card["quality"] = quality
    _write_json(args.models_dir / f"{NAME}.json", card)
    print(f"quality written to {args.models_dir}/{NAME}.json")


if __name__ == "__main__":
    main()
