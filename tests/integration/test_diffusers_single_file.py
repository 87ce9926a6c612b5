"""An original-layout single-file checkpoint through the product: the tiny SD-1.5-shaped pipeline written as
one LDM ``.safetensors`` (tests/support/ldm_checkpoints.py) is registered with ``latentlab model add NAME
--diffusers FILE --config FOLDER`` (a subprocess; a configs-only folder), its bad inputs are refused by the
same command with a message and a non-zero exit, writing nothing; a real Celery worker then makes a dataset
on it whose images are byte-identical to the same dataset on the pipeline folder it was written from."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from common.models import GeneratorModel
from common.platform.accounts import create_user, issue_token
from common.research.registry import add_diffusers_model
from tests.support.ldm_checkpoints import write_original_checkpoint
from tests.support.services import env_for, run_cli, start_worker
from tests.support.web import submit_job as submit
from tests.support.web import wait_job_succeeded as wait_job
from web.app import create_app

PROMPTS = ["a handwritten digit seven", "a handwritten digit one"]
OPTIONS = ["--steps", "2", "--guidance-scale", "3", "--dtype", "float32"]
OPTIONS += [a for p in PROMPTS for a in ("--prompt", p)]


@pytest.fixture
def files(tiny_pipelines, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file, save_file

    folder = tiny_pipelines["sd"]
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    ckpt = write_original_checkpoint(pipe, tmp_path / "tiny-sd15.safetensors", layout="ldm")
    configs = tmp_path / "tiny-sd15-configs"
    shutil.copytree(folder, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    state = load_file(str(ckpt))
    state["model.diffusion_model.out.2.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "shaped.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04pickle")
    return folder, configs, ckpt


def test_a_single_file_checkpoint_is_registered_by_the_cli_and_runs_on_a_worker(
    settings, sessions, tmp_path, files
):
    folder, configs, ckpt = files
    out = run_cli(
        settings, "model", "add", "sd-file", "--diffusers", str(ckpt), "--config", str(configs), *OPTIONS
    )
    assert "registered model 'sd-file'" in out.stdout and "source ldm" in out.stdout

    # -- bad inputs: a message naming the option, a non-zero exit, nothing registered ------------------------
    runner = CliRunner()
    cases = [
        (tmp_path / "model.ckpt", configs, "--diffusers", "not a .safetensors file"),
        (tmp_path / "foreign.safetensors", configs, "--diffusers", "Unknown key layout"),
        (tmp_path / "shaped.safetensors", configs, "--config", "wrong shape"),
        (ckpt, tmp_path / "no-such-folder", "--config", "no model_index.json"),
        (ckpt, None, "--diffusers", "give its pipeline folder with --config"),
    ]
    for file, cfg, option, words in cases:
        args = ["model", "add", "bad", "--diffusers", str(file), *OPTIONS]
        args += ["--config", str(cfg)] if cfg else []
        res = runner.invoke(main, args, env=env_for(settings))
        assert res.exit_code != 0 and words in res.output and option in res.output, (file.name, res.output)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(GeneratorModel)) == 1
        row = s.scalar(select(GeneratorModel).where(GeneratorModel.name == "sd-file"))
        assert row.card["source"] == "ldm" and row.config["single_file"] == str(ckpt.resolve())

    # -- the same dataset on the file and on the folder it was written from ----------------------------------
    with sessions.begin() as s:
        add_diffusers_model(
            s,
            settings,
            "sd-folder",
            path=folder,
            prompts=PROMPTS,
            steps=2,
            guidance_scale=3.0,
            dtype="float32",
        )
        user = create_user(s, "alice", "alice-password")
        s.flush()
        headers = {"Authorization": f"Bearer {issue_token(s, user)}"}
    worker = start_worker(settings, tmp_path, name="sdfile")
    app = create_app(settings)
    client = app.test_client()
    try:
        images = {}
        for model in ("sd-file", "sd-folder"):
            body = {"model": model, "name": model, "num_samples": 4, "seed": 3, "layers": ["mid_block"]}
            job = submit(client, headers, "/api/v1/datasets", body)
            wait_job(client, headers, job["id"])
            ds_id = job["params"]["dataset_id"]
            samples = client.get(f"/api/v1/datasets/{ds_id}/samples?limit=10", headers=headers).json[
                "samples"
            ]
            images[model] = [
                client.get(f"/api/v1/samples/{s['id']}/image", headers=headers).data
                for s in sorted(samples, key=lambda s: s["index"])
            ]
        assert len(images["sd-file"]) == 4 and images["sd-file"] == images["sd-folder"]
        assert len(set(images["sd-file"])) == 4  # four different samples, not one image repeated
    finally:
        app.extensions["latentlab"].close()
        worker.stop()
