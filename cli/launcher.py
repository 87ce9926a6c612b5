"""``latentlab up``: the whole product on one machine, as one process tree that Ctrl-C stops.

Usage::

    sys.exit(run_up(Settings.from_env(), host="127.0.0.1", port=8000, n_workers=1))

What it does, in order (each refusal is one sentence on stderr and exit status 1):

1. checks the data root is writable, takes ``<data>/run/up.lock`` (a second ``up`` on the same data root
   is refused) and checks the web port is free;
2. applies the migrations;
3. starts the embedded ``redis-server`` (unless ``LATENTLAB_REDIS_URL`` is set) and writes its URL to
   ``<data>/run/redis.url`` for the CLI and workers of this data root;
4. starts ``--workers`` batch Celery workers (queues batch and embed, niceness +5), one interactive worker
   (queue interactive only, ``LATENTLAB_INTERACTIVE_THREADS`` torch threads; none with ``--workers 0``)
   and the waitress web server, each a ``latentlab`` child process
   in its own session (so a terminal's Ctrl-C reaches only the launcher, which then stops them in order),
   and while they boot creates the first admin and registers the shipped demo models; once the web
   port answers it prints the URL (and, on the first run, the admin's one-time password);
5. supervises: a worker that dies is restarted with backoff (1 s doubling to 30 s; jobs are
   at-least-once, so its task is redelivered); if the web server or the embedded Redis dies, everything
   stops with status 1, because a portal without its front door or broker is not running;
6. on Ctrl-C, SIGTERM or SIGHUP: SIGTERM to each child (Celery then finishes or hands back its task), up
   to 20 s, then SIGKILL to each child's process group, then Redis, then the runtime files; status 0.
   A second Ctrl-C skips the wait.

Child output goes to the console, each line prefixed with the child's name, and to
``<data>/logs/{web,worker-wN,worker-wi}.log``; the embedded Redis logs to ``<data>/redis/redis.log``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.redis_server import RedisServer, RedisUnavailable
from common.jobs.broker import INTERACTIVE_QUEUE, QUEUES
from common.platform.config import ConfigError, Settings

STOP_GRACE_S = 20.0  # SIGTERM → SIGKILL
WEB_START_TIMEOUT_S = 180.0
RESTART_BACKOFF_MAX_S = 30.0
HEALTHY_UPTIME_S = 60.0  # a worker that ran this long restarts with the shortest backoff again
# batch workers run this much nicer than the interactive one, so a click's few milliseconds of CPU go first
# even while a map fit keeps every core busy
BATCH_NICENESS = 5
IS_LINUX = sys.platform.startswith("linux")


class Refusal(Exception):
    """``up`` cannot start; the message is one sentence that says what to change."""


# -- small pieces ---------------------------------------------------------------------------------------


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


def check_port_free(host: str, port: int) -> None:
    """Refuse when something listens on host:port (binding with SO_REUSEADDR, as waitress does, so a
    connection in TIME_WAIT from a previous run does not count as "in use")."""
    if not 1 <= port <= 65535:
        raise Refusal(f"--port {port} is not a TCP port; pass one between 1 and 65535.")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Refusal(f"port {port} on {host} is in use; stop what uses it or pass --port.") from None
            if exc.errno == errno.EACCES:
                raise Refusal(
                    f"port {port} on {host} needs privileges to bind; pass a --port above 1023."
                ) from None
            raise Refusal(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --host.") from None


def connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine (wildcards mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url_for(host: str, port: int) -> str:
    h = connect_host(host)
    return f"http://[{h}]:{port}/" if ":" in h else f"http://{h}:{port}/"


def port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


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


def _parent_death_signal():
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


class LockFile:
    """An exclusive ``flock`` on ``path`` holding the owner's pid; released when the process ends."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            root = self.path.parent.parent
            raise Refusal(
                f"another `latentlab up` (pid {owner}) is already running on the data root {root}; "
                "stop it first or set LATENTLAB_DATA to another folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        # the file stays: unlinking a locked file lets two launchers lock two different inodes
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None


class EmbeddedRedis(RedisServer):
    """The launcher's Redis: like RedisServer, but in its own session (a terminal's Ctrl-C must not stop
    the broker before the workers) and stopped by the kernel if the launcher is killed."""

    def start(self, timeout: float = 15.0) -> str:
        return super().start(timeout, start_new_session=True, preexec_fn=_parent_death_signal())


# -- children -------------------------------------------------------------------------------------------


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


class Launcher:
    def __init__(
        self, settings: Settings, *, host: str, port: int, n_workers: int, console: Console | None = None
    ):
        self.settings = settings
        self.host = host
        self.port = port
        self.n_workers = n_workers
        self.console = console or Console()
        # plain flags, polled: a signal handler must not take locks (threading.Event.set does)
        self.stopping = False
        self.force = False
        self.lock: LockFile | None = None
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.children: list[Child] = []
        self.exit_code = 0
        # the first admin's one-time password until it has been printed; "" when the user chose it
        self.admin_password: str | None = None
        self._preexec = _parent_death_signal()

    # -- signals ------------------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        if self.stopping:
            self.force = True  # a second Ctrl-C: do not wait for the children to finish their work
        self.stopping = True

    def install_signal_handlers(self) -> dict:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    # -- the whole run ----------------------------------------------------------------------------

    def run(self) -> int:
        t0 = time.monotonic()
        previous = self.install_signal_handlers()
        refusal = None
        try:
            self.prepare()
            if not self.stopping:
                self.start_children()
                # while the children boot (seconds of imports), not before: it halves the start time
                self.admin_password = self.ensure_admin()
                self.register_shipped_models()
                self.wait_for_web()
            if not self.stopping:
                self.announce(time.monotonic() - t0)
                self.supervise()
        except Refusal as exc:
            refusal = str(exc)
            self.exit_code = 1
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.admin_password:  # created, but the URL was never announced: the password must not be lost
            self.console.line(
                f"the admin account was created: username admin, password {self.admin_password}"
            )
        if refusal:
            self.console.line(f"Error: {refusal}", err=True)
        return self.exit_code

    def prepare(self) -> None:
        """Everything the children need: the checks, the lock, the migrated schema and Redis."""
        try:
            root = self.settings.ensure_data_root()
        except ConfigError as exc:
            raise Refusal(str(exc)) from None
        lock = LockFile(self.settings.run_dir / "up.lock")
        lock.acquire()
        self.lock = lock
        self.reap_leftovers()
        check_port_free(self.host, self.port)
        (root / "logs").mkdir(exist_ok=True)
        self.settings.resolved_secret_key()  # generated here, once, before any child races for it

        self.migrate()
        self.start_redis()

    def migrate(self) -> None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import OperationalError

        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin
        from common.platform import migrate

        try:
            migrate.upgrade(self.settings)
        except OperationalError as exc:
            where = make_url(self.settings.sqlalchemy_url).render_as_string(hide_password=True)
            reason = str(exc.orig or exc).strip().splitlines()[0]
            raise Refusal(
                f"cannot migrate the database {where} ({reason}); check LATENTLAB_DATABASE_URL."
            ) from None
        self.console.say("database schema is up to date")

    @contextlib.contextmanager
    def _session(self):
        """One write transaction on a short-lived engine (no pooled connection outlives it)."""
        from common.platform.db import make_engine, session_factory

        engine = make_engine(self.settings)
        try:
            with session_factory(engine).begin() as session:
                yield session
        finally:
            engine.dispose()

    def ensure_admin(self) -> str | None:
        from common.platform.accounts import ensure_admin

        with self._session() as session:
            created = ensure_admin(session, self.settings.admin_password or None)
        if created is None:
            return None
        # the one-time password is only worth printing when the user did not choose it
        return created if not self.settings.admin_password else ""

    def register_shipped_models(self) -> None:
        """Register the demo generators that ship with latentlab, when ``common.research.registry`` offers
        it."""
        if importlib.util.find_spec("common.research.registry") is None:
            return
        registry = importlib.import_module("common.research.registry")
        register = getattr(registry, "register_shipped_models", None)
        if register is None:
            return
        try:
            with self._session() as session:
                added = register(session, self.settings)
        except Exception as exc:  # the portal still works without its demo models; say why they are missing
            self.console.say(f"warning: could not register the shipped demo models: {exc}")
            return
        if added:
            self.console.say(f"registered the shipped models: {', '.join(added)}")

    def start_redis(self) -> None:
        if self.redis_url:
            self.check_external_redis()
            return
        self.redis = EmbeddedRedis(self.settings.data_root / "redis")
        try:
            self.redis_url = self.redis.start()
        except RedisUnavailable as exc:
            self.redis = None
            raise Refusal(f"the embedded Redis did not start: {exc}") from None
        write_atomically(self.settings.embedded_redis_url_file, self.redis_url + "\n")
        self.console.say(
            f"embedded Redis at {self.redis_url} (pid {self.redis.process.pid}, "
            f"files in {self.redis.directory})"
        )

    def check_external_redis(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise Refusal(
                f"Redis at LATENTLAB_REDIS_URL={self.redis_url} does not answer ({exc}); start it, or unset "
                "LATENTLAB_REDIS_URL to use the embedded one."
            ) from None
        finally:
            client.close()
        self.console.say(f"using Redis at {self.redis_url}")

    # -- children ---------------------------------------------------------------------------------

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

    def start_children(self) -> None:
        cli = [sys.executable, "-m", "cli.main"]
        batch_queues = ",".join(q for q in QUEUES if q != INTERACTIVE_QUEUE)
        for i in range(1, self.n_workers + 1):
            argv = cli + ["worker", "--queues", batch_queues, "--concurrency", "1", "--hostname", f"w{i}@%h"]
            self.children.append(Child(name=f"w{i}", argv=argv, restart=True, nice=BATCH_NICENESS))
        if self.n_workers > 0:
            # interactive first: a click never waits behind a dataset chunk or a map fit (see README)
            argv = cli + ["worker", "--queues", INTERACTIVE_QUEUE, "-c", "1", "--hostname", "wi@%h"]
            env = {"LATENTLAB_TORCH_THREADS": str(self.settings.interactive_threads)}
            self.children.append(Child(name="wi", argv=argv, restart=True, env=env))
        web = cli + ["web", "--host", self.host, "--port", str(self.port)]
        self.children.append(Child(name="web", argv=web, restart=False))
        env = self.child_env()
        for child in self.children:
            self.spawn(child, env)
        self.record_children()
        if self.n_workers == 0:
            self.console.say("no workers: jobs wait for workers started elsewhere on this broker")

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

    def wait_for_web(self) -> None:
        web = self.children[-1]
        deadline = time.monotonic() + WEB_START_TIMEOUT_S
        while not self.stopping:
            if port_answers(self.host, self.port):
                return
            if not web.alive():
                web.pump.join(2)
                raise Refusal(
                    f"the web server exited with status {web.popen.returncode} before answering; "
                    f"its output is above and in {web.log_path}."
                )
            if time.monotonic() > deadline:
                raise Refusal(
                    f"the web server did not answer on port {self.port} within {WEB_START_TIMEOUT_S:.0f} s; "
                    f"see {web.log_path}."
                )
            time.sleep(0.1)

    def announce(self, elapsed: float) -> None:
        bound = "" if connect_host(self.host) == self.host else f" (listening on {self.host})"
        lines = [f"latentlab is running at {url_for(self.host, self.port)}{bound}"]
        if self.admin_password:
            lines += [
                "first run: created the admin account",
                "    username: admin",
                f"    password: {self.admin_password}",
                "this password is shown only once; change it with `latentlab user passwd admin`.",
            ]
        elif self.admin_password == "":
            lines.append("first run: created the admin account 'admin' with LATENTLAB_ADMIN_PASSWORD")
        lines.append(
            f"logs: {self.settings.data_root / 'logs'}/ ; started in {elapsed:.1f} s; press Ctrl-C to stop"
        )
        self.admin_password = None
        self.console.line("\n".join(lines))

    # -- supervision and shutdown -----------------------------------------------------------------

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

    def shutdown(self) -> None:
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
        if self.lock is None:
            return  # refused before owning the data root: its runtime files belong to another launcher
        self.settings.embedded_redis_url_file.unlink(missing_ok=True)
        (self.settings.run_dir / "children").unlink(missing_ok=True)
        self.lock.release()
        self.lock = None
        if self.children:
            self.console.say("stopped")


def run_up(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, n_workers: int = 1) -> int:
    """Run latentlab on this machine until Ctrl-C or SIGTERM; returns the process exit status."""
    if n_workers < 0:
        Console().line("Error: --workers must be 0 or more.", err=True)
        return 1
    return Launcher(settings, host=host, port=port, n_workers=n_workers).run()
