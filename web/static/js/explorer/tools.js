// The selection tools: drag modes (pan, box zoom, box select, lasso), the active set (A: neighbours, B:
// the negative set), remove mode, undo, adding a whole class or pasted ids, colour by and density, and
// the keyboard shortcuts with their help popover. Every message goes to the page (never the console).
import { className, h, say } from "../ui.js";
import { availableColourings, COLOUR_BY, scaleLegend } from "./colour.js";
import { $, els, state, T } from "./context.js";
import { drawLinked } from "./linked.js";
import { renderOverlay } from "./panel.js";
import { clearPlotlySelection, drawPlot, resetView, setDragMode } from "./plot.js";

T.lassos = [];

export function message(text, kind = "") {
  say(els.toolMessage, text, kind);
}

// -- sets, regions, undo ----------------------------------------------------------------------------------

export function setActiveSet(set) {
  state.activeSet = set;
  els.setA.setAttribute("aria-pressed", String(set === "A"));
  els.setB.setAttribute("aria-pressed", String(set === "B"));
}

export function setRemoveMode(on) {
  state.removeMode = on;
  els.removeMode.setAttribute("aria-pressed", String(on));
}

// A box or lasso ended: add what it caught to the active set (or remove it, in remove mode).
export function handleRegion(ids, ev, t0) {
  const sel = state.selection;
  if (!sel) return;
  state.region = ids.length > 0;
  if (!ids.length) {
    message(`The ${ev && ev.lassoPoints ? "lasso" : "box"} caught no points; draw it around some points.`, "error");
    return;
  }
  const set = state.activeSet;
  const changed = state.removeMode ? sel.removeMany(ids, set) : sel.addMany(ids, set);
  const verb = state.removeMode ? "removed from" : "added to";
  message(`${changed} of the ${ids.length} points caught ${verb} set ${set}.`, "ok");
  const applied = performance.now();
  const up = T.timings.pointerUp;
  requestAnimationFrame(() => {
    const now = performance.now();
    // ms: mouse up → painted (Plotly's hit test, our sets and panel, the frame); applyMs: our part only
    T.lassos.push({ ms: now - (up && up < t0 ? up : t0), applyMs: applied - t0, points: ids.length, changed });
  });
}

export function undo() {
  const sel = state.selection;
  if (!sel || !sel.undo()) message("Nothing to undo.");
  else message("Undone.", "ok");
}

// after any change: the set counts and the undo button (panel.js calls this from onSelectionChange)
export function renderSetCounts() {
  const sel = state.selection;
  els.undo.disabled = !sel || !sel.canUndo();
  if (!sel) {
    els.setCounts.textContent = "";
    return;
  }
  const a = sel.neighbours.length;
  const b = sel.negative.length;
  els.setCounts.textContent =
    `Set A (neighbours): ${a} · set B (negative): ${b}` +
    (b ? " · set B goes to the generator only where the API takes a negative set" : "");
}

// a change made by a click or the panel ends Plotly's own box or lasso dimming (it no longer matches)
export function dropRegionDimming() {
  if (!state.region) return;
  state.region = false;
  clearPlotlySelection();
}

// -- by class, by pasted ids ------------------------------------------------------------------------------

export function fillClassPick() {
  const labels = state.map.labelNames;
  const present = new Set();
  for (let i = 0; i < state.map.n; i++) if (state.map.cls[i] >= 0) present.add(state.map.cls[i]);
  els.classPick.replaceChildren(
    ...[...present].sort((a, b) => a - b).map((c) => h("option", { value: String(c), text: className(labels, c) })),
  );
}

function addClass(e) {
  e.preventDefault();
  const sel = state.selection;
  const c = Number(els.classPick.value);
  if (!sel || !Number.isInteger(c)) {
    message("Choose a class first.", "error");
    return;
  }
  const m = state.map;
  const ids = [];
  for (let i = 0; i < m.n; i++) if (m.cls[i] === c && m.origin[i] === 0) ids.push(m.ids[i]);
  const changed = sel.addMany(ids, state.activeSet, "region");
  message(`${changed} samples of class ${className(m.labelNames, c)} added to set ${state.activeSet}.`, "ok");
}

// "12, 15 31\n40" → ids; anything else is named back to the user
export function parseIds(text) {
  const tokens = text.split(/[\s,;]+/).filter(Boolean);
  const ids = [];
  const bad = [];
  for (const t of tokens) {
    if (/^\d+$/.test(t) && Number.isSafeInteger(Number(t)) && Number(t) > 0) ids.push(Number(t));
    else bad.push(t);
  }
  return { ids, bad };
}

function addPasted(e) {
  e.preventDefault();
  const sel = state.selection;
  if (!sel) return;
  const { ids, bad } = parseIds(els.pasteText.value);
  if (!ids.length && !bad.length) {
    message("Paste some sample ids first, e.g. 12, 15, 31.", "error");
    return;
  }
  const on = ids.filter((id) => state.map.has(id));
  const off = ids.filter((id) => !state.map.has(id));
  const changed = on.length ? sel.addMany(on, state.activeSet, "manual") : 0;
  const parts = [];
  if (on.length) parts.push(`${changed} added to set ${state.activeSet}`);
  if (off.length) parts.push(`not on this map: ${off.slice(0, 10).join(", ")}${off.length > 10 ? "…" : ""}`);
  if (bad.length) parts.push(`not sample ids (whole numbers): ${bad.slice(0, 10).map((b) => `"${b}"`).join(", ")}`);
  message(`${parts.join("; ")}.`, off.length || bad.length ? "error" : "ok");
}

// -- colour by, density -----------------------------------------------------------------------------------

export function fillColourBy() {
  const allowed = availableColourings(state.map);
  if (!allowed.includes(state.colourBy)) state.colourBy = "class";
  els.colourBy.replaceChildren(
    ...Object.entries(COLOUR_BY).map(([key, name]) =>
      h("option", { value: key, text: name, disabled: !allowed.includes(key) }),
    ),
  );
  els.colourBy.value = state.colourBy;
  els.density.checked = state.density;
}

// the legend of a colouring along a scale (Viridis, low to high; grey: no value), under Plotly's legend
export function renderScaleLegend() {
  const legend = state.map ? scaleLegend(state.map, state.colourBy) : null;
  const box = $("scale-legend");
  box.hidden = !legend;
  if (!legend) return;
  const f = (v) => (v === null ? "—" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));
  $("scale-title").textContent = `${legend.title}${legend.sized ? " (colour and size)" : ""}: ${legend.count} samples`;
  $("scale-min").textContent = f(legend.min);
  $("scale-max").textContent = f(legend.max);
}

async function redraw() {
  state.region = false;
  await drawPlot();
  renderScaleLegend();
  renderOverlay();
  await drawLinked(); // the second map follows the colouring
}

export async function setColourBy(key) {
  if (!state.map || !availableColourings(state.map).includes(key)) return;
  state.colourBy = key;
  els.colourBy.value = key;
  await redraw();
}

async function setDensity(on) {
  state.density = on;
  els.density.checked = on;
  if (state.map) await redraw();
}

// -- keyboard ---------------------------------------------------------------------------------------------

function toggleHelp(show = els.help.hidden) {
  els.help.hidden = !show;
  els.helpBtn.setAttribute("aria-expanded", String(show));
}

function onKey(e) {
  const t = e.target;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
    e.preventDefault();
    undo();
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const keys = {
    p: () => setDragMode("pan"),
    z: () => setDragMode("zoom"),
    b: () => setDragMode("select"),
    l: () => setDragMode("lasso"),
    g: () => setDragMode("place"),
    1: () => setActiveSet("A"),
    2: () => setActiveSet("B"),
    r: () => setRemoveMode(!state.removeMode),
    u: undo,
    c: () => {
      const allowed = availableColourings(state.map || { depth: null, owner: null, job: null, rt: null });
      setColourBy(allowed[(allowed.indexOf(state.colourBy) + 1) % allowed.length]);
    },
    d: () => setDensity(!state.density),
    0: resetView,
    m: () => $("compare-picker").focus(),
    "/": () => $("search-text").focus(),
    "?": () => toggleHelp(),
    Escape: () => {
      if (!els.help.hidden) toggleHelp(false);
      else if (state.selection) state.selection.clear();
    },
  };
  const action = keys[e.key] || keys[e.key.toLowerCase()];
  if (action) {
    e.preventDefault();
    action();
  }
}

export function wireTools() {
  els.dragPan.addEventListener("click", () => setDragMode("pan"));
  els.dragZoom.addEventListener("click", () => setDragMode("zoom"));
  els.dragBox.addEventListener("click", () => setDragMode("select"));
  els.dragLasso.addEventListener("click", () => setDragMode("lasso"));
  els.dragPlace.addEventListener("click", () => setDragMode("place"));
  els.setA.addEventListener("click", () => setActiveSet("A"));
  els.setB.addEventListener("click", () => setActiveSet("B"));
  els.removeMode.addEventListener("click", () => setRemoveMode(!state.removeMode));
  els.undo.addEventListener("click", undo);
  els.classForm.addEventListener("submit", addClass);
  els.pasteForm.addEventListener("submit", addPasted);
  els.colourBy.addEventListener("change", () => setColourBy(els.colourBy.value));
  els.density.addEventListener("change", () => setDensity(els.density.checked));
  els.helpBtn.addEventListener("click", () => toggleHelp());
  document.addEventListener("keydown", onKey);
}
