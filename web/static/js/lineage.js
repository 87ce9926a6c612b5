// A lineage DAG (GET /api/v1/samples/<id>/lineage) drawn as SVG: one band per generation level
// (ancestors above, the chosen sample, descendants below), thumbnails on the nodes, edges
// from parent to child (the clicked "selected" parent solid and dark, neighbours red with width by weight).
import { className } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
const NODE_W = 112;
const NODE_H = 100;
const IMG = 60;
const COL_GAP = 70; // between levels
const ROW_GAP = 14; // between nodes of a level
const PAD = 24;

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

// graph: the API answer; labelNames: for class names; onOpen(sampleId): a node was chosen
export function drawLineage(container, graph, { labelNames = [], onOpen } = {}) {
  const levels = [...new Set(graph.nodes.map((n) => n.level))].sort((a, b) => a - b);
  const rows = new Map(levels.map((l) => [l, []]));
  for (const n of graph.nodes) rows.get(n.level).push(n);
  for (const row of rows.values()) row.sort((a, b) => a.sample_id - b.sample_id);
  // one band per level, top (ancestors) to bottom (descendants); a wide level wraps onto more lines
  const avail = Math.max(NODE_W, (container.clientWidth || 900) - 2 * PAD);
  const perLine = Math.max(1, Math.floor((avail + ROW_GAP) / (NODE_W + ROW_GAP)));
  const widest = Math.min(perLine, Math.max(1, ...[...rows.values()].map((r) => r.length)));
  const width = PAD * 2 + widest * NODE_W + (widest - 1) * ROW_GAP;
  const pos = new Map();
  const bands = [];
  let y = PAD;
  for (const level of levels) {
    const row = rows.get(level);
    bands.push({ level, y });
    y += 18;
    for (let a = 0; a < row.length; a += perLine) {
      const line = row.slice(a, a + perLine);
      const lineWidth = line.length * NODE_W + (line.length - 1) * ROW_GAP;
      const left = (width - lineWidth) / 2;
      line.forEach((n, i) => pos.set(n.sample_id, { x: left + i * (NODE_W + ROW_GAP), y, n }));
      y += NODE_H + ROW_GAP;
    }
    y += COL_GAP - ROW_GAP;
  }
  const height = y - COL_GAP + ROW_GAP + PAD;

  const root = svg("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": `Lineage of sample ${graph.root}: ${graph.nodes.length} samples, ${graph.edges.length} links`,
  });
  for (const { level, y: top } of bands) {
    const label = level === 0 ? "this sample" : level < 0 ? `${-level} generation${level < -1 ? "s" : ""} up: parents` : `${level} generation${level > 1 ? "s" : ""} down: children`;
    root.append(svg("text", { class: "level-label", x: PAD, y: top + 10 }, document.createTextNode(label)));
  }
  const edges = svg("g", { class: "edges" });
  for (const e of graph.edges) {
    const a = pos.get(e.parent);
    const b = pos.get(e.child);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W / 2;
    const y1 = a.y + NODE_H;
    const x2 = b.x + NODE_W / 2;
    const y2 = b.y;
    const bend = Math.max(30, Math.abs(y2 - y1) / 2);
    const width = e.role === "neighbor" ? 1 + 4 * Math.max(0, Math.min(1, Number(e.weight) || 0)) : undefined;
    const path = svg("path", {
      class: `edge role-${e.role}`,
      d: `M${x1},${y1} C${x1},${y1 + bend} ${x2},${y2 - bend} ${x2},${y2}`,
      "stroke-width": width,
      "data-parent": e.parent,
      "data-child": e.child,
    });
    path.append(svg("title", {}, document.createTextNode(`#${e.parent} → #${e.child} (${e.role}${e.role === "neighbor" ? `, weight ${Number(e.weight).toFixed(2)}` : ""})`)));
    edges.append(path);
  }
  root.append(edges);
  const nodes = svg("g", { class: "nodes" });
  for (const { x, y, n } of pos.values()) {
    const isRoot = n.sample_id === graph.root;
    const cls = n.class_label !== null && n.class_label !== undefined ? className(labelNames, n.class_label) : n.origin === "generated" ? "blend / none" : "";
    const group = svg(
      "g",
      { class: `node origin-${n.origin}${isRoot ? " is-root" : ""}`, transform: `translate(${x},${y})`, "data-id": n.sample_id },
      svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
      svg("image", { href: n.image_url, x: (NODE_W - IMG) / 2, y: 6, width: IMG, height: IMG, preserveAspectRatio: "xMidYMid meet" }),
      svg("text", { x: NODE_W / 2, y: IMG + 22, "text-anchor": "middle" }, document.createTextNode(`#${n.sample_id}`)),
      svg("text", { class: "sub", x: NODE_W / 2, y: IMG + 36, "text-anchor": "middle" }, document.createTextNode(`${cls}${n.origin === "generated" ? " · gen." : ""}`)),
    );
    const link = svg("a", { href: `/history?sample=${n.sample_id}#lineage`, "aria-label": `Sample ${n.sample_id}, ${n.origin}${cls ? `, ${cls}` : ""}${isRoot ? " (shown)" : ""}` }, group);
    link.addEventListener("click", (e) => {
      if (!onOpen) return;
      e.preventDefault();
      onOpen(n.sample_id);
    });
    nodes.append(link);
  }
  root.append(nodes);
  container.replaceChildren(root);
  return root;
}
