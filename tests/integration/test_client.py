"""The Python client (``from latentlab import Client``) against a real waitress server, a real Celery
worker and real Redis, over the database chosen with --db: the whole research loop from a notebook's point
of view, DataFrames with typed columns, images, activations, exports that read back equal to the JSON, jobs
that wait on the event stream and raise when they fail, and the same access rules as the pages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cli.redis_server import free_port
from common.models import Sample
from common.platform.accounts import create_user, issue_token
from common.research.datasets import read_activations
from latentlab import ApiError, Client, JobFailed
from tests.support.models import register_tiny_model
from tests.support.services import REPO, start_web, start_worker


def is_utc(column: pd.Series) -> bool:
    return isinstance(column.dtype, pd.DatetimeTZDtype) and str(column.dtype.tz) == "UTC"


@pytest.fixture
def lab_server(settings, sessions, tmp_path):
    settings = settings.with_(chunk_size=8)
    register_tiny_model(sessions, settings)
    tokens = {}
    with sessions.begin() as s:
        for name, role in (("alice", "member"), ("bob", "member"), ("root", "admin")):
            user = create_user(s, name, f"{name}-password", role=role)
            s.flush()
            tokens[name] = issue_token(s, user, "client-test")
    port = free_port()
    env = {
        "LATENTLAB_CHUNK_SIZE": "8",
        "LATENTLAB_ACTIVATION_DOWNLOADS_PER_MINUTE": "4",
        "LATENTLAB_FAULT_INJECTION": "1",  # lets a ping job fail on purpose
    }
    web = start_web(settings, tmp_path, port, extra_env=env)
    worker = start_worker(settings, tmp_path, name="client", extra_env=env)
    yield settings, f"http://127.0.0.1:{port}", tokens
    worker.stop()
    web.stop()


def test_client_runs_the_research_loop(lab_server, sessions, monkeypatch, tmp_path):
    settings, url, tokens = lab_server
    monkeypatch.setenv("LATENTLAB_URL", url)
    monkeypatch.setenv("LATENTLAB_TOKEN", tokens["alice"])
    alice = Client()  # from the environment
    assert alice.me()["username"] == "alice"

    ds_job = alice.generate_dataset(model="tiny", name="nb", num_samples=24, seed=3, layers=["midblock"])
    assert ds_job.wait(timeout=240) is ds_job and ds_job.status == "succeeded"

    samples = alice.samples("nb")
    assert len(samples) == 24 and samples["origin"].eq("dataset").all()
    assert str(samples["id"].dtype) == "Int64" and is_utc(samples["created_at"])
    assert samples["index"].tolist() == list(range(24))

    emb_job = alice.fit_embedding(dataset="nb", n_neighbors=6, seed=1).wait(timeout=240)
    emb_id = emb_job.result["embedding_id"]
    points = alice.points(emb_id)
    assert sorted(points["sample_id"]) == sorted(samples["id"]) and points["x"].dtype == np.float32
    assert not points["projected"].any()

    ids = samples["id"].tolist()
    near = alice.neighbors(emb_id, ids[0], k=5)
    assert len(near) == 5 and near["distance"].is_monotonic_increasing

    gen = alice.generate_from_neighbors(
        embedding=emb_id, selected=ids[0], neighbors=near["sample_id"].tolist(), variations=2, seed=11
    ).wait(timeout=240)
    new_ids = gen.result["samples"]
    assert len(new_ids) == 2

    history = alice.history(dataset="nb")
    assert sorted(history["sample_id"]) == sorted(new_ids)
    assert (history["selected_sample_id"] == ids[0]).all() and history["mode"].eq("activation_mean").all()
    assert is_utc(history["created_at"]) and history["actual_x"].notna().all()
    assert len(alice.history(dataset="nb", limit=1)) == 1

    # pages are followed to the end: the same tables a few rows per request
    paged = Client(url, tokens["alice"])
    paged.page_size = 5
    pd.testing.assert_frame_equal(paged.samples("nb"), alice.samples("nb"))
    pd.testing.assert_frame_equal(paged.history(dataset="nb"), history)
    assert len(paged.history(limit=1)) == 1

    lineage = alice.lineage(new_ids[0])
    parents = set(lineage.loc[lineage["child_id"] == new_ids[0], "parent_id"])
    assert parents == {ids[0], *near["sample_id"].tolist()}
    assert lineage.loc[lineage["role"] == "selected", "parent_id"].tolist() == [ids[0]]

    image = alice.image(new_ids[0])
    assert isinstance(image, Image.Image) and image.size == (16, 16)

    acts = alice.activations(new_ids[0])
    with sessions() as s:
        smp = s.get(Sample, new_ids[0])
        expected = read_activations(settings, [(smp.act_shard, smp.act_row)], ["midblock"])[0]
    assert set(acts) == {"midblock"} and acts["midblock"].ndim == 3
    np.testing.assert_array_equal(acts["midblock"].reshape(-1), expected)
    with pytest.raises(ApiError, match="no layer 'nope'") as err:
        alice.activations(new_ids[0], "nope")
    assert err.value.status == 404

    # exports read back equal to the JSON
    csv = alice.http.request("GET", "/api/v1/exports/history", params={"format": "csv", "dataset": "nb"})
    assert csv.headers["Content-Type"].startswith("text/csv")
    from_csv = pd.read_csv(io.StringIO(csv.text))
    parquet = alice.http.request("GET", "/api/v1/exports/history", params={"format": "parquet"}).content
    from_parquet = pd.read_parquet(io.BytesIO(parquet))
    for table in (from_csv, from_parquet):
        assert table["sample_id"].tolist() == history["sample_id"].tolist()
        assert table["actual_x"].tolist() == pytest.approx(history["actual_x"].astype(float).tolist())
        assert table["created_by"].tolist() == ["alice", "alice"]
    assert (
        pd.Series(pd.to_datetime(from_parquet["created_at"], utc=True)).tolist()
        == history["created_at"].tolist()
    )

    for fmt in ("csv", "parquet"):
        read = pd.read_csv if fmt == "csv" else pd.read_parquet
        exported = read(alice.export_samples("nb", tmp_path / f"s.{fmt}", fmt))
        all_samples = alice.samples("nb")
        assert exported["id"].tolist() == all_samples["id"].tolist() and len(exported) == 26
        assert exported["origin"].tolist() == all_samples["origin"].astype(str).tolist()
        exported = read(alice.export_points(emb_id, tmp_path / f"p.{fmt}", fmt))
        on_map = alice.points(emb_id).sort_values("sample_id")
        assert exported["sample_id"].tolist() == on_map["sample_id"].tolist()
        assert exported["x"].tolist() == pytest.approx(on_map["x"].astype(float).tolist())
        assert exported["projected"].tolist() == on_map["projected"].tolist()
        exported = read(alice.export_history(tmp_path / f"h.{fmt}", fmt, mode="activation_mean"))
        assert exported["sample_id"].tolist() == history["sample_id"].tolist()
    with pytest.raises(ApiError) as err:
        alice.export_points(emb_id, tmp_path / "p.xlsx", "xlsx")
    assert err.value.status == 400 and err.value.field == "format" and not (tmp_path / "p.xlsx").exists()

    # jobs: a failure raises, a private job is invisible to another member, admins see all
    broken = alice.submit("ping", seconds=0.2, steps=2, fault="error")
    with pytest.raises(JobFailed, match=f"job {broken.id} \\(ping\\) failed") as failed:
        broken.wait(timeout=120, progress=False)
    assert failed.value.job.status == "failed" and failed.value.job.error
    slow = alice.submit("ping", seconds=120, steps=100)
    alice.cancel(slow)
    with pytest.raises(JobFailed, match="cancelled"):
        slow.wait(timeout=120, progress=False)
    bob = Client(url, tokens["bob"])
    with pytest.raises(ApiError) as err:
        bob.job(ds_job.id)
    assert err.value.status == 404
    assert bob.jobs() == []
    assert {j.id for j in alice.jobs()} == {ds_job.id, emb_job.id, gen.id, broken.id, slow.id}
    paged.page_size = 3
    assert [j.id for j in paged.jobs()] == [j.id for j in alice.jobs()]
    root = Client(url, tokens["root"])
    assert {j.id for j in root.jobs(owner="alice")} == {ds_job.id, emb_job.id, gen.id, broken.id, slow.id}
    assert bob.history(dataset="nb")["sample_id"].tolist() == history["sample_id"].tolist()  # lab data

    # activation downloads are limited per user (4 a minute here): alice's count does not touch bob's
    for _ in range(4):
        bob.activations(ids[1], "midblock")
    with pytest.raises(ApiError, match="Too many downloads") as err:
        bob.activations(ids[1], "midblock")
    assert err.value.status == 429


def test_client_refuses_bad_tokens_and_says_how_to_sign_in(lab_server, monkeypatch, tmp_path):
    _settings, url, tokens = lab_server
    monkeypatch.delenv("LATENTLAB_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LATENTLAB_TOKEN_FILE", raising=False)
    with pytest.raises(ApiError, match="LATENTLAB_TOKEN"):
        Client(url)
    token_file = tmp_path / "token"
    token_file.write_text(tokens["bob"] + "\n")
    assert Client(url, token_file=token_file).me()["username"] == "bob"
    with pytest.raises(ApiError) as err:
        Client(url, "ll_not-a-real-token").me()
    assert err.value.status == 401 and "token" in err.value.message
    with pytest.raises(ApiError) as err:
        Client(url, tokens["bob"]).generate_dataset(model="tiny", name="x", num_samples=0)
    assert err.value.status == 400 and err.value.field == "num_samples"


def test_the_notebook_runs_against_a_real_server(lab_server, tmp_path):
    """docs/notebook.ipynb's code cells, run in order as one Python program in a fresh interpreter, as a
    notebook kernel would (outputs are stripped in the file; this checks it stays runnable and that what
    it shows is right). The program reports what it computed as JSON on its last line."""
    _settings, url, tokens = lab_server
    notebook = json.loads((REPO / "docs" / "notebook.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    report = (
        "import json as _json\n"
        "print(_json.dumps({'samples': len(samples), 'points': len(points),\n"
        "    'history': sorted(int(i) for i in history['sample_id']),\n"
        "    'new_ids': sorted(int(i) for i in new_ids),\n"
        "    'exported': [int(i) for i in exported['sample_id']],\n"
        "    'history_order': [int(i) for i in history['sample_id']],\n"
        "    'midblock_ndim': int(activations['midblock'].ndim)}))\n"
    )
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join("".join(c["source"]) for c in code) + "\n\n" + report)
    env = {**os.environ, "LATENTLAB_URL": url, "LATENTLAB_TOKEN": tokens["alice"], "PYTHONPATH": str(REPO)}
    # the notebook writes its export beside itself
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shown = json.loads(run.stdout.strip().splitlines()[-1])
    assert shown["samples"] == 32 and shown["points"] == 32
    assert shown["history"] == shown["new_ids"]
    assert shown["exported"] == shown["history_order"]
    assert shown["midblock_ndim"] == 3
