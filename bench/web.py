"""How fast the explorer draws big maps and answers clicks, in headless Chromium against a real server.

Builds a throwaway lab (SQLite, a private redis-server, the web server started through the CLI) whose
maps are filled by bulk-inserting fake samples and points (no images, no worker: only the timing of the
page matters), then opens the explorer with Playwright and prints:

* points painted: navigation start → the points on screen (a big map's canvas preview, else the traces);
* first render: navigation start → the scatter's WebGL traces drawn (hover, click and lasso live), from
  the page's ``window.__latentlab.timings``, and the parts (points fetched, of which the points request's
  server answer and body, decoded, waiting for Plotly.js to finish compiling, traces built, drawn);
* click → selection: a real mouse click on a point → the selection painted (pointerdown → next frame
  after the overlay and side panel updated), median and p95 over ``--clicks`` clicks;
* the same for a programmatic select (no Plotly hit test), to separate our work from Plotly's;
* lasso → selection: a real mouse lasso (Plotly's lasso drag mode) around a quarter of the map → the
  selection applied and painted (mouse up → next frame), with the number of points it caught;
* the points endpoint server side: a GET over loopback right after the server started (query, encode),
  again (the per-process cache) and a 304 revalidation.

Every figure is measured for both wire formats in the same run: ``json`` (base64 columns in JSON, the
format before the binary one: the baseline) and ``binary`` (what the explorer loads now), and with the
binary format for both draws: ``plain`` (``?draw=plain``: one WebGL trace per category, the draw before)
and ``fast`` (big maps previewed in a canvas, traces cut below Plotly's quadtree threshold); the server is
restarted before each format's endpoint timings and again before each draw's page loads, so run 1 of each
map is the first load after a server start. ``--bundles before now`` also compares how the page loads:
``before`` (``&plotly=full&preload=none&preview_min=200000``: the full 4.8 MB Plotly.js, no preloads, the
canvas preview from 200,000 points) against ``now`` (the explorer's own 1.5 MB bundle, the map's points
and the page's modules preloaded, the preview from 50,000 points); each starts on a fresh server in a new
browser context (empty cache), so run 1 is a first visit and later runs a returning browser's; their runs
alternate. ``nopreview`` is ``now`` with the preview from 200,000 points again (what the preview alone
costs or gains). The last table prints ratios against those baselines; every row carries the load
average.

Usage::

    .venv/bin/python bench/web.py                      # 100k and 1M points
    .venv/bin/python bench/web.py --points 100000 --clicks 30 --keep /tmp/benchlab
    .venv/bin/python bench/web.py --points 1000000 --wires binary --draws plain fast --keep /tmp/benchlab
    .venv/bin/python bench/web.py --points 100000 --wires binary --draws fast --bundles before now

Budgets from the issue: 100k first render ≤ 1 s warm (≤ 1.5 s on the first load after a server start);
1M first render ≤ 3 s; click → selection ≤ 100 ms; lasso over 100k ≤ 300 ms; endpoint at 1M ≤ 1 s.
"""

from __future__ import annotations

import argparse
import http.client
import os
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
from common.platform.accounts import create_user, issue_token  # noqa: E402
from common.platform.db import make_engine, session_factory  # noqa: E402
from tests.e2e.lab import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.services import start_web  # noqa: E402
from tests.support.settings import make_settings  # noqa: E402

SHA = "0" * 64
# how the page is asked for: before the explorer's own Plotly.js bundle, the preloads and the preview from
# 50,000 points; as now; as now with the preview from 200,000 points again
PAGES = {
    "before": "&plotly=full&preload=none&preview_min=200000",
    "now": "",
    "nopreview": "&preview_min=200000",
}
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


def endpoint_times(port: int, token: str, emb_id: int, wire: str) -> dict:
    """Seconds for GET points (first after a server start, then cached) and a 304, over loopback."""
    path = f"/api/v1/embeddings/{emb_id}/points" + ("?format=binary" if wire == "binary" else "")
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    out = {}
    etag = None
    for name in ("cold_s", "warm_s", "revalidate_s"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        extra = {"If-None-Match": etag} if name == "revalidate_s" else {}
        t0 = time.perf_counter()
        conn.request("GET", path, headers={**headers, **extra})
        res = conn.getresponse()
        body = res.read()
        out[name] = time.perf_counter() - t0
        assert res.status in (200, 304), (res.status, body[:200])
        etag = res.getheader("ETag")
        if name == "cold_s":
            out["bytes"] = len(body)
        conn.close()
    return out


LASSO = """async () => {
  // a lasso around the lower-left quarter of the plot, drawn with the mouse by the caller
  const box = document.querySelector('#map .nsewdrag').getBoundingClientRect();
  return {x: box.x, y: box.y, w: box.width, h: box.height};
}"""


def measure_lasso(page) -> dict | None:
    """A real lasso over the plot's lower-left quarter; ms from mouse up to the selection painted."""
    has_tool = page.evaluate("Boolean(document.querySelector('#drag-lasso'))")
    if not has_tool:
        return None
    page.click("#drag-lasso")
    b = page.evaluate(LASSO)
    x0, y0, w, h = b["x"] + 4, b["y"] + b["h"] / 2, b["w"] / 2, b["h"] / 2 - 4
    corners = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h), (x0, y0 + 1)]
    before = page.evaluate("(window.__latentlab.lassos || []).length")
    page.mouse.move(*corners[0])
    page.mouse.down()
    for (ax, ay), (bx, by) in zip(corners, corners[1:], strict=False):
        for k in range(1, 9):
            page.mouse.move(ax + (bx - ax) * k / 8, ay + (by - ay) * k / 8)
    page.mouse.up()
    page.wait_for_function(f"(window.__latentlab.lassos || []).length > {before}", timeout=60_000)
    last = page.evaluate("window.__latentlab.lassos[window.__latentlab.lassos.length - 1]")
    page.click("#drag-pan")
    return last


def measure(
    page,
    base: str,
    emb_id: int,
    n: int,
    clicks: int,
    timeout_s: float,
    wire: str,
    draw: str = "fast",
    bundle: str = "now",
) -> dict:
    query = f"embedding={emb_id}&wire={wire}" + ("&draw=plain" if draw == "plain" else "")
    page.goto(f"{base}/explorer?{query}{PAGES[bundle]}")
    page.wait_for_function(
        "window.__latentlab && window.__latentlab.explorer && window.__latentlab.explorer.ready",
        timeout=timeout_s * 1000,
    )
    t = page.evaluate("window.__latentlab.timings")
    out = {
        "wire": wire,
        "draw": draw,
        "bundle": bundle,
        "points": n,
        "first_paint_ms": t.get("firstPaint", t["firstRender"]),
        "first_render_ms": t["firstRender"],
        "fetch_ms": t["pointsFetched"] - t["mapRequested"],
        # the points request: sent → headers (the server's answer), headers → the whole body in the page
        "answer_ms": t["pointsHeaders"] - t["pointsRequested"] if "pointsHeaders" in t else None,
        "body_ms": t["pointsBody"] - t["pointsHeaders"] if "pointsBody" in t else None,
        "plotly_ready_ms": t.get("plotlyReady"),
        "decode_ms": t["pointsDecoded"] - t["pointsFetched"],
        "plotly_wait_ms": t["plotlyAwaited"] - t["pointsDecoded"],
        "build_ms": t["tracesBuilt"] - t["plotlyAwaited"],
        "draw_ms": t["firstRender"] - t["tracesBuilt"],
    }
    if not clicks:
        return out
    lasso = measure_lasso(page)
    if lasso:
        out.update(lasso_ms=lasso["ms"], lasso_points=lasso["points"])
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


def sign_in(context, base: str):
    page = context.new_page()
    page.goto(f"{base}/login")
    page.fill("input[name=username]", "bench")
    page.fill("input[name=password]", "bench-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2, help="page loads per map (the first warms caches)")
    parser.add_argument("--wires", nargs="+", default=["json", "binary"], choices=["json", "binary"])
    parser.add_argument(
        "--draws",
        nargs="+",
        default=["plain", "fast"],
        choices=["plain", "fast"],
        help="with the binary wire: plain (one WebGL trace per category; the baseline) and/or fast "
        "(traces in parts, the canvas preview of big maps)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="build the lab here and keep it (or reuse)")
    parser.add_argument(
        "--bundles",
        nargs="+",
        default=["now"],
        choices=list(PAGES),
        help="how the page loads: before (the full 4.8 MB Plotly.js, no preloads, the preview from 200,000 "
        "points: the baseline) and/or now (the explorer's own 1.5 MB Plotly.js bundle, the points and "
        "modules preloaded, the preview from 50,000 points)",
    )
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
        found = s.query(Embedding).filter(Embedding.name.like("bench-%")).all()
        known = {e.num_points: e.id for e in found}
    maps = []
    with sessions.begin() as s:
        from common.models import User

        user = s.query(User).filter_by(username="bench").one_or_none()
        user = user or s.get(User, create_user(s, "bench", "bench-password-1").id)
        owner = user.id
        token = issue_token(s, user, name=f"bench-{time.time_ns()}")
    first_id = 1 + sum(known)
    for n in args.points:
        if n in known:  # a kept lab: reuse its map
            maps.append((known[n], n))
            continue
        t0 = time.perf_counter()
        maps.append((fake_map(sessions, owner, n, first_id, f"bench-{n}"), n))
        first_id += n
        print(f"inserted {n:,} samples and points in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    endpoint = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for wire in args.wires:
                port = free_port()
                web = start_web(settings, root, port)
                try:
                    for emb_id, n in maps:
                        timed = endpoint_times(port, token, emb_id, wire)
                        endpoint.append({"wire": wire, "points": n, "load": os.getloadavg()[0], **timed})
                        print(endpoint[-1], flush=True)
                finally:
                    web.stop()
                draws = args.draws if wire == "binary" else ["plain"]
                for draw in draws:
                    load = os.getloadavg()[0]
                    print(f"load average {load:.1f} before {wire}/{draw} page loads", flush=True)
                    # one fresh server and one new browser context per way of loading the page, their runs
                    # interleaved (before, now, before, now…) so that a change of the load hits both alike
                    pages = {}
                    try:
                        for bundle in args.bundles:
                            port = free_port()
                            web = start_web(settings, root, port)  # page loads start on a fresh server too
                            base = f"http://127.0.0.1:{port}"
                            context = browser.new_context(viewport={"width": 1280, "height": 800})
                            pages[bundle] = (web, context, base, sign_in(context, base))
                        for emb_id, n in maps:
                            for run in range(args.runs):
                                clicks = args.clicks if run == args.runs - 1 else 0
                                for bundle, (_, _, base, page) in pages.items():
                                    res = measure(page, base, emb_id, n, clicks, 300, wire, draw, bundle)
                                    res["run"] = run + 1
                                    res["load"] = os.getloadavg()[0]
                                    results.append(res)
                                    print(res, flush=True)
                    finally:
                        for web, context, _, _ in pages.values():
                            context.close()
                            web.stop()
            browser.close()
    finally:
        engine.dispose()
        redis.stop()
    report(results, endpoint)


def ms(value) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def report(results: list[dict], endpoint: list[dict]) -> None:
    print()
    print("Points endpoint, server side over loopback (first after a server start / cached / 304):")
    print("| wire | points | body | first | cached | 304 | load |")
    print("|---|---|---|---|---|---|---|")
    for e in endpoint:
        print(
            f"| {e['wire']} | {e['points']:,} | {e['bytes'] / 1e6:.1f} MB | {e['cold_s'] * 1000:.0f} ms | "
            f"{e['warm_s'] * 1000:.0f} ms | {e['revalidate_s'] * 1000:.0f} ms | {e['load']:.1f} |"
        )
    print()
    print(
        "| wire | draw | page | points | run | points painted | first render | fetch (answer / body) "
        "| decode | wait for Plotly | build | draw | click→selection median / p95 | select() median "
        "| lasso → selection | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        click = (
            f"{r['click_median_ms']:.0f} / {r['click_p95_ms']:.0f} ms ({r['clicks']} clicks)"
            if r.get("click_median_ms") is not None
            else "—"
        )
        select = f"{r['select_median_ms']:.1f} ms" if r.get("select_median_ms") is not None else "—"
        lasso = "—"
        if r.get("lasso_ms") is not None:
            lasso = f"{r['lasso_ms']:.0f} ms ({r['lasso_points']:,} points)"
        print(
            f"| {r['wire']} | {r['draw']} | {r['bundle']} | {r['points']:,} | {r['run']} | "
            f"{r['first_paint_ms']:.0f} ms | "
            f"{r['first_render_ms']:.0f} ms | {r['fetch_ms']:.0f} ms ({ms(r['answer_ms'])} / "
            f"{ms(r['body_ms'])}) | {r['decode_ms']:.0f} ms | {r['plotly_wait_ms']:.0f} ms | "
            f"{r['build_ms']:.0f} ms | {r['draw_ms']:.0f} ms | {click} | {select} | {lasso} | "
            f"{r['load']:.1f} |"
        )
    by = {(r["wire"], r["draw"], r["bundle"], r["points"], r["run"]): r for r in results}

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "—"

    print()
    print("Against the baselines measured in this run (below 1: faster), warm = the last run of each map:")
    print(
        "| points | path / baseline | points painted, first load | points painted, warm "
        "| first render, first load | first render, warm | click median |"
    )
    print("|---|---|---|---|---|---|---|")
    pairs = [
        (("binary", "plain", "now"), ("json", "plain", "now")),
        (("binary", "fast", "now"), ("binary", "plain", "now")),
        (("binary", "fast", "now"), ("binary", "fast", "before")),
        (("binary", "fast", "now"), ("binary", "fast", "nopreview")),
    ]
    for n in sorted({r["points"] for r in results}):
        for new, old in pairs:
            runs = [k[4] for k in by if k[:4] == (*new, n)]
            if not runs or (*old, n, 1) not in by:
                continue
            last = max(runs)
            if (*old, n, last) not in by:
                continue
            f1, o1, fw, ow = by[(*new, n, 1)], by[(*old, n, 1)], by[(*new, n, last)], by[(*old, n, last)]
            print(
                f"| {n:,} | {'/'.join(new)} vs {'/'.join(old)} | "
                f"{ratio(f1['first_paint_ms'], o1['first_paint_ms'])} | "
                f"{ratio(fw['first_paint_ms'], ow['first_paint_ms'])} | "
                f"{ratio(f1['first_render_ms'], o1['first_render_ms'])} | "
                f"{ratio(fw['first_render_ms'], ow['first_render_ms'])} | "
                f"{ratio(fw.get('click_median_ms'), ow.get('click_median_ms'))} |"
            )


if __name__ == "__main__":
    main()
