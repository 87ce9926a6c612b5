// The explorer's shared state: its elements, what is loaded and selected, and the timing marks.
//
// window.__latentlab.timings holds performance.now() marks (ms since navigation) for bench/web.py.
import { currentUser } from "../api.js";

export const T = (window.__latentlab = window.__latentlab || {});
T.timings = T.timings || {};
T.clicks = [];
export const mark = (name) => {
  T.timings[name] = performance.now();
};
mark("moduleStart");

export const user = currentUser();
export const $ = (id) => document.getElementById(id);
export const els = {
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
  genWindowStart: $("gen-window-start"),
  genWindowStop: $("gen-window-stop"),
  genStrength: $("gen-strength"),
  genCompare: $("gen-compare"),
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
  dragBox: $("drag-box"),
  dragLasso: $("drag-lasso"),
  dragPlace: $("drag-place"),
  placeInfo: $("place-info"),
  clearTarget: $("clear-target"),
  setA: $("set-a"),
  setB: $("set-b"),
  removeMode: $("remove-mode"),
  undo: $("undo"),
  colourBy: $("colour-by"),
  density: $("density"),
  helpBtn: $("help-btn"),
  help: $("help-popover"),
  setCounts: $("set-counts"),
  classPick: $("class-pick"),
  classForm: $("select-class"),
  pasteForm: $("paste-ids"),
  pasteText: $("paste-text"),
  toolMessage: $("tool-message"),
  exportButtons: $("export-buttons"),
  reset: $("reset-view"),
};

export const state = {
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
  dragMode: "pan",
  colourBy: "class",
  density: false,
  previewed: null, // the map whose first draw had its canvas preview (explorer/plot.js)
  activeSet: "A",
  removeMode: false,
  target: null, // [x, y] placed with the place tool
  region: false, // Plotly holds a box or lasso selection (it dims what it did not catch)
  compareId: null, // the second map beside this one (explorer/linked.js), or null
};

export function frame() {
  return new Promise((resolve) => requestAnimationFrame(() => resolve()));
}

export function notice(text) {
  els.notice.textContent = text || "";
  els.notice.hidden = !text;
}
