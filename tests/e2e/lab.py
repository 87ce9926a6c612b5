"""A real lab for browser tests: migrated SQLite database, redis-server, a worker and the web server
started through the CLI, users, a model (the shipped digits demo model when present, else a tiny random
one), and a demo dataset with a fitted map made through the real job pipe.

Usage::

    with running_lab(tmp_path, redis_url) as lab:
        lab.url, lab.users["alice"], lab.embedding_id, lab.sample_ids
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from cli.redis_server import free_port
from common import jobs
from common.models import Sample
from common.platform import migrate
from common.platform.config import Settings
from common.platform.db import make_engine, session_factory
from tests.support.services import start_web, start_worker
from tests.support.settings import make_settings
from tests.support.waiting import wait_for_job

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORDS = {"admin": "admin-password-1", "alice": "alice-password-1", "bob": "bob-password-1"}


def register_model(sessions, settings: Settings) -> str:
    """The shipped digits demo model if this checkout has it, else a tiny random-weight model."""
    from common.research.registry import register_shipped_models, shipped_cards

    if shipped_cards():
        with sessions.begin() as s:
            register_shipped_models(s, settings)
        return shipped_cards()[0]["name"]
    from tests.support.models import register_tiny_model

    register_tiny_model(sessions, settings, name="tiny")
    return "tiny"


@dataclass
class RunningLab:
    """A lab with its processes up and a demo dataset and map made by real jobs (see ``running_lab``)."""

    url: str
    settings: Settings
    sessions: object
    model: str
    users: dict[str, int] = field(default_factory=dict)
    dataset_id: int = 0
    embedding_id: int = 0
    sample_ids: list[int] = field(default_factory=list)
    log_dir: Path | None = None


@contextmanager
def running_lab(root: Path, redis_url: str, *, samples: int = 60, port: int | None = None):
    import redis

    from common.jobs.broker import Publisher
    from common.platform.accounts import create_user
    from workers.app import make_celery

    root.mkdir(parents=True, exist_ok=True)
    settings = make_settings(root, redis_url=redis_url, chunk_size=32)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    users = {}
    with sessions.begin() as s:
        for name, password in PASSWORDS.items():
            users[name] = create_user(s, name, password, role="admin" if name == "admin" else "member").id
    model = register_model(sessions, settings)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    worker = start_worker(settings, logs, name="e2e", concurrency=2)
    port = port or free_port()
    web = start_web(settings, logs, port, extra_env={"LATENTLAB_LOGIN_ATTEMPTS_PER_MINUTE": "1000"})
    celery_app = make_celery(settings)
    client = redis.Redis.from_url(settings.redis_url)
    publisher = Publisher(celery_app.send_task, client)
    try:
        ds_job = jobs.submit(
            sessions,
            publisher,
            settings,
            owner=users["alice"],
            kind="generate_dataset",
            params={"model": model, "name": "demo", "num_samples": samples, "seed": 5},
        )
        done = wait_for_job(sessions, ds_job.id, timeout=600)
        assert done.status == "succeeded", f"dataset job: {done.error}"
        emb_job = jobs.submit(
            sessions,
            publisher,
            settings,
            owner=users["alice"],
            kind="fit_embedding",
            params={"dataset": "demo", "n_neighbors": 8, "seed": 1},
        )
        done = wait_for_job(sessions, emb_job.id, timeout=600)
        assert done.status == "succeeded", f"fit job: {done.error}"
        dataset_id = ds_job.params["dataset_id"] if "dataset_id" in ds_job.params else None
        with sessions() as s:
            ids = list(s.scalars(select(Sample.id).where(Sample.origin == "dataset").order_by(Sample.index)))
            if dataset_id is None:
                dataset_id = s.get(Sample, ids[0]).dataset_id
        yield RunningLab(
            url=f"http://127.0.0.1:{port}",
            settings=settings,
            sessions=sessions,
            model=model,
            users=users,
            dataset_id=dataset_id,
            embedding_id=done.result["embedding_id"],
            sample_ids=ids,
            log_dir=logs,
        )
    finally:
        web.stop()
        worker.stop()
        client.close()
        engine.dispose()


def chromium_or_skip():
    """The browser path; a missing browser fails when LATENTLAB_REQUIRE_BROWSER=1, else skips."""
    import pytest

    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing (apt-get install chromium); the e2e tests drive it through Playwright"
    if os.environ.get("LATENTLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LATENTLAB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parents[2] / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def copy_logs(lab: RunningLab, name: str) -> None:
    if lab.log_dir and lab.log_dir.exists():
        shutil.copytree(lab.log_dir, artifacts_dir() / f"{name}-logs", dirs_exist_ok=True)
