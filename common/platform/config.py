"""One typed settings object, read from ``LATENTLAB_*`` environment variables.

Usage::

    settings = Settings.from_env()            # the process environment
    settings = Settings.from_env({"LATENTLAB_DATA": "/tmp/x"})   # tests build it explicitly

Flask and Celery each get an explicit mapping from it (``web.app``, ``common.jobs.broker``); neither reads the
other's configuration.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

PREFIX = "LATENTLAB_"


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message says which variable and what to change."""


def _as_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def _as_number(name: str, raw: str, kind: type) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}.") from None


@dataclass(frozen=True)
class Settings:
    """Every knob of latentlab, with working defaults for one machine and no services installed.

    ``env`` names the environment variable of each field (``LATENTLAB_`` + upper-case field name), so
    ``data`` is ``LATENTLAB_DATA`` and ``database_url`` is ``LATENTLAB_DATABASE_URL``.
    """

    data: Path = Path("./data")
    database_url: str = ""  # empty: SQLite file in the data root
    redis_url: str = ""  # empty: the embedded redis-server that `latentlab up` starts
    secret_key: str = ""  # empty: generated into the data root on first use
    # HMAC key for fitted reducers; kept outside the data root and the database
    signing_key_file: Path = Path("~/.config/latentlab/signing.key")
    admin_password: str = ""
    # the demo models latentlab ships (model cards + weights); empty: data/models next to the code
    shipped_models: Path = Path("")
    device: str = ""  # empty: cuda > mps > cpu
    log_level: str = "INFO"

    # jobs and queues
    heartbeat_seconds: float = 2.0
    progress_interval: float = 0.25  # a job writes its progress at most this often (0: every report)
    # a delivery may take over a running job whose heartbeat is older than this (its worker died)
    takeover_after: float = 20.0
    task_time_limit: int = 3000  # hard per-task limit, seconds
    visibility_timeout: int = 3600  # redis re-delivers an unacked task after this
    stale_after: int = 3900  # the reaper re-queues a running job whose heartbeat is older than this
    reaper_interval: float = 15.0
    max_attempts: int = 3
    chunk_size: int = 256  # samples per generate_dataset chunk task (rounded up to the micro-batch)
    # samples per model call of a new dataset (recorded on it; a dataset's samples never depend on how
    # its work was split); 0: measured per model and device by a GPU worker, else 16
    micro_batch: int = 16
    # the most memory one model call of a dataset may use (MiB): a larger micro-batch is refused, and a
    # GPU worker measures the largest batch within it
    micro_batch_memory_mb: int = 8192
    model_cache_size: int = 2  # generators kept loaded per worker process
    # bytes of weights kept loaded per worker process (least recently used dropped first); 0: count only
    model_cache_bytes: int = 0
    # torch CPU threads per worker process; 0: a share of the cores (oversubscribed OpenMP threads spin)
    torch_threads: int = 0
    worker_concurrency: int = 1
    # finished jobs older than this many days are deleted by the reaper (hourly), except those a sample,
    # map or generation was made by; 0: kept forever (``latentlab jobs prune --older-than DAYS`` by hand)
    job_retention_days: float = 90.0
    # torch CPU threads of the interactive worker `latentlab up` starts (one click: a few small images)
    interactive_threads: int = 1

    # quotas (per user)
    max_active_jobs_per_queue: int = 32
    max_dataset_samples: int = 200_000
    # a map fitted over more rows than this fits UMAP on this many seeded landmark rows and places the
    # others with the map's transform (common/maps/landmarks.py); maps of at most this many rows are the
    # plain umap-learn fit
    map_landmarks: int = 100_000
    # per user and queue: how many of the user's queued jobs may wait in the broker at once; the rest wait
    # as rows and are published, fewest-waiting user first, as workers take jobs (fair share); 0: no limit
    fair_share_waiting: int = 2
    # test-only: lets the ping job crash or hang its worker on purpose (never enable in production)
    fault_injection: bool = False

    # web
    secure_cookies: bool = False
    # how many reverse proxies in front of the web app set X-Forwarded-For/-Proto/-Host/-Port; only then
    # are those headers believed (client address for rate limits, https for Secure cookies); 0: ignored
    trusted_proxies: int = 0
    session_hours: float = 12.0
    login_attempts_per_minute: int = 10
    # live event streams (GET /api/v1/events) one member may hold open in one web process; each process
    # serves at most 4 in all, so one member's tabs never take every slot
    event_streams_per_user: int = 2
    # the largest request body, in bytes: waitress refuses a larger Content-Length before reading it, and
    # Flask answers 413 for a larger body that reaches it
    max_body_bytes: int = 1024 * 1024
    activation_downloads_per_minute: int = 600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); keyword overrides win."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if name not in environ:
                continue
            raw = environ[name]
            kind = type(f.default)
            if kind is bool:
                values[f.name] = _as_bool(name, raw)
            elif kind in (int, float):
                values[f.name] = _as_number(name, raw, kind)
            elif issubclass(kind, Path):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)

    def validate(self) -> None:
        if not self.task_time_limit < self.visibility_timeout < self.stale_after:
            raise ConfigError(
                "LATENTLAB_TASK_TIME_LIMIT < LATENTLAB_VISIBILITY_TIMEOUT < LATENTLAB_STALE_AFTER must hold "
                f"(got {self.task_time_limit}, {self.visibility_timeout}, {self.stale_after}); otherwise "
                "a task still running could be delivered twice or reaped while alive."
            )
        if not 0 <= self.progress_interval <= 60:
            raise ConfigError("LATENTLAB_PROGRESS_INTERVAL must be between 0 and 60 seconds.")
        if self.heartbeat_seconds <= 0 or self.heartbeat_seconds * 3 > self.stale_after:
            raise ConfigError(
                "LATENTLAB_HEARTBEAT_SECONDS must be positive and well below LATENTLAB_STALE_AFTER."
            )
        if self.takeover_after < 3 * self.heartbeat_seconds:
            raise ConfigError(
                "LATENTLAB_TAKEOVER_AFTER must be at least three heartbeats (LATENTLAB_HEARTBEAT_SECONDS)."
            )
        if self.map_landmarks < 100:
            raise ConfigError(
                "LATENTLAB_MAP_LANDMARKS must be at least 100 (the rows a large map's UMAP is fitted on)."
            )
        if self.max_attempts < 1:
            raise ConfigError("LATENTLAB_MAX_ATTEMPTS must be at least 1.")
        if not 1 <= self.chunk_size <= 4096:
            raise ConfigError("LATENTLAB_CHUNK_SIZE must be between 1 and 4096.")
        if not 0 <= self.micro_batch <= 1024:
            raise ConfigError("LATENTLAB_MICRO_BATCH must be 0 (measured per model and device) to 1024.")
        if self.micro_batch_memory_mb < 64:
            raise ConfigError("LATENTLAB_MICRO_BATCH_MEMORY_MB must be at least 64 (MiB).")
        if not 0 <= self.trusted_proxies <= 10:
            raise ConfigError("LATENTLAB_TRUSTED_PROXIES must be between 0 and 10 (the proxies in front).")
        if not 0 <= self.job_retention_days <= 36_500:
            raise ConfigError("LATENTLAB_JOB_RETENTION_DAYS must be 0 (keep forever) to 36500 days.")
        if self.event_streams_per_user < 1:
            raise ConfigError("LATENTLAB_EVENT_STREAMS_PER_USER must be at least 1.")
        if not 1024 <= self.max_body_bytes <= 1024**3:
            raise ConfigError("LATENTLAB_MAX_BODY_BYTES must be between 1024 and 1073741824 (1 GiB).")
        if self.interactive_threads < 1:
            raise ConfigError("LATENTLAB_INTERACTIVE_THREADS must be 1 or more.")
        if self.fair_share_waiting < 0:
            raise ConfigError("LATENTLAB_FAIR_SHARE_WAITING must be 0 (no limit) or more.")

    def __repr__(self) -> str:
        # settings get logged and printed; keys, passwords and the passwords inside URLs never are
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "<redacted>"
            elif f.name in URL_FIELDS and value:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    # -- derived paths and values ------------------------------------------------------------------

    def cpu_threads(self) -> int:
        """Torch threads for one worker process: the setting, else the cores shared by the pool."""
        if self.torch_threads > 0:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // (2 * max(1, self.worker_concurrency)))

    @property
    def data_root(self) -> Path:
        return self.data.expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        """Runtime files of the embedded services (pid files, the embedded redis URL)."""
        return self.data_root / "run"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_root / 'latentlab.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.startswith("sqlite")

    @property
    def embedded_redis_url_file(self) -> Path:
        return self.run_dir / "redis.url"

    def broker_url(self) -> str:
        """The Redis URL: ``LATENTLAB_REDIS_URL``, else the one the embedded server wrote into the data root.

        Raises ConfigError when neither exists (nothing is running).
        """
        if self.redis_url:
            return self.redis_url
        path = self.embedded_redis_url_file
        if path.exists():
            return path.read_text().strip()
        raise ConfigError(
            "No Redis to talk to: set LATENTLAB_REDIS_URL, or start the embedded one with `latentlab up` "
            f"(it writes its address to {path})."
        )

    def ensure_data_root(self) -> Path:
        """Create the data root (and check it is writable); return it."""
        root = self.data_root
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"The data root {root} is not writable ({exc.strerror}); "
                "set LATENTLAB_DATA to a folder you can "
                "write to."
            ) from None
        return root

    def resolved_secret_key(self) -> str:
        """``LATENTLAB_SECRET_KEY``, else a key generated once into ``<data>/secret_key`` (mode 0600)."""
        if self.secret_key:
            return self.secret_key
        return _key_file(self.ensure_data_root() / "secret_key")

    def resolved_signing_key(self) -> bytes:
        """The HMAC key for reducer files; generated once (mode 0600) outside the data root."""
        path = self.signing_key_file.expanduser().resolve()
        if path.is_relative_to(self.data_root):
            raise ConfigError(
                f"LATENTLAB_SIGNING_KEY_FILE={path} lies inside the data root; "
                "put it elsewhere so that write "
                "access to the data root is not enough to forge a trusted reducer."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        return _key_file(path).encode()


def _key_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        # link() fails if another process won the race; then read the winner's key
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


ENV_NAMES = frozenset(PREFIX + f.name.upper() for f in fields(Settings))
SECRET_FIELDS = frozenset({"secret_key", "admin_password"})
URL_FIELDS = frozenset({"database_url", "redis_url"})


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced (``redis://:***@host``), for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo.split("/")[0]:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
