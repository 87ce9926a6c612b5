"""The research loop from the command line, as a user runs it (subprocesses against real services)."""

from __future__ import annotations

import json

import pytest

from tests.support.models import register_tiny_model
from tests.support.services import run_cli as cli
from tests.support.services import start_worker


@pytest.fixture
def env(settings, sessions, admin, tmp_path):
    settings = settings.with_(chunk_size=16)
    register_tiny_model(sessions, settings)
    worker = start_worker(settings, tmp_path, name="cli")
    yield settings
    worker.stop()


def test_cli_runs_the_loop_and_replays(env):
    settings = env
    out = cli(
        settings,
        "dataset",
        "create",
        "--model",
        "tiny",
        "--name",
        "cli-ds",
        "-n",
        "40",
        "--micro-batch",
        "8",
        "--wait",
    )
    assert "100%" in out.stderr and '"samples": 40' in out.stdout
    listing = json.loads(cli(settings, "dataset", "list", "--json").stdout)
    assert listing[0]["num_samples"] == 40 and listing[0]["status"] == "ready"
    assert listing[0]["micro_batch"] == 8
    out = cli(settings, "embed", "--dataset", "cli-ds", "--n-neighbors", "6", "--wait")
    emb = json.loads(out.stdout.strip().splitlines()[-1])["embedding_id"]
    hits = cli(settings, "neighbors", "--embedding", str(emb), "--sample", "1", "-k", "3").stdout.split("\n")
    nb = [line.split("\t")[0] for line in hits if line]
    assert len(nb) == 3
    out = cli(
        settings,
        "generate",
        "--embedding",
        str(emb),
        "--selected",
        "1",
        "--neighbors",
        ",".join(nb),
        "--variations",
        "2",
        "--seed",
        "4",
        "--wait",
    )
    new = json.loads(out.stdout.strip().splitlines()[-1])["samples"]
    rows = json.loads(cli(settings, "history", "--json", "--parent", nb[0]).stdout)
    assert sorted(r["sample_id"] for r in rows) == sorted(new)
    assert "byte-identical" in cli(settings, "replay", str(new[1])).stdout


def test_cli_bad_input_is_a_message_and_nonzero_exit(env):
    settings = env
    bad = cli(settings, "dataset", "create", "--model", "nope", "--name", "x", "-n", "4", check=False)
    assert bad.returncode != 0 and "No model 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli(
        settings,
        "dataset",
        "create",
        "--model",
        "tiny",
        "--name",
        "x",
        "-n",
        "4",
        "--micro-batch",
        "0",
        check=False,
    )
    assert bad.returncode != 0 and "micro_batch" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli(settings, "generate", "--embedding", "9", "--selected", "1", "--neighbors", "2,x", check=False)
    assert bad.returncode != 0 and "'x' is not an id" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli(settings, "generate", "--embedding", "9", "--selected", "1", "--neighbors", "2", check=False)
    assert bad.returncode != 0 and "No embedding 9" in bad.stderr
    bad = cli(settings, "replay", "1", check=False)
    assert bad.returncode != 0 and "nothing to replay" in bad.stderr
