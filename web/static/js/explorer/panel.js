// The side panel's selection half: clicks that select and pick neighbours, the overlay that draws them,
// the selected sample's card and recipe, and the neighbour list with its k-NN search.
import { api, ApiError } from "../api.js";
import { className, h, say, thumb } from "../ui.js";
import { $, els, notice, state, T } from "./context.js";
import { miniGraph } from "./minigraph.js";
import { Overlay } from "./overlay.js";
import { hideHover, showHover } from "./plot.js";

export const overlay = new Overlay(els.overlay, els.plot, {
  onStarClick: (id, e) => handlePointClick(id, e.shiftKey, performance.now()),
  onStarEnter: (id, e) => showHover(id, e.clientX, e.clientY),
  onStarLeave: () => hideHover(),
});

const MAX_RINGS = 400;
const MAX_LISTED = 60;

// -- selection --------------------------------------------------------------------------------------------

export function handlePointClick(id, shift, t0) {
  const sel = state.selection;
  if (!sel) return;
  if (sel.selected === null || shift) sel.select(id);
  else if (id === sel.selected) return;
  else sel.toggle(id, state.activeSet);
  requestAnimationFrame(() => {
    const now = performance.now();
    const entry = { id, handlerMs: now - t0 };
    if (T.timings.pointerDown) entry.pointerMs = now - T.timings.pointerDown;
    T.clicks.push(entry);
    T.timings.lastClickMs = entry.handlerMs;
  });
}

function point(id) {
  const p = state.map && state.map.get(id);
  return p ? { id, x: p.x, y: p.y } : null;
}

export function renderOverlay() {
  if (!state.map) return;
  const sel = state.selection;
  const parents = [];
  if (state.detail && sel && state.detail.id === sel.selected) {
    for (const parent of state.detail.parents || []) {
      const p = point(parent.sample_id);
      if (p) parents.push(p);
    }
  }
  // rings on the first MAX_RINGS of each set: beyond that, thousands of SVG rings would make every pan
  // frame slow (a box or lasso dims what it did not catch instead)
  overlay.render({
    selected: sel && sel.selected !== null ? point(sel.selected) : null,
    neighbours: sel
      ? sel.neighbours
          .slice(0, MAX_RINGS)
          .map((n) => ({ ...point(n.id), source: n.source }))
          .filter((n) => n.id !== undefined)
      : [],
    negative: sel ? sel.negative.slice(0, MAX_RINGS).map(point).filter(Boolean) : [],
    parents,
    generations: state.overlays.map((g) => ({
      id: g.sample_id,
      center: g.center && g.center[0] !== null ? g.center : null,
      actual: g.actual && g.actual[0] !== null ? g.actual : null,
      twin: g.twin && g.twin[0] !== null ? g.twin : null,
    })),
    fresh: state.fresh,
  });
}

export function onSelectionChange(reason) {
  renderOverlay();
  const sel = state.selection;
  els.clear.disabled = sel.selected === null && !sel.neighbours.length;
  els.findBtn.disabled = sel.selected === null;
  if (["select", "clear", "load", "undo", "region-select"].includes(reason)) {
    say(els.nbMessage, "");
    state.detail = null;
    renderSelected();
    if (sel.selected !== null) loadDetail(sel.selected);
  }
  renderNeighbours();
}

// a select from a button in the side panel: show the selection at the top of the panel
export function selectFromPanel(id) {
  state.selection.select(id);
  els.selectedCard.scrollIntoView({ block: "nearest" });
  $("sel-title").scrollIntoView({ block: "nearest" });
}

function sampleLabel(id) {
  const p = state.map && state.map.get(id);
  if (!p) return `#${id}`;
  const cls = p.cls >= 0 ? className(state.map.labelNames, p.cls) : p.origin === 1 ? "generated" : "no single class";
  return `#${id} · ${cls}`;
}

function renderSelected() {
  const sel = state.selection;
  els.recipe.hidden = true;
  els.recipe.replaceChildren();
  if (!sel || sel.selected === null) {
    els.selectedCard.replaceChildren(h("p", { class: "muted", text: "Nothing selected yet: click a point on the map." }));
    return;
  }
  const id = sel.selected;
  const p = state.map.get(id);
  els.selectedCard.replaceChildren(
    thumb(id, { size: "large", alt: `selected sample ${id}` }),
    h(
      "div",
      { class: "who-what" },
      h("strong", { text: `Sample #${id}` }),
      h("div", { text: p && p.cls >= 0 ? className(state.map.labelNames, p.cls) : "" }),
      h("div", { class: "muted", text: p && p.origin === 1 ? "generated" : "from the dataset" }),
      p ? h("div", { class: "muted", text: `at (${p.x.toFixed(3)}, ${p.y.toFixed(3)})` }) : null,
    ),
  );
}

async function loadDetail(id) {
  const token = ++state.detailToken;
  let detail;
  try {
    detail = await api(`/api/v1/samples/${id}`);
  } catch (err) {
    if (token !== state.detailToken) return;
    if (err instanceof ApiError && err.status === 404) {
      notice(`Sample ${id} no longer exists; it was removed from your selection.`);
      state.selection.clear();
    }
    return;
  }
  if (token !== state.detailToken || !state.selection || state.selection.selected !== id) return;
  state.detail = detail;
  const extra = state.map.extra.get(id);
  if (extra && detail.class_label !== null && detail.class_label !== undefined && extra.cls < 0) {
    // a sample generated in this page: the detail tells its class
    extra.cls = detail.class_label;
    renderSelected();
  }
  renderRecipe(detail);
  renderOverlay();
}

// a thumbnail that selects its sample (the compare strips: parents, children)
function strip(id, role) {
  return h(
    "li",
    {},
    h(
      "button",
      {
        type: "button",
        title: `Select sample ${id}`,
        "aria-label": `Select ${role} sample ${id}`,
        onclick: () => {
          if (state.map.has(id)) selectFromPanel(id);
          else notice(`Sample ${id} is not on this map.`);
        },
      },
      thumb(id, { size: "small" }),
    ),
    h("span", { text: `#${id}` }),
  );
}

function fact(label, value) {
  return [h("dt", { text: label }), h("dd", { text: value === null || value === undefined ? "—" : String(value) })];
}

function renderRecipe(detail) {
  const g = detail.generation;
  const parts = [];
  if (detail.index !== null && detail.index !== undefined) {
    parts.push(h("dl", {}, ...fact("index", detail.index), ...fact("noise seed", detail.noise_seed)));
  }
  if (g) {
    const labels = state.map.labelNames;
    const cls = g.class_label !== null ? className(labels, g.class_label) : g.label_weights ? "blend" : "none";
    parts.push(
      h("h3", { class: "visually-hidden", text: "Recipe" }),
      h(
        "dl",
        {},
        ...fact("mode", g.mode),
        ...fact("noise seed", g.noise_seed),
        ...fact("class", `${cls} (${g.class_mode})`),
        ...fact("steps", g.mask_steps !== null ? `${g.steps} (mask on the first ${g.mask_steps})` : g.steps),
        ...fact("layers", (g.layers || []).join(", ")),
        ...fact("landed from intended", g.distance_to_intended !== null ? g.distance_to_intended.toFixed(4) : null),
        ...fact("round-trip error", g.roundtrip_error !== null ? g.roundtrip_error.toFixed(4) : null),
        ...fact("job", g.job_id),
      ),
    );
  }
  const parents = detail.parents || [];
  const graph = miniGraph(detail, (id) => {
    if (state.map.has(id)) selectFromPanel(id);
    else notice(`Sample ${id} is not on this map.`);
  });
  if (graph) parts.push(h("div", { class: "mini-graph-box", "aria-label": "Lineage mini-graph" }, graph));
  if (parents.length) {
    parts.push(h("div", { class: "muted", text: `Made from ${parents.length} parent${parents.length > 1 ? "s" : ""} (purple diamonds on the map):` }));
    parts.push(
      h(
        "ul",
        { class: "parents" },
        ...parents.map((p) =>
          h(
            "li",
            {},
            h(
              "button",
              {
                type: "button",
                title: `Select sample ${p.sample_id}`,
                "aria-label": `Select parent sample ${p.sample_id} (${p.role})`,
                onclick: () => {
                  if (state.map.has(p.sample_id)) selectFromPanel(p.sample_id);
                  else notice(`Sample ${p.sample_id} is not on this map.`);
                },
              },
              thumb(p.sample_id, { size: "small" }),
            ),
            h("span", { text: p.role === "selected" ? `#${p.sample_id} sel.` : `#${p.sample_id} w ${Number(p.weight).toFixed(2)}` }),
          ),
        ),
      ),
    );
  }
  const children = [...new Set((detail.children || []).map((c) => c.sample_id))];
  if (children.length) {
    parts.push(h("div", { class: "muted", text: `Parent of ${children.length} generated sample(s):` }));
    parts.push(h("ul", { class: "parents children" }, ...children.slice(0, 24).map((cid) => strip(cid, "child"))));
  }
  // where this sample sits on every map it is on (other maps of the dataset open with the selection kept)
  const maps = Object.entries(detail.points || {});
  if (maps.length > 1) {
    parts.push(
      h(
        "div",
        { class: "muted on-maps" },
        "On maps: ",
        ...maps.map(([embId, xy], i) => [
          i ? " · " : "",
          Number(embId) === state.emb.id
            ? h("strong", { text: `#${embId} (${xy[0].toFixed(2)}, ${xy[1].toFixed(2)})` })
            : h("a", { href: `/explorer?embedding=${embId}&sel=${detail.id}`, text: `#${embId} (${xy[0].toFixed(2)}, ${xy[1].toFixed(2)})` }),
        ]).flat(),
      ),
    );
  }
  if (g || parents.length || children.length) {
    parts.push(h("a", { href: `/history?sample=${detail.id}#lineage`, text: "Open its lineage graph" }));
  }
  els.recipe.replaceChildren(...parts);
  els.recipe.hidden = !parts.length;
}

export function renderNeighbours() {
  const sel = state.selection;
  const all = sel ? sel.neighbours : [];
  const list = all.slice(0, MAX_LISTED);
  els.nbCount.textContent = all.length ? `(${all.length})` : "";
  const weighted = els.genMode.value === "weighted";
  els.nbList.replaceChildren(
    ...list.map((n) => {
      const weight = weighted
        ? h(
            "label",
            { class: "weight-label" },
            "weight ",
            h("input", {
              class: "weight",
              type: "number",
              min: "0",
              step: "0.1",
              value: String(n.weight),
              "aria-label": `weight of neighbour ${n.id}`,
              onchange: (e) => sel.setWeight(n.id, Number(e.target.value)),
            }),
          )
        : null;
      return h(
        "li",
        { dataset: { id: String(n.id) } },
        thumb(n.id, { size: "small" }),
        h(
          "span",
          { class: "nb-text" },
          sampleLabel(n.id),
          n.distance !== null && n.distance !== undefined ? h("span", { class: "muted", text: ` · d ${n.distance.toFixed(3)}` }) : null,
          " ",
          h("span", { class: `badge ${n.source}`, text: { knn: "k-NN", region: "box/lasso" }[n.source] || "by hand" }),
        ),
        weight,
        h("button", {
          type: "button",
          class: "danger icon-btn",
          "aria-label": `Remove neighbour ${n.id}`,
          title: "Remove",
          text: "×",
          onclick: () => sel.remove(n.id),
        }),
      );
    }),
    ...(all.length > list.length
      ? [h("li", { class: "muted", text: `… and ${all.length - list.length} more (export the selection to see them all)` })]
      : []),
  );
}

export async function findNeighbours(e) {
  e.preventDefault();
  const sel = state.selection;
  if (!sel || sel.selected === null) {
    say(els.nbMessage, "Select a sample first: click a point on the map.", "error");
    return;
  }
  const k = Number(els.nbK.value);
  const space = new FormData(els.nbForm).get("space") || "2d";
  els.findBtn.disabled = true;
  say(els.nbMessage, space === "full" ? "Searching the full activation space…" : "Searching…");
  try {
    const answer = await api(`/api/v1/embeddings/${state.emb.id}/neighbors?sample=${sel.selected}&k=${k}&space=${space}`);
    if (sel !== state.selection || sel.selected !== answer.sample) return;
    const missing = answer.neighbors.filter((n) => !state.map.has(n.sample_id));
    sel.setKnn(answer.neighbors.filter((n) => state.map.has(n.sample_id)));
    say(
      els.nbMessage,
      `${answer.neighbors.length} nearest in the ${space === "full" ? "full activation space" : "2-D map"}` +
        (missing.length ? ` (${missing.length} not drawn yet; reload to see them)` : "") +
        ".",
      "ok",
    );
  } catch (err) {
    say(els.nbMessage, err.message, "error");
  } finally {
    els.findBtn.disabled = state.selection.selected === null;
  }
}
