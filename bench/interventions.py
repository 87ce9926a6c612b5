"""Interventions as experiments, measured in one run on the digits demo (or a random tiny model):

1. a sweep of 16 one-step cells as one job vs the same 16 settings as 16 generate jobs submitted at once
   (a real Redis, a real worker; wall clock from the first submit to the last success; target ≥ 4×);
2. steering: from a selection of digit a, the direction mean(digit b's samples) − mean(digit a's) (not
   normalised: alpha 1 moves the activation by the class means' difference), at rising alpha: the share of
   trials the demo classifier reads as b;
3. strength 0 → 1 (mode activation_mean over digit b's samples): where the image lands, as the fraction
   t of the way from its natural twin's point to the intended centre (mean over trials; monotone expected).

Run: ``.venv/bin/python bench/interventions.py [--samples 300] [--trials 8]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.redis_server import RedisServer  # noqa: E402
from common import jobs  # noqa: E402
from common.models import Generation, Sample  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from common.research.registry import register_shipped_models  # noqa: E402
from tests.support.services import start_worker  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from tests.support.waiting import wait_for_job  # noqa: E402

ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0]
STRENGTHS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def run_job(sessions, publisher, settings, owner, kind, params, timeout=1800):
    job = jobs.submit(sessions, publisher, settings, owner=owner, kind=kind, params=params)
    done = wait_for_job(sessions, job.id, timeout=timeout)
    assert done.status == "succeeded", f"{kind}: {done.error}"
    return done


def by_class(sessions, dataset_id: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    with sessions() as s:
        for sid, cls in s.execute(
            select(Sample.id, Sample.class_label).where(
                Sample.dataset_id == dataset_id, Sample.origin == "dataset"
            )
        ):
            out.setdefault(int(cls), []).append(int(sid))
    return out


def images_of(settings, sessions, ids: list[int]) -> np.ndarray:
    from PIL import Image

    with sessions() as s:
        paths = [s.get(Sample, i).image_path for i in ids]
    return np.stack([np.asarray(Image.open(settings.data_root / p)) for p in paths])  # [B, H, W(, C)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--model", default="digits-onestep")
    ap.add_argument("--trials", type=int, default=8, help="digit pairs (a, b) per curve point")
    ap.add_argument("--speed-only", action="store_true", help="only the sweep vs separate jobs figure")
    ap.add_argument(
        "--steer-class", default="selected", help="conditioning while steering: selected | uniform"
    )
    ap.add_argument(
        "--steer-layers",
        default="",
        help="comma-separated layers to steer at, captured by the dataset too ('all': every layer); "
        "default: the dataset's own (encoder_bottleneck, midblock)",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-interventions-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    settings = make_settings(tmp, redis_url=redis.url, chunk_size=100)
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        admin = create_user(s, "bench", "bench-password", role="admin")
        added = register_shipped_models(s, settings)
    if args.model not in added:
        from tests.support.models import register_tiny_model

        print(f"(model {args.model} is not shipped here; using a random tiny16 model: no semantics)")
        register_tiny_model(sessions, settings, name=args.model)
    import redis as redis_lib

    from common.jobs.broker import Publisher
    from workers.app import make_celery

    publisher = Publisher(make_celery(settings).send_task, redis_lib.Redis.from_url(redis.url))
    worker = start_worker(settings, tmp, name="bench")
    try:
        report = run(args, settings, sessions, publisher, admin)
    finally:
        worker.stop()
        redis.stop()
    print(json.dumps(report, indent=2))


def _steer_layers(sessions, args) -> list[str]:
    if not args.steer_layers:
        return []
    if args.steer_layers != "all":
        return [name.strip() for name in args.steer_layers.split(",") if name.strip()]
    from common.ml.activations import layer_table
    from common.research.registry import get_model

    with sessions() as s:
        model = get_model(s, args.model)
        return [info.name for info in layer_table(model.config, model.architecture)]


def run(args, settings, sessions, publisher, admin) -> dict:
    report: dict = {"model": args.model}
    steer_layers = _steer_layers(sessions, args)
    map_layers = ["encoder_bottleneck", "midblock"]
    extra = {"layers": sorted(set(steer_layers) | set(map_layers))} if steer_layers else {}
    params = {"model": args.model, "name": "bench", "num_samples": args.samples, "seed": 7, **extra}
    ds = run_job(sessions, publisher, settings, admin, "generate_dataset", params)
    emb = run_job(sessions, publisher, settings, admin, "fit_embedding",
                  {"dataset": "bench", "n_neighbors": 10, "seed": 1, "layers": map_layers})  # fmt: skip
    report["steer_layers"] = steer_layers or map_layers
    emb_id = emb.result["embedding_id"]
    classes = by_class(sessions, ds.params["dataset_id"])
    digits = sorted(c for c, ids in classes.items() if len(ids) >= 8)
    base = {
        "embedding": emb_id,
        "selected": classes[digits[0]][0],
        "neighbors": classes[digits[1]][:8],
        "seed": 3,
    }
    run_job(sessions, publisher, settings, admin, "generate_from_neighbors", base)  # the worker warm

    # 1. 16 one-step cells: one sweep job vs 16 generate jobs --------------------------------------------
    strengths = [i / 15 for i in range(16)]
    t0 = time.perf_counter()
    run_job(sessions, publisher, settings, admin, "sweep", {**base, "grid": {"strength": strengths}})
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    submitted = [
        jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="generate_from_neighbors",
            params={**base, "strength": s},
        )  # fmt: skip
        for s in strengths
    ]
    for job in submitted:
        assert wait_for_job(sessions, job.id, timeout=1800).status == "succeeded"
    jobs_s = time.perf_counter() - t0
    report["sweep_16_cells_s"] = round(sweep_s, 3)
    report["separate_16_jobs_s"] = round(jobs_s, 3)
    report["sweep_speedup"] = round(jobs_s / sweep_s, 2)
    if args.speed_only:
        return report

    # 2. steering curve and 3. strength landing points -----------------------------------------------------
    from common.ml.demo.evaluate import DigitsClassifier

    clf = DigitsClassifier.fit()
    rng = np.random.default_rng(0)
    pairs = []
    while len(pairs) < args.trials:
        a, b = (int(v) for v in rng.choice(digits, size=2, replace=False))
        pairs.append((a, b))
    hits = np.zeros(len(ALPHAS))
    t_by_strength = np.zeros(len(STRENGTHS))
    for trial, (a, b) in enumerate(pairs):
        own, other = classes[a], classes[b]
        selected = own[trial % len(own)]
        steer = {
            "embedding": emb_id, "selected": selected, "neighbors": other[:16],
            "negative": [s for s in own if s != selected][:16], "mode": "direction",
            "class": args.steer_class, "seed": 100 + trial, "compare_natural": False,
            "grid": {"alpha": ALPHAS}, **({"layers": steer_layers} if steer_layers else {}),
        }  # fmt: skip
        done = run_job(sessions, publisher, settings, admin, "sweep", steer)
        ids = [c["samples"][0] for c in done.result["cells"]]
        hits += clf.predict(images_of(settings, sessions, ids)) == b
        move = {
            "embedding": emb_id, "selected": selected, "neighbors": other[:16], "seed": 200 + trial,
            "grid": {"strength": STRENGTHS},
        }  # fmt: skip
        done = run_job(sessions, publisher, settings, admin, "sweep", move)
        with sessions() as s:
            rows = s.scalars(
                select(Generation)
                .where(Generation.sweep_id == done.result["sweep_id"])
                .order_by(Generation.sweep_cell)
            ).all()
            for i, g in enumerate(rows):
                twin, center = np.array([g.twin_x, g.twin_y]), np.array([g.center_x, g.center_y])
                actual, span = np.array([g.actual_x, g.actual_y]), center - np.array([g.twin_x, g.twin_y])
                t_by_strength[i] += float((actual - twin) @ span / max(span @ span, 1e-12))
    report["classifier_held_out_accuracy"] = round(clf.held_out_accuracy, 3)
    report["steering_class"] = args.steer_class
    report["steering_share_reading_as_target"] = {
        str(a): round(float(h / len(pairs)), 3) for a, h in zip(ALPHAS, hits, strict=True)
    }
    t = t_by_strength / len(pairs)
    report["strength_landing_fraction_twin_to_centre"] = {
        str(s): round(float(v), 3) for s, v in zip(STRENGTHS, t, strict=True)
    }
    report["strength_landing_monotone"] = bool(np.all(np.diff(t) >= 0))
    return report


if __name__ == "__main__":
    main()
