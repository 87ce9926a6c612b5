"""Measuring the demo models: a digits classifier, diversity, activation-map purity, ``evaluate_demo``.

Usage::

    quality = evaluate_demo(student, teacher)   # the figures stored under the cards' "quality"
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.ml.demo.spec import CAPTURE_LAYERS, EVAL_SEED_BASE, RESOLUTION, TEACHER_STEPS, UPSAMPLE
from common.ml.networks import EDMPrecond
from common.ml.training import (
    deterministic,
    load_digits_images,
)


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
