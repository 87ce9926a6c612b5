"""Real services for tests: a redis-server, a migrated database (SQLite or PostgreSQL), worker and
web processes started as subprocesses through the product's own CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg

from common.platform.config import Settings

REPO = Path(__file__).resolve().parents[2]
PG_URL_ENV = "LATENTLAB_TEST_POSTGRES_URL"  # e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres


def postgres_admin_url() -> str | None:
    return os.environ.get(PG_URL_ENV) or None


@contextmanager
def postgres_database():
    """A fresh, empty PostgreSQL database for the duration of the block; yields its SQLAlchemy URL."""
    admin = postgres_admin_url()
    assert admin, f"{PG_URL_ENV} is not set"
    name = f"ll_test_{uuid.uuid4().hex[:12]}"
    plain = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a subprocess see ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTLAB_") or k == PG_URL_ENV}
    env.update(
        {
            "LATENTLAB_DATA": str(settings.data_root),
            "LATENTLAB_DATABASE_URL": settings.sqlalchemy_url,
            "LATENTLAB_REDIS_URL": settings.redis_url,
            "LATENTLAB_SECRET_KEY": settings.secret_key or "test-secret-key",
            "LATENTLAB_SIGNING_KEY_FILE": str(settings.signing_key_file),
            "LATENTLAB_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "LATENTLAB_PROGRESS_INTERVAL": str(settings.progress_interval),
            "LATENTLAB_TAKEOVER_AFTER": str(settings.takeover_after),
            "LATENTLAB_TASK_TIME_LIMIT": str(settings.task_time_limit),
            "LATENTLAB_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
            "LATENTLAB_STALE_AFTER": str(settings.stale_after),
            "LATENTLAB_REAPER_INTERVAL": str(settings.reaper_interval),
            "LATENTLAB_MAX_ATTEMPTS": str(settings.max_attempts),
            "LATENTLAB_CHUNK_SIZE": str(settings.chunk_size),
            "LATENTLAB_FAULT_INJECTION": "1" if settings.fault_injection else "0",
            "LATENTLAB_MAX_ACTIVE_JOBS_PER_QUEUE": str(settings.max_active_jobs_per_queue),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class Proc:
    """A subprocess in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return
            if not self.alive():
                raise AssertionError(
                    f"{self.args} exited ({self.popen.returncode}):\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"'{needle}' not seen in {timeout}s:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()

    def kill_group(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        self._log.close()


def launch_worker(
    settings: Settings,
    log_dir: Path,
    *,
    queues: str = "interactive,batch,embed",
    concurrency: int = 1,
    name: str | None = None,
    extra_env: dict | None = None,
) -> Proc:
    """Start ``latentlab worker`` (its own process group, its log in ``log_dir``) without waiting for it."""
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
    return Proc(args, env_for(settings, **(extra_env or {})), log_dir / f"worker-{name}.log")


def start_worker(
    settings: Settings,
    log_dir: Path,
    *,
    queues: str = "interactive,batch,embed",
    concurrency: int = 1,
    name: str | None = None,
    extra_env: dict | None = None,
    ready_timeout: float = 120.0,
) -> Proc:
    """A ``latentlab worker`` that said it is ready (fails with its log if it exits or stays silent)."""
    proc = launch_worker(
        settings, log_dir, queues=queues, concurrency=concurrency, name=name, extra_env=extra_env
    )
    proc.wait_for_log("ready.", timeout=ready_timeout)
    return proc


def start_web(settings: Settings, log_dir: Path, port: int, extra_env: dict | None = None) -> Proc:
    args = [sys.executable, "-m", "cli.main", "web", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc(args, env_for(settings, **(extra_env or {})), log_dir / f"web-{port}.log")
    proc.wait_for_log("Serving on", timeout=60)
    return proc


class Processes:
    """The worker and web processes one test (or one fixture) started: each a whole process group, all
    killed by ``close()`` whatever happened; ``env`` goes to every one of them.

    Usage::

        procs = Processes(settings, tmp_path, {"OMP_NUM_THREADS": "1"})
        procs.worker(name="a"); web, url = procs.web()
        ...
        procs.close()
    """

    def __init__(self, settings: Settings, log_dir: Path, env: dict[str, str] | None = None):
        self.settings = settings
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.procs: list[Proc] = []

    def worker(self, name: str | None = None, **kwargs) -> Proc:
        return self.workers([name], **kwargs)[0]

    def workers(
        self,
        names: list[str | None],
        *,
        queues: str = "interactive,batch,embed",
        concurrency: int = 1,
        settings: Settings | None = None,
        ready_timeout: float = 180.0,
    ) -> list[Proc]:
        """Start several workers at once (they boot in parallel) and wait until each is ready."""
        started = []
        for name in names:
            proc = launch_worker(
                settings or self.settings,
                self.log_dir,
                queues=queues,
                concurrency=concurrency,
                name=name,
                extra_env=self.env,
            )
            self.procs.append(proc)
            started.append(proc)
        for proc in started:
            proc.wait_for_log("ready.", timeout=ready_timeout)
        return started

    def web(self, *, port: int | None = None, settings: Settings | None = None, **env: str) -> tuple:
        """A ``latentlab web`` server that is serving; returns (process, base URL)."""
        from cli.redis_server import free_port

        port = port or free_port()
        proc = start_web(settings or self.settings, self.log_dir, port, extra_env={**self.env, **env})
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return "\n".join(p.log_text() for p in self.procs)

    def close(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.alive():
                try:
                    os.killpg(proc.pid, signal.SIGCONT)  # a test that froze a worker may have failed
                except ProcessLookupError:
                    pass
            proc.kill_group()


def run_cli(settings, *args, check=True, timeout=300):
    """Run ``latentlab ARGS`` in a subprocess seeing ``settings``; raises on a non-zero exit if ``check``."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"latentlab {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
