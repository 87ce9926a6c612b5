"""Interventions through the HTTP API and a real worker: step windows and strength, steering directions,
the natural twin (image, map point) with its readout in the job result, the recipe and the history, replay
of each, and bad interventions refused naming the field with nothing written. SQLite, or PostgreSQL with
``--db=postgres``."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common.models import Generation, Job, Lineage, Sample
from common.research.bundles import replay_bundle
from common.research.embeddings import ReducerCache
from common.research.generations import replay
from common.research.modelcache import ModelCache
from common.research.registry import add_model
from tests.integration.test_cli_research import cli
from tests.integration.test_web_research import env, submit, wait_job  # noqa: F401  (the fixture)
from tests.support.settings import make_settings


def _counts(sessions) -> tuple[int, ...]:
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Job, Sample, Generation))


def _png(res) -> np.ndarray:
    assert res.status_code == 200 and res.mimetype == "image/png", res.data[:200]
    return np.asarray(Image.open(io.BytesIO(res.data)))


def test_interventions_twins_readouts_sweeps_bundles_and_refusals(env, sessions, tmp_path):  # noqa: F811
    settings, client, tokens = env
    alice = tokens["alice"]
    job = submit(
        client, alice, "/api/v1/datasets", {"model": "tiny", "name": "iv", "num_samples": 24, "seed": 3}
    )
    ds_id = wait_job(client, alice, job["id"])["result"]["dataset_id"]
    ids = [
        s["id"]
        for s in client.get(f"/api/v1/datasets/{ds_id}/samples?limit=500", headers=alice).json["samples"]
    ]
    job = submit(client, alice, "/api/v1/embeddings", {"dataset": "iv", "n_neighbors": 6, "seed": 1})
    emb_id = wait_job(client, alice, job["id"])["result"]["embedding_id"]
    base = {"embedding": emb_id, "selected": ids[0], "neighbors": ids[1:5], "steps": 2, "seed": 5}

    # -- refusals: each names its field, nothing is written -----------------------------------------
    before = _counts(sessions)
    bad = [
        ({"mask_window": [1, 3]}, "mask_window", "outside the model's steps"),
        ({"mask_window": [1, 2], "mask_steps": 1}, "mask_window", "not both"),
        ({"strength": 1.5}, "strength", "less than or equal to 1"),
        (
            {"layers": ["midblock"], "layer_strength": {"encoder_bottleneck": 0.5}},
            "layer_strength",
            "not masked",
        ),
        ({"mode": "direction"}, "negative", "needs 'negative'"),
        ({"mode": "direction", "negative": [ids[2], ids[9]]}, "negative", "must not overlap"),
        ({"negative": [ids[9]]}, "negative", "only used with mode 'direction'"),
    ]
    for extra, field, words in bad:
        res = client.post("/api/v1/generations", json={**base, **extra}, headers=alice)
        assert res.status_code == 400, (extra, res.json)
        assert res.json["field"] == field and words in res.json["error"], (extra, res.json)
    assert _counts(sessions) == before

    # -- half strength in the first step only, with its natural twin --------------------------------
    half = {**base, "strength": 0.5, "mask_window": [0, 1], "variations": 2}
    done = wait_job(client, alice, submit(client, alice, "/api/v1/generations", half)["id"])["result"]
    got = done["samples"]
    assert len(done["readout"]) == 2 and len(done["twin"]) == 2
    for read in done["readout"]:
        assert set(read["intervention_size"]) == {"encoder_bottleneck", "midblock"}
        assert all(v > 0 for v in read["intervention_size"].values())
        assert set(read["effect"]) == {"encoder_bottleneck", "midblock"} and read["image_change"] > 0
    detail = client.get(f"/api/v1/samples/{got[0]}", headers=alice).json["generation"]
    assert detail["strength"] == 0.5 and detail["mask_window"] == [0, 1]
    assert detail["readout"] == done["readout"][0] and detail["effect"] == max(
        done["readout"][0]["effect"].values()
    )
    assert detail["twin"]["point"] == pytest.approx(done["twin"][0], abs=1e-5)
    twin = _png(client.get(detail["twin"]["image_url"], headers=alice))
    image = _png(client.get(f"/api/v1/samples/{got[0]}/image", headers=alice))
    assert np.abs(image.astype(int) - twin.astype(int)).mean() == pytest.approx(
        done["readout"][0]["image_change"]
    )
    assert client.get(f"/api/v1/samples/{ids[0]}/twin", headers=alice).status_code == 404

    # strength 0 renders exactly the twin: the unmasked image of the same seed, and no effect
    zero = wait_job(
        client, alice, submit(client, alice, "/api/v1/generations", {**half, "strength": 0.0})["id"]
    )
    zero_ids = zero["result"]["samples"]
    assert np.array_equal(_png(client.get(f"/api/v1/samples/{zero_ids[0]}/image", headers=alice)), twin)
    assert zero["result"]["readout"][0]["image_change"] == 0
    assert all(v == 0 for v in zero["result"]["readout"][0]["effect"].values())

    # -- a steering direction away from another group ----------------------------------------------
    negative = ids[10:14]
    steer = {
        **base,
        "mode": "direction",
        "negative": negative,
        "alpha": -0.5,
        "normalize": True,
        "compare_natural": False,
    }
    done = wait_job(client, alice, submit(client, alice, "/api/v1/generations", steer)["id"])["result"]
    (steered,) = done["samples"]
    assert done["twin"] is None and done["readout"][0]["effect"] is None
    assert done["readout"][0]["intervention_size"]["encoder_bottleneck"] > 0
    with sessions() as s:
        roles = s.execute(select(Lineage.parent_id, Lineage.role).where(Lineage.child_id == steered)).all()
    assert {p for p, r in roles if r == "negative"} == set(negative)
    detail = client.get(f"/api/v1/samples/{steered}", headers=alice).json["generation"]
    assert (
        detail["mode"] == "direction" and detail["intervention"]["alpha"] == -0.5 and detail["twin"] is None
    )

    # -- history: effect above a threshold keeps the intervened, drops the strength-0 images ---------
    rows = client.get("/api/v1/history?effect_min=0.000001", headers=alice).json["generations"]
    assert {r["sample_id"] for r in rows} == set(got)
    rows = client.get("/api/v1/history?mode=direction", headers=alice).json["generations"]
    assert [r["sample_id"] for r in rows] == [steered]

    # -- every kind replays bit-for-bit from its record ---------------------------------------------
    cache, reducers = ModelCache(2, threads=settings.cpu_threads()), ReducerCache()  # the worker's threads
    with sessions() as s:
        for sid in (got[1], zero_ids[0], steered):
            image, stored = replay(settings, s, sid, cache, reducers)
            assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(stored)))), sid

    # -- a sweep: 2 strengths × 2 layer sets as one job ---------------------------------------------
    sweep_body = {
        **base,
        "steps": 1,
        "grid": {"strength": [0.0, 1.0], "layers": [["midblock"], ["encoder_bottleneck"]]},
    }
    before = _counts(sessions)
    for grid, field, words in (
        ({"strength": [i / 16 for i in range(17)], "seed": list(range(16))}, "grid", "272 cells"),
        ({"colour": [1, 2]}, "grid.colour", "not a known field"),
        ({"alpha": [1.0]}, "grid.alpha", "only used with mode 'direction'"),
        ({"mask_window": [[0, 2]]}, "grid.mask_window", "outside the model's steps"),
    ):
        res = client.post("/api/v1/sweeps", json={**sweep_body, "grid": grid}, headers=alice)
        assert res.status_code == 400 and res.json["field"] == field and words in res.json["error"], res.json
    assert _counts(sessions) == before
    job = wait_job(client, alice, submit(client, alice, "/api/v1/sweeps", sweep_body)["id"])
    assert job["queue"] == "interactive" and len(job["result"]["cells"]) == 4
    sweep = client.get(f"/api/v1/sweeps/{job['result']['sweep_id']}", headers=alice).json
    assert sweep["axes"] == ["strength", "layers"] and sweep["job_id"] == job["id"]
    assert [c["params"] for c in sweep["cells"]] == [
        {"strength": s, "layers": layer}
        for s in (0.0, 1.0)
        for layer in (["midblock"], ["encoder_bottleneck"])
    ]
    assert all(len(c["samples"]) == 1 for c in sweep["cells"])
    assert [c["effect"] == 0 for c in sweep["cells"]] == [True, True, False, False]
    rows = client.get(f"/api/v1/history?sweep={sweep['id']}", headers=alice).json["generations"]
    assert sorted(r["sweep_cell"] for r in rows) == [0, 1, 2, 3]
    # the cells and their one twin were packed into one model call of 8 rows (recorded per cell); a
    # strength-0 cell is exactly the twin, and every packed cell replays bit-for-bit from its record
    cell_ids = [c["samples"][0] for c in sweep["cells"]]
    with sessions() as s:
        diags = [s.scalar(select(Generation).where(Generation.sample_id == i)).diagnostics for i in cell_ids]
    assert [d["micro_batch"] for d in diags] == [4] * 4
    assert [d["packing"] for d in diags] == [{"call": 0, "row": r} for r in range(4)]
    cell0 = client.get(f"/api/v1/samples/{cell_ids[0]}", headers=alice).json["generation"]
    cell_twin = _png(client.get(cell0["twin"]["image_url"], headers=alice))
    assert np.array_equal(_png(client.get(f"/api/v1/samples/{cell_ids[0]}/image", headers=alice)), cell_twin)
    with sessions() as s:
        for sid in cell_ids:
            image, stored = replay(settings, s, sid, cache, reducers)
            assert np.array_equal(image, np.asarray(Image.open(io.BytesIO(stored)))), sid
    sheet = _png(
        client.get(f"/api/v1/sweeps/{sweep['id']}/sheet.png?rows=layers&cols=strength", headers=alice)
    )
    assert sheet.shape == (28 + 2 * 100, 110 + 2 * 100, 3)  # 2 x 2 tiles of 96 + 4 px, labels top and left
    res = client.get(f"/api/v1/sweeps/{sweep['id']}/sheet.png?rows=seed", headers=alice)
    assert res.status_code == 400 and res.json["field"] == "rows"

    # the same from the shell, with a progress bar
    cmd = [
        "sweep",
        "--embedding",
        str(emb_id),
        "--selected",
        str(ids[0]),
        "--neighbors",
        f"{ids[1]},{ids[2]}",
    ]
    out = cli(
        settings,
        *cmd,
        "--steps",
        "1",
        "--grid",
        "strength=0.5",
        "--grid",
        "seed=1,2",
        "--as",
        "alice",
        "--wait",
    )
    assert "100%" in out.stderr and len(json.loads(out.stdout.strip().splitlines()[-1])["cells"]) == 2
    out = cli(settings, *cmd, "--grid", "colour=1", "--as", "alice", check=False)
    assert out.returncode == 2 and "'grid.colour' is not a known field" in out.stderr, out.stderr

    # -- a reproducibility bundle replays on a fresh data root with only the model registered -------
    res = client.get(f"/api/v1/samples/{got[1]}/bundle", headers=alice)
    assert res.status_code == 200 and res.mimetype == "application/zip"
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(res.data)
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        neighbours = json.loads(zf.read("neighbours.json"))
        with np.load(io.BytesIO(zf.read("targets.npz"))) as z:
            assert sorted(z.files) == ["encoder_bottleneck", "midblock"]
    assert set(manifest["files"]) >= {
        "recipe.json",
        "model.json",
        "targets.npz",
        "image.png",
        "environment.json",
    }
    assert {n["sample_id"] for n in neighbours["samples"]} == set(base["neighbors"])
    fresh = make_settings(tmp_path / "fresh", redis_url=settings.redis_url)
    from common.platform import migrate
    from common.platform.db import make_engine, session_factory

    migrate.upgrade(fresh)
    out = cli(fresh, "replay", "--bundle", str(bundle), check=False)
    assert out.returncode != 0 and "No model with checkpoint sha256" in out.stderr
    engine = make_engine(fresh)
    with session_factory(engine).begin() as s:  # the same checkpoint file, under another name
        add_model(
            s,
            fresh,
            "tiny-copy",
            checkpoint=settings.data_root / "models" / "tiny.safetensors",
            preset="tiny16",
        )
    engine.dispose()
    out = cli(fresh, "replay", "--bundle", str(bundle))
    assert "bit-identical" in out.stdout
    res = client.get(f"/api/v1/samples/{cell_ids[3]}/bundle", headers=alice)  # a packed sweep cell
    (tmp_path / "cell.zip").write_bytes(res.data)
    report = replay_bundle(fresh, tmp_path / "cell.zip", cache)
    assert report.identical, report.summary
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(
                item, data.replace(b'"strength": 0.5', b'"strength": 0.6') if item == "recipe.json" else data
            )
    out = cli(fresh, "replay", "--bundle", str(tampered), check=False)
    assert out.returncode != 0 and "recipe.json does not match its sha256" in out.stderr
