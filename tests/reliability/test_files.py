"""Crash-safe files: the chunk writer (``common.research.datasets.write_chunk_images``/
``write_chunk_shards`` over ``common.platform.storage``'s atomic writers) killed at random moments never
leaves a truncated or torn final file; a full disk fails the job with "disk full", leaves no partial file,
and the worker goes on serving."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from common.platform.storage import sweep_temp_files
from common.research.datasets import write_chunk_images, write_chunk_shards
from tests.reliability.support import temp_files

KILLS = 50
ROWS, WIDTH = 50, 4096  # a chunk of 50 samples, one 64x8x8 layer: 800 KB per shard


def _write_forever(root) -> None:
    """The victim: rewrite three chunks' images and shards, over and over, through the real writer.
    Each shard is filled with one value (its write serial) so a torn file would show two."""
    rng = np.random.default_rng(os.getpid())
    serial = 0
    while True:
        chunk = serial % 3
        indices = list(range(chunk * ROWS, chunk * ROWS + 10))
        images = rng.integers(0, 256, size=(len(indices), 16, 16, 3), dtype=np.uint8)
        write_chunk_images(root, 1, chunk, indices, images)
        value = np.float32(os.getpid() * 1000 + serial)
        write_chunk_shards(root, 1, chunk, {n: np.full((ROWS, WIDTH), value) for n in ("a", "b")})
        serial += 1


def check_final_files(root) -> int:
    """Every final (non-temporary) file is whole; returns how many there are."""
    finals = [p for p in (root / "datasets").rglob("*") if p.is_file() and ".tmp-" not in p.name]
    for path in finals:
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                assert im.size == (16, 16)
                im.load()
        else:
            arr = np.load(path, allow_pickle=False)
            assert arr.shape == (ROWS, WIDTH) and arr.dtype == np.float32, path
            assert (arr == arr.flat[0]).all(), f"{path} mixes two writes"
    return len(finals)


def test_writer_killed_at_random_moments_never_leaves_a_truncated_file(tmp_path):
    root = tmp_path / "data"
    rng = random.Random(1234)
    mid_write = 0
    for _ in range(KILLS):
        pid = os.fork()
        if pid == 0:  # the child: write until killed
            try:
                _write_forever(root)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.02, 0.6))
        before = len(temp_files(root))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        left = len(temp_files(root))
        mid_write += left > before
        check_final_files(root)
    finals = check_final_files(root)
    leftovers = len(temp_files(root))
    assert mid_write > 0, "no kill landed in the middle of a write; the test proved nothing"
    assert sweep_temp_files(root / "datasets") == leftovers
    assert temp_files(root) == []
    assert check_final_files(root) == finals
    print(
        f"\n{KILLS} kills: {mid_write} landed mid-write and left a temporary file; {finals} final files, "
        "all whole; the sweep removed every temporary file"
    )


@pytest.fixture
def small_disk(lab):
    """A 2 MiB tmpfs where the datasets go (root only); unmounted after the workers are gone."""
    folder = lab.settings.data_root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        lab.close()
        subprocess.run(["umount", str(folder)], check=False)
        if os.path.ismount(folder):
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_fails_the_job_with_disk_full_and_leaves_no_partial_file(lab, tiny_model, small_disk):
    worker = lab.worker(name="cramped")
    job = lab.submit(
        "generate_dataset", {"model": "tiny", "name": "too-big", "num_samples": 200, "batch_size": 25}
    )
    done = lab.wait(job.id, timeout=300)
    assert done.status == "failed" and "disk full" in done.error, done.error
    chunks = lab.children(job.id)
    failed = [c for c in chunks if c.status == "failed"]
    assert failed and all("disk full" in c.error for c in failed), [c.error for c in chunks]
    assert temp_files(small_disk) == [], "partial files left on the full disk"
    check_written(small_disk)

    probe = lab.submit("ping", {"seconds": 0.5, "steps": 2})
    assert lab.wait(probe.id, timeout=60).status == "succeeded"
    assert worker.alive()
    print(f"\nfull disk: {len(failed)} of {len(chunks)} chunks failed with: {failed[0].error}")


def check_written(folder) -> None:
    for path in folder.rglob("*"):
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.verify()
        elif path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            assert np.isfinite(arr).all()
