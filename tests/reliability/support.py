"""Helpers of the fault tests: a ``Lab`` that starts real workers (and web servers) with short timings and
always kills them, waits, and the checks that define "exactly once".

Usage::

    lab.worker(name="a")                       # a real `latentlab worker` process group, ready
    job = lab.submit("generate_dataset", {...})
    done = lab.wait(job.id, timeout=240)
    assert_exactly_once(lab.settings, lab.sessions, done.params["dataset_id"], 200)
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from cli.redis_server import free_port
from common import jobs
from common.models import Job, Sample
from common.models.jobs import FINAL_STATUSES
from common.platform.config import Settings
from common.platform.storage import TMP_MARK
from tests.support.services import Proc, env_for, start_web

LAYERS = ("encoder_bottleneck", "midblock")
LOCKED = "database is locked"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def pid_of(worker: str) -> int:
    """The process that ran a job: ``host:main-pid/pid`` → pid."""
    return int(worker.rsplit("/", 1)[1])


def main_pid_of(worker: str) -> int:
    return int(worker.split("/", 1)[0].rsplit(":", 1)[1])


@dataclass
class Lab:
    """Real services for one test: workers and web servers it starts are killed (whole process groups)
    when the test ends, whatever happened."""

    settings: Settings
    sessions: Any
    publisher: Any
    owner: Any
    log_dir: Path
    worker_env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    # -- processes --------------------------------------------------------------------------------

    def worker(self, name: str | None = None, **kwargs) -> Proc:
        return self.workers([name], **kwargs)[0]

    def workers(
        self,
        names: list[str | None],
        *,
        queues: str = "interactive,batch,embed",
        concurrency: int = 1,
        settings: Settings | None = None,
    ) -> list[Proc]:
        """Start several workers at once (they boot in parallel) and wait until each is ready."""
        import sys
        import uuid

        settings = settings or self.settings
        started = []
        for name in names:
            name = name or f"w{uuid.uuid4().hex[:6]}"
            args = [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                f"--queues={queues}",
                f"--concurrency={concurrency}",
                f"--hostname={name}@%h",
            ]
            proc = Proc(args, env_for(settings, **self.worker_env), self.log_dir / f"worker-{name}.log")
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            proc.wait_for_log("ready.", timeout=180)
        return started

    def web(self, *, port: int | None = None, settings: Settings | None = None, **env: str) -> tuple:
        port = port or free_port()
        proc = start_web(settings or self.settings, self.log_dir, port, extra_env={**self.worker_env, **env})
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    def close(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.alive():
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a test that froze a worker may have failed
                except ProcessLookupError:
                    pass
            proc.kill_group()

    def logs(self) -> str:
        return "\n".join(p.log_text() for p in self.procs)

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
        def reached():
            job = self.job(job_id)
            return job if job.status in statuses else None

        try:
            return wait_until(reached, timeout, f"job {job_id} to reach {sorted(statuses)}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now {self.job(job_id)!r}\n{self.logs()[-4000:]}") from None

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
