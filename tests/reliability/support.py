"""Helpers of the fault tests: a ``FaultLab`` that starts real workers (and web servers) with short timings
and always kills them, waits, and the checks that define "exactly once".

Usage::

    lab.worker(name="a")                       # a real `latentlab worker` process group, ready
    job = lab.submit("generate_dataset", {...})
    done = lab.wait(job.id, timeout=240)
    assert_exactly_once(lab.settings, lab.sessions, done.params["dataset_id"], 200)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from common import jobs
from common.models import Job, Sample
from common.models.jobs import FINAL_STATUSES
from common.platform.config import Settings
from common.platform.storage import TMP_MARK
from tests.support.services import Proc, Processes
from tests.support.waiting import wait_for_job

LAYERS = ("encoder_bottleneck", "midblock")
LOCKED = "database is locked"


def pid_of(worker: str) -> int:
    """The process that ran a job: ``host:main-pid/pid`` → pid."""
    return int(worker.rsplit("/", 1)[1])


def main_pid_of(worker: str) -> int:
    return int(worker.split("/", 1)[0].rsplit(":", 1)[1])


class FaultLab(Processes):
    """The fault tests' lab: the workers and web servers a test starts (``Processes``: whole process
    groups, killed when the test ends, whatever happened) plus job helpers, all with the short fault
    timings of ``settings``."""

    def __init__(self, settings: Settings, sessions, publisher, owner, log_dir: Path, worker_env: dict):
        super().__init__(settings, log_dir, worker_env)
        self.sessions = sessions
        self.publisher = publisher
        self.owner = owner

    # -- jobs -------------------------------------------------------------------------------------

    def submit(self, kind: str, params: dict, owner=None, publisher=...) -> Job:
        publisher = self.publisher if publisher is ... else publisher
        return jobs.submit(
            self.sessions, publisher, self.settings, owner=owner or self.owner, kind=kind, params=params
        )

    def job(self, job_id: int) -> Job:
        with self.sessions() as s:
            return s.get(Job, job_id)

    def children(self, job_id: int) -> list[Job]:
        with self.sessions() as s:
            return list(s.scalars(select(Job).where(Job.parent_id == job_id).order_by(Job.id)))

    def wait(self, job_id: int, statuses=FINAL_STATUSES, timeout: float = 240) -> Job:
        return wait_for_job(
            self.sessions, job_id, statuses, timeout=timeout, context=lambda: self.logs()[-4000:]
        )

    def count_samples(self, dataset_id: int) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count(Sample.id)).where(Sample.dataset_id == dataset_id))


def trace_of(settings: Settings, job_id: int) -> list[dict]:
    """The ping job's execution trace (fault injection on): start, accepted steps, end, per attempt."""
    path = settings.data_root / "fault-trace" / f"ping-{job_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name] if root.exists() else []


def assert_exactly_once(settings: Settings, sessions, dataset_id: int, n: int, layers=LAYERS) -> list[Sample]:
    """N sample rows unique by (dataset, index), N PNG files that PIL verifies, N activation rows per
    layer that load with allow_pickle=False, and no temporary file left anywhere under the dataset."""
    root = settings.data_root
    with sessions() as s:
        rows = list(
            s.scalars(
                select(Sample)
                .where(Sample.dataset_id == dataset_id, Sample.origin == "dataset")
                .order_by(Sample.index)
            )
        )
    assert [r.index for r in rows] == list(range(n)), "sample rows are not exactly 0..N-1"
    pngs = sorted((root / "datasets" / str(dataset_id) / "images").rglob("*.png"))
    assert sorted(p.relative_to(root).as_posix() for p in pngs) == sorted(r.image_path for r in rows)
    for path in pngs:
        with Image.open(path) as im:
            im.verify()
    for layer in layers:
        shards: dict[str, np.ndarray] = {}
        used = 0
        for r in rows:
            if r.act_shard not in shards:
                shards[r.act_shard] = np.load(root / r.act_shard / f"{layer}.npy", allow_pickle=False)
            vector = shards[r.act_shard][r.act_row]
            assert vector.ndim == 1 and np.isfinite(vector).all(), (layer, r.index)
            used += 1
        assert used == n and sum(len(a) for a in shards.values()) == n, layer
    leftovers = temp_files(root / "datasets")
    assert leftovers == [], f"temporary files left: {leftovers}"
    return rows


def log_lines(proc: Proc, needle: str) -> list[str]:
    return [line for line in proc.log_text().splitlines() if needle in line]
