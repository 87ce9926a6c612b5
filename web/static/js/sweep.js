// The sweep page: the grid of cells (rows and columns chosen from the grid's axes) with each cell's first
// image, its parameters and effect numbers; a cell opens its sample on the map.
import { api } from "./api.js";
import { h, showError, thumb } from "./ui.js";

const $ = (id) => document.getElementById(id);
const root = $("sweep");
const sweepId = Number(root.dataset.sweepId);
const els = { info: $("sweep-info"), error: $("sweep-error"), grid: $("sweep-grid"), rows: $("sweep-rows"), cols: $("sweep-cols"), sheet: $("sweep-sheet") };

function label(v) {
  if (Array.isArray(v)) return v.join(typeof v[0] === "string" ? "+" : ", ");
  return v === null ? "none" : String(v);
}

function num(v) {
  return v === null || v === undefined ? "–" : v.toFixed(3);
}

function render(sweep) {
  const rows = els.rows.value;
  const cols = els.cols.value;
  const rowValues = sweep.grid[rows].map(label);
  const colKeys = [];
  const placed = new Map();
  for (const cell of sweep.cells) {
    const key = sweep.axes.filter((a) => a !== rows).map((a) => `${a}=${label(cell.params[a])}`).join(" ");
    if (!colKeys.includes(key)) colKeys.push(key);
    placed.set(`${label(cell.params[rows])}|${key}`, cell);
  }
  const head = h("tr", {}, h("th", { text: rows }), ...colKeys.map((k) => h("th", { scope: "col", text: k || "—" })));
  const body = rowValues.map((rv) =>
    h(
      "tr",
      {},
      h("th", { scope: "row", text: `${rows}=${rv}` }),
      ...colKeys.map((k) => {
        const cell = placed.get(`${rv}|${k}`);
        if (!cell || !cell.samples.length) return h("td", { class: "sweep-cell empty", text: "no image yet" });
        const sid = cell.samples[0];
        return h(
          "td",
          { class: "sweep-cell", "data-cell": String(cell.cell) },
          h("a", { href: `/explorer?embedding=${sweep.embedding_id}&sample=${sid}`, title: `open sample ${sid} on the map` }, thumb(sid, { alt: `cell ${cell.cell}: sample ${sid}` })),
          h("div", { class: "muted", text: `effect ${num(cell.effect)} · Δpx ${num(cell.image_change)}` }),
        );
      }),
    ),
  );
  els.grid.replaceChildren(h("table", { class: "sweep-grid" }, h("thead", {}, head), h("tbody", {}, ...body)));
  const q = new URLSearchParams({ rows });
  if (cols && cols !== rows) q.set("cols", cols);
  els.sheet.href = `/api/v1/sweeps/${sweepId}/sheet.png?${q}`;
}

async function main() {
  let sweep;
  try {
    sweep = await api(`/api/v1/sweeps/${sweepId}`);
  } catch (err) {
    showError(els.error, err.message);
    els.info.textContent = "";
    return;
  }
  const done = sweep.cells.filter((c) => c.samples.length).length;
  els.info.textContent = `${sweep.cells.length} cells over ${sweep.axes.join(" × ")}; ${done} done (job ${sweep.job_id ?? "pending"}).`;
  for (const sel of [els.rows, els.cols]) sel.replaceChildren(...sweep.axes.map((a) => h("option", { value: a, text: a })));
  els.cols.value = sweep.axes[1] || sweep.axes[0];
  for (const sel of [els.rows, els.cols]) sel.addEventListener("change", () => render(sweep));
  render(sweep);
}

main();
