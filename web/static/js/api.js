// Calls to the JSON API from pages: same-origin cookies, the page's CSRF token, readable errors.
// A 401 (the session ended or was signed out elsewhere) shows one banner with a link back to sign-in.

const csrfMeta = document.querySelector('meta[name="csrf-token"]');

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `The request failed with status ${status}.`);
    this.status = status;
    this.field = body && body.field;
  }
}

export function signInUrl() {
  return `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
}

// Shown once per page: the user's work in the page (selections live in the browser) is not lost, and the
// link brings them back here after signing in.
export function showSignedOut() {
  const box = document.getElementById("session-notice");
  if (!box || !box.hidden) return;
  box.textContent = "You are signed out (the session ended or you signed out in another tab). ";
  const link = document.createElement("a");
  link.href = signInUrl();
  link.textContent = "Sign in again";
  box.append(link, " to continue; your selection is kept in this browser.");
  box.hidden = false;
}

// Noise seeds are 63-bit integers: JSON.parse would round them. Integers beyond 2^53 stay exact as
// strings (the reviver sees each number's source text).
function exactIntegers(_key, value, context) {
  if (typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
    return context.source;
  }
  return value;
}

export async function api(path, { method = "GET", body, signal, headers: extra } = {}) {
  const headers = { Accept: "application/json", ...(extra || {}) };
  if (method !== "GET" && method !== "HEAD") {
    headers["X-CSRFToken"] = csrfMeta ? csrfMeta.content : "";
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: "The server cannot be reached; check your connection and try again." });
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("application/json")) {
    data = JSON.parse(await response.text(), exactIntegers);
  }
  if (response.status === 401) showSignedOut();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function currentUser() {
  const b = document.body.dataset;
  return { id: Number(b.userId || 0), username: b.username || "", admin: b.admin === "true" };
}

// The first `count` items of a paged list endpoint (fewer when the list is shorter), read page by page,
// and whether more follow: `{ items, more }`. `key` names the list in the answer; pages follow the
// answer's `next_offset` (datasets, maps, tokens) or `next_before` (jobs). At most 500 rows a request.
export async function firstItems(path, key, count, pageSize = 100) {
  const items = [];
  const sep = path.includes("?") ? "&" : "?";
  let cursor = "";
  for (;;) {
    const limit = Math.min(pageSize, count - items.length, 500);
    const data = await api(`${path}${sep}limit=${limit}${cursor}`);
    items.push(...(data[key] || []));
    if (data.next_offset != null) cursor = `&offset=${data.next_offset}`;
    else if (data.next_before != null) cursor = `&before=${data.next_before}`;
    else return { items, more: false };
    if (items.length >= count) return { items, more: true };
  }
}
