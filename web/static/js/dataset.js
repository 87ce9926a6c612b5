// One dataset: its facts, its maps (and a form to fit a new one), and a paged sample grid with a class
// filter.
import { api, firstItems } from "./api.js";
import { getLive } from "./live.js";
import { className, fmt, h, jobStatus, moreButton, progressBar, say, showError, thumb, when } from "./ui.js";

const page = document.getElementById("dataset-page");
const datasetId = Number(page.dataset.datasetId);
const $ = (id) => document.getElementById(id);
const els = {
  title: $("dataset-title"),
  error: $("dataset-error"),
  facts: $("dataset-facts"),
  maps: $("maps-list"),
  fitForm: $("fit-form"),
  fitLayers: $("fit-layers"),
  fitMessage: $("fit-message"),
  fitJob: $("fit-job"),
  filterForm: $("sample-filter"),
  cls: $("filter-class"),
  origin: $("filter-origin"),
  limit: $("filter-limit"),
  grid: $("sample-grid"),
  samplesError: $("samples-error"),
  prev: $("page-prev"),
  next: $("page-next"),
  info: $("page-info"),
};
const state = { dataset: null, offset: 0, total: 0 };

function facts(ds) {
  const rows = [
    ["Model", ds.model],
    ["Status", ds.status],
    ["Samples", `${fmt(ds.num_samples)} of ${fmt(ds.target_size)}${ds.num_generated ? ` (+${fmt(ds.num_generated)} generated)` : ""}`],
    ["Layers", (ds.layers || []).map((l) => `${l} ${(ds.layer_shapes[l] || []).join("×")}`).join(", ")],
    ["Seed · steps", `${ds.seed} · ${ds.steps}`],
    ["Activations", ds.dtype],
    ["Micro-batch · chunk", `${ds.micro_batch} samples per model call · ${ds.chunk_size} per chunk`],
    ["Created", when(ds.created_at)],
  ];
  els.facts.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v, class: k === "Status" ? `status-${v}` : "" })]));
  if (ds.status === "generating") {
    els.facts.append(h("dt", { text: "Progress" }), h("dd", {}, progressBar(ds.target_size ? ds.num_samples / ds.target_size : 0, "generation progress")));
  }
}

async function loadDataset() {
  try {
    const ds = await api(`/api/v1/datasets/${datasetId}`);
    state.dataset = ds;
    els.title.textContent = ds.name;
    document.title = `${ds.name} · latentlab`;
    facts(ds);
    const current = els.cls.value;
    const counts = ds.class_counts || {};
    els.cls.replaceChildren(
      h("option", { value: "", text: "all classes" }),
      ...Object.keys(counts)
        .map(Number)
        .sort((a, b) => a - b)
        .map((c) => h("option", { value: String(c), text: `${className(ds.label_names, c)} (${fmt(counts[c])})` })),
    );
    els.cls.value = current;
    if (!els.fitLayers.childElementCount) {
      els.fitLayers.replaceChildren(
        ...(ds.layers || []).map((l) => h("label", {}, h("input", { type: "checkbox", name: "layers", value: l, checked: true }), l)),
      );
    }
    if (ds.status === "generating") setTimeout(loadDataset, 3000);
  } catch (err) {
    showError(els.error, err.message);
  }
}

const MAPS_PAGE = 100; // maps shown per "more"
let mapsShown = MAPS_PAGE;

async function loadMaps() {
  try {
    const { items: maps, more } = await firstItems(`/api/v1/embeddings?dataset=${datasetId}`, "embeddings", mapsShown);
    if (!maps.length) {
      els.maps.replaceChildren(h("p", { class: "muted", text: "No map of this dataset yet: fit one below." }));
      return;
    }
    const head = ["Map", "Layers", "Points", "Status", "Fit", ""].map((t) => h("th", { scope: "col", text: t }));
    els.maps.replaceChildren(
      h(
        "table",
        { class: "data" },
        h("thead", {}, h("tr", {}, ...head)),
        h(
          "tbody",
          {},
          ...maps.map((m) =>
            h(
              "tr",
              {},
              h("td", { text: `${m.name} (#${m.id})` }),
              h("td", { text: (m.layers || []).join(", ") }),
              h("td", { class: "num", text: fmt(m.num_points) }),
              h("td", { class: `status-${m.status}`, text: m.status }),
              h("td", { text: m.fit_seconds ? `${m.fit_seconds.toFixed(1)} s · ${m.backend || ""}` : "" }),
              h("td", {}, m.status === "ready" ? h("a", { href: `/explorer?embedding=${m.id}`, text: "Open in explorer" }) : ""),
            ),
          ),
        ),
      ),
      moreButton(more, `Show ${MAPS_PAGE} more maps`, () => {
        mapsShown += MAPS_PAGE;
        loadMaps();
      }),
    );
    if (maps.some((m) => m.status === "fitting")) setTimeout(loadMaps, 3000);
  } catch (err) {
    showError(els.error, err.message);
  }
}

async function loadSamples() {
  const limit = Number(els.limit.value);
  const params = new URLSearchParams({ limit: String(limit), offset: String(state.offset), origin: els.origin.value });
  if (els.cls.value !== "") params.set("class", els.cls.value);
  try {
    const data = await api(`/api/v1/datasets/${datasetId}/samples?${params}`);
    showError(els.samplesError, "");
    state.total = data.total;
    const labels = state.dataset ? state.dataset.label_names : [];
    els.grid.replaceChildren(
      ...data.samples.map((s) =>
        h(
          "figure",
          { dataset: { id: String(s.id) } },
          thumb(s.id, { alt: `sample ${s.id}, ${className(labels, s.class_label)}` }),
          h("figcaption", { text: `${s.index !== null ? `#${s.index}` : `id ${s.id}`} · ${className(labels, s.class_label)}` }),
        ),
      ),
    );
    if (!data.samples.length) els.grid.replaceChildren(h("p", { class: "muted", text: "No samples match." }));
    const end = state.offset + data.samples.length;
    els.info.textContent = data.total ? `${fmt(state.offset + 1)}–${fmt(end)} of ${fmt(data.total)}` : "";
    els.prev.disabled = state.offset === 0;
    els.next.disabled = end >= data.total;
  } catch (err) {
    showError(els.samplesError, err.message);
  }
}

els.filterForm.addEventListener("change", () => {
  state.offset = 0;
  loadSamples();
});
els.filterForm.addEventListener("submit", (e) => e.preventDefault());
els.prev.addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - Number(els.limit.value));
  loadSamples();
});
els.next.addEventListener("click", () => {
  state.offset += Number(els.limit.value);
  loadSamples();
});

els.fitForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  say(els.fitMessage, "");
  const data = new FormData(els.fitForm);
  const body = {
    dataset: String(datasetId),
    layers: data.getAll("layers"),
    n_neighbors: Number(data.get("n_neighbors")),
    min_dist: Number(data.get("min_dist")),
    metric: data.get("metric"),
    seed: Number(data.get("seed") || 0),
  };
  const name = String(data.get("name") || "").trim();
  if (name) body.name = name;
  const pca = String(data.get("pca_dims") || "").trim();
  if (pca) body.pca_dims = Number(pca);
  if (!body.layers.length) {
    say(els.fitMessage, "Choose at least one layer for the map.", "error");
    return;
  }
  try {
    const job = await api("/api/v1/embeddings", { method: "POST", body });
    say(els.fitMessage, `The fit is queued as job ${job.id}.`, "ok");
    loadMaps();
    getLive()
      .watchJob(job.id, (j) => {
        els.fitJob.replaceChildren(jobStatus(j, { what: "fit" }));
      })
      .then(loadMaps)
      .catch(() => {});
  } catch (err) {
    say(els.fitMessage, err.message, "error");
  }
});

loadDataset().then(loadSamples);
loadMaps();
