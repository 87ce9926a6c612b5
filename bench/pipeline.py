"""The research loop's costs, measured in one run on the demo model (or a given one):

1. dataset generation through the queue (a real Redis, a real worker, chunks, PNGs, shards, rows) vs the
   same model calls in a plain in-process loop — throughput ratio (target ≥ 0.8);
2. interactive generate-from-neighbours: median end-to-end latency (HTTP POST → image fetchable, warm
   worker) minus the in-process compute of the same request — the platform's overhead (target ≤ 100 ms);
3. 16 variations in one job vs 16 single jobs (target ≥ 4× faster);
4. cancel latency: cancel() of a running ping to its row saying cancelled, against one of its 1 s steps
   (target < 5 s);
5. re-projection distance (where the image landed vs where it was meant to land, in units of the
   neighbours' mean distance to their centre) for activation_mean vs umap_inverse, 100 trials each, with
   the round-trip error |umap(inverse(c)) − c| distribution.

Run: ``.venv/bin/python bench/pipeline.py [--samples 1024] [--model digits-onestep]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.redis_server import RedisServer, free_port  # noqa: E402
from common import jobs  # noqa: E402
from common.models import EmbeddingPoint, Job, Sample  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user, issue_token  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from common.research.registry import register_shipped_models  # noqa: E402
from tests.support.services import start_web, start_worker  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from tests.support.waiting import wait_for_job  # noqa: E402


def wait(sessions, job_id: int, timeout: float = 1800) -> Job:
    """The job once it succeeded (polled every 5 ms: the figures are end-to-end latencies)."""
    j = wait_for_job(sessions, job_id, timeout=timeout, interval=0.005)
    if j.status != "succeeded":
        raise SystemExit(f"job {job_id} {j.status}: {j.error}")
    return j


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.read()


class EventStream:
    """``/api/v1/events`` read in a thread (Server-Sent Events, as the pages use it): final job statuses.

    Polling the job at millisecond intervals instead would load the web process, and on a 2-core machine
    slow the worker being measured."""

    def __init__(self, base: str, token: str):
        import http.client
        import threading
        from urllib.parse import urlsplit

        where = urlsplit(base)
        self.conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        self.conn.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {token}"})
        self.res = self.conn.getresponse()
        assert self.res.status == 200, self.res.status
        self.final: dict[int, dict] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event = None
        while True:
            line = self.res.readline()
            if not line:
                return
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text.removeprefix("event: ")
            elif text.startswith("data: ") and event == "job":
                data = json.loads(text.removeprefix("data: "))
                if data.get("status") in ("succeeded", "failed", "cancelled"):
                    with self.cond:
                        self.final[int(data["id"])] = data
                        self.cond.notify_all()

    def wait_final(self, job_id: int, timeout: float = 120) -> dict:
        """The job's final event (status, and its result or error)."""
        with self.cond:
            if not self.cond.wait_for(lambda: job_id in self.final, timeout):
                raise SystemExit(f"no final event for job {job_id} in {timeout}s")
            return self.final[job_id]


def model_row(sessions, name: str):
    from common.research.registry import get_model

    with sessions() as s:
        return get_model(s, name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--model", default="digits-onestep")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--latency-runs", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-pipeline-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    settings = make_settings(tmp, redis_url=redis.url, chunk_size=256)
    migrate.upgrade(settings)
    sessions = session_factory(make_engine(settings))
    with sessions.begin() as s:
        admin = create_user(s, "bench", "bench-password", role="admin")
        token = issue_token(s, admin, "bench")
        added = register_shipped_models(s, settings)
    if args.model not in added:
        from tests.support.models import register_tiny_model

        print(f"(model {args.model} is not shipped here; using a random tiny16 model)")
        register_tiny_model(sessions, settings, name=args.model)
    import redis as redis_lib

    from common.jobs.broker import Publisher
    from workers.app import make_celery

    publisher = Publisher(make_celery(settings).send_task, redis_lib.Redis.from_url(redis.url))
    worker = start_worker(settings, tmp, name="bench")
    port = free_port()
    web = start_web(settings, tmp, port)
    base = f"http://127.0.0.1:{port}"
    try:
        report = run(args, settings, sessions, publisher, admin, token, base)
    finally:
        web.stop()
        worker.stop()
        redis.stop()
    print(json.dumps(report, indent=2))


def run(args, settings, sessions, publisher, admin, token, base) -> dict:
    from common.ml.generation import generate
    from common.research.datasets import class_for, noise_seed
    from common.research.embeddings import ReducerCache, get_embedding
    from common.research.generations import build_recipe, render, variation_seeds
    from common.research.modelcache import ModelCache

    report: dict = {"model": args.model}
    row = model_row(sessions, args.model)
    cache = ModelCache(threads=settings.cpu_threads())  # the same threads a worker uses
    model = cache.get(settings, row)
    n = args.samples

    # 1. dataset through the queue vs a plain loop of the same model calls ---------------------------
    classes = list(range(int(row.config["label_dim"])))
    t0 = time.perf_counter()
    for a in range(0, n, 64):
        idx = list(range(a, min(a + 64, n)))
        generate(
            model,
            [class_for(classes, i) for i in idx],
            [noise_seed(1, i) for i in idx],
            steps=row.default_steps,
            capture=["encoder_bottleneck", "midblock"],
        )
    inproc = time.perf_counter() - t0
    # the worker warm too (model loaded, torch initialised), as the in-process side is: workers keep models
    warm = jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_dataset",
        params={"model": args.model, "name": "bench-warmup", "num_samples": 16, "seed": 2},
    )
    wait(sessions, warm.id)
    t0 = time.perf_counter()
    job = jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_dataset",
        params={"model": args.model, "name": "bench", "num_samples": n, "seed": 1},
    )
    done = wait(sessions, job.id)
    queued = time.perf_counter() - t0
    report["dataset"] = {
        "samples": n,
        "in_process_s": round(inproc, 3),
        "through_queue_s": round(queued, 3),
        "throughput_ratio_queue_vs_inprocess": round(inproc / queued, 3),
        "target": ">= 0.8",
    }
    print("dataset:", report["dataset"], flush=True)

    emb_job = jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="fit_embedding",
        params={"dataset": "bench", "seed": 0},
    )
    emb_id = wait(sessions, emb_job.id).result["embedding_id"]
    with sessions() as s:
        ids = s.query(Sample.id).filter(Sample.dataset_id == done.params["dataset_id"]).order_by(Sample.index)
        ids = [i for (i,) in ids]
        pts = {p.sample_id: (p.x, p.y) for p in s.query(EmbeddingPoint).filter_by(embedding_id=emb_id)}

    from common.research.neighbors import find_neighbors

    def neighbours_of(sid: int, k: int = 8) -> list[int]:
        with sessions() as s:
            return [h["sample_id"] for h in find_neighbors(settings, s, get_embedding(s, emb_id), sid, k)]

    # 2. interactive latency minus in-process compute ----------------------------------------------
    reducers = ReducerCache()
    rng = np.random.default_rng(0)
    e2e, compute = [], []
    events = EventStream(base, token)
    for r in range(args.latency_runs + 2):  # the first two warm the worker and this process
        sel = int(rng.choice(ids))
        nb = neighbours_of(sel)
        body = {"embedding": emb_id, "selected": sel, "neighbors": nb, "variations": 1, "seed": r}
        t0 = time.perf_counter()
        status, raw = http("POST", f"{base}/api/v1/generations", token, body)
        job_id = json.loads(raw)["id"]
        # as the explorer learns it: the job's final event on the event stream, which carries the result
        j = events.wait_final(job_id)
        assert j["status"] == "succeeded", j
        http("GET", f"{base}/api/v1/samples/{j['result']['samples'][0]}/image", token)
        total = time.perf_counter() - t0
        with sessions() as s:
            emb = get_embedding(s, emb_id)
            params = {
                **body,
                "mode": "activation_mean",
                "layers": list(emb.layers),
                "class": "selected",
                "steps": row.default_steps,
                "weights": None,
            }
            t1 = time.perf_counter()
            recipe = build_recipe(settings, s, emb, params, reducers)
            reducer = reducers.get(settings, s, emb)
            res = render(
                model,
                recipe,
                variation_seeds(r, 1),
                row.default_steps,
                row.default_sigma_max,
                None,
                sorted(emb.dataset.layers),
            )
            x = np.concatenate([res.activations[name].reshape(1, -1) for name in reducer.layers], axis=1)
            reducer.transform(x)
            work = time.perf_counter() - t1
        if r >= 2:
            e2e.append(total)
            compute.append(work)
    overhead = [a - b for a, b in zip(e2e, compute, strict=True)]
    report["interactive"] = {
        "runs": len(e2e),
        "median_end_to_end_ms": round(1000 * statistics.median(e2e), 1),
        "median_in_process_compute_ms": round(1000 * statistics.median(compute), 1),
        "median_overhead_ms": round(1000 * statistics.median(overhead), 1),
        "target_overhead_ms": "<= 100",
    }
    print("interactive:", report["interactive"], flush=True)

    # 3. 16 variations in one job vs 16 single jobs -------------------------------------------------
    sel = ids[0]
    nb = neighbours_of(sel)
    base_params = {"embedding": emb_id, "selected": sel, "neighbors": nb}
    t0 = time.perf_counter()
    j = jobs.submit(
        sessions,
        publisher,
        settings,
        owner=admin,
        kind="generate_from_neighbors",
        params={**base_params, "variations": 16, "seed": 100},
    )
    wait(sessions, j.id)
    one_job = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = [
        jobs.submit(
            sessions,
            publisher,
            settings,
            owner=admin,
            kind="generate_from_neighbors",
            params={**base_params, "variations": 1, "seed": 200 + v},
        )
        for v in range(16)
    ]
    for j in singles:
        wait(sessions, j.id)
    sixteen = time.perf_counter() - t0
    report["variations"] = {
        "one_job_16_variations_s": round(one_job, 3),
        "sixteen_single_jobs_s": round(sixteen, 3),
        "speedup": round(sixteen / one_job, 2),
        "target": ">= 4x",
    }
    print("variations:", report["variations"], flush=True)

    # 4. cancel latency: a running 30 s ping cancelled (the figure tests/integration/test_job_pipe.py and
    # tests/reliability/test_cancel.py no longer time); baseline: one of its steps (1 s), same run --------
    latencies = []
    for _ in range(3):
        j = jobs.submit(
            sessions, publisher, settings, owner=admin, kind="ping", params={"seconds": 30, "steps": 30}
        )
        wait_for_job(sessions, j.id, {"running"}, timeout=120, interval=0.005)
        with sessions() as s:
            user = s.merge(admin)
        t0 = time.perf_counter()
        jobs.cancel(sessions, j.id, user, publisher)
        done = wait_for_job(sessions, j.id, timeout=60, interval=0.005)
        latencies.append(time.perf_counter() - t0)
        assert done.status == "cancelled", done.status
    step_s = 30 / 30
    report["cancel"] = {
        "cancel_to_cancelled_median_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
        "ping_step_s": step_s,
        "ratio_to_one_step": round(statistics.median(latencies) / step_s, 2),
        "target": "< 5 s",
    }
    print("cancel:", report["cancel"], flush=True)

    # 5. where images land: activation_mean vs umap_inverse, in process ----------------------------
    with sessions() as s:
        pts = {p.sample_id: (p.x, p.y) for p in s.query(EmbeddingPoint).filter_by(embedding_id=emb_id)}
        emb = get_embedding(s, emb_id)
        reducer = reducers.get(settings, s, emb)
        layers = list(emb.layers)
        results: dict[str, dict[str, list[float]]] = {}
        for mode in ("activation_mean", "umap_inverse"):
            miss, roundtrip = [], []
            trial_rng = np.random.default_rng(42)
            for t in range(args.trials):
                sel = int(trial_rng.choice(ids))
                nb = neighbours_of(sel)
                spread = (
                    np.mean(
                        [np.hypot(*(np.subtract(pts[q], np.mean([pts[m] for m in nb], axis=0)))) for q in nb]
                    )
                    or 1.0
                )
                params = {
                    "selected": sel,
                    "neighbors": nb,
                    "mode": mode,
                    "weights": None,
                    "layers": layers,
                    "class": "selected",
                }
                recipe = build_recipe(settings, s, emb, params, reducers)
                res = render(
                    model,
                    recipe,
                    variation_seeds(t, 1),
                    row.default_steps,
                    row.default_sigma_max,
                    None,
                    layers,
                )
                x = np.concatenate([res.activations[name].reshape(1, -1) for name in reducer.layers], axis=1)
                landed = reducer.transform(x)[0]
                miss.append(float(np.hypot(*(landed - recipe.center))) / spread)
                if recipe.roundtrip_error is not None:
                    roundtrip.append(recipe.roundtrip_error)
            results[mode] = {"miss": miss, "roundtrip": roundtrip}
    report["landing"] = {
        mode: {
            "trials": len(r["miss"]),
            "miss_in_neighbour_spreads_median": round(float(np.median(r["miss"])), 3),
            "miss_p90": round(float(np.percentile(r["miss"], 90)), 3),
            **(
                {
                    "roundtrip_error_median": round(float(np.median(r["roundtrip"])), 4),
                    "roundtrip_error_p90": round(float(np.percentile(r["roundtrip"], 90)), 4),
                    "roundtrip_error_max": round(float(np.max(r["roundtrip"])), 4),
                }
                if r["roundtrip"]
                else {}
            ),
        }
        for mode, r in results.items()
    }
    print("landing:", report["landing"], flush=True)
    report["note"] = (
        "With the map's layers masked, the captured activations of those layers are the clamp itself, so "
        "'landed' is where the clamped activation sits on the map (variations differ only downstream)."
    )
    return report


if __name__ == "__main__":
    main()
