// The jobs list ([data-jobs] elements) and the home page's test-job button.
import { api, ApiError, firstItems } from "./api.js";
import { jobNote, moreButton, when } from "./ui.js";

const ACTIVE = new Set(["queued", "running"]);

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function progressCell(job) {
  const td = document.createElement("td");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = job.progress || 0;
  td.append(bar);
  const message = document.createElement("div");
  message.className = "muted";
  message.textContent = jobNote(job);
  td.append(message);
  if (job.error) {
    const error = document.createElement("div");
    error.className = "job-error";
    error.textContent = job.error;
    td.append(error);
  }
  return td;
}

function row(job, refresh) {
  const tr = document.createElement("tr");
  tr.append(
    cell(job.id),
    cell(job.kind),
    cell(job.status, `status-${job.status}`),
    progressCell(job),
    cell(job.owner),
    cell(when(job.created_at)),
  );
  const actions = document.createElement("td");
  if (ACTIVE.has(job.status) && !job.cancel_requested) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = "Cancel";
    button.setAttribute("aria-label", `Cancel job ${job.id}`);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api(`/api/v1/jobs/${job.id}/cancel`, { method: "POST" });
      } catch (err) {
        const note = document.createElement("div");
        note.className = "job-error";
        note.setAttribute("role", "alert");
        note.textContent = err.message;
        actions.append(note);
        button.disabled = false;
        return;
      }
      refresh();
    });
    actions.append(button);
  }
  tr.append(actions);
  return tr;
}

function table(jobs, refresh) {
  const t = document.createElement("table");
  t.className = "jobs data";
  const head = document.createElement("tr");
  for (const name of ["#", "Kind", "Status", "Progress", "Owner", "Created", ""]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  t.append(head);
  for (const job of jobs) t.append(row(job, refresh));
  return t;
}

function mount(container) {
  const limit = Number(container.dataset.limit) || 50;
  let shown = limit; // grows by `limit` with each "older jobs"
  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    let delay = 10000;
    try {
      const { items, more } = await firstItems("/api/v1/jobs", "jobs", shown, limit);
      const data = { jobs: items };
      if (data.jobs.length === 0) {
        const empty = document.createElement("p");
        empty.className = "muted";
        empty.textContent = "No jobs yet.";
        container.replaceChildren(empty);
      } else {
        const older = moreButton(more, `Show ${limit} older jobs`, () => {
          shown += limit;
          refresh();
        });
        container.replaceChildren(table(data.jobs, refresh), older);
      }
      if (data.jobs.some((j) => ACTIVE.has(j.status))) delay = 1000;
    } catch (err) {
      const p = document.createElement("p");
      p.className = "error";
      if (err instanceof ApiError && err.status === 401) {
        p.textContent = "Your session ended. ";
        const link = document.createElement("a");
        link.href = "/login";
        link.textContent = "Sign in again";
        p.append(link);
        container.replaceChildren(p);
        return;
      }
      p.textContent = `Could not load jobs: ${err.message}`;
      container.replaceChildren(p);
    }
    timer = setTimeout(refresh, delay);
  }

  container.addEventListener("jobs:refresh", refresh);
  refresh();
}

const lists = document.querySelectorAll("[data-jobs]");
lists.forEach(mount);

const pingButton = document.getElementById("ping-button");
if (pingButton) {
  const status = document.getElementById("ping-status");
  pingButton.addEventListener("click", async () => {
    pingButton.disabled = true;
    try {
      const job = await api("/api/v1/jobs", { method: "POST", body: { kind: "ping", params: { seconds: 3, steps: 6 } } });
      status.textContent = `job ${job.id} ${job.status}` + (job.published_at ? "" : " (waiting for the broker)");
      lists.forEach((el) => el.dispatchEvent(new Event("jobs:refresh")));
    } catch (err) {
      status.textContent = err.message;
    } finally {
      pingButton.disabled = false;
    }
  });
}
