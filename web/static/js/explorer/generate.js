// The side panel's generate half: the form, the generate_from_neighbors job it submits (followed live,
// with the shared job status line), and the new samples drawn on the map when it succeeds.
import { api } from "../api.js";
import { getLive } from "../live.js";
import { fmt, h, jobStatus, say, thumb } from "../ui.js";
import { $, els, state } from "./context.js";
import { renderOverlay, selectFromPanel } from "./panel.js";
import { nearestTo } from "./place.js";
import { attachEffects } from "./colour.js";
import { drawPlot } from "./plot.js";
import { renderScaleLegend } from "./tools.js";

const MAX_NEIGHBOURS = 256; // GenerateFromNeighborsParams.neighbors max_length

// Whether the generate API takes a negative set (set B, the steering mode), read from its OpenAPI
// description once per page.
let negativeSupport = null;
export function takesNegative() {
  if (negativeSupport === null) {
    negativeSupport = api("/api/openapi.json")
      .then((doc) => {
        const op = doc.paths && doc.paths["/api/v1/generations"] && doc.paths["/api/v1/generations"].post;
        let schema = (op && op.requestBody && op.requestBody.content["application/json"].schema) || {};
        if (schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()] || {};
        return Boolean(schema.properties && schema.properties.negative);
      })
      .catch(() => false);
  }
  return negativeSupport;
}

// -- generate ---------------------------------------------------------------------------------------------

export function fillGenerateForm() {
  const labels = state.map.labelNames;
  els.genClassExplicit.replaceChildren(...labels.map((name, i) => h("option", { value: String(i), text: `${i}: ${name}` })));
  syncClassField();
  fillLayers();
}

export function fillLayers() {
  if (!state.emb) return;
  const mapLayers = state.emb.layers || [];
  const all = state.dataset && state.dataset.layers ? state.dataset.layers : mapLayers;
  const previous = new Set([...els.genLayers.querySelectorAll("input:checked")].map((i) => i.value));
  const inverse = els.genMode.value === "umap_inverse";
  els.genLayers.replaceChildren(
    ...all.map((name) => {
      const onMap = mapLayers.includes(name);
      const disabled = inverse && !onMap;
      const checked = !disabled && (previous.size ? previous.has(name) : onMap);
      return h(
        "label",
        { class: disabled ? "unavailable" : "", title: disabled ? "UMAP inverse can only mask the map's layers" : "" },
        h("input", { type: "checkbox", name: "layers", value: name, checked, disabled }),
        name,
      );
    }),
  );
}

export function syncClassField() {
  const explicit = els.genClass.value === "explicit";
  for (const el of document.querySelectorAll(".explicit-class")) el.hidden = !explicit;
}

function intField(input, { min, max, name }) {
  const raw = input.value.trim();
  input.removeAttribute("aria-invalid");
  if (raw === "") return undefined;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) {
    input.setAttribute("aria-invalid", "true");
    throw new Error(`${name} must be a whole number from ${min} to ${max}.`);
  }
  return v;
}

const FIELD_INPUTS = {
  variations: "gen-variations",
  steps: "gen-steps",
  mask_steps: "gen-mask-steps",
  mask_window: "gen-window-start",
  strength: "gen-strength",
  seed: "gen-seed",
  class: "gen-class",
  mode: "gen-mode",
};

export async function submitGeneration(e) {
  e.preventDefault();
  say(els.genMessage, "");
  for (const id of Object.values(FIELD_INPUTS)) $(id).removeAttribute("aria-invalid");
  const sel = state.selection;
  if (!state.emb || !sel) {
    say(els.genMessage, "Choose a map first.", "error");
    return;
  }
  const target = state.target && els.genMode.value === "umap_inverse" ? state.target : null;
  let picked = null; // a placed target with nothing selected: the samples nearest it choose the class
  if (target && (sel.selected === null || !sel.neighbours.length)) picked = nearestTo(target, 9);
  if (sel.selected === null && !picked) {
    say(els.genMessage, "Select a sample on the map first (click a point, or use Select by id).", "error");
    return;
  }
  if (!sel.neighbours.length && !picked) {
    say(
      els.genMessage,
      "Add at least one neighbour before generating: use Find neighbours, or click points near the selected one.",
      "error",
    );
    return;
  }
  if (sel.neighbours.length > MAX_NEIGHBOURS) {
    say(
      els.genMessage,
      `A generation takes at most ${MAX_NEIGHBOURS} neighbours; set A has ${sel.neighbours.length}. ` +
        "Remove some (Remove mode, a smaller box or lasso, or Undo) and generate again.",
      "error",
    );
    return;
  }
  const body = picked
    ? { embedding: state.emb.id, selected: picked[0], neighbors: picked.slice(1) }
    : { embedding: state.emb.id, selected: sel.selected, neighbors: sel.neighbours.map((n) => n.id) };
  if (target) body.target = [...target];
  let note = "";
  if (sel.negative.length) {
    if (await takesNegative()) body.negative = [...sel.negative];
    else note = "Set B stays in this page: this server's generate API takes no negative set yet, so only set A was used. ";
  }
  try {
    body.mode = els.genMode.value;
    body.variations = intField(els.genVariations, { min: 1, max: 64, name: "Variations" }) ?? 1;
    const steps = intField(els.genSteps, { min: 1, max: 256, name: "Steps" });
    if (steps !== undefined) body.steps = steps;
    const maskSteps = intField(els.genMaskSteps, { min: 0, max: 256, name: "Mask steps" });
    if (maskSteps !== undefined) body.mask_steps = maskSteps;
    const start = intField(els.genWindowStart, { min: 0, max: 256, name: "Mask window start" });
    const stop = intField(els.genWindowStop, { min: 1, max: 256, name: "Mask window stop" });
    if ((start === undefined) !== (stop === undefined)) throw new Error("Give both ends of the mask window, or neither.");
    if (start !== undefined) body.mask_window = [start, stop];
    const strength = els.genStrength.value.trim();
    els.genStrength.removeAttribute("aria-invalid");
    if (strength !== "") {
      const s = Number(strength);
      if (!(s >= 0 && s <= 1)) {
        els.genStrength.setAttribute("aria-invalid", "true");
        throw new Error("Strength must be a number from 0 (unmasked) to 1 (the full clamp).");
      }
      body.strength = s;
    }
    body.compare_natural = els.genCompare.checked;
    const seed = intField(els.genSeed, { min: 0, max: 2 ** 53 - 1, name: "Seed" });
    if (seed !== undefined) body.seed = seed;
    const layers = [...els.genLayers.querySelectorAll("input:checked")].map((i) => i.value);
    if (!layers.length) throw new Error("Choose at least one layer to mask.");
    body.layers = layers;
    body.class = els.genClass.value === "explicit" ? Number(els.genClassExplicit.value) : els.genClass.value;
    if (body.mode === "weighted") {
      body.weights = sel.neighbours.map((n) => n.weight);
      if (body.weights.some((w) => !(w >= 0)) || body.weights.reduce((a, b) => a + b, 0) <= 0) {
        throw new Error("Weights must be zero or more, and at least one must be above zero.");
      }
    }
  } catch (err) {
    say(els.genMessage, err.message, "error");
    return;
  }
  els.genBtn.disabled = true;
  let job;
  try {
    job = await api("/api/v1/generations", { method: "POST", body });
  } catch (err) {
    say(els.genMessage, err.message, "error");
    const input = err.field && FIELD_INPUTS[err.field.split(".")[0]];
    if (input) $(input).setAttribute("aria-invalid", "true");
    els.genBtn.disabled = false;
    return;
  }
  els.genBtn.disabled = false;
  if (note) say(els.genMessage, note);
  followJob(job);
}

function renderJob(job) {
  const cancel = async () => {
    try {
      await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
    } catch (err) {
      say(els.genMessage, err.message, "error");
    }
  };
  els.genJob.replaceChildren(jobStatus(job, { what: "generation", onCancel: cancel }));
}

async function followJob(job) {
  state.job = job.id;
  renderJob(job);
  let final;
  try {
    final = await getLive().watchJob(job.id, (update) => {
      if (state.job === job.id) renderJob({ ...job, ...update });
    });
  } catch (err) {
    say(els.genMessage, `Lost track of job ${job.id}: ${err.message}`, "error");
    return;
  }
  if (final.status === "succeeded") {
    const ids = (final.result && final.result.samples) || [];
    renderResults(ids, final.result.readout || [], Boolean(final.result.twin)); // images load while overlays are fetched
    await refreshOverlays(new Set(ids));
    const warning = final.result && final.result.inverse_warning;
    say(
      els.genMessage,
      `${ids.length} new image${ids.length === 1 ? "" : "s"}: green stars mark where each was meant to land.` +
        (warning ? ` Warning from the inverse: ${warning}` : ""),
      warning ? "error" : "ok",
    );
  }
}

async function refreshOverlays(fresh = new Set()) {
  const emb = state.emb;
  let overlays, effects;
  try {
    [overlays, effects] = await Promise.all([
      api(`/api/v1/embeddings/${emb.id}/generations`),
      api(`/api/v1/embeddings/${emb.id}/effects`).catch(() => null),
    ]);
  } catch (err) {
    say(els.genMessage, `Could not load the generations: ${err.message}`, "error");
    return;
  }
  if (emb !== state.emb) return;
  state.overlays = overlays;
  state.fresh = fresh;
  let added = false;
  for (const g of overlays) {
    if (g.actual && g.actual[0] !== null) added = state.map.addGenerated(g.sample_id, g.actual[0], g.actual[1]) || added;
  }
  attachEffects(state.map, effects); // the new samples' effects (colour by effect shows them at once)
  if (added || ["effect", "image_change"].includes(state.colourBy)) await drawPlot();
  renderScaleLegend();
  renderOverlay();
  els.status.textContent = els.status.textContent.replace(/^[\d,.\s]+points/, `${fmt(state.map.n + state.map.extra.size)} points`);
}

function readoutText(r) {
  if (!r || !r.effect) return "";
  const eff = Math.max(...Object.values(r.effect));
  return `effect ${eff.toFixed(3)} · Δpx ${r.image_change.toFixed(1)}`;
}

function renderResults(ids, readouts = [], twins = false) {
  els.genResults.replaceChildren(
    ...ids.map((id, i) =>
      h(
        "li",
        {},
        twins ? h("img", { class: "twin", src: `/api/v1/samples/${id}/twin`, alt: `natural twin of sample ${id}`, title: "natural twin: the same seed without the intervention", loading: "lazy" }) : null,
        h(
          "button",
          {
            type: "button",
            "aria-label": `Select new sample ${id}`,
            onclick: () => selectFromPanel(id),
          },
          thumb(id, { alt: `generated sample ${id}` }),
        ),
        h("span", { text: `#${id}` }),
        readouts[i] ? h("small", { class: "muted readout", text: readoutText(readouts[i]) }) : null,
      ),
    ),
  );
}
