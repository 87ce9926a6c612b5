"""Fixtures for the model-core tests: the shared reference folder and the tiny16 reference model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # `pytest` without an installed package still finds `common`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from common.ml.networks import EDMPrecond  # noqa: E402

from .reference import MEASURED, reference_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (OpenMP start-up dominates, and badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    return reference_dir()


@pytest.fixture(scope="session")
def ref(ref_dir) -> dict[str, np.ndarray]:
    with np.load(ref_dir / "dhariwal_tiny16_vectors.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def ref_meta(ref) -> dict:
    return json.loads(str(ref["meta_json"]))


@pytest.fixture(scope="session")
def ref_state_dict(ref) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("state_dict/"): torch.from_numpy(v)
        for k, v in ref.items()
        if k.startswith("state_dict/")
    }


@pytest.fixture(scope="session")
def manifest(ref_dir) -> dict:
    return json.loads((ref_dir / "dmd2_imagenet64_state_dict_manifest.json").read_text())


@pytest.fixture()
def tiny(ref_meta, ref_state_dict) -> EDMPrecond:
    """A fresh tiny16 model with the reference weights, eval mode, float32, CPU."""
    model = EDMPrecond(**ref_meta["config"]).eval()
    model.load_state_dict(ref_state_dict, strict=True)
    model.requires_grad_(False)
    return model


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASURED:
        terminalreporter.section("reference vectors: worst per-sample error / max|ref| (tolerance 1e-5)")
        for name, ratio in sorted(MEASURED.items()):
            terminalreporter.write_line(f"{name:45s} {ratio:.2e}")
