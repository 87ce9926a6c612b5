"""A bounded soak: several users drive mixed work through the real API (generation from neighbours, pings,
new datasets, embedding fits) for a while, on loopback, against a real web process and two workers.
Afterwards no job is lost or duplicated, and web and worker memory stayed flat (RSS printed over time).

Opt-in (it runs for minutes)::

    LATENTLAB_SOAK=1 python -m pytest tests/reliability/test_soak.py -s
    LATENTLAB_SOAK=1 LATENTLAB_SOAK_SECONDS=1200 python -m pytest tests/reliability/test_soak.py -s

``LATENTLAB_SOAK_SECONDS`` is the load phase (default 600, at most 1200); setup and checks add a few
minutes. Figures go to RELIABILITY.md.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time

import psutil
import pytest
from sqlalchemy import func, select

from common.models import Embedding, EmbeddingPoint, Job, Sample
from common.platform.accounts import create_user, issue_token
from tests.reliability.support import LOCKED, assert_exactly_once, trace_of
from tests.support.waiting import poll_job, wait_until
from tests.support.web import Http
from tests.support.web import bearer_header as auth

pytestmark = pytest.mark.skipif(
    os.environ.get("LATENTLAB_SOAK") != "1", reason="the soak runs for minutes; set LATENTLAB_SOAK=1"
)

USERS = 4
SAMPLE_EVERY = 20.0  # seconds between memory samples


def rss_mb(proc: psutil.Process) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def run_job(web: Http, token: str, kind: str, params: dict, timeout: float = 600) -> dict:
    status, job = web.call("POST", "/api/v1/jobs", {"kind": kind, "params": params}, auth(token))
    assert status == 202, (kind, status, job)

    def read() -> dict:
        status, now = web.call("GET", f"/api/v1/jobs/{job['id']}", headers=auth(token))
        assert status == 200, now
        return now

    return poll_job(read, timeout=timeout, interval=0.25, context=lambda: f"{kind} job {job['id']}")[0]


@pytest.mark.timeout(1200 + 900)  # the load phase (at most 1,200 s) plus setup and checks
def test_soak_mixed_load_loses_nothing_and_memory_stays_flat(lab, tiny_model):
    seconds = min(1200.0, float(os.environ.get("LATENTLAB_SOAK_SECONDS", "600")))
    # a first embedding fit compiles numba kernels: minutes on a busy machine, past the fault tests' limit
    lab.settings = lab.settings.with_(task_time_limit=900, visibility_timeout=1000, stale_after=1100)
    with lab.sessions.begin() as s:
        tokens = [issue_token(s, create_user(s, f"soak{i}", f"soak{i}-password"), "t") for i in range(USERS)]
    gpu, cpu = lab.workers(["gpu"], queues="interactive,batch", concurrency=2) + lab.workers(
        ["cpu"], queues="embed"
    )
    web_proc, base = lab.web()
    web = Http(base)

    # the lab the users work in: a dataset and a map of it
    base_ds = run_job(
        web, tokens[0], "generate_dataset", {"model": "tiny", "name": "soak", "num_samples": 120}
    )
    assert base_ds["status"] == "succeeded", base_ds
    fit = run_job(web, tokens[0], "fit_embedding", {"dataset": "soak", "n_neighbors": 8, "seed": 0})
    assert fit["status"] == "succeeded", fit
    embedding_id = fit["result"]["embedding_id"]
    with lab.sessions() as s:
        sample_ids = list(
            s.scalars(select(Sample.id).where(Sample.dataset_id == base_ds["result"]["dataset_id"]))
        )

    processes = {
        "web": psutil.Process(web_proc.pid),
        "gpu": psutil.Process(gpu.pid),
        "cpu": psutil.Process(cpu.pid),
    }
    memory: list[tuple[float, dict[str, float]]] = []
    finished: list[dict] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    t0 = time.monotonic()

    def sampler() -> None:
        while True:
            memory.append((time.monotonic() - t0, {name: rss_mb(p) for name, p in processes.items()}))
            if stop.wait(SAMPLE_EVERY):
                memory.append((time.monotonic() - t0, {name: rss_mb(p) for name, p in processes.items()}))
                return

    def user(i: int) -> None:
        rng = random.Random(i)
        client = Http(base)
        n = 0
        try:
            while time.monotonic() - t0 < seconds:
                n += 1
                what = rng.choices(["generate", "ping", "dataset", "embed"], weights=[5, 3, 1, 1])[0]
                if what == "generate":
                    picked = rng.sample(sample_ids, 6)
                    job = run_job(
                        client,
                        tokens[i],
                        "generate_from_neighbors",
                        {
                            "embedding": embedding_id,
                            "selected": picked[0],
                            "neighbors": picked[1:],
                            "seed": n,
                        },
                    )
                elif what == "ping":
                    job = run_job(client, tokens[i], "ping", {"seconds": 1, "steps": 5})
                elif what == "dataset":
                    params = {"model": "tiny", "name": f"soak-{i}-{n}", "num_samples": 60, "seed": n}
                    job = run_job(client, tokens[i], "generate_dataset", params)
                else:
                    params = {"dataset": "soak", "n_neighbors": 8, "seed": 1000 * i + n}
                    job = run_job(client, tokens[i], "fit_embedding", params)
                status, _ = client.call(
                    "GET", f"/api/v1/embeddings/{embedding_id}/points", headers=auth(tokens[i])
                )
                assert status == 200
                with lock:
                    finished.append(job)
        except Exception as exc:  # reported after the run
            errors.append(f"user {i}: {exc!r}")

    threads = [threading.Thread(target=sampler)] + [
        threading.Thread(target=user, args=(i,)) for i in range(USERS)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(seconds + 900)
    stop.set()
    threads[0].join()
    elapsed = time.monotonic() - t0

    print(f"\nsoak: {USERS} users, {len(finished)} jobs in {elapsed:.0f}s; RSS (MiB, process + children):")
    print("   t(s)    web    gpu    cpu")
    for t, mb in memory:
        print(f"  {t:5.0f} {mb['web']:6.0f} {mb['gpu']:6.0f} {mb['cpu']:6.0f}")
    kinds = {k: sum(j["kind"] == k for j in finished) for k in sorted({j["kind"] for j in finished})}
    print(f"  jobs by kind: {kinds}")

    assert errors == []
    # nothing lost: every job the users saw finished succeeded, on its first attempt
    assert [j["status"] for j in finished] == ["succeeded"] * len(finished), [
        j for j in finished if j["status"] != "succeeded"
    ]
    assert all(j["attempts"] == 1 for j in finished)
    with lab.sessions() as s:
        active = s.scalar(select(func.count(Job.id)).where(Job.status.in_(("queued", "running"))))
        assert active == 0
        for job in finished:
            if job["kind"] == "generate_from_neighbors":  # nothing duplicated: one sample per variation
                made = s.scalar(select(func.count(Sample.id)).where(Sample.job_id == job["id"]))
                assert made == 1 and job["result"]["samples"] and len(job["result"]["samples"]) == 1
            elif job["kind"] == "fit_embedding":
                emb = s.get(Embedding, job["result"]["embedding_id"])
                points = s.scalar(select(func.count()).where(EmbeddingPoint.embedding_id == emb.id))
                assert emb.status == "ready" and points == emb.num_points >= 120
            elif job["kind"] == "ping":
                assert [e["event"] for e in trace_of(lab.settings, job["id"])].count("start") == 1
    for job in finished:
        if job["kind"] == "generate_dataset":
            assert_exactly_once(lab.settings, lab.sessions, job["result"]["dataset_id"], 60)
    assert LOCKED not in lab.logs()

    # memory flat: after the warm-up (first quarter), the last third grows by less than 25% (or 64 MiB)
    series = {name: [(t, mb[name]) for t, mb in memory] for name in processes}
    for name, points in series.items():
        warm = [mb for t, mb in points if elapsed * 0.25 <= t < elapsed * 0.5]
        late = [mb for t, mb in points if t >= elapsed * 2 / 3]
        if not warm or not late:
            continue
        baseline, end = statistics.median(warm), statistics.median(late)
        print(f"  {name}: {baseline:.0f} MiB after warm-up, {end:.0f} MiB in the last third")
        assert end - baseline < max(64.0, 0.25 * baseline), (
            f"{name} memory grew {baseline:.0f} -> {end:.0f} MiB"
        )
    wait_until(lambda: web_proc.alive() and gpu.alive() and cpu.alive(), 1, "every process to be alive")
