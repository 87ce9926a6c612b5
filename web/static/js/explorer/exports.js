// Export the selection or the points on screen as CSV or JSON (id, x, y, class, origin, and for the
// selection which set each is in), downloaded by the browser; nothing leaves it otherwise.
import { className } from "../ui.js";
import { els, state, T } from "./context.js";
import { visibleIds } from "./plot.js";
import { message } from "./tools.js";

function rowOf(id, set) {
  const p = state.map.get(id);
  if (!p) return null;
  const cls = p.cls >= 0 ? className(state.map.labelNames, p.cls) : "";
  const row = { id, x: Number(p.x.toFixed(6)), y: Number(p.y.toFixed(6)), class: cls, origin: p.origin === 1 ? "generated" : "dataset" };
  if (set) row.set = set;
  return row;
}

export function exportRows(what) {
  if (!state.map) return [];
  if (what === "visible") return visibleIds().map((id) => rowOf(id, null)).filter(Boolean);
  const sel = state.selection;
  if (!sel) return [];
  const rows = [];
  if (sel.selected !== null) rows.push(rowOf(sel.selected, "selected"));
  for (const n of sel.neighbours) rows.push(rowOf(n.id, "A"));
  for (const id of sel.negative) rows.push(rowOf(id, "B"));
  return rows.filter(Boolean);
}

function csvCell(v) {
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(rows) {
  const cols = Object.keys(rows[0]);
  return [cols.join(","), ...rows.map((r) => cols.map((c) => csvCell(r[c])).join(","))].join("\n") + "\n";
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function exportPoints(what, format) {
  const rows = exportRows(what);
  if (!rows.length) {
    message(
      what === "visible"
        ? "No points are on screen to export: zoom out or show a hidden legend entry."
        : "The selection is empty: select some points before exporting them.",
      "error",
    );
    return;
  }
  const name = `map-${state.emb.id}-${what}.${format}`;
  if (format === "json") download(name, JSON.stringify(rows, null, 1), "application/json");
  else download(name, toCsv(rows), "text/csv");
  T.lastExport = { name, rows: rows.length };
  message(`Exported ${rows.length} point${rows.length === 1 ? "" : "s"} as ${name}.`, "ok");
}

export function wireExports() {
  els.exportButtons.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-what]");
    if (button) exportPoints(button.dataset.what, button.dataset.format);
  });
}
