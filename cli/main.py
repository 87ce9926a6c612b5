"""The ``latentlab`` command line: one entry point for setup, services and the research loop."""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from common.config import ConfigError, Settings
from common.errors import UserError


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class LatentlabGroup(click.Group):
    """Turns the errors a user can cause into one readable line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (UserError, ConfigError) as exc:
            message = exc.message if isinstance(exc, UserError) else str(exc)
            click.echo(f"Error: {message}", err=True)
            sys.exit(2 if isinstance(exc, UserError) and exc.status == 400 else 1)


@click.group(cls=LatentlabGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log debug output.")
def main(verbose: bool) -> None:
    """latentlab: look inside diffusion image generators."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# -- database -----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--register-shipped", is_flag=True, help="Then register the shipped demo models (idempotent).")
def db_upgrade(revision: str, register_shipped: bool) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from common import migrate

    settings = load_settings()
    migrate.upgrade(settings, revision)
    click.echo(f"database at {migrate.current(settings)}")
    if register_shipped:
        from common.registry import register_shipped_models

        with _sessions(settings).begin() as session:
            added = register_shipped_models(session, settings)
        click.echo(f"shipped models registered: {', '.join(added) or 'nothing new'}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' empties the schema)."""
    from common import migrate

    settings = load_settings()
    migrate.downgrade(settings, revision)
    click.echo(f"database at {migrate.current(settings)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head."""
    from common import migrate

    click.echo(f"database: {migrate.current(load_settings())}; code head: {', '.join(migrate.heads())}")


@db.command("check")
def db_check() -> None:
    """Fail if the ORM and the migrated database differ (autogenerate finds changes)."""
    from common import migrate

    diffs = migrate.drift(load_settings())
    if diffs:
        for d in diffs:
            click.echo(f"drift: {d}", err=True)
        sys.exit(1)
    click.echo("no drift")


def _sessions(settings: Settings):
    from common.db import make_engine, session_factory

    return session_factory(make_engine(settings))


def _require_schema(settings: Settings) -> None:
    from common import migrate

    if not migrate.is_current(settings):
        raise click.ClickException(
            "The database is not migrated to the latest schema; run `latentlab db upgrade`."
        )


# -- users --------------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Accounts and API tokens."""


def _read_password(prompt: bool) -> str:
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise click.ClickException("No password on standard input; pipe one in or run interactively.")
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=prompt)


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
def user_add(name: str, admin: bool) -> None:
    """Create user NAME; the password comes from standard input or a prompt."""
    from common.accounts import create_user

    settings = load_settings()
    _require_schema(settings)
    password = _read_password(prompt=True)
    with _sessions(settings).begin() as session:
        u = create_user(session, name, password, role="admin" if admin else "member")
        click.echo(f"created {u.role} '{u.username}' (id {u.id})")


@user.command("token")
@click.argument("name")
@click.option("--label", default="cli", show_default=True, help="A name for the token.")
def user_token(name: str, label: str) -> None:
    """Issue a personal API token for user NAME (printed once)."""
    from common.accounts import get_user, issue_token

    settings = load_settings()
    _require_schema(settings)
    with _sessions(settings).begin() as session:
        raw = issue_token(session, get_user(session, name), label)
    click.echo(raw)


@user.command("passwd")
@click.argument("name")
def user_passwd(name: str) -> None:
    """Set user NAME's password (ends their sessions)."""
    from common.accounts import get_user, set_password

    settings = load_settings()
    password = _read_password(prompt=True)
    with _sessions(settings).begin() as session:
        set_password(session, get_user(session, name), password)
    click.echo("password changed")


@user.command("list")
def user_list() -> None:
    """List users."""
    from sqlalchemy import select

    from common.models import User

    with _sessions(load_settings())() as session:
        for u in session.scalars(select(User).order_by(User.id)):
            click.echo(f"{u.id}\t{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}")


# -- services -----------------------------------------------------------------------------------------


@main.command()
@click.option("--queues", default="interactive,batch,embed", show_default=True)
@click.option("--concurrency", "-c", type=int, default=None, help="Pool processes (default: settings).")
@click.option("--pool", default="prefork", show_default=True)
@click.option("--hostname", "-n", default=None, help="Celery node name.")
def worker(queues: str, concurrency: int | None, pool: str, hostname: str | None) -> None:
    """Run a Celery worker consuming QUEUES."""
    settings = load_settings()
    from common.queue import QUEUES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {unknown}; use some of {', '.join(QUEUES)}")
    settings.broker_url()  # fails early with a clear message when there is no Redis
    from workers.app import celery_app

    argv = [
        "worker",
        f"--queues={','.join(wanted)}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
        "--prefetch-multiplier=1",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    celery_app.worker_main(argv)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def web(host: str, port: int, threads: int) -> None:
    """Serve the web app with waitress (a production WSGI server)."""
    from waitress import serve

    from web.app import create_app

    settings = load_settings()
    _require_schema(settings)
    app = create_app(settings)
    click.echo(f"latentlab web on http://{host}:{port}/")
    serve(app, host=host, port=port, threads=threads, ident="latentlab", channel_timeout=300)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the web server binds.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "n_workers", default=1, show_default=True, type=int, help="Worker processes.")
def up(host: str, port: int, n_workers: int) -> None:
    """Start everything on this machine: migrations, Redis (embedded unless LATENTLAB_REDIS_URL is set),
    workers and the web app. Ctrl-C stops all of them."""
    from cli.launcher import run_up

    sys.exit(run_up(load_settings(), host=host, port=port, n_workers=n_workers))


@main.command()
@click.option("--address", default="127.0.0.1", show_default=True, help="Address Flower binds.")
@click.option("--port", default=5555, show_default=True, type=int)
def flower(address: str, port: int) -> None:
    """Serve Flower, Celery's monitoring UI, for the broker (FLOWER_* variables configure it further)."""
    import importlib.util

    if importlib.util.find_spec("flower") is None:
        raise click.ClickException("Flower is not installed; pip install 'latentlab[flower]'.")
    load_settings().broker_url()  # fails early with a clear message when there is no Redis
    from workers.app import celery_app

    celery_app.start(["flower", f"--address={address}", f"--port={port}"])


# -- jobs ---------------------------------------------------------------------------------------------


@main.group()
def job() -> None:
    """Submit and inspect jobs."""


def _publisher(settings: Settings):
    import redis

    from common.queue import Publisher
    from workers.app import celery_app

    client = redis.Redis.from_url(settings.broker_url(), socket_connect_timeout=2, socket_timeout=5)
    return Publisher(celery_app.send_task, client)


@job.command("submit")
@click.argument("kind")
@click.option("--params", default="{}", help="Parameters as a JSON object.")
@click.option("--as", "username", default=None, help="Owner (default: the first admin).")
@click.option("--wait/--no-wait", default=False, help="Wait for the job, showing progress.")
def job_submit(kind: str, params: str, username: str | None, wait: bool) -> None:
    """Submit a job of KIND with --params JSON."""
    from common import jobs

    settings = load_settings()
    _require_schema(settings)
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--params is not valid JSON: {exc}") from None
    sessions = _sessions(settings)
    owner = _owner(sessions, username)
    j = jobs.submit(sessions, _publisher(settings), settings, owner=owner, kind=kind, params=parsed)
    click.echo(
        f"job {j.id} {j.status}{'' if j.published_at else ' (broker unreachable: will be published later)'}"
    )
    if wait:
        sys.exit(wait_for_job(sessions, j.id))


def _owner(sessions, username: str | None) -> int:
    from sqlalchemy import select

    from common.models import User

    with sessions() as session:
        if username:
            from common.accounts import get_user

            return get_user(session, username).id
        uid = session.scalar(select(User.id).where(User.role == "admin").order_by(User.id))
        if uid is None:
            raise click.ClickException(
                "No admin exists yet; run `latentlab up` once or `latentlab user add NAME --admin`."
            )
        return uid


def wait_for_job(sessions, job_id: int, poll: float = 0.25) -> int:
    """Show a progress bar until the job ends; returns the exit code (0 when it succeeded)."""
    from tqdm import tqdm

    from common.models import Job

    with tqdm(
        total=100, unit="%", desc=f"job {job_id}", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}"
    ) as bar:
        while True:
            with sessions() as session:
                j = session.get(Job, job_id)
                bar.n = round(j.progress * 100)
                bar.set_postfix_str(f"{j.status} {j.progress_message or ''}"[:60])
                if j.is_final:
                    bar.refresh()
                    break
            time.sleep(poll)
    if j.status != "succeeded":
        click.echo(f"job {job_id} {j.status}: {j.error or ''}", err=True)
        return 1
    click.echo(json.dumps(j.result or {}, indent=None))
    return 0


@job.command("show")
@click.argument("job_id", type=int)
def job_show(job_id: int) -> None:
    """Print a job as JSON."""
    from common.jobs import job_to_dict
    from common.models import Job

    with _sessions(load_settings())() as session:
        j = session.get(Job, job_id)
        if j is None:
            raise click.ClickException(f"No job {job_id}.")
        click.echo(json.dumps(job_to_dict(j), indent=2))


def _register_command_modules() -> None:
    # each feature's commands live in their own module and attach themselves to ``main``
    import cli.exports  # noqa: F401
    import cli.models  # noqa: F401
    import cli.research  # noqa: F401
    import cli.sql  # noqa: F401


if __name__ == "__main__":
    from cli.main import main as _main  # the importable module, with every command module attached

    _main()
else:
    _register_command_modules()
