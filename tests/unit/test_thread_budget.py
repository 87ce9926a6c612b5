"""A worker process keeps its CPU thread budget after a UMAP fit in the same process.

numba's OpenMP threading layer shares torch's libgomp: a fit raised torch's intra-op threads to every
core, and later one-image renders ran on two threads against the web server (measured: a 16×16 render
went from 15 to 40 ms in the worker). ``limit_cpu_threads``, called by ``ModelCache.get`` before every
job, puts torch and the BLAS pools back. Run in a fresh interpreter: thread pools are process state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, numpy as np, torch
from threadpoolctl import threadpool_info
from common.ml.device import limit_cpu_threads

limit_cpu_threads(1)
before = torch.get_num_threads()
import umap
umap.UMAP(n_neighbors=8, n_epochs=20, random_state=0).fit(np.random.default_rng(0).random((200, 8)))
after_fit = torch.get_num_threads()
limit_cpu_threads(1)
blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
restored = torch.get_num_threads()
print(json.dumps({"before": before, "after_fit": after_fit, "restored": restored, "blas": blas}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: there is no second thread to leak")
def test_torch_and_blas_threads_return_to_the_budget_after_a_umap_fit():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True, timeout=300, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == 1
    assert got["after_fit"] > 1, "the fit no longer raises torch's threads: this test lost its point"
    assert got["restored"] == 1
    assert got["blas"] and all(n == 1 for n in got["blas"]), got
