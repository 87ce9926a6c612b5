// The user's selection on one map: the selected sample, its neighbours (set A, the positive set) and set
// B (the negative set of the steering mode). It lives in this browser only (localStorage, keyed by user
// and map), never on the server, so two users never see each other's. Every change can be undone.
//
//   neighbours: [{id, source: "knn" | "manual" | "region", distance, weight}] in the order they were added
//   negative:   [id] (set B)

const VERSION = 1;
const UNDO_DEPTH = 50;
const SOURCES = new Set(["knn", "manual", "region"]);

export function storageKey(userId, embeddingId) {
  return `latentlab.selection.v${VERSION}:${userId}:${embeddingId}`;
}

export class Selection {
  constructor(userId, embeddingId, storage = window.localStorage) {
    this.key = storageKey(userId, embeddingId);
    this.storage = storage;
    this.selected = null;
    this.neighbours = [];
    this.negative = [];
    this.listeners = new Set();
    this.undoStack = [];
  }

  snapshot() {
    return JSON.stringify({ selected: this.selected, neighbours: this.neighbours, negative: this.negative });
  }

  // a copy of the state for undo (neighbour entries copied too: a weight may change in place)
  copy() {
    return { selected: this.selected, neighbours: this.neighbours.map((n) => ({ ...n })), negative: this.negative.slice() };
  }

  // remember the state before a change, for undo()
  remember(before = this.copy()) {
    this.undoStack.push(before);
    if (this.undoStack.length > UNDO_DEPTH) this.undoStack.shift();
  }

  canUndo() {
    return this.undoStack.length > 0;
  }

  undo() {
    const last = this.undoStack.pop();
    if (!last) return false;
    this.restore(last);
    this.emit("undo");
    return true;
  }

  restore(data) {
    this.selected = Number.isInteger(data.selected) ? data.selected : null;
    this.neighbours = Array.isArray(data.neighbours)
      ? data.neighbours
          .filter((n) => n && Number.isInteger(n.id) && n.id !== this.selected)
          .map((n) => ({
            id: n.id,
            source: SOURCES.has(n.source) ? n.source : "manual",
            distance: typeof n.distance === "number" ? n.distance : null,
            weight: typeof n.weight === "number" && n.weight >= 0 ? n.weight : 1,
          }))
      : [];
    this.negative = Array.isArray(data.negative) ? data.negative.filter((id) => Number.isInteger(id)) : [];
  }

  onChange(fn) {
    this.listeners.add(fn);
  }

  emit(reason) {
    // saved after the listeners have painted (a lasso's thousands of ids need not delay the frame)
    clearTimeout(this.saving);
    this.saving = setTimeout(() => this.save(), 0);
    for (const fn of this.listeners) fn(reason);
  }

  load() {
    try {
      const raw = this.storage.getItem(this.key);
      if (!raw) return;
      this.restore(JSON.parse(raw));
    } catch {
      this.selected = null;
      this.neighbours = [];
      this.negative = [];
    }
  }

  save() {
    try {
      if (this.selected === null && !this.neighbours.length && !this.negative.length) this.storage.removeItem(this.key);
      else this.storage.setItem(this.key, this.snapshot());
    } catch {
      /* storage full or disabled: the selection still works for this page */
    }
  }

  // Drop ids that are not on the map any more; returns the dropped ids.
  prune(exists) {
    const dropped = [];
    if (this.selected !== null && !exists(this.selected)) {
      dropped.push(this.selected);
      this.selected = null;
    }
    this.neighbours = this.neighbours.filter((n) => {
      if (exists(n.id)) return true;
      dropped.push(n.id);
      return false;
    });
    this.negative = this.negative.filter((id) => {
      if (exists(id)) return true;
      dropped.push(id);
      return false;
    });
    if (this.selected === null && this.neighbours.length) {
      // neighbours belong to a selection; without it they mean nothing
      for (const n of this.neighbours) dropped.push(n.id);
      this.neighbours = [];
    }
    if (dropped.length) this.save();
    return dropped;
  }

  select(id) {
    if (this.selected === id) return;
    this.remember();
    this.selected = id;
    this.neighbours = [];
    this.emit("select");
  }

  clear() {
    this.remember();
    this.selected = null;
    this.neighbours = [];
    this.negative = [];
    this.emit("clear");
  }

  isNeighbour(id) {
    return this.neighbours.some((n) => n.id === id);
  }

  // A click on another point while something is selected: add it by hand, or remove it if it is listed.
  toggle(id, set = "A") {
    if (id === this.selected) return;
    this.remember();
    if (set === "B") {
      if (this.negative.includes(id)) this.negative = this.negative.filter((x) => x !== id);
      else this.negative.push(id);
    } else if (this.isNeighbour(id)) this.neighbours = this.neighbours.filter((n) => n.id !== id);
    else this.neighbours.push({ id, source: "manual", distance: null, weight: 1 });
    this.emit("toggle");
  }

  remove(id) {
    this.remember();
    this.neighbours = this.neighbours.filter((n) => n.id !== id);
    this.negative = this.negative.filter((x) => x !== id);
    this.emit("remove");
  }

  // Many ids at once (a box, a lasso, a class, pasted ids): add them to set A or B, or remove them.
  // With nothing selected, the first id becomes the selected sample. Returns how many changed.
  addMany(ids, set = "A", source = "region") {
    const before = this.copy();
    if (this.selected === null && set === "A" && ids.length) this.selected = ids[0];
    let changed = 0;
    if (set === "B") {
      const have = new Set(this.negative);
      for (const id of ids) {
        if (have.has(id) || id === this.selected) continue;
        have.add(id);
        this.negative.push(id);
        changed++;
      }
    } else {
      const have = new Set(this.neighbours.map((n) => n.id));
      for (const id of ids) {
        if (have.has(id) || id === this.selected) continue;
        have.add(id);
        this.neighbours.push({ id, source, distance: null, weight: 1 });
        changed++;
      }
    }
    if (changed || this.selected !== before.selected) {
      this.remember(before);
      this.emit(this.selected !== before.selected ? "region-select" : "region");
    }
    return changed;
  }

  removeMany(ids, set = "A") {
    const drop = new Set(ids);
    const before = this.copy();
    const n0 = set === "B" ? this.negative.length : this.neighbours.length;
    if (set === "B") this.negative = this.negative.filter((id) => !drop.has(id));
    else this.neighbours = this.neighbours.filter((n) => !drop.has(n.id));
    const changed = n0 - (set === "B" ? this.negative.length : this.neighbours.length);
    if (changed) {
      this.remember(before);
      this.emit("region");
    }
    return changed;
  }

  // every id in the selection: the selected sample, set A, set B
  allIds() {
    const out = this.selected === null ? [] : [this.selected];
    for (const n of this.neighbours) out.push(n.id);
    for (const id of this.negative) out.push(id);
    return out;
  }

  // The answer of a neighbour search replaces the previous search's neighbours; hand-picked ones stay.
  setKnn(hits) {
    this.remember();
    const manual = this.neighbours.filter((n) => n.source !== "knn");
    const manualIds = new Set(manual.map((n) => n.id));
    const knn = hits
      .filter((hit) => hit.sample_id !== this.selected && !manualIds.has(hit.sample_id))
      .map((hit) => ({ id: hit.sample_id, source: "knn", distance: hit.distance, weight: 1 }));
    this.neighbours = [...knn, ...manual];
    this.emit("knn");
  }

  setWeight(id, weight) {
    const n = this.neighbours.find((item) => item.id === id);
    if (n) {
      n.weight = weight;
      this.save();
    }
  }
}
