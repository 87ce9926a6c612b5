// Small DOM helpers shared by the pages: element building, messages, thumbnails, progress, dates.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// A message in an element with class "message": kind is "info", "error" or "ok"; empty text hides it.
export function say(el, text, kind = "info") {
  if (!el) return;
  el.textContent = text || "";
  el.classList.toggle("is-error", kind === "error");
  el.classList.toggle("is-ok", kind === "ok");
}

// An element with the hidden attribute that shows an error sentence (or hides when empty).
export function showError(el, text) {
  if (!el) return;
  el.textContent = text || "";
  el.hidden = !text;
}

export function thumb(sampleId, { size = "", alt } = {}) {
  return h("img", {
    class: `thumb ${size}`.trim(),
    src: `/api/v1/samples/${sampleId}/image`,
    alt: alt || `sample ${sampleId}`,
    loading: "lazy",
    decoding: "async",
    width: size === "large" ? 96 : size === "small" ? 36 : 48,
    height: size === "large" ? 96 : size === "small" ? 36 : 48,
  });
}

export function progressBar(value, label) {
  const bar = h("progress", { max: 1, "aria-label": label || "progress" });
  bar.value = Math.max(0, Math.min(1, Number(value) || 0));
  return bar;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function className(labelNames, cls) {
  if (cls === null || cls === undefined || cls < 0) return "no single class";
  return (labelNames && labelNames[cls] !== undefined) ? `${labelNames[cls]}` : `class ${cls}`;
}

export function fmt(n) {
  return Number(n).toLocaleString();
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// What an active job is doing, in a few words: its progress message, else its place in the queue.
export function jobNote(job) {
  if (job.progress_message) return job.progress_message;
  if (job.status === "queued") return job.position ? `#${job.position} in the queue` : "waiting for a worker";
  return "";
}

// The one status line of a job, on every page that follows one: "Job 12 running", and while it is
// active a progress bar, what it is doing and (with onCancel) a Cancel button; a failed job's error.
// what: what the job makes ("generation", "fit"), for the progress label and the failure sentence.
export function jobStatus(job, { what = "job", onCancel = null } = {}) {
  const active = job.status === "queued" || job.status === "running";
  const line = h(
    "div",
    { class: "job-status", dataset: { job: String(job.id), status: job.status } },
    h("strong", { text: `Job ${job.id}` }),
    " ",
    h("span", { class: `status-${job.status}`, text: job.status }),
  );
  if (active) {
    line.append(" ", progressBar(job.progress, `${what} job ${job.id} progress`), " ", h("span", { class: "muted", text: jobNote(job) }));
    if (onCancel && !job.cancel_requested) {
      line.append(
        " ",
        h("button", {
          type: "button",
          class: "danger small-btn",
          text: "Cancel",
          "aria-label": `Cancel job ${job.id}`,
          onclick: (e) => {
            e.target.disabled = true;
            onCancel(job);
          },
        }),
      );
    }
  }
  if (job.status === "failed") {
    line.append(h("p", { class: "job-error", role: "alert", text: `The ${what} failed: ${job.error || "no error text was recorded"}` }));
  }
  return line;
}

// The "more" link under a paged list: a button that shows the next page (`onMore`), or nothing.
export function moreButton(more, text, onMore) {
  if (!more) return "";
  const button = h("button", { type: "button", class: "more", "data-more": "", text });
  button.addEventListener("click", onMore);
  return button;
}
