"""The research loop through the HTTP API with a real Celery worker process: dataset → map → neighbours
→ generate from neighbours → lineage, history filters, points, images, and bad requests that write
nothing. Flask's test client against the real database (SQLite, or PostgreSQL with ``--db=postgres``)
and a real redis-server; the worker is ``latentlab worker`` running a small random-weight generator."""

from __future__ import annotations

import base64
import io
import time
from datetime import UTC, datetime
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common.models import Dataset, Embedding, Job, Sample
from common.platform.accounts import create_user, issue_token
from common.research.datasets import read_activations
from tests.support.models import register_tiny_model
from tests.support.seeded_map import seed_map
from tests.support.services import start_worker
from tests.support.web import submit_job as submit
from tests.support.web import wait_job_succeeded as wait_job
from web.app import create_app

DTYPES = {"int32": np.int32, "float32": np.float32, "int16": np.int16, "uint8": np.uint8}


@pytest.fixture
def env(settings, sessions, tmp_path):
    settings = settings.with_(chunk_size=8)
    register_tiny_model(sessions, settings)
    tokens = {}
    with sessions.begin() as s:
        for name in ("alice", "bob"):
            user = create_user(s, name, f"{name}-password")
            s.flush()
            tokens[name] = {"Authorization": f"Bearer {issue_token(s, user)}"}
    worker = start_worker(settings, tmp_path, name="webloop")
    app = create_app(settings)
    yield settings, app.test_client(), tokens
    app.extensions["latentlab"].close()
    worker.stop()


def decode_points(body: dict) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(base64.b64decode(col["data"]), dtype=DTYPES[col["dtype"]])
        for name, col in body["columns"].items()
    }


def counts(sessions) -> tuple[int, ...]:
    with sessions() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Job, Embedding, Dataset, Sample))


def test_research_loop_over_the_api_with_a_real_worker(env, sessions):
    settings, client, tokens = env
    alice, bob = tokens["alice"], tokens["bob"]

    # -- dataset, in 5 chunks (of 8: micro-batches of 8, a chunk being a multiple of its micro-batch) -----
    body = {"model": "tiny", "name": "web", "num_samples": 40, "seed": 3, "micro_batch": 8}
    job = submit(client, alice, "/api/v1/datasets", body)
    assert job["kind"] == "generate_dataset" and job["params"]["num_samples"] == 40
    done = wait_job(client, alice, job["id"])
    assert done["children"]["succeeded"] == 5 and done["result"]["samples"] == 40
    ds_id = done["result"]["dataset_id"]
    ds = client.get(f"/api/v1/datasets/{ds_id}", headers=bob).json
    assert ds["status"] == "ready" and ds["num_samples"] == 40 and sum(ds["class_counts"].values()) == 40
    page = client.get(f"/api/v1/datasets/{ds_id}/samples?limit=500", headers=bob).json
    assert page["total"] == 40
    ids = [s["id"] for s in page["samples"]]

    # -- the map -------------------------------------------------------------------------------------
    job = submit(client, alice, "/api/v1/embeddings", {"dataset": "web", "n_neighbors": 8, "seed": 1})
    emb_id = wait_job(client, alice, job["id"])["result"]["embedding_id"]
    emb = client.get(f"/api/v1/embeddings/{emb_id}", headers=bob).json
    assert emb["status"] == "ready" and emb["num_points"] == 40 and emb["dataset_name"] == "web"
    assert len(emb["label_names"]) == 10
    first = client.get(f"/api/v1/embeddings/{emb_id}/points", headers=bob)
    cols = decode_points(first.json)
    assert first.json["n"] == 40 and sorted(cols["id"].tolist()) == sorted(ids)
    assert not cols["origin"].any() and not cols["projected"].any()

    # -- neighbours, on the map and in the full activation space ------------------------------------
    url = f"/api/v1/embeddings/{emb_id}/neighbors?sample={ids[0]}&k=5"
    near2d = client.get(url, headers=bob).json["neighbors"]
    nearfull = client.get(url + "&space=full", headers=bob).json["neighbors"]
    for hits in (near2d, nearfull):
        assert len(hits) == 5 and ids[0] not in [h["sample_id"] for h in hits]
        assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    xy = dict(zip(cols["id"].tolist(), zip(cols["x"].tolist(), cols["y"].tolist(), strict=True), strict=True))
    d2 = {sid: np.hypot(xy[sid][0] - xy[ids[0]][0], xy[sid][1] - xy[ids[0]][1]) for sid in ids[1:]}
    assert [h["sample_id"] for h in near2d] == sorted(d2, key=d2.get)[:5]
    with sessions() as s:
        locs = [(smp.act_shard, smp.act_row) for smp in (s.get(Sample, sid) for sid in ids)]
    acts = read_activations(settings, locs, emb["layers"])
    dfull = np.linalg.norm(acts[1:] - acts[0], axis=1)
    assert [h["sample_id"] for h in nearfull] == [ids[1:][i] for i in np.argsort(dfull)[:5]]
    neighbors = [h["sample_id"] for h in near2d]

    # -- generate from neighbours (bob), then a weighted one (alice) --------------------------------
    job = submit(
        client,
        bob,
        "/api/v1/generations",
        {"embedding": emb_id, "selected": ids[0], "neighbors": neighbors, "variations": 4, "seed": 11},
    )
    gen_a = wait_job(client, bob, job["id"])["result"]["samples"]
    assert len(gen_a) == 4
    between = datetime.now(UTC)
    time.sleep(0.05)
    other = [sid for sid in ids[20:] if sid not in neighbors][:2]
    selected_class = client.get(f"/api/v1/samples/{ids[0]}", headers=bob).json["class_label"]
    explicit = (selected_class + 1) % 10
    job = submit(
        client,
        alice,
        "/api/v1/generations",
        {
            "embedding": emb_id,
            "selected": other[0],
            "neighbors": other,
            "mode": "weighted",
            "weights": [3, 1],
            "class": explicit,
            "seed": 2,
        },
    )
    gen_b = wait_job(client, alice, job["id"])["result"]["samples"]

    # -- the record: lineage, detail, overlays -------------------------------------------------------
    graph = client.get(f"/api/v1/samples/{gen_a[0]}/lineage?depth=3", headers=alice).json
    levels = {n["sample_id"]: n["level"] for n in graph["nodes"]}
    assert levels[gen_a[0]] == 0 and all(levels[p] == -1 for p in [ids[0], *neighbors])
    edges = {(e["parent"], e["child"], e["role"]) for e in graph["edges"]}
    assert edges == {(ids[0], gen_a[0], "selected")} | {(n, gen_a[0], "neighbor") for n in neighbors}
    up = client.get(f"/api/v1/samples/{neighbors[0]}/lineage", headers=alice).json
    assert set(gen_a) <= {n["sample_id"] for n in up["nodes"] if n["level"] == 1}
    detail = client.get(f"/api/v1/samples/{gen_a[1]}", headers=alice).json
    assert detail["origin"] == "generated" and detail["generation"]["mode"] == "activation_mean"
    assert {p["sample_id"] for p in detail["parents"] if p["role"] == "neighbor"} == set(neighbors)
    assert list(detail["points"]) == [str(emb_id)] and len(detail["points"][str(emb_id)]) == 2
    overlays = client.get(f"/api/v1/embeddings/{emb_id}/generations", headers=alice).json
    assert [o["sample_id"] for o in overlays] == sorted(gen_a + gen_b, reverse=True)
    mine = [o for o in overlays if o["sample_id"] in gen_a]
    assert all(
        o["parents"] == neighbors and o["selected"] == ids[0] and None not in o["actual"] for o in mine
    )
    assert detail["points"][str(emb_id)] == next(o["actual"] for o in overlays if o["sample_id"] == gen_a[1])

    # -- points now include the generated samples, marked; ETag revalidation -------------------------
    now = client.get(f"/api/v1/embeddings/{emb_id}/points", headers=alice)
    assert now.headers["ETag"] != first.headers["ETag"]
    cols = decode_points(now.json)
    assert now.json["n"] == 45 and len(cols["id"]) == 45
    generated = set(cols["id"][cols["origin"] == 1].tolist())
    assert generated == set(gen_a + gen_b) and cols["projected"][cols["origin"] == 1].all()
    assert (
        client.get(
            f"/api/v1/embeddings/{emb_id}/points", headers={**alice, "If-None-Match": now.headers["ETag"]}
        ).status_code
        == 304
    )
    stale = client.get(
        f"/api/v1/embeddings/{emb_id}/points", headers={**alice, "If-None-Match": first.headers["ETag"]}
    )
    assert stale.status_code == 200 and stale.data == now.data

    # -- history filters, each narrowing ------------------------------------------------------------
    def history(query: str) -> set[int]:
        res = client.get(f"/api/v1/history?{query}", headers=alice)
        assert res.status_code == 200, res.json
        return {g["sample_id"] for g in res.json["generations"]}

    everything = set(gen_a + gen_b)
    assert history("") == everything
    assert history("user=bob") == set(gen_a) and history("user=alice") == set(gen_b)
    assert history(f"dataset={ds_id}") == everything and history("dataset=web") == everything
    assert history("dataset=nowhere") == set()
    assert history(f"class={selected_class}") == set(gen_a) and history(f"class={explicit}") == set(gen_b)
    assert history(f"parent={neighbors[0]}") == set(gen_a) and history(f"parent={other[1]}") == set(gen_b)
    assert history("mode=weighted") == set(gen_b) and history("mode=activation_mean") == set(gen_a)
    assert history("mode=umap_inverse") == set()
    assert history(f"since={quote(between.isoformat())}") == set(gen_b)
    assert history(f"until={quote(between.isoformat())}") == set(gen_a)
    assert history(f"embedding={emb_id}&user=bob&limit=2") <= set(gen_a)

    # -- images --------------------------------------------------------------------------------------
    for sid in (ids[0], gen_a[0]):
        res = client.get(f"/api/v1/samples/{sid}/image", headers=bob)
        assert res.status_code == 200 and res.mimetype == "image/png"
        assert res.headers["Cache-Control"] == "private, max-age=86400, immutable"
        with Image.open(io.BytesIO(res.data)) as im:
            im.verify()
    outside = settings.data_root.parent / "secret.txt"
    outside.write_text("root:x:0:0")
    for tampered in ("../../etc/passwd", "/etc/passwd", "../secret.txt", str(outside)):
        with sessions.begin() as s:
            s.get(Sample, ids[39]).image_path = tampered
        res = client.get(f"/api/v1/samples/{ids[39]}/image", headers=bob)
        assert res.status_code == 404 and b"root:" not in res.data, tampered

    # -- bad requests: 400 naming the field, nothing written ----------------------------------------
    fitting_ds = seed_map(sessions, settings, owner_id=1, n=4, name="elsewhere", images=False)
    with sessions.begin() as s:
        s.get(Dataset, fitting_ds.dataset_id).status = "generating"
        still = Embedding(
            dataset_id=ds_id,
            name="still fitting",
            layers=["midblock"],
            params={},
            status="fitting",
            owner_id=1,
        )
        s.add(still)
        s.flush()
        fitting_emb = still.id
    before = counts(sessions)
    base = {"embedding": emb_id, "selected": ids[0], "neighbors": neighbors[:3]}
    cases = [
        (
            "/api/v1/generations",
            {**base, "neighbors": fitting_ds.sample_ids[:2]},
            "neighbors",
            "not on embedding",
        ),
        ("/api/v1/generations", {**base, "layers": ["encoder_block_99"]}, "layers", "Cannot mask"),
        ("/api/v1/generations", {**base, "neighbors": []}, "neighbors", "at least 1"),
        ("/api/v1/generations", {**base, "variations": 65}, "variations", "64"),
        ("/api/v1/generations", {**base, "embedding": fitting_emb}, "embedding", "still fitting"),
        ("/api/v1/embeddings", {"dataset": "elsewhere"}, "dataset", "generating"),
        (
            "/api/v1/embeddings",
            {"dataset": "web", "pca_dims": 500},
            "pca_dims",
            "larger than the data allows",
        ),
        ("/api/v1/embeddings", {"dataset": "web", "layers": ["decoder_block_3"]}, "layers", "not captured"),
        (
            "/api/v1/datasets",
            {"model": "tiny", "name": "web", "num_samples": 40, "seed": 3},
            "num_samples",
            "already has 40",
        ),
    ]
    for path, body, field, words in cases:
        res = client.post(path, json=body, headers=alice)
        assert res.status_code in (400, 409), (path, body, res.json)
        assert res.json.get("field") == field and words in res.json["error"], (path, body, res.json)
    assert counts(sessions) == before
