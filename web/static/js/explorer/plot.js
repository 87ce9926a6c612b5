// The map itself: Plotly (loaded here, off the critical path), one WebGL trace per category of the
// colouring (explorer/colour.js) with a density layer under them, the drag mode (pan, box zoom, box and
// lasso select), and the hover card with a sample's image.
import { className } from "../ui.js";
import { buildTraces, densityTrace } from "./colour.js";
import { els, frame, mark, state, T } from "./context.js";

// the place tool (explorer/place.js) turns Plotly's dragging off: a click sets the target instead
const PLOTLY_DRAG = { pan: "pan", zoom: "zoom", select: "select", lasso: "lasso", place: false };
// ?draw=plain: one WebGL trace per category and no preview (the draw before both; bench/web.py's baseline);
// ?preview_min= and ?trace_part= lower both thresholds, so that a small map takes the big maps' path (tests)
const DRAW_PARAMS = new URLSearchParams(location.search);
const PLAIN = DRAW_PARAMS.get("draw") === "plain";
// maps of at least this many points get the canvas preview and fixed axes (see drawPreview): from 50,000
// the preview paints the points ~0.5 s before the WebGL traces are drawn (bench/web.py; 200,000 before)
export const PREVIEW_MIN = Number(DRAW_PARAMS.get("preview_min")) || 50_000;

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
  // a big map's axes come from the server's bounds (the preview needs them before Plotly saw any point)
  const fixed = !PLAIN && state.map && state.map.n >= PREVIEW_MIN && state.map.bounds ? paddedBounds(state.map) : null;
  const ranges = fixed ? { x: { range: fixed.slice(0, 2) }, y: { range: fixed.slice(2, 4) } } : { x: {}, y: {} };
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
      tracegroupgap: 0, // a trace drawn in parts is a legend group (splitTraces); no gaps between entries
      bgcolor: "rgba(255,255,255,0.88)",
      bordercolor: "#d9dde3",
      borderwidth: 1,
      x: 1.01, // outside the axes, on their right: a legend over the map hid the points under it
      xanchor: "left",
      y: 1,
      font: { size: 12 },
    },
    // ticklabeloverflow "allow": Plotly skips measuring every tick label (a forced layout each)
    xaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow", ...ranges.x },
    yaxis: { zeroline: false, gridcolor: "#eef0f3", linecolor: "#8a93a3", showline: true, ticklabeloverflow: "allow", ...ranges.y },
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

// Plotly's scattergl builds a quadtree (point-cluster) of every trace of 100,000 points or more while
// drawing it, ~1 s for a million points in all; below that its hover and selection scan the points
// instead, which costs a few ms per event at a million. So a bigger trace is drawn as parts below that
// size (views of its columns, no copies), one legend group: its legend entry hides and isolates them all.
export const TRACE_PART = Number(DRAW_PARAMS.get("trace_part")) || 99_999;

export function splitTraces(traces, ids, limit = TRACE_PART) {
  const outTraces = [];
  const outIds = [];
  traces.forEach((trace, t) => {
    const n = trace.x ? trace.x.length : 0;
    if (n <= limit || !ids[t]) {
      outTraces.push(trace);
      outIds.push(ids[t]);
      return;
    }
    const parts = Math.ceil(n / limit);
    const size = Math.ceil(n / parts);
    const marker = trace.marker || {};
    const scaled = marker.color && typeof marker.color !== "string" && marker.color.length === n;
    let range = null;
    if (scaled) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of marker.color) if (!Number.isNaN(v)) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
      range = { cmin: marker.cmin ?? lo, cmax: marker.cmax ?? hi };
    }
    for (let a = 0, k = 0; a < n; a += size, k++) {
      const b = Math.min(n, a + size);
      const part = { ...trace, x: trace.x.subarray(a, b), y: trace.y.subarray(a, b), legendgroup: `part-${t}` };
      if (k > 0) part.showlegend = false;
      if (scaled) {
        part.marker = { ...marker, ...range, color: marker.color.subarray(a, b), showscale: k === 0 && marker.showscale };
      }
      outTraces.push(part);
      outIds.push(ids[t].subarray(a, b));
    }
  });
  return { traces: outTraces, ids: outIds };
}

// -- preview of a big map ---------------------------------------------------------------------------------
// Above PREVIEW_MIN points, the first draw of a map comes in two steps: the axes and legend (Plotly, no
// points) with the points painted straight into a canvas over the plot area (~0.1 s for a million), then
// Plotly's WebGL traces (seconds in a software renderer), which take over hover, click and selection and
// remove the canvas. Timings: "firstPaint" at the preview, "firstRender" once the traces are drawn.
let previewCanvas = null;

function paddedBounds(map) {
  const [x0, x1, y0, y1] = map.bounds;
  const px = (x1 - x0) * 0.04 || 1;
  const py = (y1 - y0) * 0.04 || 1;
  return [x0 - px, x1 + px, y0 - py, y1 + py];
}

function rgb(colour) {
  const hex = /^#([0-9a-f]{6})$/i.exec(colour || "");
  const v = hex ? parseInt(hex[1], 16) : 0x6f6f6f;
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// the points of the traces, square markers in their colours, into a canvas over the plot area
function paintPreview(traces) {
  const L = els.plot._fullLayout;
  const size = L._size;
  const [xa, xb] = L.xaxis.range.map(Number);
  const [ya, yb] = L.yaxis.range.map(Number);
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(size.w * dpr));
  const hgt = Math.max(1, Math.round(size.h * dpr));
  const canvas = document.createElement("canvas");
  canvas.className = "map-preview";
  canvas.width = w;
  canvas.height = hgt;
  Object.assign(canvas.style, {
    position: "absolute",
    left: `${size.l}px`,
    top: `${size.t}px`,
    width: `${size.w}px`,
    height: `${size.h}px`,
    pointerEvents: "none",
  });
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, hgt);
  const px = new Uint32Array(image.data.buffer);
  const sx = w / (xb - xa);
  const sy = hgt / (yb - ya);
  for (const trace of traces) {
    if (trace.visible === "legendonly" || !trace.x || !trace.x.length) continue;
    const marker = trace.marker || {};
    const colour = typeof marker.color === "string" && marker.color !== "#ffffff" ? marker.color : marker.line?.color;
    const [r, g, b] = rgb(colour);
    const a = Math.round(255 * (marker.opacity ?? 1));
    const value = ((a << 24) | (b << 16) | (g << 8) | r) >>> 0; // little-endian RGBA
    const m = Math.max(1, Math.round((marker.size || 2) * dpr));
    const half = m >> 1;
    const { x, y } = trace;
    for (let i = 0; i < x.length; i++) {
      const cx = Math.round((x[i] - xa) * sx) - half;
      const cy = Math.round((yb - y[i]) * sy) - half;
      for (let dy = 0; dy < m; dy++) {
        const row = cy + dy;
        if (row < 0 || row >= hgt) continue;
        for (let dx = 0; dx < m; dx++) {
          const col = cx + dx;
          if (col >= 0 && col < w) px[row * w + col] = value;
        }
      }
    }
  }
  ctx.putImageData(image, 0, 0);
  dropPreview();
  previewCanvas = canvas;
  els.plot.append(canvas);
}

function dropPreview() {
  if (previewCanvas) previewCanvas.remove();
  previewCanvas = null;
}

async function drawPreview(traces, layout) {
  // the legend from empty SVG traces of the same names and colours; the axes are the map's bounds
  const empty = traces.map((t) => ({ ...t, type: t.type === "scattergl" ? "scatter" : t.type, x: [], y: [], z: t.z && [] }));
  await Plotly.react(els.plot, empty, layout, PLOT_CONFIG);
  paintPreview(traces);
  mark("firstPaint");
  await frame();
  await new Promise((resolve) => setTimeout(resolve)); // let the browser paint it before the long draw
}

// Draws the map's traces (the caller redraws the overlay after).
export async function drawPlot() {
  const whole = buildTraces(state.map, state.colourBy);
  const preview = !PLAIN && state.map.n >= PREVIEW_MIN && state.map.bounds && state.previewed !== state.emb.id;
  if (preview) {
    state.previewed = state.emb.id;
    await drawPreview(whole.traces, layoutFor(state.emb));
  }
  const built = PLAIN ? whole : splitTraces(whole.traces, whole.ids);
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
  dropPreview();
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
  if (!state.emb) return;
  if (!PLAIN && state.map && state.map.n >= PREVIEW_MIN && state.map.bounds) setView(paddedBounds(state.map));
  else Plotly.relayout(els.plot, { "xaxis.autorange": true, "yaxis.autorange": true });
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
