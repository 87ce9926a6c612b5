// The map itself: Plotly (loaded here, off the critical path), one WebGL trace per class plus the
// generated samples, the drag mode, and the hover card with a sample's image.
import { className } from "../ui.js";
import { els, frame, mark, state, T } from "./context.js";

// Class colours: distinguishable, none of them the overlay colours (blue, red, green, purple) at full
// strength, so the selection always stands out.
const PALETTE = [
  "#4e79a7", "#d47c25", "#aa942d", "#659d99", "#8c6d31", "#d56fb6", "#9c755f", "#13a3b2",
  "#96971b", "#7f7f7f", "#cb7d85", "#8093ab", "#bc8a58", "#6da063", "#9d8caa", "#b08c85",
  "#b6869b", "#94945f", "#719ca4", "#393b79",
]; // each at least 3:1 against the white plot (WCAG non-text contrast)
const GENERATED_COLOUR = "#0f7a3a";
const MAX_LEGEND_CLASSES = 40;
// Plotly (4.8 MB) is preloaded by the page and run from here, so that the map's requests go out while
// the browser is still compiling it.
let Plotly = null;
export const plotlyReady = new Promise((resolve, reject) => {
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
const handlers = { pointClick: () => {}, viewChange: () => {} };

// pointClick(id, shiftKey, t0): a point was clicked; viewChange(event?): the axes moved (pan, zoom, redraw)
export function onPlotEvents({ pointClick, viewChange }) {
  Object.assign(handlers, { pointClick, viewChange });
}

// Draws the map's traces (the caller redraws the overlay after).
export async function drawPlot() {
  const built = buildTraces(state.map);
  mark("tracesBuilt");
  state.traceIds = built.ids;
  await Plotly.react(els.plot, built.traces, layoutFor(state.emb), PLOT_CONFIG);
  bindPlotEvents();
  await frame();
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
    handlers.pointClick(id, Boolean(ev.event && ev.event.shiftKey), t0);
  });
  gd.on("plotly_hover", (ev) => {
    const p = ev.points && ev.points[0];
    if (!p || !state.traceIds[p.curveNumber]) return;
    const id = state.traceIds[p.curveNumber][p.pointNumber];
    const e = ev.event || {};
    if (id !== undefined) showHover(id, e.clientX, e.clientY);
  });
  gd.on("plotly_unhover", hideHover);
  gd.on("plotly_relayouting", (e) => handlers.viewChange(e));
  gd.on("plotly_relayout", () => handlers.viewChange());
  gd.on("plotly_afterplot", () => handlers.viewChange());
  els.wrap.addEventListener("pointerdown", () => mark("pointerDown"), { capture: true });
  // the plot follows its box (the side panel, toolbar or window changing size), not only the window
  let resizing = null;
  new ResizeObserver(() => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(() => Plotly.Plots.resize(gd));
  }).observe(els.wrap);
  els.wrap.addEventListener("mouseleave", hideHover);
}

export function setDragMode(mode) {
  els.dragPan.setAttribute("aria-pressed", String(mode === "pan"));
  els.dragZoom.setAttribute("aria-pressed", String(mode === "zoom"));
  if (state.emb) Plotly.relayout(els.plot, { dragmode: mode });
}

export function resetView() {
  if (state.emb) Plotly.relayout(els.plot, { "xaxis.autorange": true, "yaxis.autorange": true });
}

// -- hover card -------------------------------------------------------------------------------------------

export function showHover(id, clientX, clientY) {
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

export function hideHover() {
  els.hover.hidden = true;
  state.hoverId = null;
}
