"""The sweep page in a real browser: a sweep submitted from the page's session runs on the real worker,
and its page shows the grid of cells with thumbnails that open on the map."""

from __future__ import annotations

from tests.e2e.test_explorer import POST_JSON, READY
from tests.support.waiting import wait_for_job


def test_sweep_page_renders_its_grid_and_opens_a_cell_on_the_map(lab, signed_in):
    session = signed_in("alice")
    page = session.goto("/")
    ids = lab.sample_ids
    body = {
        "embedding": lab.embedding_id,
        "selected": ids[0],
        "neighbors": ids[1:4],
        "seed": 3,
        "grid": {"strength": [0.0, 0.5, 1.0], "layers": [["midblock"], ["encoder_bottleneck"]]},
    }
    status, job = page.evaluate(POST_JSON, ["/api/v1/sweeps", body])
    assert status == 202, job
    done = wait_for_job(lab.sessions, job["id"], timeout=300)
    assert done.status == "succeeded", done.error
    sweep_id = done.result["sweep_id"]

    page = session.goto(f"/sweeps/{sweep_id}")
    page.wait_for_selector("table.sweep-grid img")
    assert page.locator("table.sweep-grid td.sweep-cell img").count() == 6
    assert page.locator("table.sweep-grid tbody tr").count() == 3  # rows: strength 0, 0.5, 1
    assert "6 cells over strength × layers; 6 done" in page.inner_text("#sweep-info")
    loaded = "(i) => i.complete && i.naturalWidth > 0"
    page.wait_for_function(f"() => [...document.querySelectorAll('table.sweep-grid img')].every({loaded})")
    page.select_option("#sweep-rows", "layers")
    assert page.locator("table.sweep-grid tbody tr").count() == 2
    assert "rows=layers" in page.get_attribute("#sweep-sheet", "href")
    first = page.locator("table.sweep-grid td.sweep-cell a").first
    href = first.get_attribute("href")
    assert href.startswith(f"/explorer?embedding={lab.embedding_id}&sample=")
    first.click()
    page.wait_for_url("**/explorer**")
    page.wait_for_function(READY, timeout=60_000)
    sample = int(href.rsplit("=", 1)[1])
    page.wait_for_function(f"() => window.__latentlab.explorer.state().selected === {sample}")
    assert not session.page_errors and not session.csp_violations()
