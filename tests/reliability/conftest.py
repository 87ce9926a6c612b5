"""Fixtures of the fault tests: short timings through settings (passed to every worker's environment),
a shared numba cache so each worker boots in seconds, and a ``lab`` that kills what it started.

On ``--db=postgres`` only the tests marked ``both_backends`` run (the ones whose behaviour depends on
the database: fenced writes, locking, chunk rows); the others are about processes and Redis and run once,
on SQLite.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability.support import FaultLab

# short, still ordered (task_time_limit < visibility_timeout < stale_after); tests that need a small
# visibility timeout override these
FAST = {
    "heartbeat_seconds": 0.5,
    # progress written when reported: the crash tests pick their victim by its progress row
    "progress_interval": 0.0,
    "takeover_after": 4.0,
    "task_time_limit": 60,
    "visibility_timeout": 90,
    "stale_after": 120,
    "reaper_interval": 1.0,
    "max_attempts": 3,
    "chunk_size": 50,
    "fault_injection": True,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "both_backends: a fault test that runs on SQLite and PostgreSQL")


def pytest_collection_modifyitems(config, items):
    """On ``--db=postgres``, deselect (not skip) the fault tests that do not depend on the database."""
    if config.getoption("--db") != "postgres":
        return
    here = os.path.dirname(__file__)
    keep, once = [], []
    for item in items:
        in_here = str(item.path).startswith(here + os.sep)
        (once if in_here and item.get_closest_marker("both_backends") is None else keep).append(item)
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = keep


@pytest.fixture(scope="session")
def numba_cache(tmp_path_factory) -> str:
    # the embedding warm-up compiles numba kernels when a worker starts (~50 s on a busy 2-core machine);
    # with one cache for the session only the first worker pays it
    return os.environ.get("NUMBA_CACHE_DIR") or str(tmp_path_factory.mktemp("numba-cache"))


@pytest.fixture
def fast(settings):
    """The test settings with the short fault timings (what every worker and web process of ``lab`` sees)."""
    from common.platform.config import Settings

    fast = settings.with_(**FAST)
    Settings.validate(fast)
    return fast


@pytest.fixture
def lab(fast, sessions, publisher, admin, tmp_path, numba_cache):
    # one torch thread per process: on a shared 2-core machine torch's default thread pool spins and runs
    # the tiny test generator 20x slower
    env = {"NUMBA_CACHE_DIR": numba_cache, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    lab = FaultLab(fast, sessions, publisher, admin, tmp_path, env)
    yield lab
    lab.close()


@pytest.fixture
def tiny_model(lab):
    from tests.support.models import register_tiny_model

    return register_tiny_model(lab.sessions, lab.settings)
