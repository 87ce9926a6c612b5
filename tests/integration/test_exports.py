"""Exports from the command line over the real database (--db): ``latentlab history --format csv|parquet``
reads back equal to ``latentlab history --json``, and ``latentlab export activations`` writes one ``.npy``
per layer in sample-id order with ``sample_ids.npy`` beside it, equal to the stored shards. Over the API:
``?format=csv|parquet`` on the history, a dataset's samples and a sample's lineage answers the same file as
the ``/api/v1/exports`` routes, and the lineage file reads back equal to the JSON graph."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from common.models import Dataset, User
from common.platform.accounts import issue_token
from tests.integration.test_cli_research import cli
from tests.support.seeded_map import add_generation, ago, seed_map
from web.app import create_app


@pytest.fixture
def lab(settings, sessions, admin):
    lab = seed_map(sessions, settings, owner_id=admin.id, n=10)
    s = lab.sample_ids
    for i in range(3):
        nbs = [s[i + 1], s[i + 2]]
        add_generation(sessions, settings, lab, owner_id=admin.id, selected=s[i], neighbors=nbs,
                       created_at=ago(hours=3 - i))  # fmt: skip
    with sessions() as db:
        shape = db.get(Dataset, lab.dataset_id).layer_shapes["midblock"]
    width = int(np.prod(shape))
    # the shard the dataset samples point at, and the one the generated samples point at
    rng = np.random.default_rng(0)
    dataset_rows = rng.standard_normal((10, width)).astype(np.float32)
    generated_rows = rng.standard_normal((3, width)).astype(np.float32)
    for folder, rows in ((f"datasets/{lab.dataset_id}/act/chunk-000000", dataset_rows),
                         (f"datasets/{lab.dataset_id}/generated/fake", generated_rows)):  # fmt: skip
        (settings.data_root / folder).mkdir(parents=True, exist_ok=True)
        np.save(settings.data_root / folder / "midblock.npy", rows)
    return lab, shape, np.concatenate([dataset_rows, generated_rows])


def test_history_exports_read_back_equal_to_the_json(settings, lab, tmp_path):
    as_json = json.loads(cli(settings, "history", "--json").stdout)
    assert len(as_json) == 3
    csv_text = cli(settings, "history", "--format", "csv").stdout
    cli(settings, "history", "--format", "parquet", "-o", str(tmp_path / "h.parquet"))
    cli(settings, "history", "--format", "csv", "-o", str(tmp_path / "h.csv"))
    tables = {
        "csv-stdout": pd.read_csv(io.StringIO(csv_text)),
        "csv-file": pd.read_csv(tmp_path / "h.csv"),
        "parquet": pd.read_parquet(tmp_path / "h.parquet"),
    }
    for name, table in tables.items():
        assert table["sample_id"].tolist() == [r["sample_id"] for r in as_json], name
        assert table["center_x"].tolist() == [r["center"][0] for r in as_json], name
        assert table["actual_y"].tolist() == [r["actual"][1] for r in as_json], name
        assert table["created_by"].tolist() == [r["created_by"] for r in as_json], name
        assert [json.loads(v) for v in table["layers"]] == [r["layers"] for r in as_json], name
        assert table["mask_steps"].isna().all(), name
    created = pd.to_datetime(tables["parquet"]["created_at"], utc=True)
    assert [t.isoformat() for t in created] == [r["created_at"] for r in as_json]
    assert str(tables["parquet"]["sample_id"].dtype) == "int64"

    proc = cli(settings, "history", "--format", "parquet", check=False)
    assert proc.returncode != 0 and "give a file with -o" in proc.stderr


def test_dataset_activations_export_one_npy_per_layer_with_ids(settings, lab, tmp_path):
    lab_, shape, stored = lab
    out = tmp_path / "acts"
    cli(settings, "export", "activations", "fake", "-o", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["midblock.npy", "sample_ids.npy"]
    ids = np.load(out / "sample_ids.npy")
    acts = np.load(out / "midblock.npy", mmap_mode="r")
    assert ids.tolist() == lab_.sample_ids + lab_.generated_ids
    assert acts.shape == (13, *shape) and acts.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(acts).reshape(13, -1), stored)

    proc = cli(settings, "export", "activations", "fake", "-o", str(tmp_path / "x"), "--layers", "nope",
               check=False)  # fmt: skip
    assert proc.returncode != 0 and "has no layer 'nope'" in proc.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_samples_and_points_export_from_the_cli(settings, lab, tmp_path):
    lab_, _shape, _stored = lab
    samples = pd.read_csv(io.StringIO(cli(settings, "export", "samples", "fake").stdout))
    assert samples["id"].tolist() == lab_.sample_ids + lab_.generated_ids
    assert samples["origin"].tolist() == ["dataset"] * 10 + ["generated"] * 3
    assert samples["index"].tolist()[:10] == list(range(10)) and samples["index"].isna().sum() == 3
    out = str(tmp_path / "p.pq")
    cli(settings, "export", "points", str(lab_.embedding_id), "--format", "parquet", "-o", out)
    points = pd.read_parquet(tmp_path / "p.pq")
    assert points["sample_id"].tolist() == lab_.sample_ids + lab_.generated_ids
    assert points["x"].tolist()[:10] == [float(i) for i in range(10)]
    assert points["projected"].tolist() == [False] * 10 + [True] * 3
    proc = cli(settings, "export", "points", "999999", check=False)
    assert proc.returncode != 0 and "999999" in proc.stderr


@pytest.fixture
def api(settings, sessions, admin, lab):
    with sessions.begin() as s:
        user = s.get(User, admin.id)
        headers = {"Authorization": f"Bearer {issue_token(s, user)}"}
    app = create_app(settings)
    yield app.test_client(), headers
    app.extensions["latentlab"].close()


def read(fmt: str, data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data)) if fmt == "csv" else pd.read_parquet(io.BytesIO(data))


def test_format_on_the_json_routes_answers_the_export_file(api, lab):
    client, headers = api
    lab_ = lab[0]
    same_routes = [
        "/history",
        f"/datasets/{lab_.dataset_id}/samples",
        f"/samples/{lab_.sample_ids[1]}/lineage",
    ]
    for path in same_routes:
        route, export = f"/api/v1{path}", f"/api/v1/exports{path}"
        plain = client.get(route, headers=headers)
        assert plain.status_code == 200 and plain.is_json, route
        assert client.get(route, headers=headers, query_string={"format": "json"}).data == plain.data, route
        for fmt in ("csv", "parquet"):
            mine = client.get(route, headers=headers, query_string={"format": fmt})
            mine_data = mine.data  # read before the next request: the body is streamed
            theirs = client.get(export, headers=headers, query_string={"format": fmt})
            assert mine.status_code == theirs.status_code == 200, (route, fmt, mine_data[:200])
            assert mine.headers["Content-Disposition"] == theirs.headers["Content-Disposition"], route
            assert mine.mimetype == theirs.mimetype != "application/json", route
            pd.testing.assert_frame_equal(read(fmt, mine_data), read(fmt, theirs.data))
        bad = client.get(route, headers=headers, query_string={"format": "xlsx"})
        assert bad.status_code == 400 and bad.json["field"] == "format", (route, bad.json)
        assert all(choice in bad.json["error"] for choice in ("json", "csv", "parquet")), bad.json
    # the history file is every row (limit ignored) and reads back equal to the JSON page
    rows = client.get("/api/v1/history", headers=headers).json["generations"]
    history = read("csv", client.get("/api/v1/history?format=csv&limit=1", headers=headers).data)
    assert history["sample_id"].tolist() == [r["sample_id"] for r in rows] and len(rows) == 3
    query = {"format": "parquet", "origin": "generated"}
    samples = read(
        "parquet",
        client.get(f"/api/v1/datasets/{lab_.dataset_id}/samples", headers=headers, query_string=query).data,
    )
    assert samples["id"].tolist() == lab_.generated_ids


def test_lineage_export_reads_back_equal_to_the_json(api, lab):
    client, headers = api
    lab_ = lab[0]
    for sid in (lab_.sample_ids[1], lab_.sample_ids[2], lab_.generated_ids[0]):
        graph = client.get(f"/api/v1/samples/{sid}/lineage", headers=headers).json
        assert graph["edges"], sid
        levels = {n["sample_id"]: n["level"] for n in graph["nodes"]}
        expected = [(e["child"], e["parent"], e["role"], e["weight"], levels[e["child"]], levels[e["parent"]])
                    for e in graph["edges"]]  # fmt: skip
        for fmt in ("csv", "parquet"):
            res = client.get(f"/api/v1/exports/samples/{sid}/lineage", headers=headers,
                             query_string={"format": fmt})  # fmt: skip
            assert res.status_code == 200, res.data[:200]
            table = read(fmt, res.data)
            assert list(table.columns) == ["child_id", "parent_id", "role", "weight", "child_level",
                                           "parent_level"]  # fmt: skip
            assert list(table.itertuples(index=False, name=None)) == expected, (sid, fmt)
    graph = client.get(f"/api/v1/samples/{lab_.generated_ids[0]}/lineage?depth=1", headers=headers).json
    shallow = read("csv", client.get(f"/api/v1/samples/{lab_.generated_ids[0]}/lineage?depth=1&format=csv",
                                     headers=headers).data)  # fmt: skip
    assert len(shallow) == len(graph["edges"])
    missing = client.get("/api/v1/exports/samples/999999/lineage?format=csv", headers=headers)
    assert missing.status_code == 404 and missing.is_json and "999999" in missing.json["error"]
    assert client.get(f"/api/v1/exports/samples/{lab_.sample_ids[1]}/lineage?format=csv").status_code == 401
