"""Settings from LATENTLAB_* variables: defaults that work, values parsed or refused by name, keys made
once and kept."""

from __future__ import annotations

import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from common.platform.config import ENV_NAMES, PREFIX, ConfigError, Settings


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    base = {
        "LATENTLAB_DATA": str(tmp_path / "data"),
        "LATENTLAB_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
    }
    base.update({PREFIX + k.upper(): v for k, v in values.items()})
    return base


def test_defaults_work_with_an_empty_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.data == Path("./data")
    assert s.database_url == "" and s.redis_url == "" and s.secret_key == ""
    assert s.data_root == Path("./data").resolve()
    assert s.sqlalchemy_url == f"sqlite:///{Path('./data').resolve() / 'latentlab.db'}"
    assert s.is_sqlite
    assert s.embedded_redis_url_file == s.data_root / "run" / "redis.url"
    assert s.task_time_limit < s.visibility_timeout < s.stale_after
    assert s.fault_injection is False


def test_every_field_has_one_env_name():
    assert ENV_NAMES == {PREFIX + f.name.upper() for f in fields(Settings)}
    assert {"LATENTLAB_DATA", "LATENTLAB_DATABASE_URL", "LATENTLAB_REDIS_URL"} <= ENV_NAMES


def test_values_are_parsed_by_the_type_of_their_default(tmp_path):
    s = Settings.from_env(
        env(
            tmp_path,
            database_url="postgresql+psycopg://u:p@db/latentlab",
            heartbeat_seconds="1.5",
            max_attempts="5",
            fault_injection="yes",
            secure_cookies="0",
            chunk_size="64",
        )
    )
    assert s.data == tmp_path / "data" and isinstance(s.data, Path)
    assert s.database_url == "postgresql+psycopg://u:p@db/latentlab" and not s.is_sqlite
    assert s.sqlalchemy_url == s.database_url
    assert s.heartbeat_seconds == 1.5 and isinstance(s.heartbeat_seconds, float)
    assert s.max_attempts == 5 and isinstance(s.max_attempts, int)
    assert s.fault_injection is True and s.secure_cookies is False
    assert s.chunk_size == 64


@pytest.mark.parametrize(
    "word,value", [("1", True), ("TRUE", True), ("on", True), ("no", False), ("", False)]
)
def test_booleans_accept_the_usual_words(word, value):
    assert Settings.from_env({"LATENTLAB_FAULT_INJECTION": word}).fault_injection is value


def test_keyword_overrides_win_over_the_environment(tmp_path):
    s = Settings.from_env(env(tmp_path, max_attempts="5"), max_attempts=7)
    assert s.max_attempts == 7


@pytest.mark.parametrize(
    "name,raw",
    [
        ("LATENTLAB_MAX_ATTEMPTS", "three"),
        ("LATENTLAB_MAX_ATTEMPTS", "2.5"),
        ("LATENTLAB_HEARTBEAT_SECONDS", "fast"),
        ("LATENTLAB_FAULT_INJECTION", "maybe"),
        ("LATENTLAB_SECURE_COOKIES", "2"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(name, raw):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: raw})
    assert name in str(err.value) and repr(raw) in str(err.value)


@pytest.mark.parametrize(
    "values",
    [
        {"LATENTLAB_TASK_TIME_LIMIT": "4000"},  # above the visibility timeout (3600)
        {"LATENTLAB_VISIBILITY_TIMEOUT": "3900"},  # equal to stale_after
        {"LATENTLAB_STALE_AFTER": "100"},
    ],
)
def test_time_limits_must_be_ordered_so_a_live_task_is_never_redelivered_or_reaped(values):
    with pytest.raises(ConfigError, match="LATENTLAB_TASK_TIME_LIMIT < LATENTLAB_VISIBILITY_TIMEOUT"):
        Settings.from_env(values)


def test_ordered_time_limits_are_accepted():
    s = Settings.from_env(
        {
            "LATENTLAB_TASK_TIME_LIMIT": "60",
            "LATENTLAB_VISIBILITY_TIMEOUT": "120",
            "LATENTLAB_STALE_AFTER": "180",
        }
    )
    assert (s.task_time_limit, s.visibility_timeout, s.stale_after) == (60, 120, 180)


@pytest.mark.parametrize(
    "values,variable",
    [
        ({"LATENTLAB_HEARTBEAT_SECONDS": "0"}, "LATENTLAB_HEARTBEAT_SECONDS"),
        ({"LATENTLAB_TAKEOVER_AFTER": "1"}, "LATENTLAB_TAKEOVER_AFTER"),
        ({"LATENTLAB_MAX_ATTEMPTS": "0"}, "LATENTLAB_MAX_ATTEMPTS"),
        ({"LATENTLAB_CHUNK_SIZE": "0"}, "LATENTLAB_CHUNK_SIZE"),
        ({"LATENTLAB_CHUNK_SIZE": "5000"}, "LATENTLAB_CHUNK_SIZE"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_variable(values, variable):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(values)


def test_secret_key_is_generated_once_private_and_stable(tmp_path):
    s = Settings.from_env(env(tmp_path))
    key = s.resolved_secret_key()
    path = tmp_path / "data" / "secret_key"
    assert path.exists() and len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert s.resolved_secret_key() == key
    assert Settings.from_env(env(tmp_path)).resolved_secret_key() == key  # a new process reads it back
    assert not list(path.parent.glob(".secret_key*")), "no temporary file is left behind"


def test_secret_key_from_the_environment_wins(tmp_path):
    s = Settings.from_env(env(tmp_path, secret_key="from-env"))
    assert s.resolved_secret_key() == "from-env"
    assert not (tmp_path / "data" / "secret_key").exists()


def test_signing_key_is_generated_once_outside_the_data_root(tmp_path):
    s = Settings.from_env(env(tmp_path))
    key = s.resolved_signing_key()
    path = tmp_path / "keys" / "signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert s.resolved_signing_key() == key and isinstance(key, bytes) and len(key) >= 32


@pytest.mark.parametrize("inside", ["signing.key", "keys/signing.key"])
def test_signing_key_inside_the_data_root_is_refused(tmp_path, inside):
    s = Settings.from_env(env(tmp_path, signing_key_file=str(tmp_path / "data" / inside)))
    with pytest.raises(ConfigError, match="LATENTLAB_SIGNING_KEY_FILE"):
        s.resolved_signing_key()
    assert not (tmp_path / "data" / inside).exists()


def test_unwritable_data_root_is_refused_naming_the_variable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = Settings.from_env({"LATENTLAB_DATA": str(blocker / "data")})
    with pytest.raises(ConfigError, match="LATENTLAB_DATA") as err:
        s.ensure_data_root()
    assert "not writable" in str(err.value)


def test_broker_url_prefers_the_variable_then_the_embedded_file(tmp_path):
    s = Settings.from_env(env(tmp_path))
    with pytest.raises(ConfigError, match="LATENTLAB_REDIS_URL"):
        s.broker_url()
    s.embedded_redis_url_file.parent.mkdir(parents=True)
    s.embedded_redis_url_file.write_text("redis://127.0.0.1:6399/0\n")
    assert s.broker_url() == "redis://127.0.0.1:6399/0"
    explicit = Settings.from_env(env(tmp_path, redis_url="redis://elsewhere:6379/0"))
    assert explicit.broker_url() == "redis://elsewhere:6379/0"


def test_readme_documents_every_variable_with_the_generated_table():
    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    for name in ENV_NAMES:
        assert f"`{name}`" in readme, f"README.md does not document {name}"
    check = subprocess.run(
        [sys.executable, "scripts/config_table.py", "--check"], cwd=repo, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr + check.stdout
