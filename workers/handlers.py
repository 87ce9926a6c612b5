"""Job handlers: ``handler(ctx) -> result dict``. Each is a thin call into ``common``."""

from __future__ import annotations

import json
import os
import signal
import time

from common.jobs import JobContext
from common.research import datasets, embeddings, generations, sweeps
from common.research.embeddings import ReducerCache
from common.research.modelcache import ModelCache


def model_cache(ctx: JobContext) -> ModelCache:
    """The worker process's generator cache (created on first use, in the process that uses it)."""
    cache = ctx.services.get("models")
    if cache is None:
        cache = ctx.services["models"] = ModelCache(
            ctx.settings.model_cache_size,
            ctx.settings.device or None,
            ctx.settings.cpu_threads(),
            max_bytes=ctx.settings.model_cache_bytes or None,
        )
    return cache


def reducer_cache(ctx: JobContext) -> ReducerCache:
    cache = ctx.services.get("reducers")
    if cache is None:
        cache = ctx.services["reducers"] = ReducerCache()
    return cache


PING_NAP_S = 0.1  # a ping looks for a cancel this often while it sleeps


def ping(ctx: JobContext) -> dict:
    """Sleep ``seconds`` in ``steps`` slices, reporting progress after each (proves the pipe); it looks
    for a cancel every ``PING_NAP_S`` while sleeping, so a long slice still stops within a second.

    With fault injection on (tests only), each execution also appends what it did to
    ``<data>/fault-trace/ping-<job id>.jsonl``: ``start``, every ``step`` whose progress write the lease
    accepted, ``end``; the reliability tests read it to show no two attempts ever overlapped.
    """
    seconds, steps, fault = ctx.params["seconds"], ctx.params["steps"], ctx.params.get("fault", "none")
    trace = _trace(ctx) if ctx.settings.fault_injection else (lambda event, **_: None)
    trace("start")
    if fault == "crash" and ctx.settings.fault_injection:
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "error":
        raise RuntimeError("ping was asked to fail")
    started = time.monotonic()
    for i in range(steps):
        ctx.check()
        _sleep_checking(ctx, seconds / steps)
        if fault == "hang" and ctx.settings.fault_injection:
            while True:
                time.sleep(1)
        ctx.progress((i + 1) / steps, f"slept {i + 1} of {steps} slices")
        trace("step", step=i + 1)
    trace("end")
    return {"slept": round(time.monotonic() - started, 3), "attempt": ctx.attempt}


def _sleep_checking(ctx: JobContext, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(PING_NAP_S, left))
        ctx.check()


def _trace(ctx: JobContext):
    folder = ctx.settings.data_root / "fault-trace"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ping-{ctx.job_id}.jsonl"

    def record(event: str, **extra) -> None:
        line = {"event": event, "attempt": ctx.attempt, "pid": os.getpid(), "t": time.time(), **extra}
        with open(path, "a") as fh:  # one short line per write: appends from two processes do not mix
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    return record


def generate_dataset(ctx: JobContext):
    return datasets.run_generate_dataset(ctx)


def dataset_chunk(ctx: JobContext) -> dict:
    return datasets.run_chunk(ctx, model_cache(ctx))


def fit_embedding(ctx: JobContext) -> dict:
    # a fit uses every core, as numba's UMAP does; renders in this process are held to the worker's
    # budget again by the model cache (common.ml.device.limit_cpu_threads)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=os.cpu_count() or 1, user_api="blas"):
        return embeddings.run_fit_embedding(ctx)


def reproject(ctx: JobContext) -> dict:
    return embeddings.run_reproject(ctx, reducer_cache(ctx))


def generate_from_neighbors(ctx: JobContext) -> dict:
    return generations.run_generate_from_neighbors(ctx, model_cache(ctx), reducer_cache(ctx))


def sweep(ctx: JobContext) -> dict:
    return sweeps.run_sweep(ctx, model_cache(ctx), reducer_cache(ctx))


HANDLERS = {
    "ping": ping,
    "generate_dataset": generate_dataset,
    "dataset_chunk": dataset_chunk,
    "fit_embedding": fit_embedding,
    "reproject": reproject,
    "generate_from_neighbors": generate_from_neighbors,
    "sweep": sweep,
}
