// The page's URL says what is on screen, so a link shared with a colleague opens the same view (with
// their own access): ?embedding=&compare=&colour=&density=1&view=x0,x1,y0,y1&sel=&a=&b= (compare: the
// linked second map; the selection's ids
// while they fit in a link; beyond that the selection stays in this browser's storage only).
import { state } from "./context.js";
import { viewRanges } from "./plot.js";

const MAX_IDS_IN_URL = 300;

const idList = (text) =>
  (text || "")
    .split(",")
    .map(Number)
    .filter((id) => Number.isSafeInteger(id) && id > 0);

// a reload keeps this browser's own saved selection (it may have changed in another tab since the URL
// was written); a link opened afresh (shared by a colleague) brings its selection
function reloaded() {
  const nav = performance.getEntriesByType("navigation")[0];
  return Boolean(nav && nav.type === "reload");
}

// what the URL asks for when the page opens (read once, before the first map is drawn)
export function readLink(search = location.search) {
  const p = new URLSearchParams(search);
  const fromLink = !reloaded() && (p.has("sel") || p.has("a") || p.has("b"));
  const view = (p.get("view") || "").split(",").map(Number);
  const sel = Number(p.get("sel"));
  return {
    compare: p.has("compare") ? p.get("compare") : null, // as written: explorer/linked.js judges it
    colour: p.get("colour"),
    density: p.get("density") === "1",
    view: view.length === 4 && view.every(Number.isFinite) ? view : null,
    selection: fromLink
      ? { selected: Number.isSafeInteger(sel) && sel > 0 ? sel : null, a: idList(p.get("a")), b: idList(p.get("b")) }
      : null,
  };
}

let pending = 0;

// write the current state into the URL (without a history entry), at most once per frame
export function writeLink() {
  cancelAnimationFrame(pending);
  pending = requestAnimationFrame(() => {
    if (!state.emb) return;
    const url = new URL(location.href);
    const p = url.searchParams;
    p.set("embedding", String(state.emb.id));
    const set = (k, v) => (v === null || v === undefined || v === "" ? p.delete(k) : p.set(k, v));
    set("compare", state.compareId === null ? null : String(state.compareId));
    set("colour", state.colourBy === "class" ? null : state.colourBy);
    set("density", state.density ? "1" : null);
    const ranges = viewRanges();
    set("view", ranges ? ranges.map((v) => Number(v.toPrecision(6))).join(",") : null);
    const sel = state.selection;
    const count = sel ? sel.allIds().length : 0;
    if (sel && count && count <= MAX_IDS_IN_URL) {
      set("sel", sel.selected === null ? null : String(sel.selected));
      set("a", sel.neighbours.map((n) => n.id).join(","));
      set("b", sel.negative.join(","));
    } else {
      for (const k of ["sel", "a", "b"]) p.delete(k);
    }
    p.delete("sample");
    history.replaceState(null, "", url);
  });
}
