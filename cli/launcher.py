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

The children's supervision (spawn, restart, stop) is ``cli/supervisor.py``; this module is the sequence.
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
import sys
import time
from pathlib import Path

from cli.redis_server import RedisUnavailable
from cli.supervisor import Child, Console, EmbeddedRedis, Supervisor, write_atomically
from common.jobs.broker import INTERACTIVE_QUEUE, QUEUES
from common.platform.config import ConfigError, Settings

WEB_START_TIMEOUT_S = 180.0
# batch workers run this much nicer than the interactive one, so a click's few milliseconds of CPU go first
# even while a map fit keeps every core busy
BATCH_NICENESS = 5


class Refusal(Exception):
    """``up`` cannot start; the message is one sentence that says what to change."""


# -- small pieces ---------------------------------------------------------------------------------------


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


class Launcher(Supervisor):
    """The up sequence (checks, lock, migrations, Redis, children, first admin) on top of the supervision."""

    def __init__(
        self, settings: Settings, *, host: str, port: int, n_workers: int, console: Console | None = None
    ):
        super().__init__(settings, console)
        self.host = host
        self.port = port
        self.n_workers = n_workers
        self.lock: LockFile | None = None
        # the first admin's one-time password until it has been printed; "" when the user chose it
        self.admin_password: str | None = None

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

    # -- children (spawned, restarted and stopped by cli/supervisor.py) ---------------------------

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

    def shutdown(self) -> None:
        self.stop_children()
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
