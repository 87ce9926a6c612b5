"""The explorer and the portal pages in a real browser, against a real server, worker and Redis, on a
demo dataset (60 samples) and map made through the real job pipe."""

from __future__ import annotations

import json
import re
import uuid

from sqlalchemy import delete, func, select, update

from common.models import Dataset, Job, Sample
from tests.e2e.lab import artifacts_dir
from tests.support.waiting import wait_for_job

READY = "() => window.__latentlab && window.__latentlab.explorer && window.__latentlab.explorer.ready"
GENERATION_TIMEOUT_MS = 300_000
# POST a JSON body from inside the page (its session cookie and CSRF token); answers [status, body]
POST_JSON = """async ([path, body]) => {
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const r = await fetch(path, {method: 'POST', body: JSON.stringify(body),
    headers: {'Content-Type': 'application/json', 'X-CSRFToken': token}});
  return [r.status, await r.json()];
}"""


def open_explorer(session, query: str = ""):
    page = session.goto(f"/explorer{query}")
    page.wait_for_function(READY, timeout=60_000)
    return page


def explorer_state(page) -> dict:
    return page.evaluate("window.__latentlab.explorer.state()")


def click_sample(page, sample_id: int, *, shift: bool = False) -> None:
    """A real mouse click on the sample's marker (Plotly's own hit test decides what was clicked)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    where = page.evaluate(f"window.__latentlab.explorer.clientPoint({sample_id})")
    assert where, f"sample {sample_id} is not on the map"
    before = page.evaluate("window.__latentlab.clicks.length")
    page.mouse.move(where["x"] - 3, where["y"] - 3)
    page.mouse.move(where["x"], where["y"])
    # as a person does: point until the map says what is under the cursor, then click. On a fresh page
    # under load, WebGL picking may not be ready for the first move; a nudge asks Plotly again.
    hovered = f"() => /^#{sample_id}(\\D|$)/.test(document.querySelector('#hover-text')?.textContent || '')"
    for nudge in (0, 1, -1, 0):
        page.mouse.move(where["x"] + nudge, where["y"])
        try:
            page.wait_for_function(hovered, timeout=5000)
            break
        except PlaywrightTimeout:
            continue
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(where["x"], where["y"])
    if shift:
        page.keyboard.up("Shift")
    page.wait_for_function(f"() => window.__latentlab.clicks.length > {before}")


def set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector, "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input')); }", value
    )


def isolated_samples(page, count: int) -> list[int]:
    """Dataset samples on the open plot area, the most isolated first (farthest from any other marker or
    generation star), each at least 8 px from every other: a click there hits exactly them."""
    return page.evaluate(
        """(count) => {
          const ex = window.__latentlab.explorer;
          const all = ex.sampleIds(1e6, null).map((id) => [id, ex.clientPoint(id)]);
          const stars = [...document.querySelectorAll("#overlay path.gen-star")].map((el) => {
            const r = el.getBoundingClientRect();
            return [-1, {x: r.x + r.width / 2, y: r.y + r.height / 2}];
          });
          const others = all.concat(stars);
          // and not under the legend or outside the plot area: a click there would not reach the point
          const onPlot = (p) => {
            const el = document.elementFromPoint(p.x, p.y);
            return el && el.classList.contains("nsewdrag");
          };
          const clearance = ([id, p]) => Math.min(...others.filter(([other]) => other !== id)
            .map(([, q]) => Math.hypot(p.x - q.x, p.y - q.y)));
          return ex.sampleIds(1e6, 0).map((id) => [id, ex.clientPoint(id)])
            .filter(([, p]) => onPlot(p)).map((e) => [e[0], clearance(e)])
            .filter(([, d]) => d > 8).sort((a, b) => b[1] - a[1])
            .slice(0, count).map(([id]) => id);
        }""",
        count,
    )


def test_select_find_neighbours_generate_and_follow_the_lineage(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    before = explorer_state(page)
    assert before["points"] >= len(lab.sample_ids)
    legend = page.locator(".legend .legendtext").all_text_contents()
    assert len(legend) >= 10 and legend[0] in ("0", "class_0"), legend  # a legend entry per class, by name

    # hovering a point shows its image and class name at the cursor
    target = isolated_samples(page, 1)[0]
    where = page.evaluate(f"window.__latentlab.explorer.clientPoint({target})")
    page.mouse.move(where["x"] - 4, where["y"] - 4)
    page.mouse.move(where["x"], where["y"])
    card = page.locator("#hover-card")
    card.wait_for(state="visible")
    assert page.locator("#hover-img").get_attribute("src") == f"/api/v1/samples/{target}/image"
    assert f"#{target}" in page.inner_text("#hover-text")

    click_sample(page, target)
    assert explorer_state(page)["selected"] == target
    assert page.locator(f"#overlay circle.sel-dot[data-id='{target}']").count() == 1
    page.wait_for_function(
        "() => document.querySelector('#selected-card img') && "
        "document.querySelector('#selected-card img').complete && "
        "document.querySelector('#selected-card img').naturalWidth > 0"
    )

    # zoom and pan keep the selection (view state persists; the selection is the page's, not Plotly's)
    page.mouse.move(where["x"], where["y"])
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(400)
    assert explorer_state(page)["selected"] == target
    moved = page.evaluate(f"window.__latentlab.explorer.clientPoint({target})")
    dot = page.locator("#overlay circle.sel-dot").bounding_box()
    assert abs(dot["x"] + dot["width"] / 2 - moved["x"]) < 3
    assert abs(dot["y"] + dot["height"] / 2 - moved["y"]) < 3
    page.click("#reset-view")
    page.wait_for_timeout(300)

    set_range(page, "#nb-k", 5)
    page.click("#find-btn")
    page.wait_for_function("() => window.__latentlab.explorer.state().neighbours.length === 5")
    assert page.locator("#overlay circle.ring-knn").count() == 5
    assert page.locator("#nb-list li").count() == 5
    assert "5 nearest in the 2-D map" in page.inner_text("#nb-message")

    # a click on another point while something is selected adds it by hand (thick ring); again removes it
    knn = {n["id"] for n in explorer_state(page)["neighbours"]}
    extra = next(s for s in isolated_samples(page, 60) if s != target and s not in knn)
    click_sample(page, extra)
    assert {"id": extra, "source": "manual"} in explorer_state(page)["neighbours"]
    assert page.locator(f"#overlay circle.ring-manual[data-id='{extra}']").count() == 1
    click_sample(page, extra)
    assert extra not in {n["id"] for n in explorer_state(page)["neighbours"]}
    # the remove button in the side panel
    first = explorer_state(page)["neighbours"][0]["id"]
    page.click(f"button[aria-label='Remove neighbour {first}']")
    assert len(explorer_state(page)["neighbours"]) == 4
    page.click("#find-btn")
    page.wait_for_function("() => window.__latentlab.explorer.state().neighbours.length === 5")
    neighbours = [n["id"] for n in explorer_state(page)["neighbours"]]

    page.fill("#gen-variations", "4")
    page.fill("#gen-seed", "7")
    page.click("#generate-btn")
    page.locator("#gen-job").wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelectorAll('#gen-results li').length === 4", timeout=GENERATION_TIMEOUT_MS
    )
    # the images are listed first (from the job's final event), then the map's stars are drawn
    page.wait_for_function(
        "() => document.querySelectorAll('#overlay path.gen-star.is-new').length === 4"
        " && document.querySelector('#gen-message').textContent.includes('4 new images')"
    )
    after = explorer_state(page)
    assert after["stars"] == before["stars"] + 4
    assert page.locator("#overlay line.gen-line").count() == after["stars"]
    assert after["points"] == before["points"] + 4
    assert "4 new images" in page.inner_text("#gen-message")
    page.screenshot(path=str(artifacts_dir() / "explorer.png"))

    # a new sample: its recipe, and its parents marked on the map
    new_ids = [int(t.lstrip("#")) for t in page.locator("#gen-results li span").all_inner_texts()]
    new_id = new_ids[0]
    page.click(f"button[aria-label='Select new sample {new_id}']")
    page.wait_for_function(
        f"() => window.__latentlab.explorer.state().parents.length === {len(neighbours) + 1}"
    )
    recipe = page.inner_text("#recipe")
    assert "activation_mean" in recipe and "encoder_bottleneck" in recipe
    assert page.locator("#overlay path.parent").count() == len(neighbours) + 1
    page.screenshot(path=str(artifacts_dir() / "explorer-generated-selected.png"))

    # a generated sample is selected like any other point, and takes neighbours by hand; the stars drawn
    # since may cover the first target (they land near its neighbours), so pick a point clear of them now
    parents = set(explorer_state(page)["parents"])
    other = next(s for s in isolated_samples(page, 60) if s not in parents and s not in new_ids)
    click_sample(page, other)
    assert {"id": other, "source": "manual"} in explorer_state(page)["neighbours"]
    page.click("#clear-selection")
    assert explorer_state(page)["selected"] is None

    # its lineage graph on the history page
    page.goto(f"{lab.url}/history?sample={new_id}#lineage")
    page.locator(f"#lineage-graph g.node.is-root[data-id='{new_id}']").wait_for()
    for parent in [target, *neighbours]:
        assert page.locator(f"#lineage-graph g.node[data-id='{parent}']").count() == 1
    assert page.locator("#lineage-graph path.edge.role-selected").count() == 1
    assert page.locator("#lineage-graph path.edge.role-neighbor").count() == len(neighbours)
    page.locator("#lineage").screenshot(path=str(artifacts_dir() / "lineage.png"))

    # filter the history
    page.select_option("#f-mode", "activation_mean")
    page.fill("#f-user", "alice")
    page.click("#history-filters button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('#history-rows tbody tr').length >= 4")
    for sid in new_ids:
        assert page.locator(f"#history-rows tr[data-sample='{sid}']").count() == 1
    page.fill("#f-user", "bob")
    page.click("#history-filters button[type=submit]")
    page.locator("text=No generation matches these filters.").wait_for()
    page.fill("#f-user", "")
    page.select_option("#f-mode", "umap_inverse")
    page.click("#history-filters button[type=submit]")
    page.locator("text=No generation matches these filters.").wait_for()
    assert "mode=umap_inverse" in page.url
    assert not alice.page_errors
    assert not alice.csp_violations()


def test_two_users_on_one_map_keep_their_own_selection(lab, signed_in):
    alice, bob = signed_in("alice"), signed_in("bob")
    a_page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    a, b, c = isolated_samples(a_page, 3)
    click_sample(a_page, a, shift=True)
    click_sample(a_page, b)
    assert explorer_state(a_page)["selected"] == a

    b_page = open_explorer(bob, f"?embedding={lab.embedding_id}")
    assert explorer_state(b_page)["selected"] is None
    assert b_page.locator("#overlay circle.sel-dot").count() == 0
    click_sample(b_page, c)
    assert explorer_state(b_page)["selected"] == c

    a_page.reload()
    a_page.wait_for_function(READY)
    assert explorer_state(a_page)["selected"] == a
    assert [n["id"] for n in explorer_state(a_page)["neighbours"]] == [b]
    b_page.reload()
    b_page.wait_for_function(READY)
    assert explorer_state(b_page)["selected"] == c
    assert explorer_state(b_page)["neighbours"] == []
    # the selection is only in each browser (keyed by user and map), never in a server answer
    keys = a_page.evaluate("Object.keys(localStorage)")
    assert f"latentlab.selection.v1:{lab.users['alice']}:{lab.embedding_id}" in keys


def test_bad_input_shows_messages_in_the_page(lab, signed_in):
    alice = signed_in("alice")
    # this page runs without the event stream: job progress comes from polling /api/v1/jobs/<id>
    alice.context.add_init_script("window.__latentlabNoSSE = true;")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    page.click("#clear-selection") if page.is_enabled("#clear-selection") else None

    page.click("#generate-btn")
    assert "Select a sample on the map first" in page.inner_text("#gen-message")
    target = isolated_samples(page, 1)[0]
    click_sample(page, target)
    page.click("#generate-btn")
    assert "Add at least one neighbour" in page.inner_text("#gen-message")

    # an API 4xx sentence is shown as the server wrote it
    set_range(page, "#nb-k", 3)
    page.click("#find-btn")
    page.wait_for_function("() => window.__latentlab.explorer.state().neighbours.length === 3")
    page.fill("#gen-steps", "1")
    page.fill("#gen-mask-steps", "5")
    page.click("#generate-btn")
    page.wait_for_function("() => document.querySelector('#gen-message').textContent.includes('mask_steps')")
    assert page.inner_text("#gen-message") == "mask_steps (5) cannot exceed steps (1)."
    page.fill("#gen-mask-steps", "")
    page.fill("#gen-steps", "")
    assert not alice.page_errors

    # a saved selection that names a sample no longer on the map is dropped, with a visible notice
    key = f"latentlab.selection.v1:{lab.users['alice']}:{lab.embedding_id}"
    saved = {"selected": target, "neighbours": [{"id": 987654, "source": "manual", "weight": 1}]}
    page.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(saved))})")
    page.reload()
    page.wait_for_function(READY)
    notice = page.locator("#explorer-notice")
    assert notice.is_visible() and "987654" in notice.inner_text()
    assert explorer_state(page)["selected"] == target and explorer_state(page)["neighbours"] == []
    saved = {"selected": 987655, "neighbours": []}
    page.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(saved))})")
    page.reload()
    page.wait_for_function(READY)
    assert "987655" in page.inner_text("#explorer-notice")
    assert explorer_state(page)["selected"] is None

    # a failed job shows its error text: a neighbour whose activations cannot be read
    click_sample(page, target)
    # a point a click can reach (clear of other markers and the legend), not just any sample id
    broken = next(s for s in isolated_samples(page, 60) if s != target and s in set(lab.sample_ids))
    with lab.sessions.begin() as s:
        row = s.get(Sample, broken).act_row
        s.execute(update(Sample).where(Sample.id == broken).values(act_row=10_000_000))
    try:
        click_sample(page, broken)
        assert {"id": broken, "source": "manual"} in explorer_state(page)["neighbours"]
        page.fill("#gen-variations", "1")
        page.click("#generate-btn")
        error = page.locator("#gen-job .job-error")
        error.wait_for(timeout=GENERATION_TIMEOUT_MS)
        with lab.sessions() as s:
            newest = select(Job).where(Job.kind == "generate_from_neighbors").order_by(Job.id.desc())
            job = s.scalars(newest).first()
            assert job.status == "failed" and job.error
            assert job.error in error.inner_text()
    finally:
        with lab.sessions.begin() as s:
            s.execute(update(Sample).where(Sample.id == broken).values(act_row=row))

    # signed out (here: in another tab) → the next API call shows a sign-in message, not a silent failure
    other = alice.new_page()
    other.goto(f"{lab.url}/")
    other.click(".signout button[type=submit]")
    other.wait_for_url(re.compile(r".*/login.*"))
    page.click("#find-btn")
    banner = page.locator("#session-notice")
    banner.wait_for(state="visible")
    assert "signed out" in banner.inner_text()
    assert "/login?next=" in banner.locator("a").get_attribute("href")
    page.goto(f"{lab.url}/explorer")
    assert "/login?next=/explorer" in page.url
    assert not alice.page_errors
    assert not alice.csp_violations()


def test_datasets_jobs_and_dataset_pages(lab, signed_in):
    alice = signed_in("alice")
    page = alice.goto("/datasets")
    page.locator(f"tr[data-id='{lab.dataset_id}']").wait_for()
    assert "ready" in page.inner_text(f"tr[data-id='{lab.dataset_id}']")

    # a bad request: the server's sentence, verbatim (the same body sent by hand answers the same)
    page.fill("#ds-name", "demo")
    page.fill("#ds-num", "10")
    page.click("#create-dataset button[type=submit]")
    page.wait_for_function("() => document.querySelector('#create-message').classList.contains('is-error')")
    body = {
        "model": lab.model,
        "name": "demo",
        "num_samples": 10,
        "seed": 0,
        "dtype": "float32",
        "batch_size": 64,
        "layers": ["encoder_bottleneck", "midblock"],
    }
    answer = page.evaluate(POST_JSON, ["/api/v1/datasets", body])
    assert answer[0] == 409 and answer[1]["error"].startswith("Dataset 'demo'")
    assert page.inner_text("#create-message") == answer[1]["error"]

    name = f"mini-{uuid.uuid4().hex[:6]}"
    page.fill("#ds-name", name)
    page.fill("#ds-num", "6")
    page.click("#create-dataset button[type=submit]")
    page.locator("#create-message.is-ok").wait_for()
    job_id = int(re.search(r"job (\d+)", page.inner_text("#create-message")).group(1))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#datasets-list tr')].some((tr) => "
        f"tr.textContent.includes('{name}') && tr.textContent.includes('ready'))",
        timeout=GENERATION_TIMEOUT_MS,
    )
    assert wait_for_job(lab.sessions, job_id, timeout=600).status == "succeeded"

    # the queue dashboard: a running job of mine with a progress bar and a cancel button
    status, job = page.evaluate(
        POST_JSON, ["/api/v1/jobs", {"kind": "ping", "params": {"seconds": 60, "steps": 60}}]
    )
    assert status == 202
    page = alice.goto("/jobs")
    row = page.locator(f"#queue-jobs tr[data-job='{job['id']}']")
    row.wait_for()
    assert row.locator("progress").count() == 1
    page.screenshot(path=str(artifacts_dir() / "jobs.png"))
    row.locator("button", has_text="Cancel").click()
    page.wait_for_function(
        f"() => !document.querySelector(\"#queue-jobs tr[data-job='{job['id']}']\")", timeout=60_000
    )
    assert wait_for_job(lab.sessions, job["id"], timeout=600).status == "cancelled"

    page = alice.goto(f"/datasets/{lab.dataset_id}")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid figure').length === 60")
    page.select_option("#filter-limit", "30")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid figure').length === 30")
    assert page.inner_text("#page-info").startswith("1–30 of 60")
    page.click("#page-next")
    page.wait_for_function("() => document.querySelector('#page-info').textContent.startsWith('31–60')")
    page.select_option("#filter-class", "3")
    page.wait_for_function("() => document.querySelectorAll('#sample-grid figure').length === 6")
    page.screenshot(path=str(artifacts_dir() / "dataset.png"), full_page=True)
    assert not alice.page_errors
    assert not alice.csp_violations()


def test_pages_work_from_the_keyboard(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    page.click("#clear-selection") if page.is_enabled("#clear-selection") else None
    target = isolated_samples(page, 1)[0]
    page.focus("#select-id")
    page.keyboard.type(str(target))
    page.keyboard.press("Enter")
    assert explorer_state(page)["selected"] == target
    # Tab reaches the neighbour search (slider, the space radios, the button), with a visible outline
    page.focus("#nb-k")
    seen = []
    for _ in range(4):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.id || document.activeElement.name"))
        if seen[-1] == "find-btn":
            break
    assert seen[-1] == "find-btn", seen
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__latentlab.explorer.state().neighbours.length > 0")


# what the page fetched: how often each of its points answers and modules was requested, and the preloads
FETCHED = """() => {
  const names = performance.getEntriesByType('resource').map((r) => new URL(r.name).pathname);
  const count = (test) => names.filter(test).length;
  return {
    points: count((n) => n.endsWith('/points')),
    modules: count((n) => n.startsWith('/static/js/explorer/')),
    distinctModules: new Set(names.filter((n) => n.startsWith('/static/js/explorer/'))).size,
    preloads: [...document.querySelectorAll('link[rel=modulepreload]')].length,
    pointsPreload: document.querySelectorAll('link[rel=preload][as=fetch]').length,
  };
}"""


def test_plotly_is_served_by_the_app_and_only_the_explorer_allows_eval(lab, signed_in):
    alice = signed_in("alice")
    console_errors = []
    alice.page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    # the page draws with the explorer's own Plotly.js bundle; its points and modules are preloaded and
    # fetched once each; the map the preview path draws (thresholds lowered) reaches interactive as well
    page = open_explorer(alice, f"?embedding={lab.embedding_id}&preview_min=1")
    fetched = page.evaluate(FETCHED)
    assert fetched["points"] == 1 and fetched["pointsPreload"] == 1, fetched
    assert fetched["preloads"] >= 10 and fetched["modules"] == fetched["distinctModules"], fetched
    assert page.evaluate("window.__latentlab.explorer.sampleIds(5).length") == 5
    assert page.evaluate("document.querySelector('#map').data.some((t) => t.type === 'scattergl')")
    assert not alice.page_errors and not alice.csp_violations() and not console_errors, console_errors
    src = page.eval_on_selector("script[src*='plotly']", "el => el.getAttribute('src')")
    assert src.startswith("/static/vendor/plotly.min.js?v=")
    answer = page.request.get(f"{lab.url}{src}", headers={"Accept-Encoding": "gzip"})
    assert answer.ok and answer.headers["content-type"].startswith("text/javascript")
    assert answer.headers["content-encoding"] == "gzip"
    assert "immutable" in answer.headers["cache-control"] and answer.headers["etag"]
    head = answer.body()[:300]
    assert b"plotly.js v" in head and b"traces: scatter, scattergl, heatmap" in head
    explorer_csp = page.request.get(f"{lab.url}/explorer").headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-eval'" in explorer_csp and "style-src 'self';" in explorer_csp
    for path in ("/datasets", "/jobs", "/history", f"/datasets/{lab.dataset_id}"):
        csp = page.request.get(f"{lab.url}{path}").headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe" not in csp


def test_long_lists_of_datasets_and_jobs_show_more_on_request(lab, signed_in):
    # more rows than one page: 100 datasets more (the page shows 100 at first) and 55 jobs (50 at first)
    with lab.sessions.begin() as s:
        base = s.get(Dataset, lab.dataset_id)
        copies = ("model_id", "layers", "layer_shapes", "layer_modules", "classes", "checkpoint_sha256")
        extra = [
            Dataset(
                name=f"paged-{i:03d}",
                **{k: getattr(base, k) for k in (*copies, "code_version")},
                seed=i,
                target_size=0,
                status="ready",
                owner_id=lab.users["alice"],
            )
            for i in range(100)
        ]
        pings = [
            Job(
                kind="ping",
                queue="interactive",
                owner_id=lab.users["alice"],
                params={"seconds": 0},
                status="succeeded",
            )
            for _ in range(55)
        ]
        s.add_all([*extra, *pings])
        s.flush()
        made = ([d.id for d in extra], [j.id for j in pings])
    rows = "document.querySelectorAll('#datasets-list tbody tr').length"
    try:
        alice = signed_in("alice")
        page = alice.goto("/datasets")
        page.wait_for_function(f"() => {rows} === 100")
        page.click("#datasets-list button[data-more]")
        page.wait_for_function(f"() => {rows} > 100")
        total = page.evaluate(rows)
        with lab.sessions() as s:
            assert total == s.scalar(select(func.count(Dataset.id)))
        assert page.locator("#datasets-list button[data-more]").count() == 0  # all shown: no more link

        page = alice.goto("/jobs")
        jobs_rows = "document.querySelectorAll('[data-jobs] tr').length - 1"  # minus the header row
        page.wait_for_function(f"() => {jobs_rows} === 50")
        page.click("[data-jobs] button[data-more]", timeout=30_000)
        page.wait_for_function(f"() => {jobs_rows} > 50")
        shown = page.evaluate(jobs_rows)
        with lab.sessions() as s:
            assert shown == min(
                100,
                s.scalar(
                    select(func.count(Job.id)).where(
                        Job.owner_id == lab.users["alice"], Job.parent_id.is_(None)
                    )
                ),
            )
        assert not alice.page_errors and not alice.csp_violations()
    finally:
        with lab.sessions.begin() as s:
            s.execute(delete(Dataset).where(Dataset.id.in_(made[0])))
            s.execute(delete(Job).where(Job.id.in_(made[1])))
