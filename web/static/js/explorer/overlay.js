// An SVG layer over the Plotly plot for what changes on every click: the selection, its neighbours, the
// selected sample's parents, and the generation markers (intended point as a star, linked to where the
// image landed). Drawing these here instead of as Plotly traces keeps a click at a few milliseconds:
// a Plotly update recomputes every WebGL trace, which at 100k points takes hundreds of milliseconds.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function starPath(r) {
  const pts = [];
  for (let i = 0; i < 10; i++) {
    const rad = i % 2 === 0 ? r : r * 0.45;
    const a = (Math.PI / 5) * i - Math.PI / 2;
    pts.push(`${(Math.cos(a) * rad).toFixed(2)},${(Math.sin(a) * rad).toFixed(2)}`);
  }
  return `M${pts.join("L")}Z`;
}
const STAR = starPath(8);
const DIAMOND = "M0,-9L9,0L0,9L-9,0Z";

export class Overlay {
  // clipId: the id of the clip path (unique per page: the linked map has an overlay of its own)
  constructor(svgEl, plotEl, { onStarClick, onStarEnter, onStarLeave, clipId = "overlay-clip" } = {}) {
    this.svg = svgEl;
    this.plot = plotEl;
    this.handlers = { onStarClick, onStarEnter, onStarLeave };
    this.clipRect = svg("rect");
    const defs = svg("defs");
    const clip = svg("clipPath", { id: clipId });
    clip.append(this.clipRect);
    defs.append(clip);
    this.root = svg("g", { "clip-path": `url(#${clipId})` });
    this.gens = svg("g", { class: "gens" });
    this.parents = svg("g", { class: "parents-layer" });
    this.nbs = svg("g", { class: "neighbours" });
    this.negs = svg("g", { class: "negative" });
    this.sel = svg("g", { class: "selection" });
    this.linked = svg("g", { class: "linked-hover" });
    this.root.append(this.gens, this.parents, this.negs, this.nbs, this.sel, this.linked);
    this.svg.replaceChildren(defs, this.root);
    this.items = []; // [{el, x, y, kind}] positioned on every view change
    this.lines = []; // [{el, x1, y1, x2, y2}]
    this.data = { selected: null, neighbours: [], negative: [], parents: [], generations: [], fresh: new Set() };
    this.ranges = null;
    this.hoverItem = null;
  }

  // the sample hovered on the other map of a linked pair ({id, x, y}), or null to take the marker away
  setHover(p) {
    if (this.hoverItem) this.items.splice(this.items.indexOf(this.hoverItem), 1);
    this.hoverItem = null;
    if (!p) {
      this.linked.replaceChildren();
      return;
    }
    const ring = svg("circle", { class: "linked-ring", r: 11, "data-id": p.id });
    this.linked.replaceChildren(ring);
    this.hoverItem = { el: ring, x: p.x, y: p.y, kind: "circle" };
    this.items.push(this.hoverItem);
    this.position();
  }

  // data -> pixel within the plot div, from the axes' current ranges (or the ranges of a drag in flight)
  transform(pending) {
    const L = this.plot._fullLayout;
    if (!L || !L.xaxis || !L.xaxis._length) return null;
    const xa = L.xaxis;
    const ya = L.yaxis;
    const pick = (axis, name) => {
      if (pending) {
        if (pending[`${name}.range`]) return pending[`${name}.range`];
        if (pending[`${name}.range[0]`] !== undefined) return [pending[`${name}.range[0]`], pending[`${name}.range[1]`]];
      }
      return axis.range;
    };
    const [x0, x1] = pick(xa, "xaxis").map(Number);
    const [y0, y1] = pick(ya, "yaxis").map(Number);
    const sx = xa._length / (x1 - x0);
    const sy = ya._length / (y1 - y0);
    return {
      box: [xa._offset, ya._offset, xa._length, ya._length],
      px: (x) => xa._offset + (x - x0) * sx,
      py: (y) => ya._offset + ya._length - (y - y0) * sy,
    };
  }

  // data: {selected: {id,x,y}|null, neighbours: [{id,x,y,source}], negative: [{id,x,y}], parents: [{id,x,y}],
  //        generations: [{id, center, actual, twin: [x,y]|null}], fresh: Set of new ids}
  render(data) {
    this.data = { ...this.data, ...data };
    const d = this.data;
    this.items = [];
    this.lines = [];
    const gens = [];
    for (const g of d.generations) {
      const group = svg("g", { class: "gen", "data-id": g.id });
      if (g.center && g.actual) {
        const line = svg("line", { class: "gen-line" });
        group.append(line);
        this.lines.push({ el: line, x1: g.center[0], y1: g.center[1], x2: g.actual[0], y2: g.actual[1] });
      }
      if (g.twin && g.actual) {
        // where the same seed lands without the intervention -> where the intervened image landed
        const line = svg("line", { class: "twin-line" });
        group.append(line);
        this.lines.push({ el: line, x1: g.twin[0], y1: g.twin[1], x2: g.actual[0], y2: g.actual[1] });
      }
      if (g.actual) {
        const dot = svg("circle", { class: "gen-actual", r: 4.5 });
        group.append(dot);
        this.items.push({ el: dot, x: g.actual[0], y: g.actual[1], kind: "circle" });
      }
      if (g.center) {
        const star = svg("path", { class: `gen-star${d.fresh.has(g.id) ? " is-new" : ""}`, d: STAR, "data-id": g.id });
        star.addEventListener("click", (e) => this.handlers.onStarClick && this.handlers.onStarClick(g.id, e));
        star.addEventListener("mouseenter", (e) => this.handlers.onStarEnter && this.handlers.onStarEnter(g.id, e));
        star.addEventListener("mouseleave", () => this.handlers.onStarLeave && this.handlers.onStarLeave(g.id));
        group.append(star);
        this.items.push({ el: star, x: g.center[0], y: g.center[1], kind: "path" });
      }
      gens.push(group);
    }
    this.gens.replaceChildren(...gens);

    const parents = d.parents.map((p) => {
      const el = svg("path", { class: "parent", d: DIAMOND, "data-id": p.id });
      this.items.push({ el, x: p.x, y: p.y, kind: "path" });
      return el;
    });
    this.parents.replaceChildren(...parents);

    const nbs = [];
    for (const n of d.neighbours) {
      const manual = n.source === "manual";
      const region = n.source === "region";
      const r = manual ? 8 : region ? 5 : 7;
      const cls = manual ? "ring-manual" : region ? "ring-region" : "ring-knn";
      const ring = svg("circle", { class: cls, r, "data-id": n.id });
      if (!region) {
        const halo = svg("circle", { class: "halo", r });
        this.items.push({ el: halo, x: n.x, y: n.y, kind: "circle" });
        nbs.push(halo);
      }
      this.items.push({ el: ring, x: n.x, y: n.y, kind: "circle" });
      nbs.push(ring);
    }
    this.nbs.replaceChildren(...nbs);
    const negs = d.negative.map((n) => {
      const ring = svg("circle", { class: "ring-b", r: 7, "data-id": n.id });
      this.items.push({ el: ring, x: n.x, y: n.y, kind: "circle" });
      return ring;
    });
    this.negs.replaceChildren(...negs);

    const sel = [];
    if (d.selected) {
      const dot = svg("circle", { class: "sel-dot", r: 6.5, "data-id": d.selected.id });
      const ring = svg("circle", { class: "sel-ring", r: 9.5 });
      this.items.push({ el: dot, x: d.selected.x, y: d.selected.y, kind: "circle" });
      this.items.push({ el: ring, x: d.selected.x, y: d.selected.y, kind: "circle" });
      sel.push(dot, ring);
    }
    this.sel.replaceChildren(...sel);
    if (this.hoverItem) this.items.push(this.hoverItem);
    this.position();
  }

  position(pending) {
    const t = this.transform(pending);
    if (!t) return;
    const [bx, by, bw, bh] = t.box;
    this.clipRect.setAttribute("x", bx);
    this.clipRect.setAttribute("y", by);
    this.clipRect.setAttribute("width", Math.max(0, bw));
    this.clipRect.setAttribute("height", Math.max(0, bh));
    for (const it of this.items) {
      const px = t.px(it.x);
      const py = t.py(it.y);
      if (it.kind === "circle") {
        it.el.setAttribute("cx", px.toFixed(1));
        it.el.setAttribute("cy", py.toFixed(1));
      } else {
        it.el.setAttribute("transform", `translate(${px.toFixed(1)},${py.toFixed(1)})`);
      }
    }
    for (const ln of this.lines) {
      ln.el.setAttribute("x1", t.px(ln.x1).toFixed(1));
      ln.el.setAttribute("y1", t.py(ln.y1).toFixed(1));
      ln.el.setAttribute("x2", t.px(ln.x2).toFixed(1));
      ln.el.setAttribute("y2", t.py(ln.y2).toFixed(1));
    }
  }

  // where a data point is on screen (viewport coordinates), for tests and benchmarks
  clientPoint(x, y) {
    const t = this.transform();
    if (!t) return null;
    const rect = this.plot.getBoundingClientRect();
    return { x: rect.left + t.px(x), y: rect.top + t.py(y) };
  }
}
