"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every command a service runs is a
real ``latentlab`` command with real options, every LATENTLAB_* variable is one the settings know, the
services wait for what they need and say when they are healthy, and no secret is written down."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib import import_module
from pathlib import Path

import click
import pytest
import yaml

from cli.main import main as latentlab
from common.jobs.broker import INTERACTIVE_QUEUE, QUEUES
from common.platform.config import ENV_NAMES

REPO = Path(__file__).resolve().parents[2]
WORKERS = {"worker-gpu", "worker-interactive", "worker-cpu"}
SERVICES = {"redis", "postgres", "migrate", "web", *WORKERS, "flower"}
OURS = SERVICES - {"redis", "postgres"}
LONG_RUNNING = SERVICES - {"migrate"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def resolve(args: list[str]) -> click.Command:
    """Parse ``latentlab ARGS`` the way the CLI would (unknown commands, options or bad values raise),
    without running anything; returns the command reached."""
    command: click.Command = latentlab
    args = list(args)
    path = ["latentlab"]
    while isinstance(command, click.Group):
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {name!r}"
        command, path = sub, path + [name]
    command.make_context(" ".join(path), args)  # raises NoSuchOption, BadParameter, …
    return command


def entrypoint(dockerfile: str) -> list[str]:
    (line,) = [ln for ln in dockerfile.splitlines() if ln.startswith("ENTRYPOINT")]
    return yaml.safe_load(line.removeprefix("ENTRYPOINT").strip())


def test_all_services_of_the_distributed_shape_are_there(services):
    assert set(services) == SERVICES


def test_our_services_run_the_one_image_built_by_the_dockerfile(services):
    for name in OURS:
        svc = services[name]
        assert svc["build"]["context"] == ".", name
        assert svc["image"].startswith("latentlab:"), name
        assert "entrypoint" not in svc, f"{name}: the image's single entrypoint picks the role"


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_command_is_a_real_latentlab_command_with_real_options(services, name):
    command = services[name]["command"]
    assert isinstance(command, list), f"{name}: use the exec form (a list) for the command"
    resolve(command)


def test_the_dockerfile_default_command_is_a_real_latentlab_command(dockerfile):
    (line,) = [ln for ln in dockerfile.splitlines() if ln.startswith("CMD")]
    resolve(yaml.safe_load(line.removeprefix("CMD").strip()))


def test_the_resolver_rejects_what_the_cli_would_reject():
    with pytest.raises(AssertionError):
        resolve(["nope"])
    with pytest.raises(click.NoSuchOption):
        resolve(["web", "--no-such-option", "1"])
    with pytest.raises(click.BadParameter):
        resolve(["web", "--port", "eighty"])


def test_the_dockerfile_entrypoint_is_the_latentlab_console_script(dockerfile):
    assert entrypoint(dockerfile) == ["latentlab"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["latentlab"].partition(":")
    assert getattr(import_module(module), attr) is latentlab


def test_the_dockerfile_installs_torch_from_an_overridable_spec_before_the_project(dockerfile):
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"^ARG TORCH_SPEC=", dockerfile, re.M) and re.search(
        r"^ARG TORCH_INDEX_URL=", dockerfile, re.M
    )
    torch = dockerfile.index('pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"')
    project = dockerfile.index('pip install ".')
    assert torch < project


def test_every_latentlab_variable_set_is_one_the_settings_know(services, dockerfile):
    seen = set()
    for name, svc in services.items():
        for key in svc.get("environment") or {}:
            if key.startswith("LATENTLAB_"):
                assert key in ENV_NAMES, (
                    f"{name} sets {key}, which common.platform.config.Settings does not read"
                )
                seen.add(key)
    for key in re.findall(r"\b(LATENTLAB_[A-Z_]+)=", dockerfile):
        assert key in ENV_NAMES, (
            f"the Dockerfile sets {key}, which common.platform.config.Settings does not read"
        )
    assert {"LATENTLAB_DATA", "LATENTLAB_DATABASE_URL", "LATENTLAB_REDIS_URL"} <= seen


def test_our_services_share_the_data_root_and_the_signing_key(services):
    for name in OURS:
        svc = services[name]
        env = svc["environment"]
        assert env["LATENTLAB_DATA"] == "/data" and "data:/data" in svc["volumes"], name
        key_dir = str(Path(env["LATENTLAB_SIGNING_KEY_FILE"]).parent)
        assert f"keys:{key_dir}" in svc["volumes"], f"{name}: reducers signed on one host must verify on all"
        assert env["LATENTLAB_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["LATENTLAB_REDIS_URL"] == "redis://redis:6379/0", name


def test_no_secret_is_written_down(services):
    env = services["postgres"]["environment"]
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name in OURS:
        assert "${POSTGRES_PASSWORD:?" in services[name]["environment"]["LATENTLAB_DATABASE_URL"]
        secret = services[name]["environment"].get("LATENTLAB_SECRET_KEY", "")
        assert secret == "" or secret.startswith("${"), name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored, ".env must not be sent into an image"


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_a_healthcheck(services, name):
    test = services[name]["healthcheck"]["test"]
    assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1


def test_redis_persists_and_never_evicts_a_queued_job(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_postgres_is_16_and_checked_with_pg_isready(services):
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])


def test_start_order_migrate_first_then_web_and_workers(services):
    assert resolve(services["migrate"]["command"]).name == "upgrade"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("web", *sorted(WORKERS)):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_web_healthcheck_asks_a_route_the_app_serves(services, tmp_path, monkeypatch):
    test = " ".join(services["web"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:8000(/\S*?)['\"]", test).group(1)
    monkeypatch.setenv("LATENTLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LATENTLAB_SIGNING_KEY_FILE", str(tmp_path / "keys" / "signing.key"))
    from common.platform.config import Settings
    from web.app import create_app

    rules = {rule.rule for rule in create_app(Settings.from_env()).url_map.iter_rules()}
    assert path in rules


def test_workers_consume_every_queue_and_the_gpu_worker_reserves_a_gpu(services):
    consumed = {}
    for name in WORKERS:
        command = services[name]["command"]
        queues = command[command.index("--queues") + 1].split(",")
        consumed[name] = set(queues)
    assert consumed["worker-gpu"] == {"batch"}
    assert consumed["worker-cpu"] == {"embed"}
    assert set().union(*consumed.values()) == set(QUEUES)
    for name in ("worker-gpu", "worker-interactive"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert services["worker-cpu"]["environment"]["LATENTLAB_DEVICE"] == "cpu"


def test_clicks_have_a_worker_of_their_own_that_no_batch_work_can_occupy(services):
    """Interactive first: the interactive queue is consumed by one single-process worker that takes
    nothing else, with a low torch thread count, so a click starts while a dataset runs."""
    command = services["worker-interactive"]["command"]
    assert command[command.index("--queues") + 1] == INTERACTIVE_QUEUE
    assert command[command.index("--concurrency") + 1] == "1"
    assert int(services["worker-interactive"]["environment"]["LATENTLAB_TORCH_THREADS"]) <= 2
    for name in WORKERS - {"worker-interactive"}:
        command = services[name]["command"]
        assert INTERACTIVE_QUEUE not in command[command.index("--queues") + 1].split(","), name


def test_worker_healthcheck_pings_the_worker_through_the_celery_app(services):
    for name in WORKERS:
        words = shlex.split(services[name]["healthcheck"]["test"][1])
        assert words[:3] == ["celery", "-A", "workers.app"]
        celery_app = import_module(words[2]).celery_app
        assert celery_app.main == "latentlab"
