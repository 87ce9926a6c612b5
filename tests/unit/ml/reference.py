"""Helpers shared by the model-core tests: where the reference data lives and the README's tolerance check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]

# name -> worst per-sample max|mine - ref| / max|ref| measured in this session (printed after the run)
MEASURED: dict[str, float] = {}


def reference_dir() -> Path:
    """``$LATENTLAB_REFERENCE_DIR``, else ``tests/data/reference`` in the repository; missing data fails."""
    env = os.environ.get("LATENTLAB_REFERENCE_DIR")
    path = Path(env) if env else REPO / "tests" / "data" / "reference"
    if not (path / "dhariwal_tiny16_vectors.npz").is_file():
        pytest.fail(f"reference data not found in {path} (set LATENTLAB_REFERENCE_DIR)", pytrace=False)
    return path


def assert_close_per_sample(mine, ref, name: str, rel: float = 1e-5) -> float:
    """Per sample b: max|mine[b] - ref[b]| <= rel * max|ref[b]| (README section 3); returns the worst."""
    mine = np.asarray(mine, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != reference {ref.shape}"
    worst = 0.0
    for b in range(ref.shape[0]):
        scale = np.abs(ref[b]).max()
        err = np.abs(mine[b] - ref[b]).max()
        ratio = err / scale if scale > 0 else err
        worst = max(worst, ratio)
        assert err <= rel * scale, (
            f"{name}[{b}]: max abs error {err:.3e} > {rel:g} * {scale:.3e} ({ratio:.2e})"
        )
    MEASURED[name] = worst
    return worst
