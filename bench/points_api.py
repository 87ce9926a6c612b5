"""Points API benchmark: ``GET /api/v1/embeddings/<id>/points`` for a large map.

Usage: ``.venv/bin/python bench/points_api.py [--points 100000] [--database-url postgresql+psycopg://…]
[--repeat 20]``

Writes a fake map (a dataset of ``--points`` samples, all on one embedding) straight into a fresh
database (SQLite in a temporary folder by default; with ``--database-url`` an existing, empty-able
PostgreSQL database is migrated and filled), then times the endpoint in-process (Flask's test client)
and over loopback HTTP through waitress: the first load (query + encode + gzip, then cached), repeated
loads (served from the per-process cache), and 304 revalidations. Prints figures; decides nothing.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from common.models import Dataset, Embedding, EmbeddingPoint, GeneratorModel, Sample  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user, issue_token  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from common.research.embeddings import points_columns  # noqa: E402
from common.research.reads import map_stats  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402
from web import points_cache as points_module  # noqa: E402
from web.app import create_app  # noqa: E402


def fill(sessions, n: int) -> tuple[int, str]:
    """A user, a model, a dataset of ``n`` samples (10 classes, 2% generated) and a map with every one
    of them; returns (embedding id, bearer token)."""
    rng = np.random.default_rng(0)
    with sessions.begin() as s:
        user = create_user(s, "bench", "bench-password", role="admin")
        s.flush()
        token = issue_token(s, user)
        model = GeneratorModel(
            name="bench",
            config={"label_dim": 10},
            checkpoint_path="models/bench.safetensors",
            checkpoint_sha256="0" * 64,
            label_names=[str(c) for c in range(10)],
        )
        ds = Dataset(
            name="bench",
            model=model,
            layers=["midblock"],
            layer_shapes={"midblock": [8, 8, 8]},
            layer_modules={"midblock": "x"},
            seed=0,
            classes=list(range(10)),
            target_size=n,
            status="ready",
            checkpoint_sha256="0" * 64,
            code_version="bench",
            owner_id=user.id,
        )
        s.add(ds)
        s.flush()
        emb = Embedding(
            dataset_id=ds.id, name="bench", layers=["midblock"], params={}, status="ready", owner_id=user.id
        )
        s.add(emb)
        s.flush()
        ds_id, emb_id, owner = ds.id, emb.id, user.id
    generated = rng.random(n) < 0.02
    xy = rng.normal(size=(n, 2)).astype(np.float32) * 5
    batch = 10_000
    for a in range(0, n, batch):
        rows = [
            {
                "dataset_id": ds_id,
                "index": None if generated[i] else i,
                "class_label": i % 10,
                "noise_seed": i,
                "image_path": f"datasets/{ds_id}/images/{i:08d}.png",
                "act_shard": f"datasets/{ds_id}/act/chunk-{i // 256:06d}",
                "act_row": i % 256,
                "origin": "generated" if generated[i] else "dataset",
                "variation": None,
                "created_by_id": owner,
            }
            for i in range(a, min(a + batch, n))
        ]
        with sessions.begin() as s:
            s.execute(insert(Sample), rows)
    with sessions() as s:
        ids = s.scalars(select(Sample.id).order_by(Sample.id)).all()
    for a in range(0, n, batch):
        rows = [
            {
                "embedding_id": emb_id,
                "sample_id": ids[i],
                "x": float(xy[i, 0]),
                "y": float(xy[i, 1]),
                "projected": bool(generated[i]),
            }
            for i in range(a, min(a + batch, n))
        ]
        with sessions.begin() as s:
            s.execute(insert(EmbeddingPoint), rows)
    with sessions.begin() as s:
        s.get(Embedding, emb_id).num_points = n
    return emb_id, token


def median_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ms (min {min(times) * 1000:.1f})"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def show(label: str, times: list[float]) -> None:
    print(f"  {label + ':':<30} {median_ms(times)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ll-bench-points-"))
    redis_url = os.environ.get("LATENTLAB_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = make_settings(tmp, args.database_url or None, redis_url)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    t0 = time.perf_counter()
    emb_id, token = fill(sessions, args.points)
    took = time.perf_counter() - t0
    cpus = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    print(f"machine: {platform.machine()}, {cpus}; Python {platform.python_version()}")
    print(f"database: {engine.dialect.name}; filled {args.points:,} samples + points in {took:.1f} s")

    labels = [str(c) for c in range(10)]
    with sessions() as s:
        emb = s.get(Embedding, emb_id)
        show("read columns (points_columns)", timed(lambda: points_columns(s, emb), 3))
        cols = points_columns(s, emb)
        show(
            "encode (base64 JSON)", timed(lambda: points_module.encode_points(emb, labels, "x" * 32, cols), 3)
        )
        body = points_module.encode_points(emb, labels, "x" * 32, cols)
        level = points_module.GZIP_LEVEL
        show(f"gzip level {level}", timed(lambda: gzip.compress(body, compresslevel=level, mtime=0), 3))
        show("ETag query (count/max/sum)", timed(lambda: map_stats(s, emb.id), 10))

    app = create_app(settings)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    gz = {**auth, "Accept-Encoding": "gzip"}
    url = f"/api/v1/embeddings/{emb_id}/points"
    t0 = time.perf_counter()
    first = client.get(url, headers=auth)
    cold = time.perf_counter() - t0
    assert first.status_code == 200, first.data[:300]
    zipped = client.get(url, headers=gz)
    mb = len(first.data) / 1e6, len(zipped.data) / 1e6
    print(f"response: {first.json['n']:,} points; body {mb[0]:.2f} MB, gzip {mb[1]:.2f} MB")
    print("in-process (Flask test client):")
    print(f"  {'first load (read + encode):':<30} {cold * 1000:.0f} ms")
    cond = {**auth, "If-None-Match": first.headers["ETag"]}
    for label, headers in (("cached load", auth), ("cached load, gzip", gz), ("304 revalidation", cond)):
        show(label, timed(lambda h=headers: client.get(url, headers=h), args.repeat))

    with sessions.begin() as s:  # what a generation does to the map: one more point, a new sample id
        ds_id = s.get(Embedding, emb_id).dataset_id
        smp = Sample(
            dataset_id=ds_id,
            class_label=1,
            noise_seed=1,
            image_path="x.png",
            act_shard="x",
            act_row=0,
            origin="generated",
        )
        s.add(smp)
        s.flush()
        s.add(EmbeddingPoint(embedding_id=emb_id, sample_id=smp.id, x=0.0, y=0.0, projected=True))
        s.get(Embedding, emb_id).num_points += 1
    t0 = time.perf_counter()
    grown = client.get(url, headers=gz)
    took = (time.perf_counter() - t0) * 1000
    print(f"  {'load after a point is added:':<30} {took:.0f} ms (reads only the new row; gzip)")
    assert grown.status_code == 200 and points_module.cache_for(app).tail_reads == 1

    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.effective_port
    threading.Thread(target=server.run, daemon=True).start()

    def over_http(headers) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", url, headers=headers)
        res = conn.getresponse()
        size = len(res.read())
        conn.close()
        return size

    over_http(auth)
    cond = {**auth, "If-None-Match": grown.headers["ETag"]}
    print("over loopback HTTP (waitress, 4 threads):")
    for label, headers in (("cached load", auth), ("cached load, gzip", gz), ("304 revalidation", cond)):
        show(label, timed(lambda h=headers: over_http(h), args.repeat))
    server.task_dispatcher.shutdown()
    server.close()
    app.extensions["latentlab"].close()
    engine.dispose()


if __name__ == "__main__":
    main()
