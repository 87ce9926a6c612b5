// The points answer of a map (docs/API.md "Points format") as typed arrays, and lookups by sample id.
// Two wire formats: binary (the default here: columns viewed in place, with owner, job, depth and
// round-trip error) and JSON with base64 columns (?wire=json on the page; the baseline of bench/web.py).
import { ApiError, showSignedOut } from "../api.js";
import { T } from "./context.js";

export const BINARY_TYPE = "application/vnd.latentlab.points";

const ARRAYS = {
  int32: Int32Array,
  float32: Float32Array,
  int16: Int16Array,
  uint16: Uint16Array,
  uint8: Uint8Array,
};

export function base64Bytes(text) {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export function decodeColumn(column) {
  const Type = ARRAYS[column.dtype];
  if (!Type) throw new Error(`unknown column type ${column.dtype}`);
  const bytes = base64Bytes(column.data);
  // a fresh buffer starts aligned; copy if a decoder handed back a view at an odd offset
  const buffer = bytes.byteOffset % Type.BYTES_PER_ELEMENT === 0 ? bytes.buffer : bytes.slice().buffer;
  return new Type(buffer, bytes.byteOffset, bytes.byteLength / Type.BYTES_PER_ELEMENT);
}

// The binary body: "LLPT", uint32 header length, JSON header, then 8-aligned little-endian columns.
export function decodeBinary(buffer) {
  const magic = new TextDecoder().decode(new Uint8Array(buffer, 0, 4));
  if (magic !== "LLPT") throw new Error("The points answer is not in the binary points format.");
  const size = new DataView(buffer).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, size)));
  const base = 8 + size;
  const cols = {};
  for (const c of header.columns) {
    const Type = ARRAYS[c.dtype];
    if (!Type) throw new Error(`unknown column type ${c.dtype}`);
    cols[c.name] = new Type(buffer, base + c.offset, header.n);
  }
  return { header, cols };
}

// GET the points of a map in the given wire format: {header, cols} either way.
export async function fetchPoints(embeddingId, wire = "binary") {
  const url = `/api/v1/embeddings/${embeddingId}/points${wire === "json" ? "" : "?format=binary"}`;
  let response;
  T.timings.pointsRequested = performance.now();
  try {
    response = await fetch(url, {
      headers: { Accept: wire === "json" ? "application/json" : BINARY_TYPE },
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, { error: "The server cannot be reached; check your connection and try again." });
  }
  if (!response.ok) {
    if (response.status === 401) showSignedOut();
    const type = response.headers.get("Content-Type") || "";
    throw new ApiError(response.status, type.includes("json") ? await response.json() : null);
  }
  if (wire === "json") {
    const answer = await response.json();
    const cols = {};
    for (const [name, column] of Object.entries(answer.columns || {})) cols[name] = decodeColumn(column);
    return { header: answer, cols };
  }
  T.timings.pointsHeaders = performance.now();
  const body = await response.arrayBuffer();
  T.timings.pointsBody = performance.now();
  return decodeBinary(body);
}

// The map: columns plus indexOf(sampleId) by binary search (ids come sorted; a fallback map otherwise).
// owner, job, depth, rt (round-trip error) are null when the wire format had no such column.
export class PointMap {
  constructor({ header, cols }) {
    const n = header.n || 0;
    this.n = n;
    this.etag = header.etag;
    this.bounds = header.bounds;
    this.labelNames = header.label_names || [];
    this.owners = header.owners || null;
    const col = (name, Type) => (cols[name] && cols[name].length === n ? cols[name] : n ? null : new Type(0));
    this.ids = col("id", Int32Array);
    this.x = col("x", Float32Array);
    this.y = col("y", Float32Array);
    this.cls = col("class", Int16Array);
    this.origin = col("origin", Uint8Array);
    this.owner = col("owner", Int32Array);
    this.job = col("job", Int32Array);
    this.depth = col("depth", Uint16Array);
    this.rt = col("rt_error", Float32Array);
    this.sorted = true;
    for (let i = 1; i < n; i++) {
      if (this.ids[i] <= this.ids[i - 1]) {
        this.sorted = false;
        break;
      }
    }
    if (!this.sorted) {
      this.byId = new Map();
      for (let i = 0; i < n; i++) this.byId.set(this.ids[i], i);
    }
    this.extra = new Map(); // generated samples added in this page after the points were loaded
  }

  indexOf(id) {
    if (!this.sorted) return this.byId.has(id) ? this.byId.get(id) : -1;
    let lo = 0;
    let hi = this.n - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = this.ids[mid];
      if (v === id) return mid;
      if (v < id) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  has(id) {
    return this.indexOf(id) >= 0 || this.extra.has(id);
  }

  // {x, y, cls, origin} of a sample on the map, or null
  get(id) {
    const i = this.indexOf(id);
    if (i >= 0) return { x: this.x[i], y: this.y[i], cls: this.cls[i], origin: this.origin[i] };
    return this.extra.get(id) || null;
  }

  addGenerated(id, x, y, cls = -1) {
    if (this.indexOf(id) >= 0 || x === null || y === null) return false;
    this.extra.set(id, { x, y, cls, origin: 1 });
    return true;
  }
}

export function pointMapFrom(answer) {
  return new PointMap(answer);
}
