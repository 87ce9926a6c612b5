// The history page: filter the generations (user, dataset, class, mode, dates), a table of them with
// thumbnails, and the lineage graph of a chosen sample. Filters and the chosen sample live in the URL.
import { api } from "./api.js";
import { drawLineage } from "./lineage.js";
import { className, h, showError, thumb, when } from "./ui.js";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("history-filters"),
  user: $("f-user"),
  dataset: $("f-dataset"),
  cls: $("f-class"),
  mode: $("f-mode"),
  effect: $("f-effect"),
  since: $("f-since"),
  until: $("f-until"),
  error: $("history-error"),
  count: $("history-count"),
  table: $("history-table"),
  prev: $("h-prev"),
  next: $("h-next"),
  lineage: $("lineage"),
  lineageError: $("lineage-error"),
  lineageInfo: $("lineage-info"),
  graph: $("lineage-graph"),
  depth: $("lineage-depth"),
};
const PAGE = 25;
const FILTERS = ["user", "dataset", "class", "mode", "effect_min", "since", "until"];
const state = { datasets: [], offset: 0, nextOffset: null, sample: null };

function datasetById(id) {
  return state.datasets.find((d) => d.id === Number(id));
}

function labelsFor(datasetId) {
  const ds = datasetById(datasetId);
  if (ds) return ds.label_names || [];
  return state.datasets.length ? state.datasets[0].label_names || [] : [];
}

function fillClasses() {
  const current = els.cls.value;
  const ds = datasetById(els.dataset.value);
  const labels = ds ? ds.label_names || [] : labelsFor(null);
  const n = ds ? labels.length : Math.max(0, ...state.datasets.map((d) => (d.label_names || []).length));
  const options = [h("option", { value: "", text: "any class" })];
  for (let c = 0; c < Math.min(n, 1000); c++) options.push(h("option", { value: String(c), text: `${c}: ${labels[c] ?? c}` }));
  els.cls.replaceChildren(...options);
  els.cls.value = current;
}

function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  els.user.value = params.get("user") || "";
  els.dataset.value = params.get("dataset") || "";
  fillClasses();
  els.cls.value = params.get("class") || "";
  els.mode.value = params.get("mode") || "";
  els.effect.value = params.get("effect_min") || "";
  els.since.value = params.get("since") || "";
  els.until.value = params.get("until") || "";
  state.offset = Number(params.get("offset") || 0);
  state.sample = Number(params.get("sample")) || null;
}

function urlFromFilters({ push = true } = {}) {
  const params = new URLSearchParams();
  const values = { user: els.user.value.trim(), dataset: els.dataset.value, class: els.cls.value, mode: els.mode.value, effect_min: els.effect.value.trim(), since: els.since.value, until: els.until.value };
  for (const k of FILTERS) if (values[k]) params.set(k, values[k]);
  if (state.offset) params.set("offset", String(state.offset));
  if (state.sample) params.set("sample", String(state.sample));
  const url = `${location.pathname}${params.toString() ? `?${params}` : ""}${state.sample ? "#lineage" : ""}`;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

function apiQuery() {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(state.offset) });
  if (els.user.value.trim()) params.set("user", els.user.value.trim());
  if (els.dataset.value) params.set("dataset", els.dataset.value);
  if (els.cls.value) params.set("class", els.cls.value);
  if (els.mode.value) params.set("mode", els.mode.value);
  if (els.effect.value.trim()) params.set("effect_min", els.effect.value.trim());
  // dates are the user's local days; the API takes ISO 8601 (no offset = UTC), so send full instants
  if (els.since.value) params.set("since", new Date(`${els.since.value}T00:00:00`).toISOString());
  if (els.until.value) params.set("until", new Date(`${els.until.value}T23:59:59.999`).toISOString());
  return params;
}

function row(g) {
  const ds = datasetById(g.dataset_id);
  const labels = ds ? ds.label_names : [];
  const cls = g.class_label !== null ? className(labels, g.class_label) : g.label_weights ? "blend" : "none";
  return h(
    "tr",
    { dataset: { sample: String(g.sample_id) }, class: state.sample === g.sample_id ? "is-mine" : "" },
    h("td", {}, thumb(g.sample_id, { alt: `generated sample ${g.sample_id}` })),
    h("td", { class: "num", text: `#${g.sample_id}` }),
    h("td", { text: ds ? ds.name : `dataset ${g.dataset_id}` }),
    h("td", { text: g.mode }),
    h("td", { text: `${cls}` }),
    h("td", { text: g.selected_sample_id ? `#${g.selected_sample_id}` : "" }),
    h("td", { text: g.created_by || "" }),
    h("td", { text: when(g.created_at) }),
    h(
      "td",
      {},
      h("button", {
        type: "button",
        class: "secondary small-btn",
        text: "Lineage",
        "aria-label": `Show the lineage of sample ${g.sample_id}`,
        onclick: () => openLineage(g.sample_id, { push: true }),
      }),
      " ",
      h("a", { href: `/explorer?embedding=${g.embedding_id}&sample=${g.sample_id}`, text: "on the map" }),
    ),
  );
}

async function loadHistory() {
  showError(els.error, "");
  els.count.textContent = "Loading…";
  try {
    const data = await api(`/api/v1/history?${apiQuery()}`);
    const rows = data.generations || [];
    state.nextOffset = data.next_offset ?? null;
    if (!rows.length) {
      els.table.replaceChildren(h("p", { class: "muted", text: state.offset ? "No more generations." : "No generation matches these filters." }));
    } else {
      const head = ["", "Sample", "Dataset", "Mode", "Class", "Selected", "By", "When", ""].map((t) => h("th", { scope: "col", text: t }));
      els.table.replaceChildren(h("table", { class: "data", id: "history-rows" }, h("thead", {}, h("tr", {}, ...head)), h("tbody", {}, ...rows.map(row))));
    }
    els.count.textContent = rows.length ? `Showing ${state.offset + 1}–${state.offset + rows.length}${state.nextOffset ? "+" : ""}` : "";
    els.prev.disabled = state.offset === 0;
    els.next.disabled = state.nextOffset === null;
  } catch (err) {
    els.count.textContent = "";
    els.table.replaceChildren();
    showError(els.error, err.message);
  }
}

async function openLineage(sampleId, { push = false } = {}) {
  state.sample = sampleId;
  if (push) urlFromFilters({ push: true });
  els.lineage.hidden = false;
  showError(els.lineageError, "");
  els.lineageInfo.textContent = `Loading the lineage of sample ${sampleId}…`;
  for (const tr of els.table.querySelectorAll("tr[data-sample]")) tr.classList.toggle("is-mine", Number(tr.dataset.sample) === sampleId);
  try {
    const [graph, detail] = await Promise.all([
      api(`/api/v1/samples/${sampleId}/lineage?depth=${els.depth.value}`),
      api(`/api/v1/samples/${sampleId}`),
    ]);
    if (state.sample !== sampleId) return;
    const labels = labelsFor(detail.dataset_id);
    const g = detail.generation;
    els.lineageInfo.replaceChildren(
      h("strong", { text: `Sample #${sampleId}` }),
      ` · ${detail.origin} · ${className(labels, detail.class_label)}`,
      g ? ` · ${g.mode}, seed ${g.noise_seed}, ${g.steps} step(s), layers ${g.layers.join(", ")}` : "",
      ` · ${graph.nodes.length} samples, ${graph.edges.length} links${graph.truncated ? " (cut short)" : ""}. `,
      g ? h("a", { href: `/explorer?embedding=${g.embedding_id}&sample=${sampleId}`, text: "Show on the map" }) : "",
    );
    drawLineage(els.graph, graph, { labelNames: labels, onOpen: (id) => openLineage(id, { push: true }) });
    if (location.hash === "#lineage") els.lineage.scrollIntoView({ block: "start" });
  } catch (err) {
    els.lineageInfo.textContent = "";
    els.graph.replaceChildren();
    showError(els.lineageError, err.message);
  }
}

els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  state.offset = 0;
  urlFromFilters({ push: true });
  loadHistory();
});
els.form.addEventListener("reset", () => {
  setTimeout(() => {
    state.offset = 0;
    fillClasses();
    urlFromFilters({ push: true });
    loadHistory();
  });
});
els.dataset.addEventListener("change", fillClasses);
els.prev.addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE);
  urlFromFilters();
  loadHistory();
});
els.next.addEventListener("click", () => {
  if (state.nextOffset === null) return;
  state.offset = state.nextOffset;
  urlFromFilters();
  loadHistory();
});
els.depth.addEventListener("change", () => state.sample && openLineage(state.sample));
window.addEventListener("popstate", () => {
  filtersFromUrl();
  loadHistory();
  if (state.sample) openLineage(state.sample);
  else els.lineage.hidden = true;
});

async function start() {
  try {
    const data = await api("/api/v1/datasets");
    state.datasets = data.datasets || [];
  } catch (err) {
    showError(els.error, `Could not list the datasets: ${err.message}`);
  }
  els.dataset.replaceChildren(
    h("option", { value: "", text: "any dataset" }),
    ...state.datasets.map((d) => h("option", { value: String(d.id), text: d.name })),
  );
  filtersFromUrl();
  loadHistory();
  if (state.sample) openLineage(state.sample);
}
start();
