"""The whole demo recipe: train the EDM teacher, distil the one-step student, evaluate, write files.

Usage::

    summary = train_demo("data/models")
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.ml.demo.cards import (
    _card,
    _sheet_images,
    _write_json,
    contact_sheet,
    read_card,
    update_card_quality,
)
from common.ml.demo.evaluate import evaluate_demo
from common.ml.demo.spec import RESOLUTION, STUDENT_NAME, TEACHER_NAME, TEACHER_STEPS, UPSAMPLE, _model_config
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
