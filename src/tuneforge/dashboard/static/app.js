// tuneforge dashboard: one page, six tabs, talking to the server's JSON API (/v1 and /dashboard/api).
import { barChart, COLOURS, fmt, gauge, lineChart } from "/dashboard/static/charts.js";

const $ = (id) => document.getElementById(id);
const API = "/dashboard/api";
// How often live views poll; ?poll=MS in the address changes it (the browser tests poll fast).
const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 1500;
let settings = {};
let timers = [];

// ---------------------------------------------------------------------------------------------
// Plumbing

function h(tag, attrs = {}, ...children) {
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
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function authHeaders(extra = {}) {
  const key = $("key").value;
  return key ? { ...extra, Authorization: "Bearer " + key } : extra;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return `${response.status} ${response.statusText}`; }
}

async function api(path, options = {}) {
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

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function badge(text, cls) { return h("span", { class: `badge ${cls || text}` }, text); }
function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : "–"; }
function ago(seconds) {
  if (!seconds) return "–";
  const s = Date.now() / 1000 - seconds;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}
function table(node, head, rows) {
  fill(node, h("tr", {}, head.map((c) => h("th", { class: c.num ? "num" : "" }, c.label ?? c))), ...rows);
}
function repeat(fn, ms) { fn(); timers.push(setInterval(fn, ms)); }
function stopTimers() { timers.forEach(clearInterval); timers = []; }
function showScore(value) {
  if (Array.isArray(value) && value.length === 2) return `${value[0]}/${value[1]} (${Math.round(100 * value[0] / value[1])}%)`;
  return fmt(value, 4);
}
function changeCell(change, better) {
  if (change === null || change === undefined) return h("td", { class: "num" }, "–");
  const text = (change > 0 ? "+" : "") + fmt(change, 3);
  return h("td", { class: "num " + (better === true ? "better" : better === false ? "worse" : "") }, text);
}

// The loss curve of a run's metrics rows: training loss as a line, validation loss as dots.
function lossChart(points, title) {
  const train = points.filter((p) => p.train_loss !== undefined).map((p) => [p.step, p.train_loss]);
  const valid = points.filter((p) => p.eval_loss !== undefined && p.eval_loss !== null).map((p) => [p.step, p.eval_loss]);
  return lineChart([{ name: "training loss", points: train, colour: COLOURS[0] },
                    { name: "validation loss", points: valid, colour: COLOURS[1], dots: true }],
                   { title, xLabel: "optimizer step", yLabel: "loss", empty: "waiting for the first logged step" });
}

// ---------------------------------------------------------------------------------------------
// Tabs

const TABS = { jobs: showJobs, runs: showRuns, registry: showRegistry, monitoring: showMonitoring, data: showData, chat: showChat };

function route() {
  const name = (location.hash || "#jobs").slice(1).split("/")[0];
  const tab = TABS[name] ? name : "jobs";
  stopTimers();
  notice("");
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === tab);
  for (const section of document.querySelectorAll("section.tab")) section.hidden = section.id !== `tab-${tab}`;
  TABS[tab]().catch((error) => notice(error.message));
}

// ---------------------------------------------------------------------------------------------
// Jobs: the fine-tuning jobs API (/v1/files, /v1/fine_tuning/jobs)

let selectedJob = null;

async function showJobs() {
  if (!settings.jobs) {
    $("job-form").hidden = true;
    fill($("jobs-table"), );
    $("jobs-empty").textContent = "This server runs no fine-tuning jobs: start it with `tuneforge serve MODEL --jobs`.";
    return;
  }
  $("job-form").hidden = false;
  await fillModels($("job-models"));
  repeat(() => listJobs().catch((e) => notice(e.message)), Math.max(POLL_MS * 2, 1000));
  if (selectedJob) openJob(selectedJob);
}

async function fillModels(datalist) {
  const models = (await api("/v1/models")).data;
  fill(datalist, ...models.map((m) => h("option", { value: m.id })));
  if (!$("job-model").value && models.length) $("job-model").value = (models.find((m) => !m.parent && !m.id.startsWith("ft:")) || models[0]).id;
}

async function listJobs() {
  const jobs = (await api("/v1/fine_tuning/jobs?limit=50")).data;
  $("jobs-empty").textContent = jobs.length ? "" : "No jobs yet: upload a training file and start one.";
  table($("jobs-table"), ["job", "status", "model", "fine-tuned model", "created", { label: "tokens", num: true }],
        jobs.map((job) => h("tr", { class: "clickable" + (job.id === selectedJob ? " selected" : ""), "data-job": job.id,
                                    onclick: () => openJob(job.id) },
          h("td", {}, job.id), h("td", {}, badge(job.status)), h("td", {}, job.model),
          h("td", {}, job.fine_tuned_model || "–"), h("td", {}, ago(job.created_at)),
          h("td", { class: "num" }, job.trained_tokens ? job.trained_tokens.toLocaleString() : "–"))));
}

function auto(value) { const text = value.trim(); return text === "" || text === "auto" ? "auto" : Number(text); }

async function uploadFile(file) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return api("/v1/files", { method: "POST", body: form });
}

async function createJob(event) {
  event.preventDefault();
  const status = $("job-form-status");
  $("job-create").disabled = true;
  try {
    let extension = null;  // checked before anything is uploaded
    if ($("job-tuneforge").value.trim()) {
      try { extension = JSON.parse($("job-tuneforge").value); }
      catch (error) { throw new Error("tuneforge run-file settings: not JSON (" + error.message + ")"); }
    }
    status.textContent = "uploading " + $("job-train").files[0].name + " ...";
    const training = await uploadFile($("job-train").files[0]);
    const validation = $("job-valid").files[0] ? await uploadFile($("job-valid").files[0]) : null;
    const hyperparameters = { n_epochs: auto($("job-epochs").value), learning_rate_multiplier: auto($("job-lr").value),
                              batch_size: auto($("job-batch").value) };
    const method = $("job-method").value;
    const body = { model: $("job-model").value, training_file: training.id,
                   method: { type: method, [method]: { hyperparameters } } };
    if (validation) body.validation_file = validation.id;
    if ($("job-suffix").value.trim()) body.suffix = $("job-suffix").value.trim();
    if (extension) body.tuneforge = extension;
    status.textContent = "creating the job ...";
    const job = await api("/v1/fine_tuning/jobs", { json: body });
    status.textContent = `created ${job.id}`;
    await listJobs();
    openJob(job.id);
  } catch (error) {
    status.textContent = "";
    notice(error.message);
  } finally {
    $("job-create").disabled = false;
  }
}

// The curve of a job: its run's metrics.jsonl when the dashboard can see the run, else the metrics events.
async function jobCurve(job, events) {
  const runDir = job.tuneforge && job.tuneforge.run_dir;  // the jobs API keeps one run directory per job
  const run = runDir ? runDir.split("/").filter(Boolean).pop() : null;
  if (run) {
    try { return (await api(`${API}/run/curve?run=${encodeURIComponent(run)}`)).points; } catch (e) { /* not under a root */ }
  }
  return events.filter((e) => e.type === "metrics" && e.data).map((e) => ({ step: e.data.step,
    train_loss: e.data.train_loss, eval_loss: e.data.valid_loss ?? e.data.eval_loss })).sort((a, b) => a.step - b.step);
}

async function openJob(id) {
  selectedJob = id;
  for (const row of document.querySelectorAll("#jobs-table tr[data-job]")) row.classList.toggle("selected", row.dataset.job === id);
  const box = $("job-detail");
  box.hidden = false;
  const draw = async () => {
    if (selectedJob !== id || location.hash.slice(1).split("/")[0] !== "jobs" && location.hash) return;
    const job = await api(`/v1/fine_tuning/jobs/${id}`);
    const events = (await api(`/v1/fine_tuning/jobs/${id}/events?limit=100`)).data;
    const points = await jobCurve(job, events);
    const live = ["validating_files", "queued", "running", "paused"].includes(job.status);
    const act = (verb) => h("button", { type: "button", class: verb === "cancel" ? "small danger" : "small", id: `job-${verb}`,
      onclick: async () => { try { await api(`/v1/fine_tuning/jobs/${id}/${verb}`, { method: "POST" }); draw(); } catch (e) { notice(e.message); } } }, verb);
    fill(box, 
      h("h2", {}, job.id, badge(job.status), live ? act("cancel") : null,
        job.status === "running" ? act("pause") : null, job.status === "paused" ? act("resume") : null),
      h("dl", { class: "kv" },
        h("dt", {}, "base model"), h("dd", {}, job.model),
        h("dt", {}, "fine-tuned model"), h("dd", {}, job.fine_tuned_model || "–"),
        h("dt", {}, "training file"), h("dd", {}, job.training_file),
        h("dt", {}, "trained tokens"), h("dd", {}, job.trained_tokens ? job.trained_tokens.toLocaleString() : "–"),
        job.error && job.error.message ? [h("dt", {}, "error"), h("dd", { class: "worse" }, job.error.message)] : null),
      h("div", { id: "job-chart" }, lossChart(points, "loss")),
      h("h3", {}, "Events"),
      h("div", { class: "events", id: "job-events" }, events.map((e) => h("div", {}, h("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), e.message))));
    if (job.status === "succeeded" && job.fine_tuned_model) {
      box.append(h("p", {}, h("a", { href: "#chat", onclick: () => { preferredModel = job.fine_tuned_model; } }, `Chat with ${job.fine_tuned_model} →`)));
    }
    if (!live) { clearInterval(timer); listJobs().catch((e) => notice(e.message)); }
  };
  const timer = setInterval(() => draw().catch((e) => notice(e.message)), POLL_MS);
  timers.push(timer);
  await draw();
}

// ---------------------------------------------------------------------------------------------
// Runs

let selectedRuns = new Set();

async function showRuns() {
  const { root, runs } = await api(`${API}/runs`);
  $("runs-root").textContent = root;
  $("runs-empty").textContent = runs.length ? "" : `No runs under ${root} (tuneforge serve --runs-dir DIR points elsewhere).`;
  table($("runs-table"), ["", "run", "status", "model", "method", { label: "step", num: true },
                          { label: "train loss", num: true }, { label: "val loss", num: true }, "updated"],
        runs.map((run) => h("tr", { class: "clickable", "data-run": run.name, onclick: (e) => { if (e.target.type !== "checkbox") openRun(run.name); } },
          h("td", {}, h("input", { type: "checkbox", checked: selectedRuns.has(run.name), onchange: (e) => {
            e.target.checked ? selectedRuns.add(run.name) : selectedRuns.delete(run.name);
            $("runs-compare").disabled = selectedRuns.size < 2; } })),
          h("td", {}, run.name), h("td", {}, badge(run.status)), h("td", {}, run.model || "–"), h("td", {}, run.method || run.task || "–"),
          h("td", { class: "num" }, run.max_steps ? `${run.step}/${run.max_steps}` : run.step),
          h("td", { class: "num" }, fmt(run.train_loss, 4)), h("td", { class: "num" }, fmt(run.eval_loss, 4)),
          h("td", {}, ago(run.updated)))));
  $("runs-compare").disabled = selectedRuns.size < 2;
  const wanted = decodeURIComponent(location.hash.split("/").slice(1).join("/"));
  if (wanted && runs.some((r) => r.name === wanted)) openRun(wanted);
}

async function openRun(name) {
  const run = await api(`${API}/run?run=${encodeURIComponent(name)}`);
  const box = $("run-detail");
  box.hidden = false;
  $("run-compare").hidden = true;
  const chart = h("div", {}, lossChart(run.curve, "loss"));
  const gates = run.gates;
  fill(box, 
    h("h2", {}, run.name, badge(run.status), run.status === "finished"
      ? h("button", { type: "button", class: "small", id: "run-register", onclick: () => registerRun(run.name) }, "Register in the registry") : null),
    h("dl", { class: "kv" }, h("dt", {}, "directory"), h("dd", {}, run.path), h("dt", {}, "model"), h("dd", {}, run.model || "–"),
      h("dt", {}, "method"), h("dd", {}, run.method || "–"), h("dt", {}, "final validation loss"), h("dd", {}, fmt(run.validation_loss, 4)),
      h("dt", {}, "gates"), h("dd", {}, gates ? [badge(gates.passed ? "passed" : "failed"), " ",
        (gates.gates || []).map((g) => g.reason || g.gate).join("; ")] : "none checked")),
    h("div", { class: "two" }, chart, h("div", {},
    h("h3", {}, "Base model vs fine-tuned"),
    run.table.length ? h("table", { class: "list figures" },
      h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "base model"), h("th", { class: "num" }, "fine-tuned"), h("th", { class: "num" }, "change")),
      run.table.map((row) => h("tr", {}, h("td", {}, row.label), h("td", { class: "num" }, showScore(row.base)),
                                h("td", { class: "num" }, showScore(row.tuned)), changeCell(row.change, row.better))))
      : h("p", { class: "muted" }, "No eval/summary.json yet (written when training ends)."),
    Object.keys(run.evaluations).length ? [h("h3", {}, "Evaluations (tuneforge eval)"), evaluationsTable(run.evaluations)] : null)),
    h("h3", {}, "Run file"), h("pre", { class: "config" }, JSON.stringify(run.config, null, 2)));
  if (run.status === "training") {
    let next = run.curve.length;
    let points = run.curve;
    repeat(async () => {
      const update = await api(`${API}/run/curve?run=${encodeURIComponent(name)}&start=${next}`);
      if (update.points.length) { points = points.concat(update.points); next = update.next; chart.replaceChildren(lossChart(points, "loss")); }
    }, POLL_MS * 2);
  }
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function evaluationsTable(evaluations) {
  const rows = [];
  for (const [data, sides] of Object.entries(evaluations)) {
    const metrics = [...new Set(Object.values(sides).flatMap((m) => Object.keys(m)))];
    for (const metric of metrics) {
      rows.push(h("tr", {}, h("td", {}, data), h("td", {}, metric),
        h("td", { class: "num" }, fmt(sides.base?.[metric], 4)), h("td", { class: "num" }, fmt(sides.tuned?.[metric], 4))));
    }
  }
  return h("table", { class: "list figures" }, h("tr", {}, h("th", {}, "data"), h("th", {}, "metric"),
    h("th", { class: "num" }, "base"), h("th", { class: "num" }, "tuned")), rows);
}

async function registerRun(name) {
  try {
    const result = await api(`${API}/registry/register`, { json: { run: name } });
    notice("");
    alert(result.message);
  } catch (error) { notice(error.message); }
}

async function compareRuns() {
  const names = [...selectedRuns];
  const data = await api(`${API}/compare?` + names.map((n) => "run=" + encodeURIComponent(n)).join("&"));
  const box = $("run-compare");
  box.hidden = false;
  $("run-detail").hidden = true;
  const curves = names.map((name, i) => ({ name, colour: COLOURS[i % COLOURS.length],
    points: data.curves[name].filter((p) => p.train_loss !== undefined).map((p) => [p.step, p.train_loss]) }));
  const valid = names.map((name, i) => ({ name: name + " (val)", colour: COLOURS[i % COLOURS.length], dots: true, dashed: true,
    points: data.curves[name].filter((p) => p.eval_loss !== undefined).map((p) => [p.step, p.eval_loss]) }));
  const head = h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "base model"), names.map((n) => h("th", { class: "num" }, n)));
  fill(box, 
    h("h2", {}, "Side by side: " + names.join(" · ")),
    lineChart([...curves, ...valid], { title: "loss", xLabel: "optimizer step", yLabel: "loss" }),
    h("h3", {}, "Base model vs each fine-tune"),
    h("table", { class: "list figures" }, head,
      h("tr", {}, h("td", {}, "final validation loss"), h("td", {}), names.map((n) => h("td", { class: "num" }, fmt(data.validation_loss[n], 4)))),
      data.table.map((row) => h("tr", {}, h("td", {}, row.label), h("td", { class: "num" }, showScore(row.base)),
                                 names.map((n) => h("td", { class: "num" }, showScore(row.tuned[n])))))),
    Object.keys(data.metrics).length ? [h("h3", {}, "Evaluations"), h("table", { class: "list figures" },
      h("tr", {}, h("th", {}, "metric"), names.map((n) => h("th", { class: "num" }, n))),
      Object.entries(data.metrics).map(([metric, values]) => h("tr", {}, h("td", {}, metric), names.map((n) => h("td", { class: "num" }, fmt(values[n], 4))))))] : null,
    h("h3", {}, "Settings that differ"),
    data.settings.length ? h("table", { class: "list" }, h("tr", {}, h("th", {}, "setting"), names.map((n) => h("th", {}, n))),
      data.settings.map((s) => h("tr", {}, h("td", {}, s.key), names.map((n) => h("td", {}, JSON.stringify(s.values[n]) ?? "–")))))
      : h("p", { class: "muted" }, "The run files are the same."),
    h("h3", {}, "Evaluate side by side on the same examples (tuneforge compare)"),
    h("form", { class: "row", onsubmit: (e) => startComparison(e, names) },
      h("label", {}, "Data file on the server ", h("input", { id: "compare-data", size: 40, required: true,
        value: (data.validation_data || "") })),
      h("label", {}, "First N records ", h("input", { id: "compare-limit", type: "number", value: 20, min: 1, style: "width:5rem" })),
      h("button", { class: "primary" }, "Evaluate")),
    h("div", { id: "compare-evaluations" }));
  repeat(() => showEvaluations(names).catch((e) => notice(e.message)), 4000);
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

async function startComparison(event, names) {
  event.preventDefault();
  try {
    await api(`${API}/compare`, { json: { runs: names, data: $("compare-data").value, limit: Number($("compare-limit").value) || null } });
    showEvaluations(names);
  } catch (error) { notice(error.message); }
}

async function showEvaluations(names) {
  const all = (await api(`${API}/compare/evaluations`)).evaluations.filter((e) => e.runs.join("\n") === names.join("\n"));
  fill($("compare-evaluations"), ...all.slice(0, 3).map((e) => {
    if (e.status !== "done") return h("div", {}, badge(e.status), ` ${e.data} — started ${ago(e.created)}`, h("pre", { class: "log" }, e.log || ""));
    return h("div", {}, h("p", {}, badge("done", "succeeded"), ` ${e.data} `, e.report
        ? h("a", { href: `${API}/compare/${e.id}/report/index.html`, target: "_blank" }, "full report") : null),
      h("table", { class: "list figures" }, h("tr", {}, h("th", {}, "metric"), e.models.map((m) => h("th", { class: "num" }, m))),
        e.rows.map((r) => h("tr", {}, h("td", {}, r.metric), r.values.map((v, i) => h("td", { class: "num " + r.directions[i] }, fmt(v, 4)))))),
      e.examples.length ? h("table", { class: "list" }, h("tr", {}, h("th", {}, "prompt"), h("th", {}, "reference"), e.models.map((m) => h("th", {}, m))),
        e.examples.map((x) => h("tr", {}, h("td", {}, x.prompt), h("td", {}, x.reference),
          x.outputs.map((o, i) => h("td", {}, o, h("div", { class: "muted" }, `${x.metric} ${fmt(x.scores[i], 2)}`)))))) : null);
  }));
}

// ---------------------------------------------------------------------------------------------
// Registry

async function showRegistry() {
  const reg = await api(`${API}/registry`);
  $("registry-path").textContent = reg.path;
  $("registry-empty").textContent = reg.versions.length ? "" : "No versions yet: register a finished run (Runs tab) or finish a job.";
  const byId = Object.fromEntries(reg.versions.map((v) => [v.id, v]));
  fill($("registry-aliases"), ...settings.aliases.map((alias) => h("div", { class: "alias" },
    badge(alias), h("strong", {}, reg.aliases[alias] || "(none)"),
    reg.aliases[alias] ? h("span", { class: "muted" }, { passed: "gates passed", failed: "gates failed", none: "no gates checked" }[byId[reg.aliases[alias]]?.gate_outcome]) : null,
    h("button", { type: "button", class: "small", id: `rollback-${alias}`, disabled: !reg.history.some((e) => e.name === alias),
                  onclick: () => registryAction("rollback", { alias }) }, "Roll back"))));
  // Lineage: each leaf's chain back to its base model, newest first.
  const parents = new Set(reg.versions.map((v) => v.parent).filter(Boolean));
  const leaves = reg.versions.filter((v) => !parents.has(v.id)).reverse();
  fill($("lineage"), ...leaves.map((leaf) => h("div", { class: "chain" },
    h("span", { class: "node base" }, shortModel(byId[leaf.lineage[leaf.lineage.length - 1]].base_model)),
    [...leaf.lineage].reverse().map((id) => [h("span", { class: "arrow" }, "→"),
      h("span", { class: "node" + (byId[id].aliases.length ? " live" : ""), title: byId[id].path },
        id, " ", byId[id].aliases.map((a) => badge(a)), " ", badge(byId[id].gate_outcome === "none" ? "no gates" : byId[id].gate_outcome, byId[id].gate_outcome))]))));
  table($("registry-table"), ["version", "aliases", "base model", "method", "parent", "gates",
                              { label: "val loss", num: true }, { label: "ppl general", num: true }, "created", ""],
    [...reg.versions].reverse().map((v) => h("tr", { "data-version": v.id },
      h("td", {}, h("strong", {}, v.id), v.note ? h("div", { class: "muted" }, v.note) : null),
      h("td", {}, v.aliases.map((a) => badge(a))), h("td", {}, shortModel(v.base_model)), h("td", {}, v.method), h("td", {}, v.parent || "–"),
      h("td", { title: v.gates.map((g) => g.reason).join("\n") }, badge(v.gate_outcome), v.gates.filter((g) => !g.passed).map((g) => h("div", { class: "muted" }, g.reason))),
      h("td", { class: "num" }, v.validation_loss), h("td", { class: "num" }, v.general_perplexity), h("td", {}, when(v.created)),
      h("td", {}, settings.aliases.map((alias) => h("button", { type: "button", class: "small", id: `promote-${v.id}-${alias}`,
        disabled: v.aliases.includes(alias), onclick: () => registryAction("promote", { version: v.id, alias }) }, `→ ${alias}`))))));
  table($("registry-history"), ["when", "alias", "change", "action"], [...reg.history].reverse().map((e) => h("tr", {},
    h("td", {}, when(e.created)), h("td", {}, badge(e.name)), h("td", {}, `${e.previous || "(none)"} → ${e.version}`), h("td", {}, e.action))));
}

function shortModel(name) { return name.length > 40 ? "…" + name.slice(-38) : name; }

async function registryAction(action, body) {
  const box = $("registry-message");
  try {
    const result = await api(`${API}/registry/${action}`, { json: body });
    box.hidden = false;
    box.className = "message " + (result.ok ? "ok" : "refused");
    fill(box, result.message);
    if (!result.ok && action === "promote") {
      box.append(h("div", {}, h("button", { type: "button", class: "small danger", id: "promote-force",
        onclick: () => registryAction("promote", { ...body, force: true }) }, "Promote anyway (force)")));
    }
    await showRegistry();
  } catch (error) {
    box.hidden = false;
    box.className = "message refused";
    box.textContent = error.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Monitoring

function figure(value, what) { return h("div", { class: "figure" }, h("div", { class: "value" }, value), h("div", { class: "what" }, what)); }
function share(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }
function secs(x) { return x === null || x === undefined ? "–" : x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`; }

async function showMonitoring() {
  const since = $("monitor-since").value;
  const report = await api(`${API}/monitor/report?since=${encodeURIComponent(since)}`);
  $("monitor-db").textContent = report.db || "";
  if (!report.requests) {
    fill($("monitor-cards"), h("p", { class: "muted" }, report.note || "No requests logged in this window."));
    fill($("monitor-charts"), );
    fill($("monitor-table"), );
  } else {
    const o = report.overall;
    fill($("monitor-cards"), figure(o.requests.toLocaleString(), "requests"), figure(share(o.error_rate), "errors"),
      figure(secs(o.latency_s.p50), "latency p50"), figure(secs(o.latency_s.p90), "latency p90"),
      figure(secs(o.ttft_s.p50), "time to first token p50"), figure(share(o.feedback_rate), "answers rated"),
      figure(share(o.approval), `approval (${o.approved} of ${o.rated})`), figure(o.corrected.toLocaleString(), "corrections"));
    const line = report.timeline;
    const versions = Object.keys(line.requests);
    const totals = line.labels.map((_, i) => versions.reduce((a, v) => a + line.requests[v][i], 0));
    fill($("monitor-charts"), 
      barChart(line.labels, versions.map((v) => ({ name: v, values: line.requests[v] })), { title: `requests per ${line.bucket}`, stacked: true, rotate: true, legend: true }),
      barChart(line.labels, ["p50", "p90", "p99"].map((p) => ({ name: `latency ${p}`, values: line.latency_s[p].map((v) => v ?? 0) })),
               { title: `latency of answered requests per ${line.bucket} (seconds)`, rotate: true }),
      barChart(line.labels, [{ name: "error rate", colour: "#dc2626", values: line.errors.map((e, i) => totals[i] ? e / totals[i] : 0) }],
               { title: `error rate per ${line.bucket}`, percent: true, rotate: true, minMax: 0.05 }));
    table($("monitor-table"), ["", ...report.columns.map((c) => ({ label: c, num: true }))],
      Object.entries(report.rows).map(([name, values]) => h("tr", {}, h("td", {}, name), values.map((v) => h("td", { class: "num" }, v)))));
  }
  const { runs } = await api(`${API}/runs`);
  const current = $("drift-run").value;
  fill($("drift-run"), ...runs.map((r) => new Option(r.name, r.name)));
  if (current) $("drift-run").value = current;
}

async function checkDrift() {
  const run = $("drift-run").value;
  const out = $("drift-result");
  fill(out, h("p", { class: "muted" }, "measuring ..."));
  try {
    const since = $("monitor-since").value;
    const result = await api(`${API}/monitor/drift?run=${encodeURIComponent(run)}&since=${encodeURIComponent(since)}`);
    if (!result.signals.length) { fill(out, h("p", { class: "muted" }, result.note || "nothing measured")); return; }
    fill(out, 
      h("p", {}, badge(result.drifted ? "drift" : "no drift", result.drifted ? "flagged" : "passed"),
        ` ${result.production_prompts} production prompts against ${result.training_prompts} training prompts (${result.training_data.join(", ")})`),
      h("table", { class: "list" }, h("tr", {}, h("th", {}, "signal"), h("th", {}, "measure"), h("th", { class: "num" }, "raw"),
        h("th", { class: "num" }, "same-size training sample"), h("th", { class: "num" }, "drift score"), h("th", {}, "score vs threshold (line)"), h("th", {}, "")),
        result.signals.map((s) => h("tr", {}, h("td", {}, s.signal), h("td", {}, s.measure), h("td", { class: "num" }, fmt(s.raw, 3)),
          h("td", { class: "num" }, fmt(s.baseline_median, 3)), h("td", { class: "num" }, fmt(s.score, 3)),
          h("td", {}, gauge(Math.max(0, s.score), s.threshold, Math.max(0.5, s.threshold * 2.5, s.score * 1.2), s.flagged)),
          h("td", {}, s.flagged ? badge("flagged") : badge("ok", "passed"))))),
      Object.keys(result.skipped).length ? h("p", { class: "muted" }, Object.entries(result.skipped).map(([k, v]) => `${k}: ${v}`).join("; ")) : null);
  } catch (error) { fill(out, h("p", { class: "worse" }, error.message)); }
}

// ---------------------------------------------------------------------------------------------
// Data

async function showData() {
  if (!$("inspect-model").value) $("inspect-model").value = settings.model || "";
}

async function inspectFile(event) {
  event.preventDefault();
  const file = $("inspect-file").files[0];
  const out = $("inspect-result");
  fill(out, h("p", { class: "muted" }, `reading ${file.name} ...`));
  try {
    const query = new URLSearchParams({ filename: file.name, model: $("inspect-model").value, max_seq_length: $("inspect-max").value });
    const r = await api(`${API}/inspect?${query}`, { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    const pairs = (o) => Object.entries(o).map(([k, v]) => `${k} ${v.toLocaleString()}`).join(", ") || "–";
    fill(out, 
      h("div", { class: "cards" }, figure(r.records.toLocaleString(), "valid records"), figure(r.problem_count.toLocaleString(), "records with problems"),
        figure(r.format, "format"), figure(r.duplicates.toLocaleString(), "exact duplicates"), figure(r.too_long.toLocaleString(), `longer than ${r.max_seq_length} tokens`),
        figure(Object.values(r.pii).reduce((a, b) => a + b, 0).toLocaleString(), "PII found")),
      h("div", { class: "hist" },
        barChart(r.histogram.map(([edge]) => edge), [{ name: "records", values: r.histogram.map(([, n]) => n) }],
                 { title: "tokens per record", values: true, rotate: true }),
        barChart(Object.keys(r.roles), [{ name: "messages", colour: COLOURS[1], values: Object.values(r.roles) }], { title: "messages by role", values: true, empty: "no chat messages" })),
      h("dl", { class: "kv" }, h("dt", {}, "kinds"), h("dd", {}, pairs(r.kinds)), h("dt", {}, "messages per record"), h("dd", {}, pairs(r.turns)),
        h("dt", {}, "labels"), h("dd", {}, pairs(r.labels)), h("dt", {}, "tokens per record"), h("dd", {}, r.lengths),
        h("dt", {}, "PII"), h("dd", {}, pairs(r.pii)), h("dt", {}, "tokenizer"), h("dd", {}, r.model)),
      r.problems.length ? [h("h3", {}, `Problems (${r.problem_count})`), h("table", { class: "list", id: "inspect-problems" },
        h("tr", {}, h("th", {}, "where"), h("th", {}, "why")), r.problems.map((p) => h("tr", {}, h("td", {}, p.where), h("td", {}, p.why))))]
        : h("p", { class: "better" }, "No problems: every record would be trained on."));
  } catch (error) { fill(out, h("p", { class: "worse" }, error.message)); }
}

// ---------------------------------------------------------------------------------------------
// Chat: streamed answers, each rated or corrected through POST /v1/feedback

let history = [];
let controller = null;
let preferredModel = null;

// The newest fine-tune first: an ft: model (newest created), else an adapter, else the base model.
export function pickModel(models, preferred) {
  if (preferred && models.some((m) => m.id === preferred)) return preferred;
  const tuned = models.filter((m) => m.id.startsWith("ft:")).sort((a, b) => (b.created || 0) - (a.created || 0));
  if (tuned.length) return tuned[0].id;
  const adapters = models.filter((m) => m.parent);
  return (adapters.length ? adapters[adapters.length - 1] : models[0])?.id;
}

async function showChat() {
  const models = (await api("/v1/models")).data;
  const chosen = $("chat-model").value && models.some((m) => m.id === $("chat-model").value) && !preferredModel ? $("chat-model").value : pickModel(models, preferredModel);
  preferredModel = null;
  fill($("chat-model"), ...models.map((m) => new Option(m.parent ? `${m.id} (adapter)` : m.id, m.id)));
  $("chat-model").value = chosen;
  $("chat-input").focus();
}

function bubble(cls, text) {
  const div = h("div", { class: `msg ${cls}` }, text);
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

async function sendFeedback(requestId, rating, correction, status) {
  try {
    await api("/v1/feedback", { json: { request_id: requestId, rating, ...(correction ? { correction } : {}) } });
    status.textContent = correction ? "correction saved" : "rating saved";
    status.className = "saved";
  } catch (error) { status.textContent = error.message; status.className = "worse"; }
}

function feedbackControls(requestId, meta) {
  const status = h("span", {});
  const up = h("button", { type: "button", class: "rate", title: "a good answer", "data-rating": "1" }, "▲ good");
  const down = h("button", { type: "button", class: "rate", title: "a bad answer", "data-rating": "-1" }, "▼ bad");
  const fix = h("button", { type: "button", class: "rate", title: "type the answer that would have been right" }, "✎ correct");
  const rate = (button, rating) => { up.classList.toggle("chosen", button === up); down.classList.toggle("chosen", button === down);
                                     sendFeedback(requestId, rating, null, status); };
  up.addEventListener("click", () => rate(up, 1));
  down.addEventListener("click", () => rate(down, -1));
  fix.addEventListener("click", () => {
    if (meta.parentNode.querySelector(".correction")) return;
    const text = h("textarea", { placeholder: "the answer that would have been right" });
    const save = h("button", { type: "button", class: "small primary" }, "Save correction");
    save.addEventListener("click", () => { if (text.value.trim()) { down.classList.add("chosen"); up.classList.remove("chosen");
                                                                   sendFeedback(requestId, -1, text.value.trim(), status); } });
    meta.parentNode.append(h("div", { class: "correction" }, text, save));
    text.focus();
  });
  meta.append(up, down, fix, status);
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const reply = bubble("assistant", "");
  const body_ = h("span", {});
  reply.append(body_);
  const messages = ($("chat-system").value ? [{ role: "system", content: $("chat-system").value }] : []).concat(history);
  const body = { model: $("chat-model").value, messages, stream: true, stream_options: { include_usage: true },
                 temperature: Number($("chat-temperature").value), max_tokens: Number($("chat-max").value) };
  controller = new AbortController();
  $("chat-send").textContent = "Stop";
  const started = performance.now();
  let content = "", usage = null, requestId = null;
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
                                                           body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) throw new Error(await errorText(response));
    requestId = response.headers.get("X-Request-Id");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]" || !data.trim()) continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        requestId = requestId || chunk.id;
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta.content) { content += choice.delta.content; body_.textContent = content; }
        }
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      }
    }
    history.push({ role: "assistant", content });
    const seconds = (performance.now() - started) / 1000;
    const meta = h("div", { class: "meta" }, `${body.model} · ` + (usage ? `${usage.completion_tokens} tokens in ${seconds.toFixed(1)} s` : `${seconds.toFixed(1)} s`));
    reply.append(meta);
    if (requestId) feedbackControls(requestId, meta);
  } catch (error) {
    if (error.name === "AbortError") history.push({ role: "assistant", content });
    else { reply.className = "msg error"; reply.textContent = content + "\n" + error.message; history.pop(); }
  } finally {
    controller = null;
    $("chat-send").textContent = "Send";
  }
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  $("key").value = localStorage.getItem("tuneforge-key") || "";
  $("key").addEventListener("change", () => { localStorage.setItem("tuneforge-key", $("key").value); init(); });
  window.addEventListener("hashchange", route);
  $("job-form").addEventListener("submit", createJob);
  $("jobs-refresh").addEventListener("click", () => listJobs().catch((e) => notice(e.message)));
  $("runs-refresh").addEventListener("click", () => showRuns().catch((e) => notice(e.message)));
  $("runs-compare").addEventListener("click", () => { stopTimers(); compareRuns().catch((e) => notice(e.message)); });
  $("monitor-refresh").addEventListener("click", () => showMonitoring().catch((e) => notice(e.message)));
  $("monitor-since").addEventListener("change", () => showMonitoring().catch((e) => notice(e.message)));
  $("drift-check").addEventListener("click", checkDrift);
  $("inspect-form").addEventListener("submit", inspectFile);
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (controller) { controller.abort(); return; }
    const text = $("chat-input").value.trim();
    if (!text) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-reset").addEventListener("click", () => { history = []; fill($("chat-log"), ); });
  await init();
}

async function init() {
  try {
    settings = await api(`${API}/settings`);
  } catch (error) {
    notice(error.message + " (enter the server's API key above)");
    return;
  }
  if (!location.hash) location.hash = settings.jobs ? "#jobs" : "#runs";
  route();
}

start();
