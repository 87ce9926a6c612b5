// The datasets page: every dataset with its progress, and a form that enqueues generate_dataset.
import { api, ApiError, firstItems } from "./api.js";
import { describeMode, getLive } from "./live.js";
import { fmt, h, jobStatus, moreButton, progressBar, say, showError, when } from "./ui.js";

const listEl = document.getElementById("datasets-list");
const errorEl = document.getElementById("datasets-error");
const liveEl = document.getElementById("live-status");
const form = document.getElementById("create-dataset");
const modelSelect = document.getElementById("ds-model");
const layersEl = document.getElementById("ds-layers");
const messageEl = document.getElementById("create-message");
const jobEl = document.getElementById("create-job");
const DEFAULT_LAYERS = ["encoder_bottleneck", "midblock"];
const PAGE = 100; // datasets shown per "more"
let models = [];
let timer = null;
let shown = PAGE;

function mapsCell(ds, maps) {
  const mine = maps.filter((m) => m.dataset_id === ds.id);
  if (!mine.length) return h("td", {}, ds.status === "ready" ? h("a", { href: `/datasets/${ds.id}#fit-details`, text: "fit a map" }) : "—");
  const ready = mine.filter((m) => m.status === "ready");
  return h(
    "td",
    {},
    ready.length ? h("a", { href: `/explorer?embedding=${ready[0].id}`, text: `open in explorer` }) : "",
    h("span", { class: "muted", text: ` (${mine.length} map${mine.length > 1 ? "s" : ""})` }),
  );
}

function render(datasets, maps, more) {
  if (!datasets.length) {
    listEl.replaceChildren(h("p", { class: "muted", text: "No datasets yet: generate one below." }));
    return;
  }
  const head = ["Name", "Model", "Samples", "Status", "Layers", "Maps", "Created"].map((t) => h("th", { scope: "col", text: t }));
  const rows = datasets.map((ds) => {
    const frac = ds.target_size ? ds.num_samples / ds.target_size : 0;
    return h(
      "tr",
      { dataset: { id: String(ds.id) } },
      h("td", {}, h("a", { href: `/datasets/${ds.id}`, text: ds.name })),
      h("td", { text: ds.model }),
      h(
        "td",
        {},
        progressBar(frac, `samples of ${ds.name}`),
        h("div", { class: "muted", text: `${fmt(ds.num_samples)} of ${fmt(ds.target_size)}${ds.num_generated ? ` · ${fmt(ds.num_generated)} generated` : ""}` }),
      ),
      h("td", { class: `status-${ds.status}`, text: ds.status }),
      h("td", { text: (ds.layers || []).join(", ") }),
      mapsCell(ds, maps),
      h("td", { text: when(ds.created_at) }),
    );
  });
  listEl.replaceChildren(
    h("table", { class: "data" }, h("thead", {}, h("tr", {}, ...head)), h("tbody", {}, ...rows)),
    moreButton(more, `Show ${PAGE} more datasets`, () => {
      shown += PAGE;
      refresh();
    }),
  );
}

async function refresh() {
  clearTimeout(timer);
  try {
    // every map (for the maps column), and the datasets page by page up to what is shown
    const [ds, emb] = await Promise.all([
      firstItems("/api/v1/datasets", "datasets", shown),
      firstItems("/api/v1/embeddings", "embeddings", 10_000, 500),
    ]);
    render(ds.items, emb.items, ds.more);
    showError(errorEl, "");
    const busy = ds.items.some((d) => d.status === "generating") || emb.items.some((e) => e.status === "fitting");
    if (busy) timer = setTimeout(refresh, getLive().mode === "live" ? 5000 : 2000);
  } catch (err) {
    showError(errorEl, `Could not load the datasets: ${err.message}`);
    if (!(err instanceof ApiError && err.status === 401)) timer = setTimeout(refresh, 10000);
  }
}

function fillLayers(model) {
  const names = model && Array.isArray(model.layers) ? model.layers.map((l) => (typeof l === "string" ? l : l.name)) : null;
  if (names && names.length) {
    layersEl.replaceChildren(
      ...names.map((name) =>
        h("label", {}, h("input", { type: "checkbox", name: "layers", value: name, checked: DEFAULT_LAYERS.includes(name) }), name),
      ),
    );
  } else {
    // the model list does not name its layers: a free list, the server says which names it knows
    layersEl.replaceChildren(
      h("input", { id: "ds-layers-text", name: "layers_text", value: DEFAULT_LAYERS.join(", "), "aria-label": "Layers to capture, comma separated" }),
    );
  }
}

async function loadModels() {
  try {
    const data = await api("/api/v1/models");
    models = data.models || [];
  } catch (err) {
    say(messageEl, `Could not list the models: ${err.message}`, "error");
    return;
  }
  if (!models.length) {
    modelSelect.replaceChildren(h("option", { value: "", text: "no models registered" }));
    say(messageEl, "No generator is registered yet; an admin adds one with `latentlab model add`.", "error");
    return;
  }
  modelSelect.replaceChildren(
    ...models.map((m) =>
      h("option", {
        value: m.name,
        text: `${m.name} · ${m.label_names.length} classes · ${(m.image_shape || []).join("×")}`,
      }),
    ),
  );
  fillLayers(models[0]);
}

function readForm() {
  const data = new FormData(form);
  const body = {
    model: data.get("model"),
    name: String(data.get("name") || "").trim(),
    num_samples: Number(data.get("num_samples")),
    seed: Number(data.get("seed") || 0),
    dtype: data.get("dtype"),
    batch_size: Number(data.get("batch_size") || 64),
  };
  if (!body.name) throw new Error("Give the dataset a name.");
  const classes = String(data.get("classes") || "all").trim();
  if (classes && classes !== "all") {
    const list = classes.split(/[\s,]+/).filter(Boolean).map(Number);
    if (list.some((c) => !Number.isInteger(c) || c < 0)) throw new Error("Classes must be “all” or whole numbers such as 0, 3, 7.");
    body.classes = list;
  }
  const steps = String(data.get("steps") || "").trim();
  if (steps) body.steps = Number(steps);
  const microBatch = String(data.get("micro_batch") || "").trim();
  if (microBatch) body.micro_batch = Number(microBatch);
  const text = data.get("layers_text");
  body.layers = text !== null ? String(text).split(/[\s,]+/).filter(Boolean) : data.getAll("layers");
  if (!body.layers.length) throw new Error("Choose at least one layer to capture.");
  return body;
}

function renderJob(job) {
  jobEl.replaceChildren(jobStatus(job, { what: "dataset" }));
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  say(messageEl, "");
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  let body;
  try {
    body = readForm();
  } catch (err) {
    say(messageEl, err.message, "error");
    return;
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const job = await api("/api/v1/datasets", { method: "POST", body });
    say(messageEl, `Dataset “${body.name}” is queued as job ${job.id}.`, "ok");
    renderJob(job);
    refresh();
    getLive()
      .watchJob(job.id, renderJob)
      .then(() => refresh())
      .catch(() => {});
  } catch (err) {
    say(messageEl, err.message, "error");
    const field = err.field && form.querySelector(`[name="${err.field.split(".")[0]}"]`);
    if (field) field.setAttribute("aria-invalid", "true");
  } finally {
    button.disabled = false;
  }
});
modelSelect.addEventListener("change", () => fillLayers(models.find((m) => m.name === modelSelect.value)));

const live = getLive();
live.onMode((mode) => {
  liveEl.textContent = describeMode(mode);
  liveEl.classList.toggle("is-live", mode === "live");
});
let pending = null;
live.onJob((event) => {
  if (!["generate_dataset", "fit_embedding", "reproject"].includes(event.kind)) return;
  clearTimeout(pending);
  pending = setTimeout(refresh, 400);
});
loadModels();
refresh();
