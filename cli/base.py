"""What every ``latentlab`` command module shares: the click group, settings, sessions, the schema check,
the job owner and publisher, and the progress bar of ``--wait``.

``cli.main`` (the entry point), ``cli.models`` and ``cli.research`` attach their commands to ``main``
here; none of them imports another command module.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from common.platform.config import ConfigError, Settings
from common.platform.errors import UserError


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class RowIdType(click.ParamType):
    """A row id on the command line: ASCII digits without a leading zero, like the API (``int()`` would
    read "٣" as 3 and "007" as 7)."""

    name = "id"

    def convert(self, value, param, ctx):
        from common.models.base import ID_SPELLING, MAX_ROW_ID, row_id

        if isinstance(value, int) and not isinstance(value, bool):
            return value
        found = row_id(str(value).strip())
        if found is None:
            self.fail(f"{value!r} is not an id; {ID_SPELLING} (1 to {MAX_ROW_ID}).", param, ctx)
        return found


ROW_ID = RowIdType()


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


def open_sessions(settings: Settings):
    from common.platform.db import make_engine, session_factory

    return session_factory(make_engine(settings))


def require_schema(settings: Settings) -> None:
    from common.platform import migrate

    if not migrate.is_current(settings):
        raise click.ClickException(
            "The database is not migrated to the latest schema; run `latentlab db upgrade`."
        )


def make_publisher(settings: Settings):
    import redis

    from common.jobs.broker import Publisher
    from workers.app import celery_app

    client = redis.Redis.from_url(settings.broker_url(), socket_connect_timeout=2, socket_timeout=5)
    return Publisher(celery_app.send_task, client)


def job_owner(sessions, username: str | None) -> int:
    """The id of user ``username``, or of the first admin when none is given."""
    from common.platform.account_reads import first_admin_id
    from common.platform.accounts import get_user

    with sessions() as session:
        if username:
            return get_user(session, username).id
        uid = first_admin_id(session)
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
