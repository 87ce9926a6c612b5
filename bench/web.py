"""How fast the explorer draws big maps and answers clicks, in headless Chromium against a real server.

Builds a throwaway lab (SQLite, a private redis-server, the web server started through the CLI) whose
maps are filled by bulk-inserting fake samples and points (no images, no worker: only the timing of the
page matters), then opens the explorer with Playwright and prints:

* first render: navigation start → the scatter drawn (the page's ``window.__latentlab.timings``), and
  the parts (points fetched, decoded, waiting for Plotly.js to finish compiling, traces built, drawn);
* click → selection: a real mouse click on a point → the selection painted (pointerdown → next frame
  after the overlay and side panel updated), median and p95 over ``--clicks`` clicks;
* the same for a programmatic select (no Plotly hit test), to separate our work from Plotly's.

Usage::

    .venv/bin/python bench/web.py                      # 100k and 1M points
    .venv/bin/python bench/web.py --points 100000 --clicks 30 --keep /tmp/benchlab

Budgets from the issue: first render at 100k ≤ 3 s, click → selection ≤ 200 ms, 1M points render.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cli.redis_server import RedisServer, free_port  # noqa: E402
from common.models import Dataset, Embedding, EmbeddingPoint, GeneratorModel, Sample  # noqa: E402
from common.platform import migrate  # noqa: E402
from common.platform.accounts import create_user  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from tests.e2e.lab import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.services import start_web  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402

SHA = "0" * 64
CLASSES = 10
BATCH = 50_000


def fake_map(sessions, owner_id: int, n: int, first_id: int, name: str) -> int:
    """A ready dataset of ``n`` fake samples (ids from ``first_id``) and a ready map of them: one blob
    per class, like a UMAP of a class-structured dataset. Returns the embedding id."""
    rng = np.random.default_rng(n)
    with sessions.begin() as s:
        model = s.query(GeneratorModel).filter_by(name="bench-model").one_or_none()
        if model is None:
            model = GeneratorModel(
                name="bench-model",
                config={"label_dim": CLASSES, "img_resolution": 16, "img_channels": 1},
                checkpoint_path="models/bench.safetensors",
                checkpoint_sha256=SHA,
                label_names=[str(c) for c in range(CLASSES)],
            )
            s.add(model)
            s.flush()
        ds = Dataset(
            name=name,
            model_id=model.id,
            layers=["midblock"],
            layer_shapes={"midblock": [4, 2, 2]},
            layer_modules={"midblock": "model.dec.midblock"},
            seed=0,
            classes=list(range(CLASSES)),
            target_size=n,
            status="ready",
            checkpoint_sha256=SHA,
            code_version="bench",
            owner_id=owner_id,
        )
        s.add(ds)
        s.flush()
        emb = Embedding(
            dataset_id=ds.id,
            name=f"{name} map",
            layers=["midblock"],
            params={"n_neighbors": 15},
            status="ready",
            reducer_sha256="r" * 64,
            num_points=n,
            owner_id=owner_id,
        )
        s.add(emb)
        s.flush()
        ds_id, emb_id = ds.id, emb.id
    centres = rng.uniform(-12, 12, size=(CLASSES, 2))
    cls = np.arange(n) % CLASSES
    xy = centres[cls] + rng.normal(0, 1.6, size=(n, 2))
    now = datetime.now(UTC)
    for a in range(0, n, BATCH):
        b = min(a + BATCH, n)
        with sessions.begin() as s:
            s.execute(
                insert(Sample.__table__),
                [
                    {
                        "id": first_id + i,
                        "dataset_id": ds_id,
                        "index": i,
                        "class_label": int(cls[i]),
                        "noise_seed": i,
                        "image_path": f"datasets/{ds_id}/images/{i:08d}.png",
                        "act_shard": f"datasets/{ds_id}/act/chunk-000000",
                        "act_row": i,
                        "origin": "dataset",
                        "created_by_id": owner_id,
                        "created_at": now,
                    }
                    for i in range(a, b)
                ],
            )
            s.execute(
                insert(EmbeddingPoint.__table__),
                [
                    {
                        "embedding_id": emb_id,
                        "sample_id": first_id + i,
                        "x": float(xy[i, 0]),
                        "y": float(xy[i, 1]),
                        "projected": False,
                    }
                    for i in range(a, b)
                ],
            )
    return emb_id


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(page, base: str, emb_id: int, n: int, clicks: int, timeout_s: float) -> dict:
    page.goto(f"{base}/explorer?embedding={emb_id}")
    page.wait_for_function(
        "window.__latentlab && window.__latentlab.explorer && window.__latentlab.explorer.ready",
        timeout=timeout_s * 1000,
    )
    t = page.evaluate("window.__latentlab.timings")
    out = {
        "points": n,
        "first_render_ms": t["firstRender"],
        "fetch_ms": t["pointsFetched"] - t["mapRequested"],
        "decode_ms": t["pointsDecoded"] - t["pointsFetched"],
        "plotly_wait_ms": t["plotlyAwaited"] - t["pointsDecoded"],
        "build_ms": t["tracesBuilt"] - t["plotlyAwaited"],
        "draw_ms": t["firstRender"] - t["tracesBuilt"],
    }
    if not clicks:
        return out
    page.evaluate("window.__latentlab.clicks = []")
    ids = page.evaluate(f"window.__latentlab.explorer.sampleIds({n})")
    rng = np.random.default_rng(0)
    picked = [int(ids[i]) for i in rng.choice(len(ids), size=clicks * 3, replace=False)]
    page.keyboard.down("Shift")  # Shift+click always selects (the heavier path: overlay and side panel)
    done = 0
    for sid in picked:
        if done >= clicks:
            break
        where = page.evaluate(f"window.__latentlab.explorer.clientPoint({sid})")
        box = page.locator("#map").bounding_box()
        if not where or not (box["x"] + 60 < where["x"] < box["x"] + box["width"] - 200):
            continue
        if not (box["y"] + 20 < where["y"] < box["y"] + box["height"] - 40):
            continue
        before = page.evaluate("window.__latentlab.clicks.length")
        page.mouse.move(where["x"], where["y"])
        page.wait_for_timeout(60)
        page.mouse.click(where["x"], where["y"])
        try:
            page.wait_for_function(f"window.__latentlab.clicks.length > {before}", timeout=5000)
            done += 1
        except Exception:
            continue
        page.wait_for_timeout(150)
    page.keyboard.up("Shift")
    recorded = page.evaluate("window.__latentlab.clicks")
    pointer = [c["pointerMs"] for c in recorded if "pointerMs" in c]
    handler = [c["handlerMs"] for c in recorded]
    page.evaluate("window.__latentlab.clicks = []")
    for sid in picked[:clicks]:
        page.evaluate(f"window.__latentlab.explorer.select({sid})")
        page.wait_for_timeout(80)
    direct = [c["handlerMs"] for c in page.evaluate("window.__latentlab.clicks")]
    out.update(
        clicks=len(pointer),
        click_median_ms=statistics.median(pointer) if pointer else None,
        click_p95_ms=pct(pointer, 0.95) if pointer else None,
        click_handler_median_ms=statistics.median(handler) if handler else None,
        select_median_ms=statistics.median(direct) if direct else None,
        select_p95_ms=pct(direct, 0.95) if direct else None,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2, help="page loads per map (the first warms caches)")
    parser.add_argument("--keep", type=Path, default=None, help="build the lab here and keep it")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    root = args.keep or Path(tempfile.mkdtemp(prefix="latentlab-bench-web-"))
    redis = RedisServer(root / "redis")
    redis_url = redis.start()
    settings = make_settings(root, redis_url=redis_url)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        owner = create_user(s, "bench", "bench-password-1").id
    maps = []
    first_id = 1
    for n in args.points:
        t0 = time.perf_counter()
        maps.append((fake_map(sessions, owner, n, first_id, f"bench-{n}"), n))
        first_id += n
        print(f"inserted {n:,} samples and points in {time.perf_counter() - t0:.1f} s", flush=True)
    port = free_port()
    web = start_web(settings, root, port)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", "bench-password-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            for emb_id, n in maps:
                for run in range(args.runs):
                    last = run == args.runs - 1
                    res = measure(page, base, emb_id, n, args.clicks if last else 0, timeout_s=300)
                    res["run"] = run + 1
                    results.append(res)
                    print(res, flush=True)
            browser.close()
    finally:
        web.stop()
        engine.dispose()
        redis.stop()
    print()
    print(
        "| points | run | first render | fetch | decode | wait for Plotly | build | draw "
        "| click→selection median / p95 | select() median |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        click = (
            f"{r['click_median_ms']:.0f} / {r['click_p95_ms']:.0f} ms ({r['clicks']} clicks)"
            if r.get("click_median_ms") is not None
            else "—"
        )
        select = f"{r['select_median_ms']:.1f} ms" if r.get("select_median_ms") is not None else "—"
        print(
            f"| {r['points']:,} | {r['run']} | {r['first_render_ms']:.0f} ms | {r['fetch_ms']:.0f} ms | "
            f"{r['decode_ms']:.0f} ms | {r['plotly_wait_ms']:.0f} ms | {r['build_ms']:.0f} ms | "
            f"{r['draw_ms']:.0f} ms | {click} | {select} |"
        )


if __name__ == "__main__":
    main()
