"""The explorer's research tools in a real browser against a real server and worker: box and lasso
selection into sets A and B with undo, colour by with the legend as a filter and the density layer,
exports and pasted ids, the link that reopens the same view, and the keyboard shortcuts; bad input shows
a message in the page and never a console error."""

from __future__ import annotations

import csv
import io
import json

from tests.e2e.lab import artifacts_dir
from tests.e2e.test_explorer import GENERATION_TIMEOUT_MS, READY, explorer_state, open_explorer

# every point's screen position: [[id, x, y], ...]
POSITIONS = """() => {
  const ex = window.__latentlab.explorer;
  return ex.sampleIds(1e6, null).map((id) => { const p = ex.clientPoint(id); return [id, p.x, p.y]; });
}"""
PLOT_BOX = """() => {
  const r = document.querySelector('#map .nsewdrag').getBoundingClientRect();
  return [r.x, r.y, r.width, r.height];
}"""


def watch_console(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


def drag_polygon(page, corners: list[tuple[float, float]]) -> None:
    """A real mouse drag through the corners and back to the first (a lasso, or a box from first to third)."""
    page.mouse.move(*corners[0])
    page.mouse.down()
    path = [*corners, corners[0]]
    for (ax, ay), (bx, by) in zip(path, path[1:], strict=False):
        for k in range(1, 7):
            page.mouse.move(ax + (bx - ax) * k / 6, ay + (by - ay) * k / 6)
    page.mouse.up()


def drag_box(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(start[0] + (end[0] - start[0]) * k / 8, start[1] + (end[1] - start[1]) * k / 8)
    page.mouse.up()


def split_left_right(page) -> tuple[float, list[int], list[int], list[float]]:
    """A vertical line through the widest gap between points near the middle: (x, ids left, ids right,
    the points' bounding box)."""
    pts = page.evaluate(POSITIONS)
    xs = sorted(p[1] for p in pts)
    mid = len(xs) // 2
    gaps = [(xs[i + 1] - xs[i], i) for i in range(mid - len(xs) // 4, mid + len(xs) // 4)]
    width, i = max(gaps)
    assert width > 10, "no clear gap between the points to lasso along"
    cut = (xs[i] + xs[i + 1]) / 2
    left = sorted(p[0] for p in pts if p[1] < cut)
    right = sorted(p[0] for p in pts if p[1] > cut)
    box = [
        min(p[1] for p in pts) - 6,
        min(p[2] for p in pts) - 6,
        max(p[1] for p in pts) + 6,
        max(p[2] for p in pts) + 6,
    ]
    return cut, left, right, box


def selection_ids(state: dict) -> list[int]:
    return sorted([state["selected"], *[n["id"] for n in state["neighbours"]]])


def test_lasso_box_sets_undo_colour_by_and_density(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    console = watch_console(page)
    page.keyboard.press("Escape")  # start from an empty selection
    page.keyboard.press("l")
    assert page.get_attribute("#drag-lasso", "aria-pressed") == "true"
    cut, left, right, (x0, y0, x1, y1) = split_left_right(page)

    # a lasso around every point left of the cut: all of them selected (the first as the selected one)
    drag_polygon(page, [(x0, y0), (cut, y0), (cut, y1), (x0, y1)])
    page.wait_for_function("() => window.__latentlab.lassos.length === 1")
    state = explorer_state(page)
    assert selection_ids(state) == left
    assert {n["source"] for n in state["neighbours"]} == {"region"}
    assert f"of the {len(left)} points caught added to set A" in page.inner_text("#tool-message")
    # what the lasso did not catch is dimmed (Plotly's selected/unselected styling), still drawn
    assert page.evaluate(
        "() => document.querySelector('#map').data.some((t) => Array.isArray(t.selectedpoints))"
    )
    page.screenshot(path=str(artifacts_dir() / "explorer-lasso.png"))

    # set B by box: the points right of the cut
    page.keyboard.press("2")
    page.keyboard.press("b")
    # each drag starts off the outlines Plotly keeps of earlier selections (a drag there would move them)
    drag_box(page, (cut + 5, y0), (x1, y1))
    page.wait_for_function("() => window.__latentlab.lassos.length === 2")
    state = explorer_state(page)
    assert sorted(state["negative"]) == right and selection_ids(state) == left
    assert page.locator("#overlay circle.ring-b").count() == len(right)
    assert f"set B (negative): {len(right)}" in page.inner_text("#set-counts")

    # remove mode takes the box's points out of set B; undo (U) puts them back; undo again drops the lasso
    page.keyboard.press("r")
    drag_box(page, (x1 + 5, y1 + 5), (cut + 5, y0 + 2))
    page.wait_for_function("() => window.__latentlab.lassos.length === 3")
    assert explorer_state(page)["negative"] == []
    page.keyboard.press("u")
    assert sorted(explorer_state(page)["negative"]) == right
    page.keyboard.press("Control+z")
    page.keyboard.press("u")
    assert explorer_state(page)["selected"] is None and explorer_state(page)["neighbours"] == []

    # a lasso around empty space: a message, nothing changes
    page.keyboard.press("r")
    page.keyboard.press("1")
    page.keyboard.press("l")
    bx, by, bw, bh = page.evaluate(PLOT_BOX)
    empty = [(bx + 3, by + bh - 30), (bx + 25, by + bh - 30), (bx + 25, by + bh - 4), (bx + 3, by + bh - 4)]
    if not any(bx <= p[1] <= bx + 30 and by + bh - 34 <= p[2] <= by + bh for p in page.evaluate(POSITIONS)):
        drag_polygon(page, empty)
        page.wait_for_function(
            "() => /caught no points/.test(document.querySelector('#tool-message').textContent)"
        )
        assert explorer_state(page)["selected"] is None

    # colour by origin, then owner: the legend names them; a legend click hides a trace
    page.select_option("#colour-by", "origin")
    page.wait_for_function("() => window.__latentlab.explorer.state().traces.includes('dataset')")
    page.select_option("#colour-by", "owner")
    page.wait_for_function("() => window.__latentlab.explorer.state().traces.includes('alice')")
    page.locator(".legend .traces").first.click()
    page.wait_for_function(
        "() => document.querySelector('#map').data.some((t) => t.visible === 'legendonly')"
    )
    page.keyboard.press("d")  # the density layer under the points
    page.wait_for_function("() => document.querySelector('#map').data[0].type === 'heatmap'")
    assert "colour=owner" in page.url and "density=1" in page.url
    page.screenshot(path=str(artifacts_dir() / "explorer-colour-owner-density.png"))
    page.keyboard.press("?")
    assert page.locator("#help-popover").is_visible() and "lasso" in page.inner_text("#help-popover")
    page.keyboard.press("Escape")
    assert page.locator("#help-popover").is_hidden()
    assert alice.page_errors == [] and console == []


def test_paste_ids_export_and_a_shared_link_reopen_the_view(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}&colour=class")
    console = watch_console(page)
    page.keyboard.press("Escape")
    page.click("#export-buttons button[data-what='selection'][data-format='csv']")
    assert "The selection is empty" in page.inner_text("#tool-message")

    a, b, c = lab.sample_ids[:3]
    page.fill("#paste-text", f"{a}, abc 999999\n{b};{c} -4")
    page.click("#paste-ids button[type=submit]")
    message = page.inner_text("#tool-message")
    assert "not on this map: 999999" in message and '"abc"' in message and '"-4"' in message
    state = explorer_state(page)
    assert state["selected"] == a and [n["id"] for n in state["neighbours"]] == [b, c]

    with page.expect_download() as got:
        page.click("#export-buttons button[data-what='selection'][data-format='csv']")
    rows = list(csv.DictReader(io.StringIO(got.value.path().read_text())))
    assert [(int(r["id"]), r["set"], r["origin"]) for r in rows] == [
        (a, "selected", "dataset"),
        (b, "A", "dataset"),
        (c, "A", "dataset"),
    ]
    assert all(r["class"] and float(r["x"]) == float(r["x"]) for r in rows)
    page.click("#reset-view")
    with page.expect_download() as got:
        page.click("#export-buttons button[data-what='visible'][data-format='json']")
    visible = json.loads(got.value.path().read_text())
    assert len(visible) == explorer_state(page)["points"]
    got.value.save_as(artifacts_dir() / "explorer-visible.json")

    # the link carries map, selection and colouring: bob opens it and sees the same selection
    page.select_option("#colour-by", "origin")
    page.wait_for_function("() => /colour=origin/.test(location.search)")
    link = page.url
    assert f"sel={a}" in link and f"a={b}%2C{c}" in link
    bob = signed_in("bob")
    shared = bob.page
    shared.goto(link)
    shared.wait_for_function(READY, timeout=60_000)
    seen = explorer_state(shared)
    assert seen["selected"] == a and [n["id"] for n in seen["neighbours"]] == [b, c]
    assert seen["colourBy"] == "origin"
    # and alice's reload keeps hers
    page.reload()
    page.wait_for_function(READY, timeout=60_000)
    assert selection_ids(explorer_state(page)) == sorted([a, b, c])
    assert alice.page_errors == [] and bob.page_errors == [] and console == []


def test_place_a_target_generate_there_and_warn_outside_the_map(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    console = watch_console(page)
    page.keyboard.press("Escape")
    page.click("#reset-view")
    page.keyboard.press("g")
    assert page.get_attribute("#drag-place", "aria-pressed") == "true"

    # a corner of the plot area lies beyond the map's points: a warning, the target kept
    bx, by, bw, bh = page.evaluate(PLOT_BOX)
    page.mouse.click(bx + 3, by + 3)
    assert "outside the map's extent" in page.inner_text("#place-info")
    assert page.locator("#overlay path.target-star").count() == 1

    # between two samples: inside; Generate inverts exactly that point
    a, b = lab.sample_ids[:2]
    pa = page.evaluate(f"window.__latentlab.explorer.clientPoint({a})")
    pb = page.evaluate(f"window.__latentlab.explorer.clientPoint({b})")
    page.mouse.click((pa["x"] + pb["x"]) / 2, (pa["y"] + pb["y"]) / 2)
    info = page.inner_text("#place-info")
    assert "Target (" in info and "outside" not in info
    assert page.input_value("#gen-mode") == "umap_inverse"
    target = page.evaluate("window.__latentlab.explorer.state().target")
    page.fill("#gen-variations", "1")
    page.fill("#gen-seed", "3")
    before = explorer_state(page)["stars"]
    page.click("#generate-btn")
    page.wait_for_function(
        f"() => window.__latentlab.explorer.state().stars === {before + 1}", timeout=GENERATION_TIMEOUT_MS
    )
    newest = page.evaluate(
        f"fetch('/api/v1/embeddings/{lab.embedding_id}/generations').then((r) => r.json())"
    )[0]
    assert newest["mode"] == "umap_inverse"
    assert abs(newest["center"][0] - target[0]) < 1e-4 and abs(newest["center"][1] - target[1]) < 1e-4
    assert newest["actual"][0] is not None  # where it landed, drawn as the circle at the end of the line
    assert page.locator(f"#overlay g.gen[data-id='{newest['sample_id']}'] line.gen-line").count() == 1
    page.screenshot(path=str(artifacts_dir() / "explorer-place-generated.png"))
    assert "null" not in page.inner_text(".side-panel")
    page.click("#clear-target")
    assert page.locator("#overlay path.target-star").count() == 0
    assert alice.page_errors == [] and console == []
