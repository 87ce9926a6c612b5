"""The diffusers family on an accelerator, in one prepared command: a tiny random-weight SDXL-shaped
pipeline (tests/support/diffusers_models.py, two text encoders, pooled embeddings, time ids) written as an
original-layout SGM single-file checkpoint (tests/support/ldm_checkpoints.py) and registered from it with a
configs-only folder in float16, then

1. end to end through a real Redis and a real worker on the device: a dataset with capture, a map, and a
   generation from neighbours (the neighbours' majority prompt); each job must succeed;
2. throughput at micro-batches 16 and 32 (one step, timestep 999): the bare family ``generate`` (images/s,
   no capture, no I/O) against dataset generation through the queue with capture (chunks, PNGs, shards,
   rows), and their ratio (goal >= 0.70).

Prints one JSON report. Run on a GPU machine: ``.venv/bin/python bench/gpu_diffusers.py`` (a few minutes);
smoke check on this machine's CPU: ``.venv/bin/python bench/gpu_diffusers.py --smoke`` (micro-batches 2, 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.redis_server import RedisServer  # noqa: E402
from common import jobs  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from tests.support.services import start_worker  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from tests.support.waiting import wait_for_job  # noqa: E402

PROMPTS = ["a handwritten digit seven", "a handwritten digit one", "a red photo"]
LAYERS = ["mid_block", "down_block_1"]


def run_job(sessions, publisher, settings, admin, kind: str, params: dict):
    job = jobs.submit(sessions, publisher, settings, owner=admin, kind=kind, params=params)
    done = wait_for_job(sessions, job.id, timeout=3600, interval=0.01)
    if done.status != "succeeded":
        raise SystemExit(f"{kind} {params.get('name', '')}: {done.status} {done.error}")
    return done


def bare_rate(model, b: int, calls: int) -> float:
    """Images per second of the family's ``generate`` at micro-batch ``b`` (one step, no capture)."""
    import torch

    from common.ml.families import get_family

    fam = get_family("diffusers")
    labels, seeds = [i % len(PROMPTS) for i in range(b)], list(range(b))
    kw = {"prompts": PROMPTS, "timesteps": [999], "micro_batch": b}
    fam.generate(model, labels, seeds, steps=1, **kw)  # warm (kernels, prompt embedding cache)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fam.generate(model, labels, seeds, steps=1, **kw)
    sync()
    return b * calls / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="on this machine's CPU, micro-batches 2 and 4")
    ap.add_argument("--samples", type=int, default=None, help="samples per dataset (default 1024; smoke 8)")
    ap.add_argument("--resolution", type=int, default=None, help="image size (default 128; smoke 32)")
    args = ap.parse_args()
    batches = [2, 4] if args.smoke else [16, 32]
    n = args.samples or (8 if args.smoke else 1024)
    res = args.resolution or (32 if args.smoke else 128)

    import torch

    from common.ml.device import pick_device
    from common.ml.families import get_family
    from common.research.registry import add_diffusers_model, get_model
    from tests.support.diffusers_models import make_tiny_pipeline
    from tests.support.ldm_checkpoints import write_original_checkpoint

    device = pick_device(None)
    if device.type != "cuda" and not args.smoke:
        raise SystemExit(f"no GPU here ({device}); run with --smoke for the CPU smoke check")
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-sd-"))
    folder = make_tiny_pipeline(tmp / "sdxl", kind="sdxl", resolution=res)
    from diffusers import DiffusionPipeline

    ckpt = write_original_checkpoint(
        DiffusionPipeline.from_pretrained(folder, local_files_only=True), tmp / "sdxl.safetensors", "sgm"
    )
    configs = tmp / "sdxl-configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors"))

    redis = RedisServer(tmp / "redis")
    redis.start()
    settings = make_settings(tmp, redis_url=redis.url, chunk_size=max(batches) * 8)
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        admin = create_user(s, "bench", "bench-password", role="admin")
        add_diffusers_model(
            s, settings, "bench-sdxl", path=configs, weights_file=ckpt, prompts=PROMPTS,
            timesteps=[999], allow_guidance=False, dtype="float16",
        )  # fmt: skip
    with sessions() as s:
        row = get_model(s, "bench-sdxl")
        config, source = dict(row.config), row.card["source"]
    if device.type == "cpu":  # the smoke check: the worker's threads (oversubscribed OpenMP threads spin)
        from common.ml.device import limit_cpu_threads

        limit_cpu_threads(settings.cpu_threads())
    model, _ = get_family("diffusers").load(configs, config, str(device))
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "model": f"tiny SDXL-shaped, {res}x{res}, registered from a {source} single file, "
        f"{next(model.unet.parameters()).dtype}",
        "samples_per_dataset": n,
        "rows": [],
    }
    bare = {b: bare_rate(model, b, max(2, n // b // 4)) for b in batches}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    import redis as redis_lib

    from common.jobs.broker import Publisher
    from common.models import Sample
    from workers.app import make_celery

    publisher = Publisher(make_celery(settings).send_task, redis_lib.Redis.from_url(redis.url))
    worker = start_worker(settings, tmp, name="gpu-sd", ready_timeout=300)

    def run(kind: str, params: dict):
        return run_job(sessions, publisher, settings, admin, kind, params)

    try:
        # -- end to end: dataset, map, generate from neighbours -------------------------------------------
        t0 = time.perf_counter()
        base = {"model": "bench-sdxl", "layers": LAYERS, "seed": 1}
        ds = run("generate_dataset", {**base, "name": "e2e", "num_samples": 24})
        emb = run("fit_embedding", {"dataset": "e2e", "n_neighbors": 4})
        with sessions() as s:
            ids = [
                i
                for (i,) in s.query(Sample.id)
                .filter_by(dataset_id=ds.params["dataset_id"])
                .order_by(Sample.id)
            ]
        gen = {"embedding": emb.result["embedding_id"], "selected": ids[0], "neighbors": ids[1:5], "seed": 2}
        done = run("generate_from_neighbors", {**gen, "class": "neighbor_majority"})
        report["end_to_end"] = {
            "succeeded": True,
            "samples": done.result["samples"],
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        # -- throughput --------------------------------------------------------------------------------------
        for b in batches:
            run("generate_dataset", {**base, "name": f"w{b}", "num_samples": b, "micro_batch": b})
            t0 = time.perf_counter()
            run(
                "generate_dataset",
                {**base, "name": f"b{b}", "num_samples": n, "micro_batch": b},
            )
            queued = n / (time.perf_counter() - t0)
            row = {
                "micro_batch": b,
                "bare_images_per_s": round(bare[b], 1),
                "queue_images_per_s": round(queued, 1),
                "ratio": round(queued / bare[b], 3),
            }
            report["rows"].append(row)
            print(row, flush=True)
    finally:
        worker.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report["goal"] = "ratio >= 0.70"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
