"""Dataset generation throughput on CPU, in one run, on the digits demo teacher (18 Heun steps):

1. the batch-1 path through the queue (``micro_batch 1``: one sample per model call, how every dataset
   was made before micro-batches) — the baseline;
2. the new path through the queue at micro-batch 16 (capture, PNG encoding in the background writer,
   shard writes and sample rows included) — target ≥ 3× the baseline;
3. the bare in-process model loop at the same micro-batch (``generate`` on the same indices, nothing
   written) — target: the queue ≥ 0.8× of it;
4. with ``--two-workers``: the micro-batch-16 dataset again with two worker processes (one torch thread
   each) sharing its chunks, against one worker with one thread; checks the two datasets byte-identical.

Workers are warm (a small dataset first), as a lab's are: the figures are steady-state throughput.
Beside wall-clock seconds it reports CPU seconds (the workers' process groups, this process for the bare
loop): on a shared machine whose load changes during the run, CPU seconds compare the paths' work
independently of the other tenants; wall-clock ratios are what a user sees on an idle machine.

Run: ``.venv/bin/python bench/throughput.py [--samples 600] [--micro-batch 16] [--chunk-size 64]
[--two-workers]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.redis_server import RedisServer  # noqa: E402
from common import jobs  # noqa: E402
from common.models import Sample  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from common.research.registry import register_shipped_models  # noqa: E402
from tests.support.services import start_worker  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from tests.support.waiting import wait_for_job  # noqa: E402

TEACHER = "digits-edm"
LAYERS = ["encoder_bottleneck", "midblock"]


def group_cpu_s(procs) -> float:
    """CPU seconds (user + system) used so far by every process in the process groups of ``procs``."""
    groups = {os.getpgid(p.pid) for p in procs if p.alive()}
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # pgrp; utime, stime are fields 12, 13 after the name
            total += int(fields[11]) + int(fields[12])
    return total / tick


def dataset(sessions, publisher, settings, admin, workers=(), **params) -> tuple[float, int, float]:
    """Seconds from submit to the dataset's job succeeded; the dataset id; the workers' CPU seconds."""
    cpu0 = group_cpu_s(workers)
    t0 = time.perf_counter()
    job = jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_dataset",
        params={"layers": LAYERS, **params},
    )
    done = wait_for_job(sessions, job.id, timeout=3600, interval=0.02)
    if done.status != "succeeded":
        raise SystemExit(f"dataset {params['name']}: {done.status} {done.error}")
    return time.perf_counter() - t0, done.params["dataset_id"], group_cpu_s(workers) - cpu0


def bare_loop(settings, sessions, n: int, micro_batch: int, seed: int) -> tuple[float, float]:
    """The same model calls in this process with the worker's threads: no capture copy to disk, no PNG."""
    from common.ml.generation import generate
    from common.research.datasets import class_for, noise_seed
    from common.research.modelcache import ModelCache
    from common.research.registry import get_model

    with sessions() as s:
        row = get_model(s, TEACHER)
        model = ModelCache(threads=settings.cpu_threads()).get(settings, row)
        classes = list(range(int(row.config["label_dim"])))
        steps = row.default_steps
    group = 64 if micro_batch == 1 else -(-64 // micro_batch) * micro_batch
    end = -(-n // micro_batch) * micro_batch
    generate(model, [0] * micro_batch, list(range(micro_batch)), steps=steps, micro_batch=micro_batch)  # warm
    t0, cpu0 = time.perf_counter(), time.process_time()
    for a in range(0, end, group):
        idx = list(range(a, min(a + group, end)))
        generate(
            model,
            [class_for(classes, i) for i in idx],
            [noise_seed(seed, i) for i in idx],
            steps=steps,
            capture=LAYERS,
            micro_batch=micro_batch,
        )
    return time.perf_counter() - t0, time.process_time() - cpu0


def files_of(settings, sessions, dataset_id: int) -> dict[int, bytes]:
    import numpy as np

    root, out = settings.data_root, {}
    with sessions() as s:
        for r in s.query(Sample).filter(Sample.dataset_id == dataset_id):
            acts = b"".join(
                np.load(root / r.act_shard / f"{name}.npy", mmap_mode="r")[r.act_row].tobytes()
                for name in LAYERS
            )
            out[r.index] = (root / r.image_path).read_bytes() + acts
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=64, help="samples per chunk (several: workers share)")
    ap.add_argument("--two-workers", action="store_true")
    args = ap.parse_args()
    n, mb = args.samples, args.micro_batch

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-throughput-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    settings = make_settings(tmp, redis_url=redis.url, chunk_size=args.chunk_size, torch_threads=1)
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        admin = create_user(s, "bench", "bench-password", role="admin")
        added = register_shipped_models(s, settings)
    if TEACHER not in added:
        raise SystemExit(f"the demo teacher {TEACHER} is not shipped here (latentlab train-demo makes it)")
    import redis as redis_lib

    from common.jobs.broker import Publisher
    from workers.app import make_celery

    publisher = Publisher(make_celery(settings).send_task, redis_lib.Redis.from_url(redis.url))
    env = {"LATENTLAB_TORCH_THREADS": "1"}
    workers = [start_worker(settings, tmp, name="one", extra_env=env)]
    report: dict = {"model": TEACHER, "samples": n, "micro_batch": mb, "torch_threads_per_worker": 1}
    try:
        common = {"model": TEACHER, "num_samples": n, "seed": 1}

        def make(name: str, **params):
            return dataset(
                sessions, publisher, settings, admin, workers, **{**common, "name": name, **params}
            )

        make("warm", num_samples=mb, micro_batch=mb)
        make("warm1", num_samples=2, micro_batch=1)
        batch1, _, batch1_cpu = make("batch1", micro_batch=1)
        print(f"batch-1 through the queue: {batch1:.1f} s ({batch1_cpu:.1f} CPU s)", flush=True)
        queued, one_id, queued_cpu = make("micro", micro_batch=mb)
        print(f"micro-batch {mb} through the queue: {queued:.1f} s ({queued_cpu:.1f} CPU s)", flush=True)
        bare, bare_cpu = bare_loop(settings, sessions, n, mb, seed=1)
        print(f"bare in-process loop at micro-batch {mb}: {bare:.1f} s ({bare_cpu:.1f} CPU s)", flush=True)
        report["load_average_1min"] = os.getloadavg()[0]
        report["dataset"] = {
            "wall_s": {
                "batch1_queue": round(batch1, 2),
                "micro_queue": round(queued, 2),
                "bare": round(bare, 2),
            },
            "cpu_s": {
                "batch1_queue": round(batch1_cpu, 2),
                "micro_queue": round(queued_cpu, 2),
                "bare": round(bare_cpu, 2),
            },
            "speedup_vs_batch1": {
                "wall": round(batch1 / queued, 2),
                "cpu": round(batch1_cpu / queued_cpu, 2),
            },
            "queue_vs_bare_loop": {"wall": round(bare / queued, 3), "cpu": round(bare_cpu / queued_cpu, 3)},
            "targets": {"speedup_vs_batch1": ">= 3", "queue_vs_bare_loop": ">= 0.8"},
        }
        if args.two_workers:
            workers.append(start_worker(settings, tmp, name="two", extra_env=env))
            make("warm2", num_samples=4 * mb, micro_batch=mb)
            two, two_id, _ = make("micro-two", micro_batch=mb)
            same = files_of(settings, sessions, one_id) == files_of(settings, sessions, two_id)
            report["two_workers"] = {
                "one_worker_s": round(queued, 2),
                "two_workers_s": round(two, 2),
                "ratio": round(queued / two, 2),
                "byte_identical_to_one_worker": same,
                "chunks": -(-n // args.chunk_size),
            }
    finally:
        for w in workers:
            w.stop()
        redis.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
