// Live updates for a page: one EventSource on /api/v1/events ("job" and "queues" events), and when the
// stream cannot be had (no EventSource, 503, a proxy that buffers) polling of the plain endpoints.
//
//   const live = getLive();
//   live.onQueues((summary) => ...);          // /api/v1/queues body, pushed or polled every 3 s
//   live.onJob((event) => ...);                // common.jobs event JSON for visible jobs (SSE only)
//   const job = await live.watchJob(id, (job) => render(job));   // resolves with the finished job
//   live.onMode((mode) => ...);                // "connecting" | "live" | "polling"
import { api, ApiError } from "./api.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1500;
const QUEUE_POLL_MS = 3000;
const SAFETY_POLL_MS = 6000; // while live: a missed event (a job that ended before we listened) still shows

class Live {
  constructor() {
    this.mode = "connecting";
    this.jobHandlers = new Set();
    this.queueHandlers = new Set();
    this.modeHandlers = new Set();
    this.source = null;
    this.queueTimer = null;
    this.failures = 0;
  }

  start() {
    if (this.source || this.mode === "polling") return;
    if (!("EventSource" in window) || window.__latentlabNoSSE) {
      this.setMode("polling");
      return;
    }
    const source = new EventSource("/api/v1/events");
    this.source = source;
    source.addEventListener("open", () => {
      this.failures = 0;
      this.setMode("live");
    });
    source.addEventListener("job", (e) => this.dispatch(this.jobHandlers, e.data));
    source.addEventListener("queues", (e) => this.dispatch(this.queueHandlers, e.data));
    source.addEventListener("error", () => {
      // CLOSED: the server refused the stream (503, 401) and the browser will not retry: poll instead.
      // CONNECTING: the browser retries by itself; poll meanwhile, and give up on SSE after a few tries.
      this.failures += 1;
      if (source.readyState === EventSource.CLOSED || this.failures >= 4) {
        source.close();
        this.source = null;
        this.setMode("polling");
      } else if (this.mode === "live") {
        this.setMode("connecting");
      }
    });
  }

  dispatch(handlers, raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch {
      return;
    }
    for (const fn of handlers) fn(data);
  }

  setMode(mode) {
    if (this.mode === mode) return;
    this.mode = mode;
    for (const fn of this.modeHandlers) fn(mode);
    this.scheduleQueuePoll();
  }

  onMode(fn) {
    this.modeHandlers.add(fn);
    fn(this.mode);
  }

  onJob(fn) {
    this.jobHandlers.add(fn);
    this.start();
    return () => this.jobHandlers.delete(fn);
  }

  onQueues(fn) {
    this.queueHandlers.add(fn);
    this.start();
    this.scheduleQueuePoll();
    return () => this.queueHandlers.delete(fn);
  }

  scheduleQueuePoll() {
    clearTimeout(this.queueTimer);
    if (!this.queueHandlers.size || this.mode === "live") return;
    const tick = async () => {
      try {
        const summary = await api("/api/v1/queues");
        for (const fn of this.queueHandlers) fn(summary);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
      }
      if (this.mode !== "live") this.queueTimer = setTimeout(tick, QUEUE_POLL_MS);
    };
    // the first poll at once when falling back; while connecting, wait a moment for the stream first
    this.queueTimer = setTimeout(tick, this.mode === "polling" ? 0 : 1200);
  }

  // Follow one job until it ends: pushed events while the stream is live, polling otherwise (and a slow
  // safety poll in both cases). onUpdate gets every state seen; the promise resolves with the final state
  // (with its error or result) as soon as it is known: a final event carries both, so the caller shows
  // the result without another round trip, and onUpdate gets the full job row from /api/v1/jobs/<id>
  // after it. A final state without them is completed from that row before resolving.
  watchJob(jobId, onUpdate) {
    this.start();
    return new Promise((resolve, reject) => {
      let done = false;
      let timer = null;
      const finish = async (state) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        unsubscribe();
        const complete = "result" in state && "error" in state;
        if (complete) resolve(state);
        try {
          const job = await api(`/api/v1/jobs/${jobId}`);
          if (onUpdate) onUpdate(job);
          if (!complete) resolve(job);
        } catch (err) {
          if (!complete) reject(err);
        }
      };
      const seen = (state) => {
        if (done) return;
        if (onUpdate) onUpdate(state);
        if (FINAL.has(state.status)) finish(state);
      };
      const unsubscribe = this.onJob((event) => {
        if (event.id === jobId) seen(event);
      });
      const poll = async () => {
        if (done) return;
        try {
          seen(await api(`/api/v1/jobs/${jobId}`));
        } catch (err) {
          if (err instanceof ApiError && (err.status === 401 || err.status === 404)) {
            done = true;
            unsubscribe();
            reject(err);
            return;
          }
        }
        if (!done) timer = setTimeout(poll, this.mode === "live" ? SAFETY_POLL_MS : POLL_MS);
      };
      poll();
    });
  }
}

let live = null;

export function getLive() {
  if (!live) live = new Live();
  return live;
}

export function describeMode(mode) {
  return { live: "live", polling: "updating every few seconds", connecting: "connecting…" }[mode] || mode;
}
