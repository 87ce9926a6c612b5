"""A text-to-image (diffusers) model across the whole loop: registered with ``latentlab model add
--diffusers`` (a subprocess; a bad scheduler refused), then through the HTTP API with a real Celery worker
process -- a dataset with prompts, a map, neighbours, generate from neighbours (the selected prompt, a blend
of prompt embeddings, a free-text prompt with masks on the conditional pass only), lineage, history and
replay -- and the bad inputs of each step, which write nothing. Tiny random-weight SD-1.5-shaped pipeline
(tests/support)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import func, select

from cli.main import main
from common.models import Dataset, Generation, GeneratorModel, Job, Sample
from common.platform.accounts import create_user, issue_token
from common.research.embeddings import ReducerCache
from common.research.generations import replay
from common.research.modelcache import ModelCache
from tests.support.models import register_tiny_model
from tests.support.services import env_for, run_cli, start_worker
from tests.support.web import submit_job as submit
from tests.support.web import wait_job_succeeded as wait_job
from web.app import create_app

PROMPTS = ["a handwritten digit seven", "a handwritten digit one", "a red photo"]


@pytest.fixture
def env(settings, sessions, tmp_path, tiny_pipelines):
    settings = settings.with_(chunk_size=12)
    args = ["model", "add", "tinysd", "--diffusers", str(tiny_pipelines["sd"]), "--steps", "2"]
    args += ["--guidance-scale", "3", "--dtype", "float32"] + [a for p in PROMPTS for a in ("--prompt", p)]
    out = run_cli(settings, *args)
    assert "registered model 'tinysd'" in out.stdout and "family diffusers" in out.stdout
    bad = run_cli(settings, *args[:2], "other", *args[3:], "--scheduler", "NoSuchScheduler", check=False)
    assert bad.returncode != 0 and "Unknown scheduler 'NoSuchScheduler'" in bad.stderr
    register_tiny_model(sessions, settings)  # an EDM model beside it
    with sessions.begin() as s:
        user = create_user(s, "alice", "alice-password")
        s.flush()
        headers = {"Authorization": f"Bearer {issue_token(s, user)}"}
    worker = start_worker(settings, tmp_path, name="sdloop")
    app = create_app(settings)
    yield settings, app.test_client(), headers
    app.extensions["latentlab"].close()
    worker.stop()


def counts(sessions) -> tuple[int, ...]:
    with sessions() as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) for m in (Job, Dataset, Sample, GeneratorModel)
        )


def refused(client, headers, sessions, path, body, field):
    before = counts(sessions)
    res = client.post(path, json=body, headers=headers)
    assert res.status_code in (400, 404, 409, 422), (body, res.status_code, res.json)
    assert res.json["field"] == field and res.json["error"], (body, res.json)
    assert counts(sessions) == before
    return res.json["error"]


def test_text_to_image_loop_over_the_api(env, sessions):
    settings, client, alice = env

    # -- the model, its family and layers --------------------------------------------------------------------
    models = {m["name"]: m for m in client.get("/api/v1/models", headers=alice).json["models"]}
    sd, edm = models["tinysd"], models["tiny"]
    assert set(models) == {"tinysd", "tiny"}  # the refused registration wrote nothing
    assert sd["family"] == "diffusers" and edm["family"] == "edm"
    assert sd["label_names"] == PROMPTS and sd["image_shape"] == [32, 32, 3] and sd["default_steps"] == 2
    names = [layer["name"] for layer in sd["layers"]]
    assert {"down_block_0", "down_block_0_skip_0", "mid_block", "up_blocks.0.attentions.0"} <= set(names)

    # -- bad dataset requests write nothing ------------------------------------------------------------------
    base = {"model": "tinysd", "name": "sd", "num_samples": 12, "seed": 5}
    assert "at least one prompt" in refused(
        client, alice, sessions, "/api/v1/datasets", {**base, "prompts": []}, "prompts"
    )
    assert "multiple of 8" in refused(
        client, alice, sessions, "/api/v1/datasets", {**base, "height": 36}, "height"
    )
    assert "encoder_bottleneck" in refused(
        client,
        alice,
        sessions,
        "/api/v1/datasets",
        {**base, "layers": ["encoder_bottleneck"]},
        "layers",
    )
    assert "diffusers" in refused(
        client,
        alice,
        sessions,
        "/api/v1/datasets",
        {**base, "model": "tiny", "prompts": ["x"]},
        "prompts",
    )

    # -- a dataset with prompts: sample i uses prompt i mod 3 ------------------------------------------------
    layers = ["down_block_0_skip_0", "mid_block"]
    job = submit(client, alice, "/api/v1/datasets", {**base, "prompts": PROMPTS, "layers": layers})
    ds_id = job["params"]["dataset_id"]
    wait_job(client, alice, job["id"])
    ds = client.get(f"/api/v1/datasets/{ds_id}", headers=alice).json
    assert ds["label_names"] == PROMPTS and ds["family"] == "diffusers" and ds["num_samples"] == 12
    assert ds["conditioning"]["guidance_scale"] == 3.0 and ds["layer_shapes"]["mid_block"] == [32, 4, 4]
    samples = client.get(f"/api/v1/datasets/{ds_id}/samples?limit=100", headers=alice).json["samples"]
    samples.sort(key=lambda s: s["index"])
    assert [s["class_label"] for s in samples] == [i % 3 for i in range(12)]
    ids = [s["id"] for s in samples]
    png = client.get(f"/api/v1/samples/{ids[0]}/image", headers=alice).data
    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (32, 32) and im.mode == "RGB"

    # -- a map and neighbours --------------------------------------------------------------------------------
    job = submit(client, alice, "/api/v1/embeddings", {"dataset": "sd", "n_neighbors": 4, "seed": 1})
    emb_id = wait_job(client, alice, job["id"])["result"]["embedding_id"]
    url = f"/api/v1/embeddings/{emb_id}/neighbors?sample={ids[0]}&k=3"
    neighbors = [h["sample_id"] for h in client.get(url, headers=alice).json["neighbors"]]
    assert len(neighbors) == 3

    # -- generate from neighbours: the selected prompt, a blend, a free-text prompt --------------------------
    gen = {"embedding": emb_id, "selected": ids[0], "neighbors": neighbors, "seed": 3}
    assert "not both" in refused(
        client,
        alice,
        sessions,
        "/api/v1/generations",
        {**gen, "prompt": "a digit", "class": 1},
        "prompt",
    )
    assert "empty" in refused(
        client, alice, sessions, "/api/v1/generations", {**gen, "prompt": " "}, "prompt"
    )
    a = wait_job(client, alice, submit(client, alice, "/api/v1/generations", {**gen, "variations": 2})["id"])
    b = wait_job(client, alice, submit(client, alice, "/api/v1/generations", {**gen, "class": "blend"})["id"])
    # the free-text one from the command line (in-process; the same job through the same worker)
    args = ["generate", "--embedding", str(emb_id), "--selected", str(ids[0]), "--seed", "3", "--as", "alice"]
    args += ["--neighbors", ",".join(map(str, neighbors)), "--prompt", "a handwritten digit three"]
    out = CliRunner().invoke(main, [*args, "--mask-passes", "cond"], env=env_for(settings))
    assert out.exit_code == 0, out.output
    c = wait_job(client, alice, int(out.output.split()[1]))
    gen_a, gen_b, gen_c = (j["result"]["samples"] for j in (a, b, c))
    assert len(gen_a) == 2 and len(gen_b) == 1 and len(gen_c) == 1

    detail = client.get(f"/api/v1/samples/{gen_a[0]}", headers=alice).json
    assert detail["class_label"] == 0 and detail["generation"]["class_mode"] == "selected"
    assert {p["sample_id"] for p in detail["parents"] if p["role"] == "neighbor"} == set(neighbors)
    blend = client.get(f"/api/v1/samples/{gen_b[0]}", headers=alice).json
    assert blend["class_label"] is None and abs(sum(blend["label_weights"].values()) - 1) < 1e-9
    free = client.get(f"/api/v1/samples/{gen_c[0]}", headers=alice).json
    diag = free["generation"]["diagnostics"]
    assert free["generation"]["class_mode"] == "prompt" and diag["prompt"] == "a handwritten digit three"
    assert diag["mask_passes"] == "cond" and diag["guidance_scale"] == 3.0

    # -- history: the prompt index plays the class -----------------------------------------------------------
    hist = client.get("/api/v1/history?class=0", headers=alice).json["generations"]
    assert {g["sample_id"] for g in hist} == set(gen_a)
    everything = client.get("/api/v1/history", headers=alice).json["generations"]
    assert {g["sample_id"] for g in everything} == set(gen_a + gen_b + gen_c)

    # -- replay regenerates the stored images exactly --------------------------------------------------------
    cache = ModelCache(1, device="cpu")
    with sessions() as s:
        for sid in (gen_a[1], gen_b[0], gen_c[0]):
            image, stored = replay(settings, s, sid, cache, ReducerCache())
            with Image.open(io.BytesIO(stored)) as im:
                assert np.array_equal(np.asarray(im), image), sid
        assert s.scalar(select(func.count()).select_from(Generation)) == 4
    cache.assert_no_hooks()

    # -- a sweep: diffusers takes no per-row interventions, so its cells run one by one (not packed) ---------
    job = wait_job(
        client, alice, submit(client, alice, "/api/v1/sweeps", {**gen, "grid": {"strength": [0, 1]}})["id"]
    )
    cells = [c["samples"][0] for c in job["result"]["cells"]]
    zero, one = (client.get(f"/api/v1/samples/{sid}", headers=alice).json["generation"] for sid in cells)
    assert "packing" not in zero["diagnostics"] and zero["diagnostics"]["micro_batch"] == 1
    twin = client.get(zero["twin"]["image_url"], headers=alice).data
    assert client.get(f"/api/v1/samples/{cells[0]}/image", headers=alice).data == twin  # strength 0: the twin
    assert one["image_change"] > 0
    with sessions() as s:
        image, stored = replay(settings, s, cells[1], cache, ReducerCache())
        with Image.open(io.BytesIO(stored)) as im:
            assert np.array_equal(np.asarray(im), image)
    cache.assert_no_hooks()


@pytest.fixture
def shipped_env(settings, sessions, tmp_path):
    from common.research.registry import register_shipped_models

    with sessions.begin() as s:
        added = register_shipped_models(s, settings)
        user = create_user(s, "bob", "bob-password")
        s.flush()
        headers = {"Authorization": f"Bearer {issue_token(s, user)}"}
    assert "digits-sd" in added, added
    worker = start_worker(settings, tmp_path, name="sdshipped")
    app = create_app(settings)
    yield settings, app.test_client(), headers
    app.extensions["latentlab"].close()
    worker.stop()


def test_the_shipped_text_to_image_demo_runs_the_loop(shipped_env, sessions):
    """digits-sd, registered as ``latentlab up`` registers it: a dataset with its card's prompts, a map and
    generate from neighbours (the neighbours' majority prompt)."""
    settings, client, bob = shipped_env
    model = {m["name"]: m for m in client.get("/api/v1/models", headers=bob).json["models"]}["digits-sd"]
    assert model["family"] == "diffusers" and model["label_names"][7] == "a handwritten digit seven"
    assert model["image_shape"] == [16, 16, 3]
    with sessions() as s:
        folder = s.scalar(select(GeneratorModel.checkpoint_path).where(GeneratorModel.name == "digits-sd"))
    assert (settings.data_root / folder / "model_index.json").is_file()  # copied into the data root

    body = {"model": "digits-sd", "name": "sd-demo", "num_samples": 10, "seed": 1, "steps": 4}
    job = submit(client, bob, "/api/v1/datasets", body)
    ds_id = job["params"]["dataset_id"]
    wait_job(client, bob, job["id"])
    ds = client.get(f"/api/v1/datasets/{ds_id}", headers=bob).json
    assert ds["label_names"] == model["label_names"] and ds["num_samples"] == 10
    samples = client.get(f"/api/v1/datasets/{ds_id}/samples?limit=100", headers=bob).json["samples"]
    ids = [s["id"] for s in sorted(samples, key=lambda s: s["index"])]
    job = submit(client, bob, "/api/v1/embeddings", {"dataset": "sd-demo", "n_neighbors": 4, "seed": 1})
    emb_id = wait_job(client, bob, job["id"])["result"]["embedding_id"]
    url = f"/api/v1/embeddings/{emb_id}/neighbors?sample={ids[3]}&k=3"
    neighbors = [h["sample_id"] for h in client.get(url, headers=bob).json["neighbors"]]
    body = {
        "embedding": emb_id,
        "selected": ids[3],
        "neighbors": neighbors,
        "seed": 2,
        "class": "neighbor_majority",
    }
    done = wait_job(client, bob, submit(client, bob, "/api/v1/generations", body)["id"])
    (sid,) = done["result"]["samples"]
    detail = client.get(f"/api/v1/samples/{sid}", headers=bob).json
    assert {p["sample_id"] for p in detail["parents"] if p["role"] == "neighbor"} == set(neighbors)
    with Image.open(io.BytesIO(client.get(f"/api/v1/samples/{sid}/image", headers=bob).data)) as im:
        assert im.size == (16, 16) and im.mode == "RGB"
