// The place tool: click anywhere on the map (or drag the target star) to set a target point; Generate
// then inverts that point through the map (mode umap_inverse with `target`), and the result is drawn as
// every generation is: the intended star, where the image landed, and the line between them. A target
// outside the map's extent gets a warning first (the inverse there extrapolates).
import { say } from "../ui.js";
import { els, state } from "./context.js";

const NS = "http://www.w3.org/2000/svg";
const STAR = "M0,-11L2.6,-3.6L10.5,-3.4L4.2,1.4L6.5,8.9L0,4.5L-6.5,8.9L-4.2,1.4L-10.5,-3.4L-2.6,-3.6Z";
let overlay = null;
let star = null;
let dragging = false;

function transform() {
  return overlay && overlay.transform();
}

// viewport pixel → map coordinates, or null off the plot area
function dataPoint(clientX, clientY) {
  const t = transform();
  if (!t) return null;
  const rect = els.plot.getBoundingClientRect();
  const [bx, by, bw, bh] = t.box;
  const px = clientX - rect.left;
  const py = clientY - rect.top;
  if (px < bx || px > bx + bw || py < by || py > by + bh) return null;
  const L = els.plot._fullLayout;
  const [x0, x1] = L.xaxis.range.map(Number);
  const [y0, y1] = L.yaxis.range.map(Number);
  return [x0 + ((px - bx) / bw) * (x1 - x0), y0 + ((by + bh - py) / bh) * (y1 - y0)];
}

export function outsideExtent(target) {
  const b = state.map && state.map.bounds;
  if (!b) return true;
  return target[0] < b[0] || target[0] > b[1] || target[1] < b[2] || target[1] > b[3];
}

export function setTarget(target) {
  state.target = target;
  els.clearTarget.hidden = !target;
  if (!target) {
    if (star) star.remove();
    star = null;
    els.placeInfo.textContent = "";
    return;
  }
  if (!star) {
    star = document.createElementNS(NS, "path");
    star.setAttribute("class", "target-star");
    star.setAttribute("d", STAR);
    star.addEventListener("pointerdown", (e) => {
      dragging = true;
      e.preventDefault();
      e.stopPropagation();
    });
    els.overlay.append(star);
  }
  els.genMode.value = "umap_inverse";
  els.genMode.dispatchEvent(new Event("change"));
  const where = `(${target[0].toFixed(3)}, ${target[1].toFixed(3)})`;
  if (outsideExtent(target)) {
    const b = state.map.bounds;
    say(
      els.placeInfo,
      `Target ${where} lies outside the map's extent (x ${b[0].toFixed(2)} to ${b[1].toFixed(2)}, y ` +
        `${b[2].toFixed(2)} to ${b[3].toFixed(2)}): the inverse there extrapolates and the image may land far ` +
        "from it. Drag the star inside, or generate anyway.",
      "error",
    );
  } else {
    say(els.placeInfo, `Target ${where}: Generate inverts this point (UMAP inverse); the nearest samples choose the class.`, "ok");
  }
  positionStar();
}

export function positionStar() {
  const t = transform();
  if (!star || !t || !state.target) return;
  star.setAttribute("transform", `translate(${t.px(state.target[0]).toFixed(1)},${t.py(state.target[1]).toFixed(1)})`);
}

// the k samples nearest the target on the map, nearest first (the recipe's selected and neighbours)
export function nearestTo(target, k = 8) {
  const m = state.map;
  const best = [];
  for (let i = 0; i < m.n; i++) {
    const d = (m.x[i] - target[0]) ** 2 + (m.y[i] - target[1]) ** 2;
    if (best.length < k || d < best[best.length - 1][0]) {
      best.push([d, m.ids[i]]);
      best.sort((a, b) => a[0] - b[0]);
      if (best.length > k) best.pop();
    }
  }
  return best.map(([, id]) => id);
}

export function wirePlace(overlayInstance) {
  overlay = overlayInstance;
  els.wrap.addEventListener("click", (e) => {
    if (state.dragMode !== "place" || !state.map) return;
    const target = dataPoint(e.clientX, e.clientY);
    if (target) setTarget(target);
  });
  window.addEventListener("pointermove", (e) => {
    if (!dragging) return;
    const target = dataPoint(e.clientX, e.clientY);
    if (target) {
      state.target = target;
      positionStar();
    }
  });
  window.addEventListener("pointerup", () => {
    if (!dragging) return;
    dragging = false;
    setTarget(state.target);
  });
  els.clearTarget.addEventListener("click", () => setTarget(null));
}
