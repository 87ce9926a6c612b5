// Search by prompt or class: the samples whose class name contains the text (for a text-to-image
// dataset the class names are the prompts) go to the active set, like a box or lasso would add them.
// An empty search or one that matches nothing says so in the page.
import { className } from "../ui.js";
import { $, state } from "./context.js";
import { message } from "./tools.js";

const form = $("search-form");
const input = $("search-text");

// the class ids whose name contains `text` (case-insensitive), among the classes on the map
export function matchingClasses(map, text) {
  const needle = text.trim().toLowerCase();
  const present = new Set();
  for (let i = 0; i < map.n; i++) if (map.cls[i] >= 0) present.add(map.cls[i]);
  return [...present]
    .filter((c) => className(map.labelNames, c).toLowerCase().includes(needle))
    .sort((a, b) => a - b);
}

function search(e) {
  e.preventDefault();
  const sel = state.selection;
  const text = input.value.trim();
  if (!sel || !state.map) {
    message("Wait for the map to load, then search.", "error");
    return;
  }
  if (!text) {
    message("Type part of a prompt or class name to search for, e.g. a word of a prompt.", "error");
    return;
  }
  const classes = matchingClasses(state.map, text);
  if (!classes.length) {
    message(`No prompt or class on this map contains "${text}"; try a shorter or different word.`, "error");
    return;
  }
  const wanted = new Set(classes);
  const m = state.map;
  const ids = [];
  for (let i = 0; i < m.n; i++) if (wanted.has(m.cls[i])) ids.push(m.ids[i]);
  const changed = sel.addMany(ids, state.activeSet, "region");
  const names = classes.slice(0, 3).map((c) => `"${className(m.labelNames, c)}"`);
  const more = classes.length > 3 ? ` and ${classes.length - 3} more` : "";
  message(
    `${changed} of the ${ids.length} samples of ${classes.length === 1 ? "class" : "classes"} ${names.join(", ")}${more} added to set ${state.activeSet}.`,
    "ok",
  );
}

export function wireSearch() {
  form.addEventListener("submit", search);
}
