// The explorer: a WebGL scatter of one map (Plotly scattergl, one trace per class), an SVG layer for the
// selection, and a side panel to find neighbours and generate from them. The selection is this browser's
// (localStorage per user and map); the server never sees it until a generation is submitted.
//
// window.__latentlab.timings holds performance.now() marks (ms since navigation) for bench/web.py.
import { api, ApiError, currentUser } from "./api.js";
import { Overlay } from "./explorer/overlay.js";
import { pointMapFrom } from "./explorer/points.js";
import { Selection } from "./explorer/selection.js";
import { getLive } from "./live.js";
import { className, fmt, h, progressBar, say, showError, thumb } from "./ui.js";

const T = (window.__latentlab = window.__latentlab || {});
T.timings = T.timings || {};
T.clicks = [];
const mark = (name) => {
  T.timings[name] = performance.now();
};
mark("moduleStart");

const user = currentUser();
const $ = (id) => document.getElementById(id);
const els = {
  picker: $("embedding-picker"),
  plot: $("map"),
  wrap: $("map-wrap"),
  overlay: $("overlay"),
  status: $("map-status"),
  mapError: $("map-error"),
  notice: $("explorer-notice"),
  clear: $("clear-selection"),
  selectForm: $("select-by-id"),
  selectId: $("select-id"),
  selectedCard: $("selected-card"),
  recipe: $("recipe"),
  nbForm: $("find-neighbours"),
  nbK: $("nb-k"),
  nbKOut: $("nb-k-out"),
  findBtn: $("find-btn"),
  nbMessage: $("nb-message"),
  nbList: $("nb-list"),
  nbCount: $("nb-count"),
  genForm: $("generate-form"),
  genMode: $("gen-mode"),
  genVariations: $("gen-variations"),
  genSteps: $("gen-steps"),
  genMaskSteps: $("gen-mask-steps"),
  genLayers: $("gen-layers"),
  genClass: $("gen-class"),
  genClassExplicit: $("gen-class-explicit"),
  genSeed: $("gen-seed"),
  genBtn: $("generate-btn"),
  genMessage: $("gen-message"),
  genJob: $("gen-job"),
  genResults: $("gen-results"),
  hover: $("hover-card"),
  hoverImg: $("hover-img"),
  hoverText: $("hover-text"),
  dragPan: $("drag-pan"),
  dragZoom: $("drag-zoom"),
  reset: $("reset-view"),
};

// Class colours: distinguishable, none of them the overlay colours (blue, red, green, purple) at full
// strength, so the selection always stands out.
const PALETTE = [
  "#4e79a7", "#d47c25", "#aa942d", "#659d99", "#8c6d31", "#d56fb6", "#9c755f", "#13a3b2",
  "#96971b", "#7f7f7f", "#cb7d85", "#8093ab", "#bc8a58", "#6da063", "#9d8caa", "#b08c85",
  "#b6869b", "#94945f", "#719ca4", "#393b79",
]; // each at least 3:1 against the white plot (WCAG non-text contrast)
const GENERATED_COLOUR = "#0f7a3a";
const MAX_LEGEND_CLASSES = 40;
const LAST_MAP_KEY = `latentlab.explorer.lastMap:${user.id}`;

// Plotly (4.8 MB) is preloaded by the page and run from here, so that the map's requests go out while
// the browser is still compiling it.
let Plotly = null;
const plotlyReady = new Promise((resolve, reject) => {
  const script = document.createElement("script");
  script.src = els.plot.dataset.plotlySrc;
  script.addEventListener("load", () => {
    Plotly = window.Plotly;
    mark("plotlyReady");
    resolve(Plotly);
  });
  script.addEventListener("error", () => reject(new Error("The plotting library did not load; reload the page.")));
  document.head.append(script);
});

// Creating the first WebGL context costs ~0.5 s in a software renderer; doing it now overlaps it with
// the downloads instead of adding it to the first draw.
(function warmWebGL() {
  const started = performance.now();
  const canvas = document.createElement("canvas");
  const gl = canvas.getContext("webgl");
  const lose = gl && gl.getExtension("WEBGL_lose_context");
  if (lose) lose.loseContext();
  T.timings.webglWarmMs = performance.now() - started;
})();

function fetchMap(embeddingId) {
  return Promise.all([
    api(`/api/v1/embeddings/${embeddingId}`),
    api(`/api/v1/embeddings/${embeddingId}/points`),
    api(`/api/v1/embeddings/${embeddingId}/generations`).catch(() => []),
  ]);
}

const state = {
  embeddings: [],
  emb: null,
  dataset: null,
  map: null,
  traceIds: [],
  overlays: [],
  fresh: new Set(),
  selection: null,
  detail: null,
  loadToken: 0,
  detailToken: 0,
  hoverId: null,
  job: null,
};

const overlay = new Overlay(els.overlay, els.plot, {
  onStarClick: (id, e) => handlePointClick(id, e.shiftKey, performance.now()),
  onStarEnter: (id, e) => showHover(id, e.clientX, e.clientY),
  onStarLeave: () => hideHover(),
});

function frame() {
  return new Promise((resolve) => requestAnimationFrame(() => resolve()));
}

function notice(text) {
  els.notice.textContent = text || "";
  els.notice.hidden = !text;
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
    const data = await api("/api/v1/embeddings");
    state.embeddings = data.embeddings || [];
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
  let emb, answer, overlays;
  try {
    if (!fetched) mark("mapRequested");
    [emb, answer, overlays] = await (fetched || fetchMap(embeddingId));
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
  if (token !== state.loadToken) return;
  mark("firstRender");
  T.timings.mapRenderMs = performance.now() - started;
  els.status.textContent = `${fmt(state.map.n + state.map.extra.size)} points · ${emb.dataset_name || ""} · layers ${emb.layers.join(", ")}`;

  state.selection = new Selection(user.id, emb.id);
  state.selection.load();
  const dropped = state.selection.prune((id) => state.map.has(id));
  if (dropped.length) {
    notice(
      `Your saved selection referred to sample${dropped.length > 1 ? "s" : ""} ${dropped.join(", ")}, ` +
        "no longer on this map; dropped from the selection.",
    );
  }
  state.selection.onChange(onSelectionChange);
  if (deepLinkSample && state.map.has(deepLinkSample) && state.selection.selected !== deepLinkSample) {
    state.selection.select(deepLinkSample);
  }
  fillGenerateForm();
  onSelectionChange("load");
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

// -- the plot ---------------------------------------------------------------------------------------------

function markerSize(n) {
  if (n < 2000) return 8;
  if (n < 20000) return 5;
  if (n < 200000) return 3;
  return 2;
}

// opaque markers on small maps (full contrast); translucent on big ones, where density matters more
function markerOpacity(n) {
  return n < 20000 ? 1 : 0.75;
}

function buildTraces(map) {
  const n = map.n;
  const labels = map.labelNames;
  let maxCls = 0;
  for (let i = 0; i < n; i++) if (map.cls[i] > maxCls) maxCls = map.cls[i];
  const counts = new Int32Array(maxCls + 2); // slot 0: no single class (-1)
  let nGen = 0;
  for (let i = 0; i < n; i++) {
    if (map.origin[i] === 1) nGen++;
    else counts[map.cls[i] + 1]++;
  }
  const present = [];
  for (let s = 0; s < counts.length; s++) if (counts[s]) present.push(s);
  const size = markerSize(n);
  const traces = [];
  const ids = [];
  const base = { type: "scattergl", mode: "markers", hoverinfo: "none" };
  if (present.length <= MAX_LEGEND_CLASSES) {
    const slotTrace = new Int32Array(counts.length).fill(-1);
    present.forEach((s, k) => {
      slotTrace[s] = k;
    });
    const xs = present.map((s) => new Float32Array(counts[s]));
    const ys = present.map((s) => new Float32Array(counts[s]));
    const is = present.map((s) => new Int32Array(counts[s]));
    const at = new Int32Array(present.length);
    for (let i = 0; i < n; i++) {
      if (map.origin[i] === 1) continue;
      const k = slotTrace[map.cls[i] + 1];
      const j = at[k]++;
      xs[k][j] = map.x[i];
      ys[k][j] = map.y[i];
      is[k][j] = map.ids[i];
    }
    present.forEach((s, k) => {
      traces.push({
        ...base,
        name: className(labels, s - 1),
        x: xs[k],
        y: ys[k],
        marker: { size, color: PALETTE[k % PALETTE.length], opacity: markerOpacity(n) },
      });
      ids.push(is[k]);
    });
  } else {
    // too many classes for a legend: one trace, coloured by class index
    const m = n - nGen;
    const x = new Float32Array(m);
    const y = new Float32Array(m);
    const c = new Float32Array(m);
    const is = new Int32Array(m);
    let j = 0;
    for (let i = 0; i < n; i++) {
      if (map.origin[i] === 1) continue;
      x[j] = map.x[i];
      y[j] = map.y[i];
      c[j] = map.cls[i];
      is[j++] = map.ids[i];
    }
    traces.push({
      ...base,
      name: `${present.length} classes`,
      x,
      y,
      marker: { size, color: c, colorscale: "Turbo", cmin: 0, cmax: maxCls, opacity: markerOpacity(n) },
    });
    ids.push(is);
  }
  const gx = [];
  const gy = [];
  const gi = [];
  for (let i = 0; i < n; i++) {
    if (map.origin[i] !== 1) continue;
    gx.push(map.x[i]);
    gy.push(map.y[i]);
    gi.push(map.ids[i]);
  }
  for (const [id, p] of map.extra) {
    gx.push(p.x);
    gy.push(p.y);
    gi.push(id);
  }
  traces.push({
    ...base,
    name: "generated",
    x: Float32Array.from(gx),
    y: Float32Array.from(gy),
    marker: { size: Math.max(size + 2, 6), color: "#ffffff", line: { color: GENERATED_COLOUR, width: 2 } },
    visible: gx.length ? true : "legendonly",
  });
  ids.push(Int32Array.from(gi));
  return { traces, ids };
}

function layoutFor(emb) {
  return {
    uirevision: `map-${emb.id}`,
    margin: { l: 48, r: 12, t: 10, b: 36 },
    hovermode: "closest",
    hoverdistance: 12,
    dragmode: els.dragZoom.getAttribute("aria-pressed") === "true" ? "zoom" : "pan",
    showlegend: true,
    legend: {
      itemsizing: "constant",
      bgcolor: "rgba(255,255,255,0.88)",
      bordercolor: "#d9dde3",
      borderwidth: 1,
      x: 1,
      xanchor: "right",
      y: 1,
      font: { size: 12 },
    },
    // ticklabeloverflow "allow": Plotly skips measuring every tick label (a forced layout each)
    xaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow" },
    yaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow" },
    plot_bgcolor: "#ffffff",
    paper_bgcolor: "#ffffff",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1d2433" },
  };
}

const PLOT_CONFIG = { displayModeBar: false, scrollZoom: true, responsive: true, doubleClick: "reset" };
let plotEventsBound = false;

async function drawPlot() {
  const built = buildTraces(state.map);
  mark("tracesBuilt");
  state.traceIds = built.ids;
  await Plotly.react(els.plot, built.traces, layoutFor(state.emb), PLOT_CONFIG);
  bindPlotEvents();
  await frame();
  renderOverlay();
}

function bindPlotEvents() {
  if (plotEventsBound) return;
  plotEventsBound = true;
  const gd = els.plot;
  gd.on("plotly_click", (ev) => {
    const t0 = performance.now();
    const p = ev.points && ev.points[0];
    if (!p) return;
    const ids = state.traceIds[p.curveNumber];
    if (!ids) return;
    const id = ids[p.pointNumber];
    if (id === undefined) return;
    handlePointClick(id, Boolean(ev.event && ev.event.shiftKey), t0);
  });
  gd.on("plotly_hover", (ev) => {
    const p = ev.points && ev.points[0];
    if (!p || !state.traceIds[p.curveNumber]) return;
    const id = state.traceIds[p.curveNumber][p.pointNumber];
    const e = ev.event || {};
    if (id !== undefined) showHover(id, e.clientX, e.clientY);
  });
  gd.on("plotly_unhover", hideHover);
  gd.on("plotly_relayouting", (e) => overlay.position(e));
  gd.on("plotly_relayout", () => overlay.position());
  gd.on("plotly_afterplot", () => overlay.position());
  els.wrap.addEventListener("pointerdown", () => mark("pointerDown"), { capture: true });
  // the plot follows its box (the side panel, toolbar or window changing size), not only the window
  let resizing = null;
  new ResizeObserver(() => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(() => Plotly.Plots.resize(gd));
  }).observe(els.wrap);
  els.wrap.addEventListener("mouseleave", hideHover);
}

function setDragMode(mode) {
  els.dragPan.setAttribute("aria-pressed", String(mode === "pan"));
  els.dragZoom.setAttribute("aria-pressed", String(mode === "zoom"));
  if (state.emb) Plotly.relayout(els.plot, { dragmode: mode });
}

// -- hover card -------------------------------------------------------------------------------------------

function showHover(id, clientX, clientY) {
  if (!state.map || clientX === undefined) return;
  const p = state.map.get(id);
  if (state.hoverId !== id) {
    state.hoverId = id;
    els.hoverImg.src = `/api/v1/samples/${id}/image`;
    els.hoverImg.alt = `sample ${id}`;
    const origin = p && p.origin === 1 ? " · generated" : "";
    const cls = p && p.cls >= 0 ? className(state.map.labelNames, p.cls) : p && p.origin === 1 ? "" : "no single class";
    els.hoverText.textContent = `#${id}${cls ? ` · ${cls}` : ""}${origin}`;
  }
  els.hover.hidden = false;
  const w = els.hover.offsetWidth || 120;
  const hgt = els.hover.offsetHeight || 130;
  let left = clientX + 16;
  let top = clientY + 16;
  if (left + w > window.innerWidth - 4) left = clientX - w - 16;
  if (top + hgt > window.innerHeight - 4) top = clientY - hgt - 16;
  els.hover.style.left = `${Math.max(4, left)}px`;
  els.hover.style.top = `${Math.max(4, top)}px`;
}

function hideHover() {
  els.hover.hidden = true;
  state.hoverId = null;
}

// -- selection --------------------------------------------------------------------------------------------

function handlePointClick(id, shift, t0) {
  const sel = state.selection;
  if (!sel) return;
  if (sel.selected === null || shift) sel.select(id);
  else if (id === sel.selected) return;
  else sel.toggle(id);
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

function renderOverlay() {
  if (!state.map) return;
  const sel = state.selection;
  const parents = [];
  if (state.detail && sel && state.detail.id === sel.selected) {
    for (const parent of state.detail.parents || []) {
      const p = point(parent.sample_id);
      if (p) parents.push(p);
    }
  }
  overlay.render({
    selected: sel && sel.selected !== null ? point(sel.selected) : null,
    neighbours: sel
      ? sel.neighbours.map((n) => ({ ...point(n.id), source: n.source })).filter((n) => n.id !== undefined)
      : [],
    parents,
    generations: state.overlays.map((g) => ({
      id: g.sample_id,
      center: g.center && g.center[0] !== null ? g.center : null,
      actual: g.actual && g.actual[0] !== null ? g.actual : null,
    })),
    fresh: state.fresh,
  });
}

function onSelectionChange(reason) {
  renderOverlay();
  const sel = state.selection;
  els.clear.disabled = sel.selected === null && !sel.neighbours.length;
  els.findBtn.disabled = sel.selected === null;
  if (reason === "select" || reason === "clear" || reason === "load") {
    say(els.nbMessage, "");
    state.detail = null;
    renderSelected();
    if (sel.selected !== null) loadDetail(sel.selected);
  }
  renderNeighbours();
}

// a select from a button in the side panel: show the selection at the top of the panel
function selectFromPanel(id) {
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
  if (detail.children && detail.children.length) {
    parts.push(h("div", { class: "muted", text: `Parent of ${detail.children.length} generated sample(s).` }));
  }
  if (g || parents.length || (detail.children && detail.children.length)) {
    parts.push(h("a", { href: `/history?sample=${detail.id}#lineage`, text: "Open its lineage graph" }));
  }
  els.recipe.replaceChildren(...parts);
  els.recipe.hidden = !parts.length;
}

function renderNeighbours() {
  const sel = state.selection;
  const list = sel ? sel.neighbours : [];
  els.nbCount.textContent = list.length ? `(${list.length})` : "";
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
          h("span", { class: `badge ${n.source}`, text: n.source === "knn" ? "k-NN" : "by hand" }),
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
  );
}

async function findNeighbours(e) {
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

// -- generate ---------------------------------------------------------------------------------------------

function fillGenerateForm() {
  const labels = state.map.labelNames;
  els.genClassExplicit.replaceChildren(...labels.map((name, i) => h("option", { value: String(i), text: `${i}: ${name}` })));
  syncClassField();
  fillLayers();
}

function fillLayers() {
  if (!state.emb) return;
  const mapLayers = state.emb.layers || [];
  const all = state.dataset && state.dataset.layers ? state.dataset.layers : mapLayers;
  const previous = new Set([...els.genLayers.querySelectorAll("input:checked")].map((i) => i.value));
  const inverse = els.genMode.value === "umap_inverse";
  els.genLayers.replaceChildren(
    ...all.map((name) => {
      const onMap = mapLayers.includes(name);
      const disabled = inverse && !onMap;
      const checked = !disabled && (previous.size ? previous.has(name) : onMap);
      return h(
        "label",
        { class: disabled ? "unavailable" : "", title: disabled ? "UMAP inverse can only mask the map's layers" : "" },
        h("input", { type: "checkbox", name: "layers", value: name, checked, disabled }),
        name,
      );
    }),
  );
}

function syncClassField() {
  const explicit = els.genClass.value === "explicit";
  for (const el of document.querySelectorAll(".explicit-class")) el.hidden = !explicit;
}

function intField(input, { min, max, name }) {
  const raw = input.value.trim();
  input.removeAttribute("aria-invalid");
  if (raw === "") return undefined;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    input.setAttribute("aria-invalid", "true");
    throw new Error(`${name} must be a whole number from ${min} to ${max}.`);
  }
  return v;
}

const FIELD_INPUTS = {
  variations: "gen-variations",
  steps: "gen-steps",
  mask_steps: "gen-mask-steps",
  seed: "gen-seed",
  class: "gen-class",
  mode: "gen-mode",
};

async function submitGeneration(e) {
  e.preventDefault();
  say(els.genMessage, "");
  for (const id of Object.values(FIELD_INPUTS)) $(id).removeAttribute("aria-invalid");
  const sel = state.selection;
  if (!state.emb || !sel) {
    say(els.genMessage, "Choose a map first.", "error");
    return;
  }
  if (sel.selected === null) {
    say(els.genMessage, "Select a sample on the map first (click a point, or use Select by id).", "error");
    return;
  }
  if (!sel.neighbours.length) {
    say(
      els.genMessage,
      "Add at least one neighbour before generating: use Find neighbours, or click points near the selected one.",
      "error",
    );
    return;
  }
  const body = { embedding: state.emb.id, selected: sel.selected, neighbors: sel.neighbours.map((n) => n.id) };
  try {
    body.mode = els.genMode.value;
    body.variations = intField(els.genVariations, { min: 1, max: 64, name: "Variations" }) ?? 1;
    const steps = intField(els.genSteps, { min: 1, max: 256, name: "Steps" });
    if (steps !== undefined) body.steps = steps;
    const maskSteps = intField(els.genMaskSteps, { min: 0, max: 256, name: "Mask steps" });
    if (maskSteps !== undefined) body.mask_steps = maskSteps;
    const seed = intField(els.genSeed, { min: 0, max: 2 ** 53 - 1, name: "Seed" });
    if (seed !== undefined) body.seed = seed;
    const layers = [...els.genLayers.querySelectorAll("input:checked")].map((i) => i.value);
    if (!layers.length) throw new Error("Choose at least one layer to mask.");
    body.layers = layers;
    body.class = els.genClass.value === "explicit" ? Number(els.genClassExplicit.value) : els.genClass.value;
    if (body.mode === "weighted") {
      body.weights = sel.neighbours.map((n) => n.weight);
      if (body.weights.some((w) => !(w >= 0)) || body.weights.reduce((a, b) => a + b, 0) <= 0) {
        throw new Error("Weights must be zero or more, and at least one must be above zero.");
      }
    }
  } catch (err) {
    say(els.genMessage, err.message, "error");
    return;
  }
  els.genBtn.disabled = true;
  let job;
  try {
    job = await api("/api/v1/generations", { method: "POST", body });
  } catch (err) {
    say(els.genMessage, err.message, "error");
    const input = err.field && FIELD_INPUTS[err.field.split(".")[0]];
    if (input) $(input).setAttribute("aria-invalid", "true");
    els.genBtn.disabled = false;
    return;
  }
  els.genBtn.disabled = false;
  followJob(job);
}

function renderJob(job) {
  const parts = [
    h("div", {}, h("strong", { text: `Job ${job.id}` }), " ", h("span", { class: `status-${job.status}`, text: job.status })),
  ];
  if (job.status === "queued" || job.status === "running") {
    parts.push(progressBar(job.progress, `job ${job.id} progress`));
    const note = job.status === "queued" && job.position ? `#${job.position} in the queue` : "";
    parts.push(h("div", { class: "muted", text: job.progress_message || note || "waiting for a worker" }));
    parts.push(
      h("button", {
        type: "button",
        class: "danger small-btn",
        text: "Cancel",
        onclick: async (e) => {
          e.target.disabled = true;
          try {
            await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
          } catch (err) {
            say(els.genMessage, err.message, "error");
          }
        },
      }),
    );
  }
  if (job.status === "failed") {
    parts.push(h("p", { class: "job-error", role: "alert", text: `The generation failed: ${job.error || "no error text was recorded"}` }));
  }
  if (job.status === "cancelled") parts.push(h("p", { class: "muted", text: "Cancelled." }));
  els.genJob.replaceChildren(...parts);
}

async function followJob(job) {
  state.job = job.id;
  renderJob(job);
  let final;
  try {
    final = await getLive().watchJob(job.id, (update) => {
      if (state.job === job.id) renderJob({ ...job, ...update });
    });
  } catch (err) {
    say(els.genMessage, `Lost track of job ${job.id}: ${err.message}`, "error");
    return;
  }
  if (final.status === "succeeded") {
    const ids = (final.result && final.result.samples) || [];
    renderResults(ids); // the images load while the map's overlays are fetched
    await refreshOverlays(new Set(ids));
    say(els.genMessage, `${ids.length} new image${ids.length === 1 ? "" : "s"}: green stars mark where each was meant to land.`, "ok");
  }
}

async function refreshOverlays(fresh = new Set()) {
  const emb = state.emb;
  let overlays;
  try {
    overlays = await api(`/api/v1/embeddings/${emb.id}/generations`);
  } catch (err) {
    say(els.genMessage, `Could not load the generations: ${err.message}`, "error");
    return;
  }
  if (emb !== state.emb) return;
  state.overlays = overlays;
  state.fresh = fresh;
  let added = false;
  for (const g of overlays) {
    if (g.actual && g.actual[0] !== null) added = state.map.addGenerated(g.sample_id, g.actual[0], g.actual[1]) || added;
  }
  if (added) await drawPlot();
  else renderOverlay();
  els.status.textContent = els.status.textContent.replace(/^[\d,.\s]+points/, `${fmt(state.map.n + state.map.extra.size)} points`);
}

function renderResults(ids) {
  els.genResults.replaceChildren(
    ...ids.map((id) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            "aria-label": `Select new sample ${id}`,
            onclick: () => selectFromPanel(id),
          },
          thumb(id, { alt: `generated sample ${id}` }),
        ),
        h("span", { text: `#${id}` }),
      ),
    ),
  );
}

// -- wiring -----------------------------------------------------------------------------------------------

els.picker.addEventListener("change", () => {
  state.selection = null;
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
els.dragPan.addEventListener("click", () => setDragMode("pan"));
els.dragZoom.addEventListener("click", () => setDragMode("zoom"));
els.reset.addEventListener("click", () => {
  if (state.emb) Plotly.relayout(els.plot, { "xaxis.autorange": true, "yaxis.autorange": true });
});
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
    parents: state.detail ? (state.detail.parents || []).map((p) => p.sample_id) : [],
    stars: state.overlays.filter((g) => g.center && g.center[0] !== null).length,
    points: state.map ? state.map.n + state.map.extra.size : 0,
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
