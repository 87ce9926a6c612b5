// Colour by: the map's points split into one WebGL trace per category of the chosen column (class,
// origin, generation depth, owner, job) or one trace coloured along a scale (round-trip error, and the
// intervention effect and image change, which also size the points). Plotly's
// legend is then the filter: click an entry to hide it, double-click to show only it. A density layer
// (a 2-D histogram drawn as a heatmap under the points) makes a map of a million points read at a glance.
import { className } from "../ui.js";

// Colour-blind-safe: Okabe & Ito's set (without its yellow, too light on white) then Paul Tol's muted
// set; every one at least 3:1 against the white plot (WCAG non-text contrast).
export const PALETTE = [
  "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#332288", "#882255", "#117733",
  "#999933", "#aa4499", "#44aa99", "#cc6677", "#6f6f6f", "#000000",
];
const OTHER_COLOUR = "#9aa1ab";
const GENERATED_COLOUR = "#0f7a3a";
const MAX_CATEGORIES = 14; // beyond this, the smallest fold into "other"
export const COLOUR_BY = {
  class: "class",
  origin: "origin",
  depth: "generation depth",
  owner: "owner",
  job: "job",
  rt: "round-trip error",
  effect: "intervention effect",
  image_change: "image change",
};
// colourings along a scale: the column of the map and how the legend names it (the effects come from
// GET /api/v1/embeddings/<id>/effects, attached by attachEffects; only generated samples have them)
const SCALES = {
  rt: { column: "rt", name: "round-trip error", missing: "no round-trip error", bar: "error", sized: false },
  effect: { column: "effect", name: "intervention effect", missing: "no effect (not an intervened generation)", bar: "effect", sized: true },
  image_change: { column: "imageChange", name: "image change", missing: "no image change (not compared)", bar: "change", sized: true },
};

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

// which colourings this map's columns allow (the JSON wire format has no owner, job, depth or error)
export function availableColourings(map) {
  return Object.keys(COLOUR_BY).filter((key) => {
    if (key === "class" || key === "origin") return true;
    if (key === "effect" || key === "image_change") return Boolean(map[SCALES[key].column]);
    return map[{ depth: "depth", owner: "owner", job: "job", rt: "rt" }[key]] !== null;
  });
}

// category key of point i under a colouring (an integer), and the label of a key
function categorical(map, by) {
  const labels = map.labelNames;
  switch (by) {
    case "origin":
      return { key: (i) => map.origin[i], label: (k) => (k === 1 ? "generated" : "dataset") };
    case "depth":
      return { key: (i) => Math.min(map.depth[i], 4), label: (k) => (k === 0 ? "dataset (depth 0)" : k === 4 ? "depth 4+" : `depth ${k}`) };
    case "owner":
      return { key: (i) => map.owner[i], label: (k) => (k < 0 ? "no owner" : (map.owners && map.owners[String(k)]) || `user ${k}`) };
    case "job":
      return { key: (i) => map.job[i], label: (k) => (k < 0 ? "no job" : `job ${k}`) };
    default:
      return { key: (i) => (map.origin[i] === 1 ? -2 : map.cls[i]), label: (k) => (k === -2 ? "generated" : className(labels, k)) };
  }
}

// {traces, ids}: ids[t][j] is the sample id of point j of trace t
export function buildTraces(map, by = "class") {
  const n = map.n;
  const size = markerSize(n);
  const base = { type: "scattergl", mode: "markers", hoverinfo: "none" };
  if (SCALES[by]) return scaleTraces(map, base, size, SCALES[by]);
  const { key, label } = categorical(map, by);
  const counts = new Map();
  for (let i = 0; i < n; i++) {
    const k = key(i);
    counts.set(k, (counts.get(k) || 0) + 1);
  }
  // ascending, but the generated samples (class colouring) last, as their legend entry always was
  let keys = [...counts.keys()].sort((a, b) => (a === -2) - (b === -2) || a - b);
  let other = null;
  if (keys.length > MAX_CATEGORIES) {
    const kept = new Set([...keys].sort((a, b) => counts.get(b) - counts.get(a)).slice(0, MAX_CATEGORIES - 1));
    other = keys.filter((k) => !kept.has(k));
    keys = keys.filter((k) => kept.has(k));
  }
  const slot = new Map(keys.map((k, t) => [k, t]));
  const otherSlot = other ? keys.length : -1;
  const sizes = keys.map((k) => counts.get(k));
  if (other) sizes.push(other.reduce((a, k) => a + counts.get(k), 0));
  const xs = sizes.map((m) => new Float32Array(m));
  const ys = sizes.map((m) => new Float32Array(m));
  const is = sizes.map((m) => new Int32Array(m));
  const at = new Int32Array(sizes.length);
  for (let i = 0; i < n; i++) {
    const k = key(i);
    const t = slot.has(k) ? slot.get(k) : otherSlot;
    const j = at[t]++;
    xs[t][j] = map.x[i];
    ys[t][j] = map.y[i];
    is[t][j] = map.ids[i];
  }
  const traces = [];
  const ids = [];
  sizes.forEach((_, t) => {
    const k = t < keys.length ? keys[t] : null;
    const generated = by === "class" && k === -2;
    // samples generated in this page (not in the loaded columns) join the generated trace
    const takesExtra = (by === "class" && k === -2) || (by === "origin" && k === 1);
    const colour = k === null ? OTHER_COLOUR : PALETTE[t % PALETTE.length];
    let x = xs[t];
    let y = ys[t];
    let tid = is[t];
    if (takesExtra && map.extra.size) ({ x, y, tid } = withExtra(map, x, y, tid));
    traces.push({
      ...base,
      name: k === null ? `other (${other.length})` : label(k),
      x,
      y,
      marker: generated
        ? { size: Math.max(size + 2, 6), color: "#ffffff", line: { color: GENERATED_COLOUR, width: 2 } }
        : { size, color: colour, opacity: markerOpacity(n) },
    });
    ids.push(tid);
  });
  const extraHome = (by === "class" && keys.includes(-2)) || (by === "origin" && keys.includes(1));
  if (!extraHome && (by === "class" || map.extra.size)) {
    // the generated trace is always there (empty until a generation lands), so new points have a home
    const { x, y, tid } = withExtra(map, new Float32Array(0), new Float32Array(0), new Int32Array(0));
    traces.push({
      ...base,
      name: by === "class" || by === "origin" ? "generated" : "generated in this page",
      x,
      y,
      marker: { size: Math.max(size + 2, 6), color: "#ffffff", line: { color: GENERATED_COLOUR, width: 2 } },
      visible: tid.length ? true : "legendonly",
    });
    ids.push(tid);
  }
  return { traces, ids };
}

function withExtra(map, x, y, tid) {
  const m = map.extra.size;
  const X = new Float32Array(x.length + m);
  const Y = new Float32Array(y.length + m);
  const I = new Int32Array(tid.length + m);
  X.set(x);
  Y.set(y);
  I.set(tid);
  let j = x.length;
  for (const [id, p] of map.extra) {
    X[j] = p.x;
    Y[j] = p.y;
    I[j++] = id;
  }
  return { x: X, y: Y, tid: I };
}

// The effects answer ({ids, effect, image_change}) as columns aligned with the map's points: map.effect
// and map.imageChange (NaN where a sample has none). Without an answer both stay unset (not offered).
export function attachEffects(map, answer) {
  if (!answer || !Array.isArray(answer.ids)) return;
  const effect = new Float32Array(map.n).fill(NaN);
  const change = new Float32Array(map.n).fill(NaN);
  answer.ids.forEach((id, k) => {
    const i = map.indexOf(id);
    const extra = i < 0 ? map.extra.get(id) : null;
    if (extra) {
      // a sample generated in this page: its values ride on its entry (scaleTraces reads them there)
      extra.effect = answer.effect[k] === null ? NaN : answer.effect[k];
      extra.imageChange = answer.image_change[k] === null ? NaN : answer.image_change[k];
    }
    if (i < 0) return;
    if (answer.effect[k] !== null) effect[i] = answer.effect[k];
    if (answer.image_change[k] !== null) change[i] = answer.image_change[k];
  });
  map.effect = effect;
  map.imageChange = change;
}

// a value along a scale: generated samples with one coloured (Viridis: sequential and colour-blind-safe)
// and, for the effects, sized by it; the rest grey
function scaleTraces(map, base, size, scale) {
  const n = map.n;
  const values = map[scale.column];
  // samples generated in this page carry their value on their entry (attachEffects), if any
  const extraWith = [];
  const extraRest = [];
  for (const [id, p] of map.extra) {
    const v = p[scale.column];
    (typeof v === "number" && !Number.isNaN(v) ? extraWith : extraRest).push([id, p, v]);
  }
  let m = extraWith.length;
  for (let i = 0; i < n; i++) if (!Number.isNaN(values[i])) m++;
  const r = n + map.extra.size - m;
  const rest = { x: new Float32Array(r), y: new Float32Array(r), ids: new Int32Array(r) };
  const with_ = { x: new Float32Array(m), y: new Float32Array(m), ids: new Int32Array(m), c: new Float32Array(m) };
  let a = 0;
  let b = 0;
  let top = 0;
  for (let i = 0; i < n; i++) {
    if (Number.isNaN(values[i])) {
      rest.x[a] = map.x[i];
      rest.y[a] = map.y[i];
      rest.ids[a++] = map.ids[i];
    } else {
      with_.x[b] = map.x[i];
      with_.y[b] = map.y[i];
      with_.c[b] = values[i];
      top = Math.max(top, values[i]);
      with_.ids[b++] = map.ids[i];
    }
  }
  for (const [id, p] of extraRest) {
    rest.x[a] = p.x;
    rest.y[a] = p.y;
    rest.ids[a++] = id;
  }
  for (const [id, p, v] of extraWith) {
    with_.x[b] = p.x;
    with_.y[b] = p.y;
    with_.c[b] = v;
    top = Math.max(top, v);
    with_.ids[b++] = id;
  }
  const small = Math.max(size + 2, 6);
  // sized by the value: from the usual size at 0 to three times it at the map's largest value
  const sizes = scale.sized ? Array.from(with_.c, (v) => small + (top > 0 ? (2 * small * v) / top : 0)) : small;
  return {
    traces: [
      { ...base, name: scale.missing, x: rest.x, y: rest.y, marker: { size, color: OTHER_COLOUR, opacity: 0.5 } },
      {
        ...base,
        name: scale.name,
        x: with_.x,
        y: with_.y,
        marker: {
          size: sizes,
          color: with_.c,
          colorscale: "Viridis",
          // the scale's legend is the page's own (explorer/tools.js): Plotly's colour bar sets inline
          // styles, which the page's Content-Security-Policy blocks
          showscale: false,
          ...(scale.sized ? { line: { color: "#1d2433", width: 0.5 } } : {}),
        },
      },
    ],
    ids: [rest.ids, with_.ids],
  };
}

// the legend of a colouring along a scale: {title, min, max, count} (null for a categorical colouring)
export function scaleLegend(map, by) {
  const scale = SCALES[by];
  if (!scale || !map[scale.column]) return null;
  const values = map[scale.column];
  let min = Infinity;
  let max = -Infinity;
  let count = 0;
  const seen = (v) => {
    if (typeof v !== "number" || Number.isNaN(v)) return;
    count++;
    if (v < min) min = v;
    if (v > max) max = v;
  };
  for (let i = 0; i < map.n; i++) seen(values[i]);
  for (const p of map.extra.values()) seen(p[scale.column]);
  return { title: scale.name, min: count ? min : null, max: count ? max : null, count, sized: scale.sized };
}

// A heatmap of point counts on a grid over the map's bounds (zero cells transparent).
export function densityTrace(map, bins = 160) {
  if (!map.n || !map.bounds) return null;
  const [x0, x1, y0, y1] = map.bounds;
  const dx = (x1 - x0) / bins || 1;
  const dy = (y1 - y0) / bins || 1;
  const counts = new Float32Array(bins * bins);
  for (let i = 0; i < map.n; i++) {
    const cx = Math.min(bins - 1, Math.floor((map.x[i] - x0) / dx));
    const cy = Math.min(bins - 1, Math.floor((map.y[i] - y0) / dy));
    counts[cy * bins + cx]++;
  }
  const z = [];
  for (let r = 0; r < bins; r++) {
    const row = new Array(bins);
    for (let c = 0; c < bins; c++) {
      const v = counts[r * bins + c];
      row[c] = v ? Math.log1p(v) : null;
    }
    z.push(row);
  }
  return {
    type: "heatmap",
    name: "density",
    x0: x0 + dx / 2,
    dx,
    y0: y0 + dy / 2,
    dy,
    z,
    colorscale: [
      [0, "rgba(220,228,240,0.55)"],
      [1, "rgba(20,40,90,0.85)"],
    ],
    showscale: false,
    hoverinfo: "skip",
    showlegend: true,
    zsmooth: "best",
  };
}
