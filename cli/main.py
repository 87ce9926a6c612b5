"""The ``latentlab`` command line: one entry point for setup, services and the research loop."""

from __future__ import annotations

import json
import sys

import click

import cli.experiments  # noqa: F401  (attaches the sweep command to main)
import cli.exports  # noqa: F401  (attaches the export commands to main)
import cli.models  # noqa: F401  (attaches the model commands to main)
import cli.research  # noqa: F401  (attaches the research commands to main)
import cli.sql  # noqa: F401  (attaches the sql command to main)
from cli.base import (
    ROW_ID,
    job_owner,
    load_settings,
    main,
    make_publisher,
    open_sessions,
    require_schema,
    wait_for_job,
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
    from common.platform import migrate

    settings = load_settings()
    migrate.upgrade(settings, revision)
    click.echo(f"database at {migrate.current(settings)}")
    if register_shipped:
        from common.research.registry import register_shipped_models

        with open_sessions(settings).begin() as session:
            added = register_shipped_models(session, settings)
        click.echo(f"shipped models registered: {', '.join(added) or 'nothing new'}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' empties the schema)."""
    from common.platform import migrate

    settings = load_settings()
    migrate.downgrade(settings, revision)
    click.echo(f"database at {migrate.current(settings)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and the code's head."""
    from common.platform import migrate

    click.echo(f"database: {migrate.current(load_settings())}; code head: {', '.join(migrate.heads())}")


@db.command("check")
def db_check() -> None:
    """Fail if the ORM and the migrated database differ (autogenerate finds changes)."""
    from common.platform import migrate

    diffs = migrate.drift(load_settings())
    if diffs:
        for d in diffs:
            click.echo(f"drift: {d}", err=True)
        sys.exit(1)
    click.echo("no drift")


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
    from common.platform.accounts import create_user

    settings = load_settings()
    require_schema(settings)
    password = _read_password(prompt=True)
    with open_sessions(settings).begin() as session:
        u = create_user(session, name, password, role="admin" if admin else "member")
        click.echo(f"created {u.role} '{u.username}' (id {u.id})")


@user.command("token")
@click.argument("name")
@click.option("--label", default="cli", show_default=True, help="A name for the token.")
def user_token(name: str, label: str) -> None:
    """Issue a personal API token for user NAME (printed once)."""
    from common.platform.accounts import get_user, issue_token

    settings = load_settings()
    require_schema(settings)
    with open_sessions(settings).begin() as session:
        raw = issue_token(session, get_user(session, name), label)
    click.echo(raw)


@user.command("passwd")
@click.argument("name")
def user_passwd(name: str) -> None:
    """Set user NAME's password (ends their sessions)."""
    from common.platform.accounts import get_user, set_password

    settings = load_settings()
    password = _read_password(prompt=True)
    with open_sessions(settings).begin() as session:
        set_password(session, get_user(session, name), password)
    click.echo("password changed")


@user.command("list")
def user_list() -> None:
    """List users."""
    from common.platform.account_reads import list_users

    with open_sessions(load_settings())() as session:
        for u in list_users(session):
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
    from common.jobs.broker import QUEUES

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
    from web.app import create_app
    from web.server import serve

    settings = load_settings()
    require_schema(settings)
    app = create_app(settings)
    click.echo(f"latentlab web on http://{host}:{port}/")
    serve(app, settings, host=host, port=port, threads=threads)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the web server binds.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    "n_workers",
    default=1,
    show_default=True,
    type=int,
    help="Batch worker processes; with 1 or more, an interactive worker for clicks runs beside them.",
)
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


@job.command("submit")
@click.argument("kind")
@click.option("--params", default="{}", help="Parameters as a JSON object.")
@click.option("--as", "username", default=None, help="Owner (default: the first admin).")
@click.option("--wait/--no-wait", default=False, help="Wait for the job, showing progress.")
def job_submit(kind: str, params: str, username: str | None, wait: bool) -> None:
    """Submit a job of KIND with --params JSON."""
    from common import jobs

    settings = load_settings()
    require_schema(settings)
    try:
        parsed = json.loads(params)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--params is not valid JSON: {exc}") from None
    sessions = open_sessions(settings)
    owner = job_owner(sessions, username)
    j = jobs.submit(sessions, make_publisher(settings), settings, owner=owner, kind=kind, params=parsed)
    click.echo(
        f"job {j.id} {j.status}{'' if j.published_at else ' (broker unreachable: will be published later)'}"
    )
    if wait:
        sys.exit(wait_for_job(sessions, j.id))


@job.command("prune")
@click.option(
    "--older-than",
    "older_than",
    required=True,
    type=click.FloatRange(0, 36_500),
    help="Delete finished jobs that ended more than this many days ago (not those a dataset, map or "
    "generation was made by).",
)
def job_prune(older_than: float) -> None:
    """Delete old finished jobs (the reaper does this hourly past LATENTLAB_JOB_RETENTION_DAYS)."""
    from common.jobs.retention import prune_jobs

    settings = load_settings()
    require_schema(settings)
    deleted = prune_jobs(open_sessions(settings), older_than)
    click.echo(f"deleted {deleted} finished jobs older than {older_than:g} days")


main.add_command(job, "jobs")  # ``latentlab jobs prune`` reads as well as ``latentlab job prune``


@job.command("show")
@click.argument("job_id", type=ROW_ID)
def job_show(job_id: int) -> None:
    """Print a job as JSON."""
    from common.jobs import job_to_dict
    from common.models import Job

    with open_sessions(load_settings())() as session:
        j = session.get(Job, job_id)
        if j is None:
            raise click.ClickException(f"No job {job_id}.")
        click.echo(json.dumps(job_to_dict(j), indent=2))


if __name__ == "__main__":
    main()
