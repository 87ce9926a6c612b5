"""Exports from the command line over the real database (--db): ``latentlab history --format csv|parquet``
reads back equal to ``latentlab history --json``, and ``latentlab export activations`` writes one ``.npy``
per layer in sample-id order with ``sample_ids.npy`` beside it, equal to the stored shards."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from common.models import Dataset
from tests.integration.test_cli_research import cli
from tests.support.seeded_map import add_generation, ago, seed_map


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
