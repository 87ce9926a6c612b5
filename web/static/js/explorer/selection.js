// The user's selection on one map: the selected sample and its neighbours. It lives in this browser only
// (localStorage, keyed by user and map), never on the server, so two users never see each other's.
//
//   neighbours: [{id, source: "knn" | "manual", distance, weight}] in the order they were added

const VERSION = 1;

export function storageKey(userId, embeddingId) {
  return `latentlab.selection.v${VERSION}:${userId}:${embeddingId}`;
}

export class Selection {
  constructor(userId, embeddingId, storage = window.localStorage) {
    this.key = storageKey(userId, embeddingId);
    this.storage = storage;
    this.selected = null;
    this.neighbours = [];
    this.listeners = new Set();
  }

  onChange(fn) {
    this.listeners.add(fn);
  }

  emit(reason) {
    this.save();
    for (const fn of this.listeners) fn(reason);
  }

  load() {
    try {
      const raw = this.storage.getItem(this.key);
      if (!raw) return;
      const data = JSON.parse(raw);
      this.selected = Number.isInteger(data.selected) ? data.selected : null;
      this.neighbours = Array.isArray(data.neighbours)
        ? data.neighbours
            .filter((n) => Number.isInteger(n.id) && n.id !== this.selected)
            .map((n) => ({
              id: n.id,
              source: n.source === "knn" ? "knn" : "manual",
              distance: typeof n.distance === "number" ? n.distance : null,
              weight: typeof n.weight === "number" && n.weight >= 0 ? n.weight : 1,
            }))
        : [];
    } catch {
      this.selected = null;
      this.neighbours = [];
    }
  }

  save() {
    try {
      if (this.selected === null && !this.neighbours.length) this.storage.removeItem(this.key);
      else this.storage.setItem(this.key, JSON.stringify({ selected: this.selected, neighbours: this.neighbours }));
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
    this.selected = id;
    this.neighbours = [];
    this.emit("select");
  }

  clear() {
    this.selected = null;
    this.neighbours = [];
    this.emit("clear");
  }

  isNeighbour(id) {
    return this.neighbours.some((n) => n.id === id);
  }

  // A click on another point while something is selected: add it by hand, or remove it if it is listed.
  toggle(id) {
    if (id === this.selected) return;
    if (this.isNeighbour(id)) this.neighbours = this.neighbours.filter((n) => n.id !== id);
    else this.neighbours.push({ id, source: "manual", distance: null, weight: 1 });
    this.emit("toggle");
  }

  remove(id) {
    this.neighbours = this.neighbours.filter((n) => n.id !== id);
    this.emit("remove");
  }

  // The answer of a neighbour search replaces the previous search's neighbours; hand-picked ones stay.
  setKnn(hits) {
    const manual = this.neighbours.filter((n) => n.source === "manual");
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
