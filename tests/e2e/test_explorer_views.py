"""The explorer's linked views in a real browser against a real server and worker: a second map of the
same dataset beside the first with hover and selection linked by sample id (and kept by the link), the
lineage mini-graph of the side panel, colour by intervention effect, and search by prompt or class; bad
input (an empty or fruitless search, a second map that is not one of this dataset's) shows a message in
the page and never a console error."""

from __future__ import annotations

import pytest

from tests.e2e.lab import artifacts_dir
from tests.e2e.test_explorer import GENERATION_TIMEOUT_MS, POST_JSON, explorer_state, open_explorer
from tests.e2e.test_explorer_tools import watch_console
from tests.support.waiting import wait_for_job

LINKED = "window.__latentlab.linked.state()"
# points in the map's "intervention effect" trace (0 when the map is not coloured by effect)
EFFECT_POINTS = """() => ((document.getElementById('map').data || [])
  .find((t) => t.name === 'intervention effect') || {x: []}).x.length"""


@pytest.fixture(scope="module")
def second_map(lab, browser):
    """A second fit of the demo dataset (another seed), made through the real job pipe."""
    from tests.e2e.conftest import Session

    session = Session(browser, lab, "alice")
    try:
        page = open_explorer(session)
        body = {"dataset": "demo", "n_neighbors": 6, "seed": 2}
        status, job = page.evaluate(POST_JSON, ["/api/v1/embeddings", body])
        assert status == 202, job
        done = wait_for_job(lab.sessions, job["id"], timeout=600)
        assert done.status == "succeeded", done.error
        return done.result["embedding_id"]
    finally:
        session.close()


# the first of the candidate ids with no generation marker (a star or landed circle of an earlier test's
# generation, which takes the pointer) within 16 px on the first map
CLEAR_OF_MARKERS = """(candidates) => {
  const ex = window.__latentlab.explorer;
  const marks = [...document.querySelectorAll("#overlay .gen path, #overlay .gen circle")].map((el) => {
    const r = el.getBoundingClientRect();
    return {x: r.x + r.width / 2, y: r.y + r.height / 2};
  });
  return candidates.find((id) => {
    const p = ex.clientPoint(id);
    return p && marks.every((q) => Math.hypot(q.x - p.x, q.y - p.y) > 16);
  }) ?? null;
}"""
# the sample the hover card shows (the one Plotly's hit test found under the pointer)
HOVERED = """() => { const m = /^#(\\d+)/.exec(document.querySelector('#hover-text').textContent || '');
  return document.querySelector('#hover-card').hidden || !m ? null : Number(m[1]); }"""


def hover(page, where: dict) -> None:
    page.mouse.move(where["x"] - 4, where["y"] - 4)
    page.mouse.move(where["x"], where["y"])


def test_linked_maps_hover_and_selection_show_on_both_and_the_link_keeps_the_second_map(
    lab, signed_in, second_map
):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    console = watch_console(page)
    page.keyboard.press("Escape")
    options = page.eval_on_selector_all("#compare-picker option", "els => els.map((e) => e.value)")
    assert str(second_map) in options and str(lab.embedding_id) not in options
    page.select_option("#compare-picker", str(second_map))
    page.wait_for_function(f"() => {LINKED}.points > 0")
    assert page.is_visible("#map2-pane")
    assert f"#{second_map}" in page.inner_text("#map2-title")

    # hovering a sample on the first map rings the same sample on the second, and the other way round
    # (which sample is under the pointer is Plotly's hit test: the hover card names it)
    a = page.evaluate(CLEAR_OF_MARKERS, lab.sample_ids)
    assert a is not None, "every sample is under a generation marker"
    hover(page, page.evaluate(f"window.__latentlab.explorer.clientPoint({a})"))
    shown = f"() => ({HOVERED})() !== null && {LINKED}.ringedOnSecond.length === 1"
    page.wait_for_function(shown, timeout=10_000)
    hovered = page.evaluate(HOVERED)
    assert page.evaluate(LINKED)["ringedOnSecond"] == [hovered]
    where = page.evaluate(f"window.__latentlab.linked.clientPoint({a})")
    hover(page, where)
    page.wait_for_function(f"() => {LINKED}.ringedOnFirst.length === 1", timeout=10_000)
    b = page.evaluate(HOVERED)
    assert page.evaluate(LINKED)["ringedOnFirst"] == [b]
    c = next(i for i in lab.sample_ids if i != b)

    # a click on the second map selects; the selection and set A show on both maps
    page.mouse.click(where["x"], where["y"])
    page.wait_for_function(f"() => window.__latentlab.explorer.state().selected === {b}", timeout=10_000)
    page.fill("#paste-text", str(c))
    page.click("#paste-ids button[type=submit]")
    assert page.evaluate(LINKED)["selectedOnSecond"] == [b]
    assert page.locator(f"#overlay2 circle.ring-manual[data-id='{c}']").count() == 1
    assert page.locator(f"#overlay circle.ring-manual[data-id='{c}']").count() == 1
    page.screenshot(path=str(artifacts_dir() / "explorer-linked-maps.png"))

    # the link names the second map; a colleague opening it sees both maps side by side
    link = page.url
    assert f"compare={second_map}" in link
    bob = signed_in("bob")
    bob_page = bob.page
    bob_page.goto(link)
    bob_page.wait_for_function(f"() => window.__latentlab.explorer && {LINKED}.embedding === {second_map}")
    assert bob_page.is_visible("#map2-pane")

    # a second map that is not one of this dataset's, or not a map: a message, no second map
    for bad in ("999999", "abc"):
        page = alice.goto(f"/explorer?embedding={lab.embedding_id}&compare={bad}")
        page.wait_for_function("() => window.__latentlab.explorer.ready")
        page.wait_for_function("() => !document.querySelector('#explorer-notice').hidden")
        text = page.inner_text("#explorer-notice")
        assert bad in text and "Compare with" in text, text
        assert page.is_hidden("#map2-pane") and explorer_state(page)["compare"] is None
    assert alice.page_errors == [] and bob.page_errors == [] and console == []


def test_search_mini_graph_and_colour_by_effect(lab, signed_in):
    alice = signed_in("alice")
    page = open_explorer(alice, f"?embedding={lab.embedding_id}")
    console = watch_console(page)
    page.keyboard.press("Escape")

    # search: empty and fruitless searches say so; a class name adds its samples to set A
    page.press("body", "/")
    assert page.evaluate("document.activeElement.id") == "search-text"
    page.click("#search-form button[type=submit]")
    assert "Type part of a prompt or class name" in page.inner_text("#tool-message")
    page.fill("#search-text", "no such prompt zzz")
    page.click("#search-form button[type=submit]")
    assert 'contains "no such prompt zzz"' in page.inner_text("#tool-message")
    get_json = "(url) => fetch(url).then((r) => r.json())"
    names = page.evaluate(get_json, f"/api/v1/embeddings/{lab.embedding_id}")["label_names"]
    word = names[1]
    page.select_option("#colour-by", "class")
    page.fill("#search-text", word.upper())  # case does not matter
    page.click("#search-form button[type=submit]")
    assert f'"{word}"' in page.inner_text("#tool-message")
    state = explorer_state(page)
    points = page.evaluate(get_json, f"/api/v1/datasets/{lab.dataset_id}/samples?limit=500")
    wanted = {s["id"] for s in points["samples"] if s["class_label"] == 1}
    # the first match becomes the selected sample (as with a lasso on an empty selection), the rest set A
    assert wanted and wanted <= {state["selected"], *(n["id"] for n in state["neighbours"])}

    # a generation compared with its natural twin: its effect colours and sizes it; the rest are grey
    a, b, c = lab.sample_ids[:3]
    effects_url = f"/api/v1/embeddings/{lab.embedding_id}/effects"
    before = set(page.evaluate(get_json, effects_url)["ids"])
    page = open_explorer(alice, f"?embedding={lab.embedding_id}&colour=effect")
    assert explorer_state(page)["colourBy"] == "effect"
    assert page.evaluate(EFFECT_POINTS) == len(before)
    # generated from the page, compared with its natural twin (the default): it joins the coloured points
    page.fill("#select-id", str(a))
    page.click("#select-by-id button[type=submit]")
    page.fill("#paste-text", f"{b}, {c}")
    page.click("#paste-ids button[type=submit]")
    page.fill("#gen-variations", "1")
    page.fill("#gen-seed", "11")
    page.click("#generate-btn")
    page.wait_for_function(f"() => ({EFFECT_POINTS})() === {len(before) + 1}", timeout=GENERATION_TIMEOUT_MS)
    effects = page.evaluate(get_json, effects_url)
    [child] = set(effects["ids"]) - before
    assert effects["effect"][effects["ids"].index(child)] is not None
    traces = page.evaluate(
        "document.getElementById('map').data.map((t) => ({name: t.name, n: t.x.length, "
        "scale: Boolean(t.marker.colorscale), sized: Array.isArray(t.marker.size)}))"
    )
    coloured = next(t for t in traces if t["name"] == "intervention effect")
    grey = next(t for t in traces if t["name"].startswith("no effect"))
    assert coloured["scale"] and coloured["sized"] and coloured["n"] == len(effects["ids"])
    assert grey["n"] >= len(lab.sample_ids)
    legend = page.inner_text("#scale-legend")
    assert f"intervention effect (colour and size): {len(effects['ids'])} samples" in legend
    assert "grey: no value" in legend
    page.screenshot(path=str(artifacts_dir() / "explorer-colour-by-effect.png"))

    # the mini-graph of the generated sample: its parents above, clickable to select one
    page.fill("#select-id", str(child))
    page.click("#select-by-id button[type=submit]")
    graph = page.locator("#recipe svg.mini-graph")
    graph.wait_for()
    parents = graph.locator("g.mini-node.role-neighbor, g.mini-node.role-selected")
    ids = {int(x) for x in parents.evaluate_all("els => els.map((e) => e.dataset.id)")}
    assert ids == {a, b, c}
    assert graph.locator(f"g.mini-node.role-self[data-id='{child}']").count() == 1
    assert graph.locator("line.edge").count() >= 3
    page.screenshot(path=str(artifacts_dir() / "explorer-lineage-mini-graph.png"))
    graph.locator(f"g.mini-node[data-id='{b}']").click()
    page.wait_for_function(f"() => window.__latentlab.explorer.state().selected === {b}")
    # the parent's own graph lists the generated sample among its children
    page.locator(f"#recipe svg.mini-graph g.mini-node.role-child[data-id='{child}']").wait_for()
    assert alice.page_errors == [] and console == []


def test_the_map_picker_lists_maps_beyond_the_first_page(lab, signed_in):
    from sqlalchemy import delete

    from common.models import Embedding

    # 120 newer (failed) maps push the lab's map off the list's first page of 100
    with lab.sessions.begin() as s:
        fillers = [
            Embedding(
                dataset_id=lab.dataset_id,
                name=f"filler-{i}",
                layers=[],
                params={},
                status="failed",
                owner_id=lab.users["alice"],
            )
            for i in range(120)
        ]
        s.add_all(fillers)
        s.flush()
        filler_ids = [e.id for e in fillers]
    try:
        alice = signed_in("alice")
        page = open_explorer(alice, f"?embedding={lab.embedding_id}")
        values = page.eval_on_selector_all("#embedding-picker option", "els => els.map((e) => e.value)")
        assert {str(i) for i in filler_ids} <= set(values) and str(lab.embedding_id) in values
        assert page.input_value("#embedding-picker") == str(lab.embedding_id)
        assert explorer_state(page)["embedding"] == lab.embedding_id
        assert alice.page_errors == []
    finally:
        with lab.sessions.begin() as s:
            s.execute(delete(Embedding).where(Embedding.id.in_(filler_ids)))
