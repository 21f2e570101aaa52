// tuneforge dashboard charts: line and bar charts drawn as inline SVG, no library.
// Each function returns an <svg> element; values that are null or not finite are left out of a line.

const NS = "http://www.w3.org/2000/svg";
export const COLOURS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#ca8a04", "#0891b2", "#dc2626", "#4b5563"];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Round tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
export function ticks(lo, hi, count = 5, integer = false) {
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = Math.max(integer ? 1 : 0, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw));
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return { ticks: out, lo: Math.min(lo, out[0]), hi: Math.max(hi, out[out.length - 1]) };
}

export function fmt(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(1);
  return abs >= 100 ? value.toFixed(0) : +value.toPrecision(digits) + "";
}

function frame(width, height, title) {
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  if (title) {
    svg.appendChild(el("title", {}, title));
    svg.appendChild(el("text", { x: 8, y: 16, class: "chart-title" }, title));
  }
  return svg;
}

function legend(svg, items, x, y) {
  let offset = x;
  for (const item of items) {
    const g = el("g", { class: "legend" });
    g.appendChild(el("rect", { x: offset, y: y - 9, width: 12, height: 4, rx: 2, fill: item.colour }));
    const label = el("text", { x: offset + 16, y: y - 4, class: "legend-text" }, item.name);
    g.appendChild(label);
    svg.appendChild(g);
    offset += 28 + item.name.length * 6.5;
  }
}

// series: [{name, points: [[x, y], ...], colour?, dots?, dashed?}]; options: {title, xLabel, yLabel, height, logY}
export function lineChart(series, options = {}) {
  const width = options.width || 720, height = options.height || 280;
  const pad = { left: 56, right: 16, top: options.title ? 50 : 30, bottom: 40 };
  const svg = frame(width, height, options.title);
  const points = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (!points.length) {
    svg.appendChild(el("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" },
                       options.empty || "no points yet"));
    return svg;
  }
  const integer = points.every((p) => Number.isInteger(p[0]));  // steps: no tick at 0.5
  const xs = ticks(Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0])), 6, integer);
  const ys = ticks(Math.min(...points.map((p) => p[1])), Math.max(...points.map((p) => p[1])), 5);
  const X = (x) => pad.left + (x - xs.lo) / (xs.hi - xs.lo) * (width - pad.left - pad.right);
  const Y = (y) => height - pad.bottom - (y - ys.lo) / (ys.hi - ys.lo) * (height - pad.top - pad.bottom);
  for (const t of ys.ticks) {
    svg.appendChild(el("line", { x1: pad.left, x2: width - pad.right, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.appendChild(el("text", { x: pad.left - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" }, fmt(t)));
  }
  for (const t of xs.ticks) {
    svg.appendChild(el("text", { x: X(t), y: height - pad.bottom + 16, class: "tick", "text-anchor": "middle" }, fmt(t)));
  }
  svg.appendChild(el("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }));
  if (options.xLabel) svg.appendChild(el("text", { x: (width + pad.left) / 2, y: height - 6, class: "label", "text-anchor": "middle" }, options.xLabel));
  if (options.yLabel) svg.appendChild(el("text", { x: 12, y: (height) / 2, class: "label", "text-anchor": "middle", transform: `rotate(-90 12 ${height / 2})` }, options.yLabel));
  const placed = [];
  series.forEach((s, index) => {
    const colour = s.colour || COLOURS[index % COLOURS.length];
    const good = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (!good.length) return;
    const d = good.map(([x, y], i) => `${i ? "L" : "M"}${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join("");
    svg.appendChild(el("path", { d, fill: "none", stroke: colour, "stroke-width": s.dots ? 2 : 1.8,
                                 "stroke-dasharray": s.dashed ? "5 4" : "none", class: "series", "data-name": s.name }));
    if (s.dots || good.length === 1) {
      for (const [x, y] of good) {
        const dot = el("circle", { cx: X(x), cy: Y(y), r: 3.5, fill: "#fff", stroke: colour, "stroke-width": 2 });
        dot.appendChild(el("title", {}, `${s.name}: ${fmt(y, 4)} at ${fmt(x)}`));
        svg.appendChild(dot);
      }
    }
    const [lx, ly] = good[good.length - 1];  // the latest value, where a reader looks first
    let labelY = Y(ly) - 6;
    while (placed.some((y) => Math.abs(y - labelY) < 12)) labelY -= 12;  // two runs ending close: stack labels
    placed.push(labelY);
    svg.appendChild(el("text", { x: Math.min(X(lx) + 5, width - pad.right - 2), y: labelY, class: "end-label",
                                 fill: colour, "text-anchor": X(lx) > width - 80 ? "end" : "start" }, fmt(ly, 4)));
  });
  legend(svg, series.map((s, i) => ({ name: s.name, colour: s.colour || COLOURS[i % COLOURS.length] })), pad.left, pad.top - 12);
  return svg;
}

// Bars, one group per label; series: [{name, values, colour?}] (stacked when options.stacked).
export function barChart(labels, series, options = {}) {
  const width = options.width || 720, height = options.height || 240;
  const pad = { left: 56, right: 16, top: options.title ? 50 : 30, bottom: options.rotate ? 64 : 40 };
  const svg = frame(width, height, options.title);
  if (!labels.length) {
    svg.appendChild(el("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, options.empty || "nothing to show"));
    return svg;
  }
  const totals = labels.map((_, i) => options.stacked ? series.reduce((a, s) => a + (s.values[i] || 0), 0)
                                                        : Math.max(...series.map((s) => s.values[i] || 0)));
  const ys = ticks(0, Math.max(...totals, options.minMax || 0) || 1, 4);
  const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
  const Y = (v) => height - pad.bottom - v / ys.hi * plotH;
  for (const t of ys.ticks) {
    svg.appendChild(el("line", { x1: pad.left, x2: width - pad.right, y1: Y(t), y2: Y(t), class: "grid" }));
    svg.appendChild(el("text", { x: pad.left - 6, y: Y(t) + 4, class: "tick", "text-anchor": "end" },
                       options.percent ? `${Math.round(t * 100)}%` : fmt(t)));
  }
  const group = plotW / labels.length;
  const barW = Math.max(2, Math.min(48, group * 0.8 / (options.stacked ? 1 : series.length)));
  const every = Math.max(1, Math.ceil(labels.length / 14));
  labels.forEach((label, i) => {
    let base = 0;
    series.forEach((s, k) => {
      const value = s.values[i] || 0;
      const x = pad.left + group * i + (group - barW * (options.stacked ? 1 : series.length)) / 2 + (options.stacked ? 0 : k * barW);
      const top = options.stacked ? base + value : value;
      const rect = el("rect", { x, y: Y(top), width: barW - 1, height: Math.max(0, Y(options.stacked ? base : 0) - Y(top)),
                                fill: s.colour || COLOURS[k % COLOURS.length], rx: 2, class: "bar" });
      rect.appendChild(el("title", {}, `${label} · ${s.name}: ${options.percent ? (value * 100).toFixed(1) + "%" : fmt(value, 4)}`));
      svg.appendChild(rect);
      if (options.values && value) {
        svg.appendChild(el("text", { x: x + barW / 2, y: Y(top) - 4, class: "tick", "text-anchor": "middle" }, fmt(value)));
      }
      base += value;
    });
    if (i % every === 0) {
      const x = pad.left + group * (i + 0.5), y = height - pad.bottom + 14;
      svg.appendChild(el("text", options.rotate ? { x, y, class: "tick", "text-anchor": "end", transform: `rotate(-30 ${x} ${y})` }
                                                : { x, y, class: "tick", "text-anchor": "middle" }, label));
    }
  });
  svg.appendChild(el("line", { x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom, class: "axis" }));
  if (series.length > 1 || options.legend) legend(svg, series.map((s, i) => ({ name: s.name, colour: s.colour || COLOURS[i % COLOURS.length] })), pad.left, pad.top - 12);
  return svg;
}

// A horizontal gauge: `value` against `threshold` on [0, max], for drift scores.
export function gauge(value, threshold, max = 1, flagged = false) {
  const width = 220, height = 22;
  const svg = frame(width, height);
  const X = (v) => 2 + Math.max(0, Math.min(1, v / max)) * (width - 4);
  svg.appendChild(el("rect", { x: 2, y: 7, width: width - 4, height: 8, rx: 4, fill: "#e5e7eb" }));
  svg.appendChild(el("rect", { x: 2, y: 7, width: Math.max(0, X(value) - 2), height: 8, rx: 4, fill: flagged ? "#dc2626" : "#16a34a" }));
  svg.appendChild(el("line", { x1: X(threshold), x2: X(threshold), y1: 2, y2: 20, stroke: "#111827", "stroke-width": 2 }));
  svg.setAttribute("class", "gauge");
  return svg;
}
