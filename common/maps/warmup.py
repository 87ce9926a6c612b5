"""Warm a worker's embedding paths before its first job, so the first click does not stall.

Measured when latentlab was designed: umap-learn's first ``transform`` in a fresh process takes 6–21 s
(imports and numba compilation). latentlab's transform and inverse never import umap-learn
(common.maps.reducer); what is left is compiling the transform kernels of common.maps.umap_kernels, about
10–20 s on a busy 2-core machine. Two mechanisms remove it from the first job:

* numba's on-disk cache (the kernels are ``cache=True``; ``configure_numba_cache`` says where), so a
  machine compiles them once per code version, not once per process;
* ``warm_up()``: a tiny synthetic map (64 points) transformed and inverted in the worker's main process
  when it starts, before the pool forks its children, which inherit the compiled code; each child then
  runs the same warm-up again (milliseconds, as nothing is left to compile) and records it.

Usage (workers/app.py)::

    configure_numba_cache(settings.data_root)   # before anything imports numba
    warm_up()                                   # worker start, and again in each pool child
    status()                                    # {"warmed": True, "kernels": {...}, ...} for a job result
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "seconds": None, "error": None, "inherited": False}


def configure_numba_cache(data_root: Path) -> str:
    """Make sure numba keeps compiled kernels on disk somewhere that persists; returns the folder.

    ``NUMBA_CACHE_DIR`` when set; else numba's own place next to the code (``common/__pycache__``) when
    it is writable, shared by every data root on the machine (a per-data-root cache would recompile for
    every new data root: each test, each fresh volume); else ``<data root>/cache/numba`` (read-only code,
    as in a container image). Call it before numba is imported."""
    current = os.environ.get("NUMBA_CACHE_DIR")
    if current:
        return current
    in_tree = Path(__file__).resolve().parent / "__pycache__"
    try:
        in_tree.mkdir(exist_ok=True)
        probe = in_tree / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return str(in_tree)
    except OSError:
        pass
    folder = Path(data_root) / "cache" / "numba"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:  # imported already: make it read the variable again
        from numba.core import config

        config.reload_config()
    return str(folder)


def cache_dir() -> str:
    """Where numba keeps this process's compiled kernels."""
    return os.environ.get("NUMBA_CACHE_DIR") or str(Path(__file__).resolve().parent / "__pycache__")


def _exercise() -> None:
    import numpy as np

    from common.maps import umap_kernels as kern
    from common.maps.reducer import Reducer, UmapMap

    rng = np.random.default_rng(0)
    n, d, k = 64, 8, 8
    z = rng.normal(size=(n, d)).astype(np.float32)
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    mp = UmapMap(xy, np.ones(n, np.float32), np.zeros(n, np.float32), a=1.577, b=0.895, n_neighbors=k)
    red = Reducer(["warmup"], d, None, None, None, None, mp, z)
    _, dists = red.neighbors(z, k)
    mp.sigmas, mp.rhos = kern.smooth_knn_dist(dists, float(k), 64, 1.0, 1.0)
    mp.measure_extent()
    red.transform(z[:4] + np.float32(0.01))  # the same argument types as a real map's
    red.inverse_with_diagnostics(xy[:2])


def warm_up() -> dict[str, Any]:
    """Compile and run the transform and inverse paths once in this process (idempotent per process).
    Never raises: a failed warm-up is logged and the first job compiles instead."""
    with _lock:
        if _state["pid"] == os.getpid():
            return status()
        from common.maps import umap_kernels

        inherited = all(umap_kernels.compiled_signatures().values())
        t0 = time.perf_counter()
        try:
            _exercise()
            _state["error"] = None
        except Exception as exc:  # noqa: BLE001 - a warm-up must never keep a worker from starting
            log.exception("embedding warm-up failed")
            _state["error"] = f"{type(exc).__name__}: {exc}"
        _state.update(pid=os.getpid(), seconds=round(time.perf_counter() - t0, 4), inherited=inherited)
    log.info(
        "embedding kernels warm in %.2fs (%s)",
        _state["seconds"],
        "inherited from the parent" if inherited else "compiled or loaded from the numba cache",
    )
    return status()


def status() -> dict[str, Any]:
    """This process's warm-up record and the compiled signatures of the transform kernels now."""
    from common.maps import umap_kernels

    return {
        "pid": os.getpid(),
        "warmed": _state["pid"] == os.getpid() and _state["error"] is None,
        "seconds": _state["seconds"] if _state["pid"] == os.getpid() else None,
        "inherited": bool(_state["inherited"]) if _state["pid"] == os.getpid() else False,
        "error": _state["error"],
        "kernels": umap_kernels.compiled_signatures(),
        "numba_cache_dir": cache_dir(),
    }


def warm_up_after_fork() -> None:
    """In a pool child: re-run the warm-up (milliseconds with the parent's compiled kernels). Without them
    it runs in a thread, so the child still reports for work within Celery's 4 s start-up limit."""
    from common.maps import umap_kernels

    if all(umap_kernels.compiled_signatures().values()):
        warm_up()
    else:
        threading.Thread(target=warm_up, name="embedding-warm-up", daemon=True).start()
