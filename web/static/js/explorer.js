// The explorer: a WebGL scatter of one map (explorer/plot.js, coloured by explorer/colour.js), an SVG
// layer for the selection and a side panel to find neighbours (explorer/panel.js) and generate from them
// (explorer/generate.js); selection tools and keys (explorer/tools.js), exports (explorer/exports.js) and
// the URL (explorer/permalink.js); a linked second map (explorer/linked.js), search by prompt or class
// (explorer/search.js) and the lineage mini-graph (explorer/minigraph.js). This module loads the maps and
// wires the page. The selection is this browser's (localStorage per user and map, and the URL); the
// server never sees it until a generation.
import { api, firstItems } from "./api.js";
import { els, mark, notice, state, T, user } from "./explorer/context.js";
import { fillGenerateForm, fillLayers, submitGeneration, syncClassField } from "./explorer/generate.js";
import { findNeighbours, handlePointClick, onSelectionChange, overlay, renderNeighbours, renderOverlay } from "./explorer/panel.js";
import { wireExports } from "./explorer/exports.js";
import { readLink, writeLink } from "./explorer/permalink.js";
import { positionStar, setTarget, wirePlace } from "./explorer/place.js";
import { drawPlot, onPlotEvents, plotlyReady, resetView, setView } from "./explorer/plot.js";
import { fetchPoints, pointMapFrom } from "./explorer/points.js";
import { closeCompare, drawLinked, fillComparePicker, hoverLinked, openCompare, renderLinked, wireLinked } from "./explorer/linked.js";
import { wireSearch } from "./explorer/search.js";
import { Selection } from "./explorer/selection.js";
import { dropRegionDimming, fillClassPick, fillColourBy, handleRegion, renderScaleLegend, renderSetCounts, wireTools } from "./explorer/tools.js";
import { attachEffects, availableColourings } from "./explorer/colour.js";
import { fmt, h, showError } from "./ui.js";

const LAST_MAP_KEY = `latentlab.explorer.lastMap:${user.id}`;
// ?wire=json loads the points as base64 JSON (the format before the binary one; bench/web.py's baseline)
const WIRE = new URLSearchParams(location.search).get("wire") === "json" ? "json" : "binary";
// what the link asked for (view and selection apply to the first map opened only)
let LINK = readLink();
let carried = null; // {dataset, snapshot}: the selection taken along to another map of the same dataset
state.density = LINK.density;

function fetchMap(embeddingId) {
  return Promise.all([
    api(`/api/v1/embeddings/${embeddingId}`),
    fetchPoints(embeddingId, WIRE),
    api(`/api/v1/embeddings/${embeddingId}/generations`).catch(() => []),
    api(`/api/v1/embeddings/${embeddingId}/effects`).catch(() => null),
  ]);
}

// -- maps -------------------------------------------------------------------------------------------------

async function loadEmbeddings() {
  // the map asked for in the URL (or used last) is fetched at once, alongside the list of maps
  const params = new URLSearchParams(location.search);
  const guess = Number(params.get("embedding") || localStorage.getItem(LAST_MAP_KEY)) || null;
  mark("mapRequested");
  const early = guess ? { id: guess, answers: fetchMap(guess) } : null;
  if (early) early.answers.catch(() => {});
  try {
    // every page of the list (100 maps a page), not only the first
    const { items } = await firstItems("/api/v1/embeddings", "embeddings", 1_000_000);
    state.embeddings = items;
  } catch (err) {
    showError(els.mapError, `Could not list the maps: ${err.message}`);
    els.picker.replaceChildren(h("option", { text: "no maps" }));
    return;
  }
  const ready = state.embeddings.filter((e) => e.status === "ready");
  if (!state.embeddings.length) {
    els.picker.replaceChildren(h("option", { text: "no maps yet" }));
    els.mapError.replaceChildren(
      "There are no maps yet. ",
      h("a", { href: "/datasets", text: "Generate a dataset and fit a map" }),
      " first.",
    );
    els.mapError.hidden = false;
    return;
  }
  els.picker.replaceChildren(
    ...state.embeddings.map((e) =>
      h("option", {
        value: String(e.id),
        disabled: e.status !== "ready",
        text: `${e.name} · #${e.id} · ${e.status === "ready" ? `${fmt(e.num_points)} points` : e.status}`,
      }),
    ),
  );
  els.picker.disabled = false;
  const wanted = [params.get("embedding"), localStorage.getItem(LAST_MAP_KEY)]
    .map(Number)
    .find((id) => ready.some((e) => e.id === id));
  const chosen = wanted || (ready[0] && ready[0].id);
  if (!chosen) {
    showError(els.mapError, "No map is ready yet; wait for a fit to finish (see Jobs).");
    return;
  }
  els.picker.value = String(chosen);
  await openMap(chosen, Number(params.get("sample")) || null, early && early.id === chosen ? early.answers : null);
}

async function openMap(embeddingId, deepLinkSample = null, fetched = null) {
  const token = ++state.loadToken;
  const started = performance.now();
  showError(els.mapError, "");
  notice("");
  els.status.textContent = "Loading the map…";
  localStorage.setItem(LAST_MAP_KEY, String(embeddingId));
  const url = new URL(location.href);
  url.searchParams.set("embedding", String(embeddingId));
  if (!deepLinkSample) url.searchParams.delete("sample");
  history.replaceState(null, "", url);
  let emb, answer, overlays, effects;
  try {
    if (!fetched) mark("mapRequested");
    [emb, answer, overlays, effects] = await (fetched || fetchMap(embeddingId));
    mark("pointsFetched");
  } catch (err) {
    if (token !== state.loadToken) return;
    els.status.textContent = "";
    showError(els.mapError, `Could not load map ${embeddingId}: ${err.message}`);
    return;
  }
  if (token !== state.loadToken) return;
  state.emb = emb;
  state.map = pointMapFrom(answer);
  if (!state.map.labelNames.length && emb.label_names) state.map.labelNames = emb.label_names;
  attachEffects(state.map, effects);
  if (LINK.colour && availableColourings(state.map).includes(LINK.colour)) state.colourBy = LINK.colour;
  fillColourBy();
  mark("pointsDecoded");
  try {
    await plotlyReady;
  } catch {
    return; // the error is on the page already
  }
  if (token !== state.loadToken) return;
  mark("plotlyAwaited");
  state.overlays = Array.isArray(overlays) ? overlays : [];
  state.fresh = new Set();
  for (const g of state.overlays) {
    if (g.actual && g.actual[0] !== null) state.map.addGenerated(g.sample_id, g.actual[0], g.actual[1]);
  }
  await drawPlot();
  renderScaleLegend();
  renderOverlay();
  if (token !== state.loadToken) return;
  mark("firstRender");
  if (LINK.view) setView(LINK.view);
  T.timings.mapRenderMs = performance.now() - started;
  els.status.textContent = `${fmt(state.map.n + state.map.extra.size)} points · ${emb.dataset_name || ""} · layers ${emb.layers.join(", ")}`;

  state.selection = new Selection(user.id, emb.id);
  state.selection.load();
  const given = LINK.selection;
  if (given) {
    state.selection.restore({ selected: given.selected, neighbours: given.a.map((id) => ({ id, source: "manual" })), negative: given.b });
  } else if (carried && carried.dataset === emb.dataset_id) {
    state.selection.restore(JSON.parse(carried.snapshot)); // the same samples, at their places on this map
  }
  carried = null;
  LINK = { ...LINK, view: null, selection: null };
  const dropped = state.selection.prune((id) => state.map.has(id));
  if (dropped.length) {
    notice(
      `Your saved selection referred to sample${dropped.length > 1 ? "s" : ""} ${dropped.join(", ")}, ` +
        "no longer on this map; dropped from the selection.",
    );
  }
  state.selection.onChange(onSelectionChange);
  state.selection.onChange(renderLinked);
  state.selection.onChange((reason) => {
    renderSetCounts();
    if (!reason.startsWith("region")) dropRegionDimming();
    writeLink();
  });
  state.selection.save();
  if (deepLinkSample && state.map.has(deepLinkSample) && state.selection.selected !== deepLinkSample) {
    state.selection.select(deepLinkSample);
  }
  fillGenerateForm();
  fillClassPick();
  onSelectionChange("load");
  renderSetCounts();
  fillComparePicker();
  if (LINK.compare !== null) {
    // the second map the link asked for (first map only); a bad one gets a message in the page
    const text = LINK.compare;
    const wanted = Number(text);
    LINK = { ...LINK, compare: null };
    if (/^\d+$/.test(text) && Number.isSafeInteger(wanted) && wanted > 0) await openCompare(wanted);
    else notice(`"${text}" in the link is not a map id; choose a second map from "Compare with".`);
  } else if (state.compareId !== null) {
    await drawLinked();
  }
  writeLink();
  loadDataset(emb.dataset_id);
  T.explorer.ready = true;
}

async function loadDataset(datasetId) {
  try {
    state.dataset = await api(`/api/v1/datasets/${datasetId}`);
  } catch {
    state.dataset = null;
  }
  fillLayers();
}

// -- wiring -----------------------------------------------------------------------------------------------

onPlotEvents({
  pointClick: handlePointClick,
  viewChange: (e) => {
    overlay.position(e);
    positionStar();
    if (!e) writeLink();
  },
  region: handleRegion,
  hover: hoverLinked,
});
wireTools();
wireLinked();
wireSearch();
document.getElementById("close-compare").addEventListener("click", () => {
  closeCompare();
  writeLink();
});
wireExports();
wirePlace(overlay);

els.picker.addEventListener("change", () => {
  if (state.selection && state.emb) carried = { dataset: state.emb.dataset_id, snapshot: state.selection.snapshot() };
  state.selection = null;
  setTarget(null);
  els.genResults.replaceChildren();
  els.genJob.replaceChildren();
  openMap(Number(els.picker.value));
});
els.clear.addEventListener("click", () => {
  if (state.selection) state.selection.clear();
  notice("");
});
els.selectForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = Number(els.selectId.value);
  if (!state.selection) return;
  if (!Number.isInteger(id) || !state.map.has(id)) {
    notice(`Sample ${els.selectId.value || "(none)"} is not on this map.`);
    return;
  }
  notice("");
  state.selection.select(id);
});
els.nbK.addEventListener("input", () => {
  els.nbKOut.value = els.nbK.value;
});
els.nbForm.addEventListener("submit", findNeighbours);
els.genForm.addEventListener("submit", submitGeneration);
els.genMode.addEventListener("change", () => {
  fillLayers();
  renderNeighbours();
});
els.genClass.addEventListener("change", syncClassField);
els.reset.addEventListener("click", resetView);
window.addEventListener("storage", (e) => {
  // the same user in another tab changed this map's selection: follow it
  if (state.selection && e.key === state.selection.key) {
    state.selection.load();
    onSelectionChange("load");
  }
});

// hooks for tests and bench/web.py
T.explorer = {
  ready: false,
  state: () => ({
    embedding: state.emb && state.emb.id,
    selected: state.selection ? state.selection.selected : null,
    neighbours: state.selection ? state.selection.neighbours.map((n) => ({ id: n.id, source: n.source })) : [],
    negative: state.selection ? [...state.selection.negative] : [],
    colourBy: state.colourBy,
    target: state.target,
    traces: (els.plot.data || []).map((t) => t.name),
    parents: state.detail ? (state.detail.parents || []).map((p) => p.sample_id) : [],
    stars: state.overlays.filter((g) => g.center && g.center[0] !== null).length,
    points: state.map ? state.map.n + state.map.extra.size : 0,
    compare: state.compareId,
  }),
  clientPoint: (id) => {
    const p = state.map && state.map.get(id);
    return p ? overlay.clientPoint(p.x, p.y) : null;
  },
  // ids on the map: origin 0 (dataset), 1 (generated) or null (all, with those added in this page)
  sampleIds: (limit = 10, origin = 0) => {
    const out = [];
    const m = state.map;
    for (let i = 0; m && i < m.n && out.length < limit; i++) {
      if (origin === null || m.origin[i] === origin) out.push(m.ids[i]);
    }
    if (m && origin !== 0) for (const id of m.extra.keys()) if (out.length < limit) out.push(id);
    return out;
  },
  select: (id) => {
    const t0 = performance.now();
    handlePointClick(id, true, t0);
  },
};

plotlyReady.catch((err) => showError(els.mapError, err.message));
loadEmbeddings();
