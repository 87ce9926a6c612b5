"""The supervised children of ``latentlab up`` (see ``cli/launcher.py``): the console their output goes to,
spawning each ``latentlab`` child in its own session with an output pump, the pid record a later ``up`` reaps,
restart with backoff, and the ordered stop (SIGTERM, a grace period, then SIGKILL to each process group,
then the embedded Redis).

Usage (``Launcher`` subclasses it and adds the up sequence)::

    sup = Supervisor(settings, Console())
    sup.children.append(Child(name="w1", argv=argv, restart=True))
    sup.spawn(sup.children[0])
    sup.supervise()       # until ``stopping`` is set, the web server or Redis dies (exit_code 1)
    sup.stop_children()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.redis_server import RedisServer
from common.platform.config import Settings

STOP_GRACE_S = 20.0  # SIGTERM → SIGKILL
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_UPTIME_S = 60.0  # a worker that ran this long restarts with the shortest backoff again
IS_LINUX = sys.platform.startswith("linux")


class Console:
    """Serialises lines from the launcher and the children's output pumps onto one stream."""

    def __init__(self, stream: IO[str] | None = None, err: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr
        self._lock = threading.Lock()

    def line(self, text: str, *, err: bool = False) -> None:
        with self._lock:
            target = self.err if err else self.stream
            try:
                target.write(text + "\n")
                target.flush()
            except (OSError, ValueError):  # the terminal went away (SIGHUP): the log files still get it
                pass

    def say(self, text: str) -> None:
        self.line(f"up     | {text}")


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]  # field 22 of stat(5), counted after "pid (comm)"


def parent_death_signal():
    """A preexec function that asks Linux to SIGTERM the child when the launcher dies (even by SIGKILL),
    so no worker or server outlives a killed ``up``; None elsewhere."""
    if not IS_LINUX:
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class EmbeddedRedis(RedisServer):
    """The launcher's Redis: like RedisServer, but in its own session (a terminal's Ctrl-C must not stop
    the broker before the workers) and stopped by the kernel if the launcher is killed."""

    def start(self, timeout: float = 15.0) -> str:
        return super().start(timeout, start_new_session=True, preexec_fn=parent_death_signal())


@dataclass
class Child:
    """One supervised ``latentlab`` subprocess (a worker or the web server)."""

    name: str
    argv: list[str]
    restart: bool  # True: restart with backoff when it dies; False: its death stops everything
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff: float = 1.0
    restart_at: float | None = None
    pump: threading.Thread | None = None
    log_path: Path | None = None
    env: dict[str, str] | None = None  # added to the launcher's child environment
    nice: int = 0  # added to the launcher's niceness (batch workers yield the CPU to the interactive one)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Supervisor:
    """The children of one ``up`` and the embedded Redis: spawn, record, restart with backoff, stop."""

    def __init__(self, settings: Settings, console: Console | None = None):
        self.settings = settings
        self.console = console or Console()
        # plain flags, polled: a signal handler must not take locks (threading.Event.set does)
        self.stopping = False
        self.force = False
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.children: list[Child] = []
        self.exit_code = 0
        self._preexec = parent_death_signal()

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LATENTLAB_DATA": str(self.settings.data_root),
                "LATENTLAB_DATABASE_URL": self.settings.sqlalchemy_url,
                "LATENTLAB_REDIS_URL": self.redis_url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def spawn(self, child: Child, env: dict[str, str] | None = None) -> None:
        child.log_path = (
            self.settings.data_root / "logs" / f"{'worker-' if child.restart else ''}{child.name}.log"
        )
        env = {**(env or self.child_env()), **(child.env or {})}
        child.popen = subprocess.Popen(
            child.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: signalled by the launcher, not the terminal
            preexec_fn=self._preexec_for(child),
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.pump = threading.Thread(
            target=self._pump,
            args=(child, child.popen, child.log_path),
            name=f"pump-{child.name}",
            daemon=True,
        )
        child.pump.start()

    def _preexec_for(self, child: Child):
        if not child.nice:
            return self._preexec
        parent_death = self._preexec

        def preexec() -> None:
            if parent_death is not None:
                parent_death()
            os.nice(child.nice)

        return preexec

    def _pump(self, child: Child, popen: subprocess.Popen, log_path: Path) -> None:
        prefix = f"{child.name:<6} | "
        with open(log_path, "ab", buffering=0) as log:
            log.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} started pid {popen.pid}\n".encode())
            for raw in iter(popen.stdout.readline, b""):
                log.write(raw)
                self.console.line(prefix + raw.decode(errors="replace").rstrip("\n"))
        popen.stdout.close()

    def record_children(self) -> None:
        """Write the children's pids (and start times), so a later ``up`` can stop them if this launcher
        is killed without a chance to clean up."""
        procs = [(c.name, c.pid) for c in self.children if c.alive()]
        if self.redis and self.redis.process:
            procs.append(("redis", self.redis.process.pid))
        lines = [f"{name} {pid} {proc_start_time(pid) or '-'}" for name, pid in procs]
        write_atomically(self.settings.run_dir / "children", "\n".join(lines) + "\n")

    def reap_leftovers(self) -> None:
        """Stop the children of a previous ``up`` on this data root that was killed (kill -9, a crash)."""
        path = self.settings.run_dir / "children"
        if not path.exists():
            return
        if IS_LINUX:
            leftovers = []
            for line in path.read_text().splitlines():
                name, pid, started = (line.split() + ["", "", ""])[:3]
                if pid.isdigit() and started != "-" and proc_start_time(int(pid)) == started:
                    leftovers.append((name, int(pid)))
            for name, pid in leftovers:
                self.console.say(f"stopping {name} (pid {pid}), left running by an earlier `latentlab up`")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(proc_start_time(pid) for _, pid in leftovers):
                time.sleep(0.1)
            for _, pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)
        self.settings.embedded_redis_url_file.unlink(missing_ok=True)

    def supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self.console.say(f"restarting {child.name}")
                        self.spawn(child)
                        self.record_children()
                    continue
                code = child.popen.poll()
                if code is None:
                    continue
                if not child.restart:
                    self.console.say(f"{child.name} exited with status {code}; stopping latentlab")
                    self.exit_code = 1
                    return
                if now - child.started_at > HEALTHY_UPTIME_S:
                    child.backoff = 1.0
                self.console.say(
                    f"{child.name} exited with status {code}; restarting it in {child.backoff:.0f} s"
                )
                child.restart_at = now + child.backoff
                child.backoff = min(child.backoff * 2, RESTART_BACKOFF_MAX_S)
            if self.redis is not None and self.redis.process.poll() is not None:
                self.console.say(
                    f"the embedded Redis exited with status {self.redis.process.returncode}; stopping "
                    f"latentlab (see {self.redis.directory / 'redis.log'})"
                )
                self.exit_code = 1
                return
            time.sleep(0.2)

    def stop_children(self) -> None:
        """SIGTERM to each live child, up to STOP_GRACE_S (none after a second Ctrl-C), then SIGKILL to each
        child's process group, then the embedded Redis."""
        live = [c for c in self.children if c.alive()]
        if live:
            self.console.say("stopping " + ", ".join(c.name for c in live))
        for child in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(c.alive() for c in live) and time.monotonic() < deadline and not self.force:
            time.sleep(0.05)
        for child in self.children:
            if child.popen is None:
                continue
            if child.alive():
                self.console.say(f"{child.name} did not stop within {STOP_GRACE_S:.0f} s; killing it")
            # also sweeps the group: a worker's pool process must not outlive its parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.popen.wait()
            if child.pump is not None:
                child.pump.join(5)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
