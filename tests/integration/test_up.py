"""``latentlab up`` as a user runs it: one command starts the embedded Redis, a worker and the web server
on a fresh data root; a job submitted from another shell runs; SIGTERM leaves nothing behind. And the
refusals: a taken port, an unwritable data root, a second ``up`` on the same data root."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

from cli.redis_server import free_port
from common.platform.config import Settings
from tests.support.services import REPO, Proc

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree in /proc"
)

URL_LINE = "latentlab is running at"
START_TIMEOUT = 180.0


def up_env(tmp_path: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """A user's shell: no LATENTLAB_REDIS_URL (the embedded Redis), a fresh data root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTLAB_")}
    env.update(
        {
            "LATENTLAB_DATA": str(tmp_path / "data"),
            "LATENTLAB_SIGNING_KEY_FILE": str(tmp_path / "keys" / "signing.key"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        env["LATENTLAB_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def start_up(tmp_path: Path, env: dict[str, str], port: int, name: str = "up") -> Proc:
    proc = Proc(cli("up", "--port", str(port), "--workers", "1"), env, tmp_path / f"{name}.log")
    try:
        proc.wait_for_log(URL_LINE, timeout=START_TIMEOUT)
    except BaseException:
        kill_tree(proc)
        raise
    return proc


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(*args),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# -- the process tree, from /proc -----------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], fields[19]


def niceness(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat(5), counted after "pid (comm)"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def process_tree(root: int) -> dict[int, tuple[str, str]]:
    """Every descendant of ``root``: pid → (start time, command line)."""
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            kids[st[0]].append(int(entry))
    tree: dict[int, tuple[str, str]] = {}
    todo = list(kids[root])
    while todo:
        pid = todo.pop()
        st = _stat(pid)
        if st is None:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        tree[pid] = (st[2], cmd)
        todo.extend(kids[pid])
    return tree


def still_running(tree: dict[int, tuple[str, str]]) -> dict[int, str]:
    """The processes of ``tree`` that exist now (same pid and start time, not a zombie)."""
    alive = {}
    for pid, (started, cmd) in tree.items():
        st = _stat(pid)
        if st is not None and st[2] == started and st[1] != "Z":
            alive[pid] = cmd
    return alive


def wait_gone(tree: dict[int, tuple[str, str]], timeout: float = 30.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (alive := still_running(tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def kill_tree(proc: Proc) -> None:
    """Test cleanup whatever happened: SIGKILL the launcher and every descendant (they have their own
    process groups, so killing the launcher's group is not enough)."""
    tree = process_tree(proc.pid) if proc.alive() else {}
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.alive():
        proc.kill_group()
    else:
        proc.stop()


def children_named(tree: dict[int, tuple[str, str]], needle: str) -> list[int]:
    return [pid for pid, (_, cmd) in tree.items() if needle in cmd]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- tests ----------------------------------------------------------------------------------------------


def test_up_serves_runs_a_job_and_stops_cleanly_on_sigterm(tmp_path, database_url):
    port = free_port()
    env = up_env(tmp_path, database_url)
    up = start_up(tmp_path, env, port)
    try:
        out = up.log_text()
        assert f"{URL_LINE} http://127.0.0.1:{port}/" in out
        password = re.search(r"password: (\S+)", out).group(1)
        assert out.count(password) == 1, "the one-time admin password is printed exactly once"

        settings = Settings.from_env(env)
        url_file = settings.embedded_redis_url_file
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", url_file.read_text().strip())

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200

        from sqlalchemy import select

        from common.models import GeneratorModel
        from common.platform.accounts import check_password, get_user
        from common.platform.db import make_engine, session_factory

        engine = make_engine(settings)
        with session_factory(engine)() as session:
            assert check_password(get_user(session, "admin"), password)
            # the shipped demo models are there on a fresh data root, their weights copied into it
            shipped = {m.name: m for m in session.scalars(select(GeneratorModel))}
            assert {"digits-onestep", "digits-edm", "digits-sd"} <= set(shipped), sorted(shipped)
            assert shipped["digits-onestep"].default_steps == 1
            assert shipped["digits-sd"].family == "diffusers"
        engine.dispose()
        assert (settings.data_root / "models" / "digits-onestep.safetensors").is_file()
        assert (settings.data_root / "models" / "digits-sd" / "model_index.json").is_file()

        # another shell on the same data root finds the embedded Redis through run/redis.url
        job = run_cli(env, "job", "submit", "ping", "--params", '{"seconds": 0.5}', "--wait")
        assert job.returncode == 0, job.stdout + job.stderr + up.log_text()[-3000:]

        tree = process_tree(up.pid)
        assert children_named(tree, "redis-server"), tree
        assert children_named(tree, "cli.main web"), tree
        assert children_named(tree, "cli.main worker"), tree
        # interactive first: one batch worker (batch and embed, nicer) and the interactive worker beside it
        # (the ping above ran there: it is an interactive kind)
        workers = [p for p in children_named(tree, "cli.main worker") if _stat(p)[0] == up.pid]
        by_name = {re.search(r"--hostname (\w+)@", tree[p][1]).group(1): p for p in workers}
        assert set(by_name) == {"w1", "wi"}, tree
        assert "--queues batch,embed " in tree[by_name["w1"]][1]
        assert "--queues interactive " in tree[by_name["wi"]][1]
        assert niceness(by_name["w1"]) == niceness(up.pid) + 5
        assert niceness(by_name["wi"]) == niceness(up.pid)
        assert environ_of(by_name["wi"])["LATENTLAB_TORCH_THREADS"] == "1"
        # the Celery pool process that ran the ping is a grandchild: it must go too
        assert len(tree) >= 4, tree

        up.popen.send_signal(signal.SIGTERM)
        assert up.popen.wait(timeout=30) == 0, up.log_text()[-3000:]
        assert wait_gone(tree, timeout=30) == {}, f"left running: {still_running(tree)}"
        assert not url_file.exists()
        assert "stopped" in up.log_text()
    finally:
        kill_tree(up)


def test_dead_worker_is_restarted_and_dead_web_server_stops_everything(tmp_path, database_url):
    port = free_port()
    env = up_env(tmp_path, database_url)
    up = start_up(tmp_path, env, port)
    try:
        before = process_tree(up.pid)
        (worker,) = [p for p in children_named(before, "--hostname w1@") if _stat(p)[0] == up.pid]
        os.kill(worker, signal.SIGKILL)
        up.wait_for_log("w1 exited with status -9; restarting it", timeout=30)
        up.wait_for_log("restarting w1", timeout=30)

        def new_worker():
            return [
                p
                for p in children_named(process_tree(up.pid), "--hostname w1@")
                if p not in before and _stat(p)[0] == up.pid
            ]

        wait_for(new_worker, 30, "a new worker process")
        job = run_cli(env, "job", "submit", "ping", "--params", '{"seconds": 0}', "--wait")
        assert job.returncode == 0, job.stdout + job.stderr + up.log_text()[-3000:]

        tree = process_tree(up.pid)
        (web,) = [p for p in children_named(tree, "cli.main web") if _stat(p)[0] == up.pid]
        os.kill(web, signal.SIGKILL)
        assert up.popen.wait(timeout=40) == 1, up.log_text()[-3000:]
        assert "web exited with status -9; stopping latentlab" in up.log_text()
        assert wait_gone(tree, timeout=30) == {}, f"left running: {still_running(tree)}"
        assert not Settings.from_env(env).embedded_redis_url_file.exists()
    finally:
        kill_tree(up)


def test_killed_launcher_leaves_no_orphans_and_the_next_up_starts(tmp_path, database_url):
    env = up_env(tmp_path, database_url)
    up = start_up(tmp_path, env, free_port())
    try:
        tree = process_tree(up.pid)
        assert len(tree) >= 3, tree
        up.popen.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel tells the children
        up.popen.wait(timeout=10)
        assert wait_gone(tree, timeout=30) == {}, f"orphans: {still_running(tree)}"
    finally:
        kill_tree(up)

    again = start_up(tmp_path, env, free_port(), name="again")
    try:
        assert "password:" not in again.log_text(), "the admin exists already; no new password"
        again.popen.send_signal(signal.SIGTERM)
        assert again.popen.wait(timeout=30) == 0, again.log_text()[-3000:]
    finally:
        kill_tree(again)


def test_second_up_on_the_same_data_root_is_refused(tmp_path, database_url):
    env = up_env(tmp_path, database_url)
    first = start_up(tmp_path, env, free_port())
    try:
        second = run_cli(env, "up", "--port", str(free_port()), timeout=60)
        assert second.returncode != 0
        message = second.stderr.strip()
        assert "already running" in message and str(first.pid) in message, message
        assert first.alive(), "the refused second launcher must leave the first one alone"
        url_file = Settings.from_env(env).embedded_redis_url_file
        assert url_file.exists(), "the refused launcher must not remove the running one's files"
    finally:
        first.popen.send_signal(signal.SIGTERM)
        first.popen.wait(timeout=30)
        kill_tree(first)


def test_taken_port_is_refused_naming_the_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(up_env(tmp_path), "up", "--port", str(port), timeout=60)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "run" / "redis.url").exists()


def test_unwritable_data_root_is_refused_clearly(tmp_path):
    # a path below a regular file cannot be created, even by root (CI runs as root; chmod would not do)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = up_env(tmp_path, LATENTLAB_DATA=str(blocker / "data"))
    result = run_cli(env, "up", "--port", str(free_port()), timeout=60)
    assert result.returncode != 0
    assert "is not writable" in result.stderr and "LATENTLAB_DATA" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
