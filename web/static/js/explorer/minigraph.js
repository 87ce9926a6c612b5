// The lineage mini-graph of the side panel: the selected sample in the middle, the samples it was made
// from above (the clicked sample dark, neighbours red, the negative set dashed) and the samples made from
// it below, as small thumbnails with their ids joined by edges. A node is a button: it selects its sample.
// Drawn from the sample's detail (GET /api/v1/samples/<id>: parents and children), no further request;
// the full graph is on the History page (web/static/js/lineage.js).

const NS = "http://www.w3.org/2000/svg";
const IMG = 30;
const NODE_W = 44;
const ROW_H = 84;
const MAX_ROW = 6; // nodes per row; beyond that a "+n" node says how many more
const WIDTH = MAX_ROW * NODE_W + 8;

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  if (text !== null) el.append(document.createTextNode(text));
  return el;
}

function rowPositions(count) {
  const shown = Math.min(count, MAX_ROW);
  const left = (WIDTH - shown * NODE_W) / 2;
  return Array.from({ length: shown }, (_, i) => left + i * NODE_W + NODE_W / 2);
}

// detail: the sample's detail answer; onPick(id): a node was chosen. Returns the <svg>, or null when the
// sample has neither parents nor children.
export function miniGraph(detail, onPick) {
  const parents = detail.parents || [];
  const children = [...new Set((detail.children || []).map((c) => c.sample_id))];
  if (!parents.length && !children.length) return null;
  const rows = [];
  if (parents.length) rows.push({ kind: "parent", items: parents.map((p) => ({ id: p.sample_id, role: p.role, weight: p.weight })) });
  rows.push({ kind: "self", items: [{ id: detail.id, role: "self" }] });
  if (children.length) rows.push({ kind: "child", items: children.map((id) => ({ id, role: "child" })) });
  const height = rows.length * ROW_H + 4;
  const root = svg("svg", {
    class: "mini-graph",
    width: WIDTH,
    height,
    viewBox: `0 0 ${WIDTH} ${height}`,
    role: "group",
    "aria-label": `Lineage of sample ${detail.id}: ${parents.length} parent${parents.length === 1 ? "" : "s"}, ${children.length} child${children.length === 1 ? "" : "ren"}`,
  });
  const edges = svg("g", { class: "edges" });
  const nodes = svg("g", { class: "nodes" });
  root.append(edges, nodes);
  const selfX = WIDTH / 2;
  rows.forEach((row, r) => {
    const top = 4 + r * ROW_H;
    const selfTop = 4 + rows.findIndex((x) => x.kind === "self") * ROW_H;
    const xs = rowPositions(row.items.length);
    xs.forEach((cx, i) => {
      const overflow = i === MAX_ROW - 1 && row.items.length > MAX_ROW;
      const item = row.items[i];
      if (row.kind !== "self") {
        // parent (below its id) -> the selected sample's top; the selected sample (below its id) -> child
        const ends = row.kind === "parent" ? [cx, top + IMG + 18, selfX, selfTop - 3] : [selfX, selfTop + IMG + 18, cx, top - 3];
        const width = item.role === "neighbor" ? 1 + 3 * Math.max(0, Math.min(1, Number(item.weight) || 0)) : 1.5;
        const [x1, y1, x2, y2] = ends;
        edges.append(svg("line", { class: `edge role-${overflow ? "more" : item.role}`, x1, y1, x2, y2, "stroke-width": width }));
      }
      if (overflow) {
        nodes.append(svg("text", { class: "more", x: cx, y: top + IMG / 2 + 4, "text-anchor": "middle" }, `+${row.items.length - MAX_ROW + 1}`));
        return;
      }
      const g = svg("g", {
        class: `mini-node role-${item.role}`,
        transform: `translate(${cx - IMG / 2},${top})`,
        tabindex: row.kind === "self" ? null : 0,
        role: row.kind === "self" ? null : "button",
        "data-id": item.id,
        "aria-label": row.kind === "self" ? null : `Select ${row.kind} sample ${item.id}${item.role === "negative" ? " (negative set)" : ""}`,
      });
      g.append(
        svg("rect", { x: -2, y: -2, width: IMG + 4, height: IMG + 4, rx: 4 }),
        svg("image", { href: `/api/v1/samples/${item.id}/image`, width: IMG, height: IMG }),
        svg("text", { x: IMG / 2, y: IMG + 14, "text-anchor": "middle" }, `#${item.id}`),
        svg("title", {}, row.kind === "self" ? `sample ${item.id} (selected)` : `${row.kind} ${item.id}${item.role !== "child" ? ` (${item.role})` : ""}`),
      );
      if (row.kind !== "self") {
        g.addEventListener("click", () => onPick(item.id));
        g.addEventListener("keydown", (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            onPick(item.id);
          }
        });
      }
      nodes.append(g);
    });
  });
  return root;
}
