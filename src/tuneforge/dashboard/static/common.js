// tuneforge dashboard: what every tab shares (DOM building, the API, timers, formatting, the loss chart).
import { COLOURS, fmt, lineChart } from "/dashboard/static/charts.js";

export const $ = (id) => document.getElementById(id);
export const API = "/dashboard/api";
// How often live views poll; ?poll=MS in the address changes it (the browser tests poll fast).
export const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 1500;
// settings: /dashboard/api/settings, read once at start; timers: the live views of the tab on screen.
export const state = { settings: {}, timers: [] };

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// replaceChildren that flattens arrays and leaves out null, as h() does.
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

export function authHeaders(extra = {}) {
  const key = $("key").value;
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

export async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return `${response.status} ${response.statusText}`; }
}

export async function api(path, options = {}) {
  const init = { ...options, headers: authHeaders(options.headers || {}) };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

export function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

export function badge(text, cls) { return h("span", { class: `badge ${cls || text}` }, text); }
export function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : "–"; }
export function ago(seconds) {
  if (!seconds) return "–";
  const s = Date.now() / 1000 - seconds;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}
export function table(node, head, rows) {
  fill(node, h("tr", {}, head.map((c) => h("th", { class: c.num ? "num" : "" }, c.label ?? c))), ...rows);
}
// Timers of the tab on screen: stopped when another tab opens.
export function repeat(fn, ms) { fn(); state.timers.push(setInterval(fn, ms)); }
export function track(timer) { state.timers.push(timer); }
export function stopTimers() { state.timers.forEach(clearInterval); state.timers = []; }
export function showScore(value) {
  if (Array.isArray(value) && value.length === 2) return `${value[0]}/${value[1]} (${Math.round(100 * value[0] / value[1])}%)`;
  return fmt(value, 4);
}
export function changeCell(change, better) {
  if (change === null || change === undefined) return h("td", { class: "num" }, "–");
  const text = (change > 0 ? "+" : "") + fmt(change, 3);
  return h("td", { class: "num " + (better === true ? "better" : better === false ? "worse" : "") }, text);
}

// The loss curve of a run's metrics rows: training loss as a line, validation loss as dots.
export function lossChart(points, title) {
  const train = points.filter((p) => p.train_loss !== undefined).map((p) => [p.step, p.train_loss]);
  const valid = points.filter((p) => p.eval_loss !== undefined && p.eval_loss !== null).map((p) => [p.step, p.eval_loss]);
  return lineChart([{ name: "training loss", points: train, colour: COLOURS[0] },
                    { name: "validation loss", points: valid, colour: COLOURS[1], dots: true }],
                   { title, xLabel: "optimizer step", yLabel: "loss", empty: "waiting for the first logged step" });
}


export function figure(value, what) { return h("div", { class: "figure" }, h("div", { class: "value" }, value), h("div", { class: "what" }, what)); }
