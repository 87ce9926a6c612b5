// The jobs page: a live dashboard of the queues (everyone's active jobs, in the order workers take them)
// from /api/v1/queues, pushed by the event stream ("queues" events) or polled when it is unavailable.
import { api, currentUser } from "./api.js";
import { describeMode, getLive } from "./live.js";
import { h, jobNote, progressBar, showError } from "./ui.js";

const user = currentUser();
const summaryEl = document.getElementById("queue-summary");
const jobsEl = document.getElementById("queue-jobs");
const errorEl = document.getElementById("queue-error");
const liveEl = document.getElementById("live-status");
const QUEUE_NOTES = {
  interactive: "clicks: generations from neighbours",
  batch: "dataset chunks",
  embed: "map fits and reprojection",
};

function queueCard(name, q) {
  const chunks = (q.chunks_queued || 0) + (q.chunks_running || 0);
  return h(
    "div",
    { class: "queue-card", dataset: { queue: name } },
    h("h3", { text: name }),
    h("div", { class: "muted small-note", text: QUEUE_NOTES[name] || "" }),
    h("div", {}, h("span", { class: "big", text: String(q.running || 0) }), " running · ", h("span", { class: "big", text: String(q.queued || 0) }), " queued"),
    chunks ? h("div", { class: "muted", text: `${q.chunks_running || 0} chunks running, ${q.chunks_queued || 0} waiting` }) : null,
  );
}

function cancelButton(job) {
  if (!(job.mine || user.admin) || job.id === undefined || job.cancel_requested) {
    return job.cancel_requested ? h("span", { class: "muted", text: "cancelling…" }) : null;
  }
  return h("button", {
    type: "button",
    class: "danger small-btn",
    text: "Cancel",
    "aria-label": `Cancel job ${job.id}`,
    onclick: async (e) => {
      e.target.disabled = true;
      showError(errorEl, "");
      try {
        await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
        refresh();
      } catch (err) {
        showError(errorEl, err.message);
        e.target.disabled = false;
      }
    },
  });
}

function jobRow(job) {
  return h(
    "tr",
    { class: job.mine ? "is-mine" : "", dataset: { job: job.id === undefined ? "" : String(job.id) } },
    h("td", { text: job.queue }),
    h("td", { class: "num", text: job.status === "queued" && job.position ? `#${job.position}` : job.status === "running" ? "now" : "" }),
    h("td", { text: job.id === undefined ? "—" : String(job.id) }),
    h("td", { text: job.kind }),
    h("td", { text: job.owner || "" }),
    h("td", { class: `status-${job.status}`, text: job.status }),
    h("td", {}, progressBar(job.progress, `progress of ${job.kind}`), h("div", { class: "muted", text: jobNote(job) })),
    h("td", {}, cancelButton(job)),
  );
}

function render(summary) {
  const queues = summary.queues || {};
  summaryEl.replaceChildren(...Object.entries(queues).map(([name, q]) => queueCard(name, q)));
  const active = summary.jobs || [];
  if (!active.length) {
    jobsEl.replaceChildren(h("p", { class: "muted", text: "No job is queued or running." }));
    return;
  }
  const head = h(
    "tr",
    {},
    ...["Queue", "Position", "Job", "Kind", "Owner", "Status", "Progress", ""].map((t) => h("th", { scope: "col", text: t })),
  );
  const table = h("table", { class: "data" }, h("thead", {}, head), h("tbody", {}, ...active.map(jobRow)));
  jobsEl.replaceChildren(table);
  if (summary.truncated) jobsEl.append(h("p", { class: "muted", text: "Only the first jobs are listed." }));
}

async function refresh() {
  try {
    render(await api("/api/v1/queues"));
    showError(errorEl, "");
  } catch (err) {
    showError(errorEl, `Could not load the queues: ${err.message}`);
  }
}

const live = getLive();
live.onMode((mode) => {
  liveEl.textContent = describeMode(mode);
  liveEl.classList.toggle("is-live", mode === "live");
});
live.onQueues(render);
let pending = null;
live.onJob(() => {
  // a job changed: the lists below follow at once, not at the next summary
  clearTimeout(pending);
  pending = setTimeout(() => {
    document.querySelectorAll("[data-jobs]").forEach((el) => el.dispatchEvent(new Event("jobs:refresh")));
    refresh();
  }, 250);
});
refresh();
