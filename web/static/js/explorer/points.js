// The compact points answer (docs/API.md "Points format") as typed arrays, and lookups by sample id.

const ARRAYS = {
  int32: Int32Array,
  float32: Float32Array,
  int16: Int16Array,
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

// The map: columns plus indexOf(sampleId) by binary search (ids come sorted; a fallback map otherwise).
export class PointMap {
  constructor(answer) {
    const c = answer.columns;
    this.n = answer.n;
    this.etag = answer.etag;
    this.bounds = answer.bounds;
    this.labelNames = answer.label_names || [];
    this.ids = decodeColumn(c.id);
    this.x = decodeColumn(c.x);
    this.y = decodeColumn(c.y);
    this.cls = decodeColumn(c.class);
    this.origin = decodeColumn(c.origin);
    this.sorted = true;
    for (let i = 1; i < this.n; i++) {
      if (this.ids[i] <= this.ids[i - 1]) {
        this.sorted = false;
        break;
      }
    }
    if (!this.sorted) {
      this.byId = new Map();
      for (let i = 0; i < this.n; i++) this.byId.set(this.ids[i], i);
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

// PointMap needs columns; an empty answer has none
const emptyColumns = () => {
  const col = (dtype) => ({ dtype, data: "" });
  return { id: col("int32"), x: col("float32"), y: col("float32"), class: col("int16"), origin: col("uint8") };
};

export function pointMapFrom(answer) {
  if (!answer.columns || !answer.n) return new PointMap({ ...answer, n: 0, columns: emptyColumns() });
  return new PointMap(answer);
}
