// Hand-drawn SVG charts: axes with round ticks, lines, dots, a legend. No dependency.

const NS = "http://www.w3.org/2000/svg";

export function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

// About `count` round tick values covering [lo, hi].
// With `integer`, steps are whole numbers (counts such as num_batches_tracked).
export function ticks(lo, hi, count = 5, integer = false) {
  const span = hi - lo;
  if (!(span > 0) || !Number.isFinite(span)) return [lo];
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * mag).filter((s) => !integer || s >= 1);
  const step = (integer && raw < 1 ? 1 : steps.find((s) => span / s <= count && (!integer
    || Number.isInteger(s)))) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return out;
}

export function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

function extent(series, axis, fallback) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) {
    for (const p of s.points) {
      lo = Math.min(lo, p[axis]);
      hi = Math.max(hi, p[axis]);
    }
  }
  if (!Number.isFinite(lo)) return fallback;
  if (lo === hi) return [lo - (Math.abs(lo) || 1) * 0.05, hi + (Math.abs(hi) || 1) * 0.05];
  return [lo, hi];
}

// Draw `series` ({name, label, kind: "line"|"dots", cls, points: [[x, y]], data: {...}})
// into `svg`, replacing what it held. Each drawn element carries data-series and the
// series' data-* attributes, so that tests and readers can tell what was plotted.
export function chart(svg, { series, xLabel, yLabel, xDomain, yDomain, yZero = false,
  xInteger = false, width = 640, height = 260, onPickX = null }) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const m = { left: 64, right: 16, top: 28, bottom: 40 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const [x0, x1] = xDomain || extent(series, 0, [0, 1]);
  let [y0, y1] = yDomain || extent(series, 1, [0, 1]);
  if (yZero) y0 = Math.min(0, y0);
  const pad = (y1 - y0) * 0.05;
  if (!yDomain) y1 += pad;
  if (!yDomain && !yZero) y0 -= pad;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0 || 1)) * w;
  const sy = (y) => m.top + h - ((y - y0) / (y1 - y0 || 1)) * h;

  const axes = el("g", { class: "axes" }, svg);
  for (const t of ticks(x0, x1, 6, xInteger)) {
    el("line", { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + h, class: "grid" }, axes);
    el("text", { x: sx(t), y: m.top + h + 16, class: "tick", "text-anchor": "middle" }, axes)
      .textContent = fmt(t);
  }
  for (const t of ticks(y0, y1, 4)) {
    el("line", { x1: m.left, x2: m.left + w, y1: sy(t), y2: sy(t), class: "grid" }, axes);
    el("text", { x: m.left - 6, y: sy(t) + 4, class: "tick", "text-anchor": "end" }, axes)
      .textContent = fmt(t);
  }
  el("rect", { x: m.left, y: m.top, width: w, height: h, class: "frame" }, axes);
  el("text", { x: m.left + w / 2, y: height - 6, class: "label", "text-anchor": "middle" }, axes)
    .textContent = xLabel;
  el("text", { x: 12, y: m.top + h / 2, class: "label", "text-anchor": "middle",
    transform: `rotate(-90 12 ${m.top + h / 2})` }, axes).textContent = yLabel;

  const plot = el("g", { class: "plot" }, svg);
  const clip = (v) => Math.max(-1e4, Math.min(1e4, v)); // keep huge outliers drawable
  for (const s of series) {
    const attrs = { class: `series ${s.cls}`, "data-series": s.name };
    for (const [k, v] of Object.entries(s.data || {})) attrs[`data-${k}`] = v;
    if (s.kind === "dots") {
      const g = el("g", attrs, plot);
      for (const [x, y] of s.points) {
        el("circle", { cx: clip(sx(x)), cy: clip(sy(y)), r: 3 }, g);
      }
    } else if (s.points.length) {
      const d = s.points
        .map(([x, y], i) => `${i ? "L" : "M"}${clip(sx(x)).toFixed(2)},${clip(sy(y)).toFixed(2)}`)
        .join("");
      const g = el("g", { class: attrs.class }, plot);
      el("path", { ...attrs, class: "line", d, "data-points": s.points.length }, g);
    }
  }

  const legend = el("g", { class: "legend" }, svg);
  let lx = m.left;
  for (const s of series) {
    const g = el("g", { class: `series ${s.cls}` }, legend);
    if (s.kind === "dots") el("circle", { cx: lx + 9, cy: 12, r: 3 }, g);
    else el("path", { d: `M${lx},12L${lx + 18},12` }, g);
    const text = el("text", { x: lx + 24, y: 16, class: "legend-text" }, g);
    text.textContent = s.label;
    lx += 34 + 7 * s.label.length;
  }

  if (onPickX) {
    const hit = el("rect", { x: m.left, y: m.top, width: w, height: h, class: "hit" }, svg);
    hit.addEventListener("click", (ev) => {
      const box = svg.getBoundingClientRect();
      const px = ((ev.clientX - box.left) / box.width) * width;
      onPickX(x0 + ((px - m.left) / w) * (x1 - x0));
    });
  }
  return { sx, sy };
}
