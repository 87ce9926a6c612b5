// The map itself: Plotly (loaded here, off the critical path), one WebGL trace per category of the
// colouring (explorer/colour.js) with a density layer under them, the drag mode (pan, box zoom, box and
// lasso select), and the hover card with a sample's image.
import { className } from "../ui.js";
import { buildTraces, densityTrace } from "./colour.js";
import { els, frame, mark, state, T } from "./context.js";

// the place tool (explorer/place.js) turns Plotly's dragging off: a click sets the target instead
const PLOTLY_DRAG = { pan: "pan", zoom: "zoom", select: "select", lasso: "lasso", place: false };

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

function layoutFor(emb) {
  return {
    uirevision: `map-${emb.id}`,
    margin: { l: 48, r: 12, t: 10, b: 36 },
    hovermode: "closest",
    hoverdistance: 12,
    dragmode: PLOTLY_DRAG[state.dragMode],
    selectdirection: "any",
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
const handlers = { pointClick: () => {}, viewChange: () => {}, region: () => {}, hover: () => {} };

// pointClick(id, shiftKey, t0): a point was clicked; viewChange(event?): the axes moved (pan, zoom, redraw);
// region(ids, event, t0): a box or lasso selection ended with these sample ids (maybe none);
// hover(id | null): the pointer is over a sample (null: over none), for the linked map
export function onPlotEvents(given) {
  Object.assign(handlers, given);
}

// Draws the map's traces (the caller redraws the overlay after).
export async function drawPlot() {
  const built = buildTraces(state.map, state.colourBy);
  const traces = built.traces;
  state.traceIds = built.ids;
  if (state.density) {
    const heat = densityTrace(state.map);
    if (heat) {
      traces.unshift(heat); // under the points
      state.traceIds.unshift(null);
    }
  }
  mark("tracesBuilt");
  await Plotly.react(els.plot, traces, layoutFor(state.emb), PLOT_CONFIG);
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
    if (id !== undefined) handlers.hover(id);
  });
  gd.on("plotly_unhover", () => {
    hideHover();
    handlers.hover(null);
  });
  gd.on("plotly_selected", (ev) => {
    const t0 = performance.now();
    const ids = [];
    for (const p of (ev && ev.points) || []) {
      const traceIds = state.traceIds[p.curveNumber];
      if (!traceIds) continue;
      const id = traceIds[p.pointNumber];
      if (id !== undefined) ids.push(id);
    }
    handlers.region(ids, ev || null, t0);
  });
  gd.on("plotly_relayouting", (e) => handlers.viewChange(e));
  gd.on("plotly_relayout", () => handlers.viewChange());
  gd.on("plotly_afterplot", () => handlers.viewChange());
  els.wrap.addEventListener("pointerdown", () => mark("pointerDown"), { capture: true });
  window.addEventListener("mouseup", () => mark("pointerUp"), { capture: true });
  // the plot follows its box (the side panel, toolbar or window changing size), not only the window
  let resizing = null;
  new ResizeObserver(() => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(() => Plotly.Plots.resize(gd));
  }).observe(els.wrap);
  els.wrap.addEventListener("mouseleave", hideHover);
}

export function setDragMode(mode) {
  state.dragMode = mode;
  const buttons = { pan: els.dragPan, zoom: els.dragZoom, select: els.dragBox, lasso: els.dragLasso, place: els.dragPlace };
  for (const [name, button] of Object.entries(buttons)) button.setAttribute("aria-pressed", String(mode === name));
  if (state.emb) Plotly.relayout(els.plot, { dragmode: PLOTLY_DRAG[mode] });
}

// forget Plotly's own box or lasso (the selection is ours; Plotly would keep dimming what it caught)
export function clearPlotlySelection() {
  if (!state.emb || !els.plot.data) return;
  const indices = els.plot.data.map((_, i) => i);
  Plotly.restyle(els.plot, { selectedpoints: [null] }, indices);
  Plotly.relayout(els.plot, { selections: [] });
}

// the axes' current ranges: [x0, x1, y0, y1], or null before the first draw
export function viewRanges() {
  const L = els.plot._fullLayout;
  if (!L || !L.xaxis) return null;
  return [...L.xaxis.range, ...L.yaxis.range].map(Number);
}

export function setView(ranges) {
  if (!state.emb || !ranges) return;
  Plotly.relayout(els.plot, { "xaxis.range": ranges.slice(0, 2), "yaxis.range": ranges.slice(2, 4) });
}

// ids of the points on screen: in a trace the legend shows, inside the axes' ranges
export function visibleIds() {
  const ranges = viewRanges();
  const out = [];
  if (!ranges) return out;
  const [xa, xb, ya, yb] = ranges;
  const [x0, x1, y0, y1] = [Math.min(xa, xb), Math.max(xa, xb), Math.min(ya, yb), Math.max(ya, yb)];
  (els.plot.data || []).forEach((trace, t) => {
    const ids = state.traceIds[t];
    if (!ids || trace.visible === "legendonly" || trace.visible === false) return;
    for (let j = 0; j < ids.length; j++) {
      const x = trace.x[j];
      const y = trace.y[j];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1) out.push(ids[j]);
    }
  });
  return out;
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
