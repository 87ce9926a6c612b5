"""The big maps' draw path (explorer/plot.js) on the shared demo map, its thresholds lowered through the
URL: the canvas preview first, then the WebGL traces cut into parts; the legend, hover and click still
work on the parts as on whole traces."""

from __future__ import annotations

from tests.e2e.lab import artifacts_dir
from tests.e2e.test_explorer import click_sample, explorer_state, isolated_samples, open_explorer

PARTS = """() => {
  const data = document.querySelector('#map').data;
  const groups = new Map();
  for (const t of data) if (t.legendgroup) groups.set(t.legendgroup, (groups.get(t.legendgroup) || 0) + 1);
  const hidden = data.filter((t) => t.visible === 'legendonly').map((t) => t.legendgroup || t.name);
  return {traces: data.length, groups: [...groups.values()], hidden};
}"""


def test_a_big_map_is_previewed_then_drawn_in_parts_that_keep_legend_hover_and_click(lab, signed_in):
    page = open_explorer(signed_in("alice"), f"?embedding={lab.embedding_id}&preview_min=1&trace_part=2")
    t = page.evaluate("window.__latentlab.timings")
    assert t["firstPaint"] <= t["firstRender"]
    assert page.locator("canvas.map-preview").count() == 0  # the traces took over
    parts = page.evaluate(PARTS)
    legend = page.locator(".legend .legendtext").all_text_contents()
    # every class of the demo map has more than 2 points: each is drawn in parts, one legend entry each
    assert parts["groups"] and min(parts["groups"]) >= 2 and len(legend) < parts["traces"], (parts, legend)

    # hover and click find a sample inside a part
    target = isolated_samples(page, 1)[0]
    click_sample(page, target)
    assert explorer_state(page)["selected"] == target

    # a legend click hides every part of its category
    before = len(parts["hidden"])
    page.locator(".legend .traces").first.click()
    page.wait_for_function(f"() => ({PARTS})().hidden.length >= {before} + 2")
    hidden = page.evaluate(PARTS)["hidden"]
    newly = [h for h in hidden if h not in parts["hidden"]]
    assert len(newly) >= 2 and len(set(newly)) == 1 and newly[0].startswith("part-"), hidden
    page.screenshot(path=str(artifacts_dir() / "explorer-big-map-path.png"))
