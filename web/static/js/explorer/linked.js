// Linked maps: a second map of the same dataset (another layer set or another fit) beside the first,
// chosen with "Compare with". Both are linked by sample id: hovering a sample on one rings the same
// sample on the other, a click on either selects as usual, and the selection (the selected sample, sets
// A and B) is drawn on both. The second map is read-only otherwise (its own pan and zoom). Its id is in
// the URL (?compare=); a map of another dataset or one not in the list gets a message, never a state.
import { api } from "../api.js";
import { fmt, h } from "../ui.js";
import { attachEffects, availableColourings, buildTraces } from "./colour.js";
import { $, notice, state, T } from "./context.js";
import { Overlay } from "./overlay.js";
import { handlePointClick, overlay } from "./panel.js";
import { hideHover, showHover } from "./plot.js";
import { fetchPoints, pointMapFrom } from "./points.js";

const picker = $("compare-picker");
const pane = $("map2-pane");
const plotEl = $("map2");
const title = $("map2-title");
const overlay2 = new Overlay($("overlay2"), plotEl, { clipId: "overlay2-clip" });

export const linked = { emb: null, map: null, traceIds: [], token: 0, hoverId: null, bound: false };

const LAYOUT = {
  margin: { l: 40, r: 8, t: 8, b: 30 },
  hovermode: "closest",
  hoverdistance: 12,
  dragmode: "pan",
  showlegend: false,
  xaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow" },
  yaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow" },
  plot_bgcolor: "#ffffff",
  paper_bgcolor: "#ffffff",
  font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 11, color: "#1d2433" },
};

// the maps that can be linked with the one open: ready maps of its dataset, but itself
function candidates() {
  if (!state.emb) return [];
  return state.embeddings.filter((e) => e.dataset_id === state.emb.dataset_id && e.id !== state.emb.id && e.status === "ready");
}

// after the first map opened (or changed): the picker lists its dataset's other maps; a linked map that
// no longer fits (another dataset, or the map now open) is closed with a notice
export function fillComparePicker() {
  const maps = candidates();
  picker.replaceChildren(
    h("option", { value: "", text: maps.length ? "no second map" : "no other map of this dataset" }),
    ...maps.map((e) => h("option", { value: String(e.id), text: `${e.name} · #${e.id} · layers ${(e.layers || []).join(", ")}` })),
  );
  picker.disabled = !maps.length;
  if (linked.emb && !maps.some((e) => e.id === linked.emb.id)) {
    notice(`Map #${linked.emb.id} is not another map of this dataset; the second map was closed.`);
    closeCompare();
  }
  picker.value = linked.emb ? String(linked.emb.id) : "";
}

export function closeCompare() {
  linked.token++;
  linked.emb = null;
  linked.map = null;
  linked.traceIds = [];
  state.compareId = null;
  pane.hidden = true;
  picker.value = "";
  overlay.setHover(null);
  overlay2.setHover(null);
  if (window.Plotly && plotEl.data) window.Plotly.purge(plotEl);
}

// open map `id` beside the first; a bad id (not a map, or one of another dataset) gets a message only
export async function openCompare(id) {
  if (!id) {
    closeCompare();
    return true;
  }
  const entry = state.embeddings.find((e) => e.id === id);
  if (!entry || entry.status !== "ready") {
    notice(`Map #${id} is not a ready map you can open; choose a second map from "Compare with".`);
    closeCompare();
    return false;
  }
  if (entry.dataset_id !== state.emb.dataset_id || entry.id === state.emb.id) {
    notice(
      entry.id === state.emb.id
        ? `Map #${id} is the map already open; choose another map of this dataset to compare with.`
        : `Map #${id} is a map of another dataset; only maps of the same dataset can be linked (their samples are the same).`,
    );
    closeCompare();
    return false;
  }
  const token = ++linked.token;
  pane.hidden = false;
  title.textContent = `Loading map #${id}…`;
  let emb, answer, effects;
  try {
    [emb, answer, effects] = await Promise.all([
      api(`/api/v1/embeddings/${id}`),
      fetchPoints(id),
      api(`/api/v1/embeddings/${id}/effects`).catch(() => null),
    ]);
  } catch (err) {
    if (token !== linked.token) return false;
    notice(`Could not load map #${id} to compare with: ${err.message}`);
    closeCompare();
    return false;
  }
  if (token !== linked.token) return false;
  linked.emb = emb;
  linked.map = pointMapFrom(answer);
  if (!linked.map.labelNames.length) linked.map.labelNames = state.map.labelNames;
  attachEffects(linked.map, effects);
  state.compareId = id;
  picker.value = String(id);
  title.textContent = `#${emb.id} ${emb.name} · layers ${emb.layers.join(", ")} · ${fmt(linked.map.n)} points`;
  await drawLinked();
  return true;
}

// (re)draws the second map in the first one's colouring (class where it has no such column)
export async function drawLinked() {
  if (!linked.map || !window.Plotly) return;
  const by = availableColourings(linked.map).includes(state.colourBy) ? state.colourBy : "class";
  const built = buildTraces(linked.map, by);
  linked.traceIds = built.ids;
  await window.Plotly.react(plotEl, built.traces, { ...LAYOUT, uirevision: `map2-${linked.emb.id}` }, { displayModeBar: false, scrollZoom: true, responsive: true, doubleClick: "reset" });
  bindEvents();
  renderLinked();
}

function idAt(ev) {
  const p = ev && ev.points && ev.points[0];
  if (!p || !linked.traceIds[p.curveNumber]) return undefined;
  return linked.traceIds[p.curveNumber][p.pointNumber];
}

function bindEvents() {
  if (linked.bound) return;
  linked.bound = true;
  plotEl.on("plotly_click", (ev) => {
    const id = idAt(ev);
    if (id !== undefined) handlePointClick(id, Boolean(ev.event && ev.event.shiftKey), performance.now());
  });
  plotEl.on("plotly_hover", (ev) => {
    const id = idAt(ev);
    if (id === undefined) return;
    const e = ev.event || {};
    showHover(id, e.clientX, e.clientY);
    const p = state.map && state.map.get(id);
    overlay.setHover(p ? { id, x: p.x, y: p.y } : null);
    linked.hoverId = id;
  });
  plotEl.on("plotly_unhover", () => {
    hideHover();
    overlay.setHover(null);
    linked.hoverId = null;
  });
  plotEl.on("plotly_relayouting", (e) => overlay2.position(e));
  plotEl.on("plotly_relayout", () => overlay2.position());
  plotEl.on("plotly_afterplot", () => overlay2.position());
  let resizing = null;
  new ResizeObserver(() => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(() => plotEl.data && window.Plotly.Plots.resize(plotEl));
  }).observe(plotEl);
}

// the first map's hover: ring the same sample on the second
export function hoverLinked(id) {
  if (!linked.map) return;
  const p = id === null ? null : linked.map.get(id);
  overlay2.setHover(p ? { id, x: p.x, y: p.y } : null);
}

// the selection, drawn on the second map at that map's places of the same samples
export function renderLinked() {
  if (!linked.map) return;
  const at = (id) => {
    const p = linked.map.get(id);
    return p ? { id, x: p.x, y: p.y } : null;
  };
  const sel = state.selection;
  overlay2.render({
    selected: sel && sel.selected !== null ? at(sel.selected) : null,
    neighbours: sel ? sel.neighbours.slice(0, 400).map((n) => at(n.id) && { ...at(n.id), source: n.source }).filter(Boolean) : [],
    negative: sel ? sel.negative.slice(0, 400).map(at).filter(Boolean) : [],
    parents: [],
    generations: [],
    fresh: new Set(),
  });
}

export function wireLinked() {
  picker.addEventListener("change", () => openCompare(Number(picker.value) || null));
  // hooks for tests: where a sample is on the second map, and what is ringed on each
  T.linked = {
    state: () => ({
      embedding: linked.emb && linked.emb.id,
      points: linked.map ? linked.map.n : 0,
      ringedOnSecond: [...document.querySelectorAll("#overlay2 .linked-ring")].map((el) => Number(el.dataset.id)),
      ringedOnFirst: [...document.querySelectorAll("#overlay .linked-ring")].map((el) => Number(el.dataset.id)),
      selectedOnSecond: [...document.querySelectorAll("#overlay2 .sel-dot")].map((el) => Number(el.dataset.id)),
    }),
    clientPoint: (id) => {
      const p = linked.map && linked.map.get(id);
      return p ? overlay2.clientPoint(p.x, p.y) : null;
    },
  };
}
