"""Accelerator throughput, in one command: the bare model (images/s, no capture, no I/O) against dataset
generation through the queue with capture (a real Redis, a real worker on the device, chunks, PNGs in
the background writer, activation shards, sample rows), on the DMD2 ImageNet-64 configuration with
random weights, at micro-batches 16–256. Prints, per micro-batch, both rates and their ratio (goal
≥ 0.70), and the micro-batch the worker-start measurement picks within the memory budget.

Both sides load the same checkpoint the same way (``load_generator``: the precision a worker uses).
Then, in the same command, the diffusers family (``bench/gpu_diffusers.py``: a tiny SDXL-shaped model
end to end, throughput at micro-batches 16 and 32); ``--edm-only`` skips it.

Run on a GPU machine:  ``.venv/bin/python bench/gpu.py``  (about 10 minutes on one H200)
Smoke check on CPU:    ``.venv/bin/python bench/gpu.py --smoke``  (tiny16, micro-batches 4 and 8)
"""

from __future__ import annotations

import argparse
import json
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
from tests.support.models import register_tiny_model  # noqa: E402
from tests.support.services import start_worker  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from tests.support.waiting import wait_for_job  # noqa: E402

LAYERS = ["encoder_bottleneck", "midblock"]


def bare_rate(model, b: int, calls: int) -> float:
    """Images per second of ``calls`` forward passes at batch ``b`` (one-step: one call per image)."""
    import torch

    dev = next(model.parameters()).device
    x = torch.randn(b, model.img_channels, model.img_resolution, model.img_resolution, device=dev) * 80.0
    sigma = torch.full((b,), 80.0, device=dev)
    y = torch.eye(model.label_dim, device=dev)[torch.arange(b, device=dev) % model.label_dim]
    with torch.no_grad():
        model(x, sigma, y)  # warm (kernel selection, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(calls):
            model(x, sigma, y)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return b * calls / (time.perf_counter() - t0)


def queue_rate(sessions, publisher, settings, admin, name: str, b: int, n: int) -> float:
    """Images per second of an ``n``-sample dataset at micro-batch ``b`` through the queue (warm worker)."""

    def make(ds_name: str, count: int) -> float:
        params = {"model": "bench", "name": ds_name, "num_samples": count, "micro_batch": b, "layers": LAYERS}
        params["batch_size"] = min(1024, max(b, 4 * b))
        t0 = time.perf_counter()
        job = jobs.submit(sessions, publisher, settings, owner=admin, kind="generate_dataset", params=params)
        done = wait_for_job(sessions, job.id, timeout=3600, interval=0.01)
        if done.status != "succeeded":
            raise SystemExit(f"{ds_name}: {done.status} {done.error}")
        return time.perf_counter() - t0

    make(f"{name}-warm", b)  # the worker's first call at this shape
    return n / make(name, n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny16 on this machine's CPU, a few samples")
    ap.add_argument(
        "--batches", default=None, help="comma-separated micro-batches (default 16,32,64,128,256)"
    )
    ap.add_argument("--samples", type=int, default=None, help="samples per dataset (default 8192; smoke 32)")
    ap.add_argument("--budget-mib", type=int, default=100_000, help="LATENTLAB_MICRO_BATCH_MEMORY_MB")
    ap.add_argument("--edm-only", action="store_true", help="skip the diffusers family's part")
    args = ap.parse_args()
    preset = "tiny16" if args.smoke else "dmd2-imagenet64"
    batches = [int(b) for b in (args.batches or ("4,8" if args.smoke else "16,32,64,128,256")).split(",")]
    n = args.samples or (32 if args.smoke else 8192)

    import torch

    from common.ml import batching
    from common.ml.checkpoints import load_generator
    from common.ml.device import pick_device

    device = pick_device(None)
    if device.type != "cuda" and not args.smoke:
        raise SystemExit(f"no GPU here ({device}); run with --smoke for the CPU smoke check")
    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-gpu-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    chunk = max(batches) * 16
    settings = make_settings(
        tmp, redis_url=redis.url, chunk_size=chunk, micro_batch_memory_mb=args.budget_mib
    )
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        admin = create_user(s, "bench", "bench-password", role="admin")
    register_tiny_model(sessions, settings, name="bench", preset=preset)  # random weights, real format
    from common.research.registry import get_model

    with sessions() as s:
        row = get_model(s, "bench")
        config = dict(row.config)
    path = settings.data_root / "models" / "bench.safetensors"
    if device.type == "cpu":  # the smoke check: the worker's threads (oversubscribed OpenMP threads spin)
        from common.ml.device import limit_cpu_threads

        limit_cpu_threads(settings.cpu_threads())
    model, _ = load_generator(path, config, device=str(device))
    measured = batching.measure_micro_batch(model, args.budget_mib)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "preset": preset,
        "samples_per_dataset": n,
        "measured_micro_batch": measured,
        "budget_mib": args.budget_mib,
        "rows": [],
    }
    bare = {b: bare_rate(model, b, max(2, n // b // 4)) for b in batches}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    import redis as redis_lib

    from common.jobs.broker import Publisher
    from workers.app import make_celery

    publisher = Publisher(make_celery(settings).send_task, redis_lib.Redis.from_url(redis.url))
    worker = start_worker(settings, tmp, name="gpu", queues="batch", ready_timeout=300)
    try:
        for b in batches:
            queued = queue_rate(sessions, publisher, settings, admin, f"b{b}", b, n)
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
    report["goal"] = "ratio >= 0.70"
    print(json.dumps(report, indent=2), flush=True)
    if not args.edm_only:
        import subprocess

        extra = ["--smoke"] if args.smoke else []
        subprocess.run([sys.executable, str(REPO / "bench" / "gpu_diffusers.py"), *extra], check=True)


if __name__ == "__main__":
    main()
