"""The embedded demo models: a class-conditional digits EDM teacher and its one-step student.

Usage::

    summary = train_demo("data/models")                 # train, distil, evaluate, write files and cards
    quality = evaluate_demo(student, teacher)           # the figures stored under the cards' "quality"

Files written into the output folder (names fixed; ``.gitignore`` lets ``digits-*`` through):

    digits-edm.safetensors / digits-edm.json            teacher, EDM Heun sampler, 18 steps by default
    digits-onestep.safetensors / digits-onestep.json    student, DMD2's recipe: G(noise * 80, 80, one_hot)
    digits-onestep-sheet.png, digits-edm-sheet.png      a row per class, 10 samples each, 4x upscaled

Images: scikit-learn's 8x8 digits (values 0..16) mapped to ``v / 8 - 1`` in [-1, 1], 1 channel, bilinearly
upsampled to 16x16 (``F.interpolate``, ``align_corners=False``). Quality is measured on fixed seeds
(``eval_seeds``): an RBF SVC trained on the real digits at 16x16 classifies the samples, within-class
pairwise L2 diversity is compared with the real digits', and a 2-D UMAP of the ``encoder_bottleneck`` +
``midblock`` activations is scored by 10-nearest-neighbour class purity.
"""

from __future__ import annotations

import io
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.ml.networks import EDMPrecond
from common.ml.training import (
    DistillConfig,
    EDMTrainConfig,
    Progress,
    config_dict,
    deterministic,
    distill_one_step,
    load_digits_images,
    make_distill_pairs,
    train_edm,
)

__all__ = [
    "CAPTURE_LAYERS",
    "DigitsClassifier",
    "EVAL_SEED_BASE",
    "LABEL_NAMES",
    "TEACHER_NAME",
    "STUDENT_NAME",
    "contact_sheet",
    "diversity",
    "eval_seeds",
    "evaluate_demo",
    "knn_purity",
    "read_card",
    "train_demo",
    "update_card_quality",
]

TEACHER_NAME = "digits-edm"
STUDENT_NAME = "digits-onestep"
PRESET = "digits16"
LABEL_NAMES = [str(i) for i in range(10)]
RESOLUTION = 16
UPSAMPLE = "bilinear"
RESOLUTION_NOTE = (
    "scikit-learn's 8x8 digits (values 0..16 scaled to v/8 - 1 in [-1, 1]), 1 channel, upsampled to 16x16 "
    "bilinearly (torch.nn.functional.interpolate, mode='bilinear', align_corners=False)"
)
EVAL_SEED_BASE = 5_000_000  # evaluation seeds; training pairs use DistillConfig.pair_seed_base (10,000,000+)
CAPTURE_LAYERS = ("encoder_bottleneck", "midblock")
TEACHER_STEPS = 18
SIGMA_MAX = 80.0


def _model_config() -> dict[str, Any]:
    from common.ml.presets import get_preset

    return get_preset(PRESET).config


# ----------------------------------------------------------------------------------------------------------
# Measuring: classifier, diversity, activation-map purity.


def eval_seeds(per_class: int = 100, n_classes: int = 10, base: int = EVAL_SEED_BASE) -> tuple[list, list]:
    """Usage: ``labels, seeds = eval_seeds(100)`` -> class ``c`` sample ``j`` has seed ``base + 1000 c + j``.

    Class-major order; a smaller ``per_class`` takes a prefix of each class's seeds.
    """
    labels = [c for c in range(n_classes) for _ in range(per_class)]
    seeds = [base + 1000 * c + j for c in range(n_classes) for j in range(per_class)]
    return labels, seeds


def _flat(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float64 [B, H*W*C] in [-1, 1]; float [B, C, H, W] in [-1, 1] -> [B, C*H*W]."""
    if images.dtype == np.uint8:
        return images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1)


@dataclass
class DigitsClassifier:
    """An RBF SVC on the real digits at the models' resolution; ``held_out_accuracy`` on a stratified 25 %.

    Usage: ``clf = DigitsClassifier.fit(); clf.accuracy(uint8_images [B, 16, 16, 1], labels)``.
    """

    model: Any
    held_out_accuracy: float
    n_train: int
    n_test: int

    @classmethod
    def fit(cls, seed: int = 0) -> DigitsClassifier:
        from sklearn.model_selection import train_test_split
        from sklearn.svm import SVC

        x, y = load_digits_images(RESOLUTION, UPSAMPLE)
        X = x.reshape(len(x), -1).numpy().astype(np.float64)  # [N, 256]
        Xtr, Xte, ytr, yte = train_test_split(
            X, y.numpy(), test_size=0.25, stratify=y.numpy(), random_state=seed
        )
        svc = SVC(kernel="rbf", C=10.0, gamma="scale").fit(Xtr, ytr)
        return cls(svc, float(svc.score(Xte, yte)), len(Xtr), len(Xte))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(_flat(images))

    def accuracy(self, images: np.ndarray, labels: Sequence[int]) -> float:
        return float(np.mean(self.predict(images) == np.asarray(labels)))

    def describe(self) -> str:
        return "sklearn SVC(kernel='rbf', C=10, gamma='scale') on real digits, 16x16 bilinear, [-1, 1] pixels"


def _mean_pairwise(X: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(X).mean()) if len(X) > 1 else 0.0


def diversity(images: np.ndarray, labels: Sequence[int], n_classes: int = 10) -> dict[str, Any]:
    """Usage: ``diversity(uint8 [B, 16, 16, 1], labels)`` -> per-class mean within-class pairwise L2
    distance (pixels in [-1, 1]) of the samples and of the real digits, their ratios and the mean ratio."""
    x, y = load_digits_images(RESOLUTION, UPSAMPLE)
    real = x.reshape(len(x), -1).numpy().astype(np.float64)
    y = y.numpy()
    gen = _flat(images)
    labels = np.asarray(labels)
    per_class = {}
    for c in range(n_classes):
        g, r = _mean_pairwise(gen[labels == c]), _mean_pairwise(real[y == c])
        per_class[str(c)] = {"samples": round(g, 4), "real": round(r, 4), "ratio": round(g / r, 4)}
    ratios = [v["ratio"] for v in per_class.values()]
    return {"per_class": per_class, "mean_ratio": round(float(np.mean(ratios)), 4), "min_ratio": min(ratios)}


def knn_purity(points: np.ndarray, labels: Sequence[int], k: int = 10) -> float:
    """Usage: ``knn_purity(xy [N, 2], labels)`` -> mean fraction of each point's k nearest neighbours
    (itself excluded) that share its label."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.asarray(labels)
    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(points)
    _, idx = nn_.kneighbors(points)  # [N, k + 1]; column 0 is the point itself (no exact duplicates here)
    return float(np.mean(labels[idx[:, 1:]] == labels[:, None]))


def umap_purity(activations: Mapping[str, np.ndarray], labels: Sequence[int], seed: int = 0) -> dict:
    """Usage: ``umap_purity({"encoder_bottleneck": a, "midblock": b}, labels)`` -> 2-D UMAP (n_neighbors 15,
    random_state ``seed``) of the layers flattened and concatenated in sorted order; 10-NN class purity."""
    import umap

    from common.ml.activations import flatten_activations

    X = flatten_activations(dict(activations)).astype(np.float32)  # [B, D]
    t0 = time.perf_counter()
    xy = umap.UMAP(n_neighbors=15, n_components=2, random_state=seed).fit_transform(X)  # [B, 2]
    return {
        "layers": sorted(activations),
        "dims": int(X.shape[1]),
        "umap": {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "random_state": seed},
        "purity_10nn": round(knn_purity(xy, labels, 10), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def evaluate_demo(
    student: EDMPrecond,
    teacher: EDMPrecond | None = None,
    *,
    per_class: int = 100,
    teacher_steps: int = TEACHER_STEPS,
    micro_batch: int = 500,
    log: Any = print,
) -> dict[str, Any]:
    """Usage: ``quality = evaluate_demo(student, teacher)`` -> the JSON-ready figures of the model cards.

    ``per_class`` samples per class from ``eval_seeds``: the student in one step (activations captured),
    the teacher (if given) with ``teacher_steps`` Heun steps. Also returns the images under ``_images``.
    """
    from common.ml.generation import generate

    t0 = time.perf_counter()
    labels, seeds = eval_seeds(per_class)
    K = min(micro_batch, len(seeds))
    clf = DigitsClassifier.fit()
    log(f"classifier: held-out accuracy on real digits {clf.held_out_accuracy:.4f} ({clf.n_test} images)")
    with deterministic():
        res = generate(student, labels, seeds, steps=1, capture=list(CAPTURE_LAYERS), micro_batch=K)
    acc = clf.accuracy(res.images, labels)
    pred = clf.predict(res.images)
    per_class_acc = {str(c): round(float(np.mean(pred[np.asarray(labels) == c] == c)), 4) for c in range(10)}
    div = diversity(res.images, labels)
    pur = umap_purity(res.activations, labels)
    log(
        f"one-step: classifier accuracy {acc:.4f}; diversity mean ratio {div['mean_ratio']:.3f} "
        f"(min {div['min_ratio']:.3f}); UMAP 10-NN purity {pur['purity_10nn']:.4f}"
    )
    quality: dict[str, Any] = {
        "samples": {
            "per_class": per_class,
            "seeds": f"class c, sample j: {EVAL_SEED_BASE} + 1000 c + j",
            "total": len(seeds),
        },
        "classifier": {
            "model": clf.describe(),
            "held_out_accuracy": round(clf.held_out_accuracy, 4),
            "train_images": clf.n_train,
            "test_images": clf.n_test,
        },
        "onestep": {
            "steps": 1,
            "classifier_accuracy": round(acc, 4),
            "classifier_accuracy_per_class": per_class_acc,
            "diversity": div,
            "activation_map": pur,
        },
        "targets": {"classifier_accuracy": 0.90, "diversity_mean_ratio": 0.5, "purity_10nn": 0.85},
    }
    images = {"onestep": res.images}
    if teacher is not None:
        with deterministic():
            tres = generate(teacher, labels, seeds, steps=teacher_steps, micro_batch=K)
        tacc = clf.accuracy(tres.images, labels)
        tdiv = diversity(tres.images, labels)
        log(
            f"teacher ({teacher_steps} steps): classifier accuracy {tacc:.4f}; "
            f"diversity mean ratio {tdiv['mean_ratio']:.3f}"
        )
        quality["teacher"] = {
            "steps": teacher_steps,
            "classifier_accuracy": round(tacc, 4),
            "diversity_mean_ratio": tdiv["mean_ratio"],
            "diversity_min_ratio": tdiv["min_ratio"],
        }
        images["teacher"] = tres.images
    quality["seconds"] = round(time.perf_counter() - t0, 1)
    quality["_images"] = images
    return quality


# ----------------------------------------------------------------------------------------------------------
# Contact sheet.


def contact_sheet(images: np.ndarray, rows: int, cols: int, scale: int = 4, gap: int = 2) -> bytes:
    """Usage: ``png = contact_sheet(uint8 [rows * cols, H, W, 1|3], 10, 10)`` -> PNG bytes, row-major
    (one row per class for class-major input), each image upscaled ``scale`` times (nearest)."""
    from PIL import Image

    n, H, W, C = images.shape
    if n < rows * cols:
        raise ValueError(f"{n} images for a {rows}x{cols} sheet")
    h, w = H * scale, W * scale
    sheet = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, C), 255, dtype=np.uint8)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        tile = images[i].repeat(scale, axis=0).repeat(scale, axis=1)  # [h, w, C]
        y0, x0 = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y0 : y0 + h, x0 : x0 + w] = tile
    img = Image.fromarray(sheet[..., 0] if C == 1 else sheet)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _sheet_images(images: np.ndarray, per_class: int, cols: int = 10) -> np.ndarray:
    """The first ``cols`` samples of each class from class-major ``images`` [10 * per_class, H, W, C]."""
    return np.concatenate([images[c * per_class : c * per_class + cols] for c in range(10)])


# ----------------------------------------------------------------------------------------------------------
# Cards.


def read_card(path: str | Path) -> dict[str, Any]:
    """Usage: ``read_card("data/models/digits-onestep.json")`` -> the model card dict."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    from common.platform.storage import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def update_card_quality(out_dir: str | Path, quality: Mapping[str, Any]) -> None:
    """Usage: ``update_card_quality("data/models", quality)`` -- store ``quality`` (minus ``_images``) in
    both cards: the student card gets everything, the teacher card its own figures plus the student's."""
    out = Path(out_dir)
    q = {k: v for k, v in quality.items() if not k.startswith("_")}
    for name in (STUDENT_NAME, TEACHER_NAME):
        path = out / f"{name}.json"
        if path.exists():
            card = read_card(path)
            card["quality"] = q
            _write_json(path, card)


def _card(
    name: str,
    checkpoint: str,
    sha256: str,
    config: Mapping[str, Any],
    default_steps: int,
    description: str,
    training: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "architecture": "dhariwal-unet",
        "checkpoint": checkpoint,
        "sha256": sha256,
        "config": dict(config),
        "label_names": list(LABEL_NAMES),
        "default_steps": default_steps,
        "default_sigma_max": SIGMA_MAX,
        "preset": PRESET,
        "resolution_note": RESOLUTION_NOTE,
        "training": dict(training),
        "quality": {},
    }


# ----------------------------------------------------------------------------------------------------------
# The whole recipe.


def train_demo(
    out_dir: str | Path = "data/models",
    *,
    teacher_config: EDMTrainConfig | None = None,
    distill_config: DistillConfig | None = None,
    model_config: Mapping[str, Any] | None = None,
    threads: int = 2,
    evaluate: bool = True,
    eval_per_class: int = 100,
    progress: Progress | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Usage: ``summary = train_demo("data/models")`` -- train the teacher, distil the one-step student,
    save both with ``save_generator``, write their cards and contact sheets, evaluate, print timings.

    Deterministic for given configs, ``threads`` and machine. Returns ``{"timings": ..., "quality": ...,
    "files": {...: bytes}}``.
    """
    from common.ml.checkpoints import save_generator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = teacher_config or EDMTrainConfig()
    dcfg = distill_config or DistillConfig()
    mcfg = dict(model_config or _model_config())
    # wall-clock seconds, and process CPU seconds (all threads): on a busy machine the CPU time is the
    # better measure of what the recipe costs
    timings: dict[str, float] = {}
    t_all, c_all = time.perf_counter(), time.process_time()
    with deterministic(threads):
        x, y = load_digits_images(RESOLUTION, UPSAMPLE)
        log(f"data: {len(x)} digits, {tuple(x.shape[1:])}, {UPSAMPLE} upsampling; {threads} threads")

        res_t = train_edm(mcfg, x, y, tcfg, progress=progress)
        teacher = res_t.ema
        timings["teacher_training_s"] = round(res_t.seconds, 1)
        timings["teacher_training_cpu_s"] = round(res_t.cpu_seconds, 1)
        log(
            f"teacher: {tcfg.steps} steps in {res_t.seconds:.0f} s; last-100 loss "
            f"{np.mean(res_t.losses[-100:]):.4f}"
        )

        pairs = make_distill_pairs(teacher, dcfg, progress=progress)
        timings["distill_pairs_s"] = round(pairs.seconds, 1)
        timings["distill_pairs_cpu_s"] = round(pairs.cpu_seconds, 1)
        log(f"pairs: {dcfg.pairs} teacher samples ({dcfg.teacher_steps} Heun steps) in {pairs.seconds:.0f} s")

        res_s = distill_one_step(teacher, pairs, dcfg, progress=progress)
        student = res_s.ema
        timings["distill_training_s"] = round(res_s.seconds, 1)
        timings["distill_training_cpu_s"] = round(res_s.cpu_seconds, 1)
        log(
            f"student: {dcfg.steps} steps in {res_s.seconds:.0f} s; last-100 mse "
            f"{np.mean(res_s.losses[-100:]):.5f}"
        )

        versions = {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sklearn": __import__("sklearn").__version__,
            "python": platform.python_version(),
        }
        common_training = {
            "data": {
                "source": "sklearn.datasets.load_digits",
                "images": len(x),
                "classes": 10,
                "scaling": "v / 8 - 1",
                "resolution": RESOLUTION,
                "upsampling": UPSAMPLE,
            },
            "threads": threads,
            "deterministic_algorithms": True,
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "reproduce": f"latentlab train-demo --threads {threads} (with these hyperparameters)",
            "versions": versions,
        }
        teacher_training = {
            **common_training,
            "method": "EDM (Karras et al. 2022) denoiser training, EMA weights shipped",
            "loss": "sigma ~ exp(N(P_mean, P_std^2)); weight (sigma^2 + sd^2) / (sigma sd)^2; sd = 0.5",
            "hyperparameters": config_dict(tcfg),
            "optimizer": "Adam, linear warm-up, cosine decay to lr * lr_final_fraction, grad-norm clipping",
            "final_loss_last100": round(float(np.mean(res_t.losses[-100:])), 5),
            "seconds": timings["teacher_training_s"],
            "cpu_seconds": timings["teacher_training_cpu_s"],
        }
        student_training = {
            **common_training,
            "method": (
                "one-step regression distillation: student initialised from the teacher, trained with MSE so "
                "that student(noise * 80, 80, one_hot) equals the teacher's 18-step Heun sample from that "
                "noise (EDM deterministic sampler via common.ml.generation.generate); EMA weights shipped"
            ),
            "teacher": TEACHER_NAME,
            "teacher_hyperparameters": config_dict(tcfg),
            "hyperparameters": config_dict(dcfg),
            "final_mse_last100": round(float(np.mean(res_s.losses[-100:])), 6),
            "seconds": {
                "teacher_training": timings["teacher_training_s"],
                "pairs": timings["distill_pairs_s"],
                "distillation": timings["distill_training_s"],
            },
            "cpu_seconds": {
                "teacher_training": timings["teacher_training_cpu_s"],
                "pairs": timings["distill_pairs_cpu_s"],
                "distillation": timings["distill_training_cpu_s"],
            },
        }

        t_sha = save_generator(teacher, out / f"{TEACHER_NAME}.safetensors", {"latentlab.name": TEACHER_NAME})
        s_sha = save_generator(student, out / f"{STUDENT_NAME}.safetensors", {"latentlab.name": STUDENT_NAME})
        cards = {
            TEACHER_NAME: _card(
                TEACHER_NAME,
                f"{TEACHER_NAME}.safetensors",
                t_sha,
                teacher.config,
                TEACHER_STEPS,
                "class-conditional digits EDM denoiser (multi-step Heun sampler), trained by latentlab",
                teacher_training,
            ),
            STUDENT_NAME: _card(
                STUDENT_NAME,
                f"{STUDENT_NAME}.safetensors",
                s_sha,
                student.config,
                1,
                "one-step class-conditional digits generator distilled from digits-edm; called as DMD2's "
                "G(noise * 80, sigma=80, one_hot) -> image in [-1, 1]",
                student_training,
            ),
        }
        for name, card in cards.items():
            _write_json(out / f"{name}.json", card)

        quality: dict[str, Any] = {}
        if evaluate:
            t_eval, c_eval = time.perf_counter(), time.process_time()
            quality = evaluate_demo(student, teacher, per_class=eval_per_class, log=log)
            timings["evaluation_s"] = round(time.perf_counter() - t_eval, 1)
            timings["evaluation_cpu_s"] = round(time.process_time() - c_eval, 1)
            from common.platform.storage import atomic_write_bytes

            imgs = quality["_images"]
            per_class = quality["samples"]["per_class"]
            cols = min(10, per_class)
            atomic_write_bytes(
                out / f"{STUDENT_NAME}-sheet.png",
                contact_sheet(_sheet_images(imgs["onestep"], per_class, cols), 10, cols),
            )
            atomic_write_bytes(
                out / f"{TEACHER_NAME}-sheet.png",
                contact_sheet(_sheet_images(imgs["teacher"], per_class, cols), 10, cols),
            )
    timings["total_s"] = round(time.perf_counter() - t_all, 1)
    timings["total_cpu_s"] = round(time.process_time() - c_all, 1)
    for name in cards:
        card = read_card(out / f"{name}.json")
        card["training"]["timings"] = timings
        _write_json(out / f"{name}.json", card)
    if evaluate:
        update_card_quality(out, quality)
    log("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return {
        "timings": timings,
        "quality": {k: v for k, v in quality.items() if not k.startswith("_")},
        "teacher": teacher,
        "student": student,
    }
